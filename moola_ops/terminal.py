"""Text from a host never drives the operator's terminal.

A lock holder, a `current` link target, a release folder's name, a command's output, a JSON
field decoded from `\\u001b`: anything a host supplies can hold escape sequences (clear the
screen, retitle the window, move the cursor over an earlier line) or bidi overrides that make a
line read differently than it is. `printable()` shows every such character as a visible escape
(`\\x1b`), and this module applies it in one place for every renderer:

- `guarded_streams()`: while a task runs, `sys.stdout` / `sys.stderr` write through
  `printable` (every `print`, the plain progress lines, the health check's status line);
- `console_file()` + `render_hook()`: rich consoles write to the real stream, so their own
  colours and live-table cursor moves still work, while the text they render is passed
  through `printable` segment by segment;
- `moola_ops.cli._common` wraps every task and its `Exit` message with these.

JSON output needs nothing: `json.dumps` escapes control characters itself.
Standard library only (the cron path imports it); rich is imported inside `render_hook`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator
from typing import Any, TextIO

# C0 controls but newline and tab, DEL, C1 controls (U+0080-U+009F: a lone U+009B is a CSI on
# some terminals), and the bidi embeddings, overrides and isolates
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: Any) -> str:
    """`text` as a terminal may show it: control characters as visible escapes (`\\x1b`)."""
    text = text if isinstance(text, str) else str(text)
    return _UNSAFE.sub(_visible, text)


class SafeStream:
    """A text stream that writes through `printable`; everything else is the wrapped stream's."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(printable(text))
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def raw(stream: TextIO) -> TextIO:
    """The stream under any SafeStream wrapping (what rich writes its own codes to)."""
    while isinstance(stream, SafeStream):
        stream = stream.stream
    return stream


@contextlib.contextmanager
def guarded_streams() -> Iterator[None]:
    """sys.stdout and sys.stderr write through `printable` while the block runs."""
    saved = sys.stdout, sys.stderr
    if not isinstance(sys.stdout, SafeStream):
        sys.stdout = SafeStream(sys.stdout)
    if not isinstance(sys.stderr, SafeStream):
        sys.stderr = SafeStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def console_file(stream: TextIO | None = None) -> TextIO:
    """The stream a rich Console writes to: the real one (see module doc)."""
    return raw(stream if stream is not None else sys.stdout)


def render_hook():
    """A rich RenderHook that passes the text of every rendered segment through `printable`
    (rich's own control segments, such as a live table's cursor moves, stay as they are)."""
    from rich.console import RenderHook
    from rich.segment import Segment

    class _Clean:
        def __init__(self, inner):
            self.inner = inner

        def __rich_console__(self, console, options):
            for segment in console.render(self.inner, options):
                if segment.control or not _UNSAFE.search(segment.text):
                    yield segment
                else:
                    yield Segment(printable(segment.text), segment.style)

    class _Hook(RenderHook):
        def process_renderables(self, renderables):
            return [_Clean(r) for r in renderables]

    return _Hook()


def safe_console(stream: TextIO | None = None, **options):
    """A rich Console on the real stream whose rendered text passes through `printable`."""
    from rich.console import Console

    console = Console(file=console_file(stream), **options)
    console.push_render_hook(render_hook())
    return console


def is_tty() -> bool:
    """True when stdout is an interactive terminal (rich output, colours, progress bars)."""
    return sys.stdout.isatty() and os.environ.get("TERM", "") != "dumb"


def console():
    """A rich Console that never emits colour codes when stdout is not a terminal, and never
    passes a host's escape sequences through (moola_ops/terminal.py)."""
    tty = is_tty()
    return safe_console(force_terminal=tty, no_color=not tty, highlight=False, soft_wrap=not tty)


def print_json(payload: Any) -> None:
    """Print one JSON document on stdout (machine-readable output for --json)."""
    print(json.dumps(payload, indent=2, sort_keys=True, default=str))

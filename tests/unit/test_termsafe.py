"""Text from a host never drives the operator's terminal (#24 item 15): one sanitiser,
applied to plain output, rich output and error messages alike."""

from __future__ import annotations

import io
import sys

import pytest

from moola_ops import terminal
from moola_ops import terminal as termsafe

ATTACKS = [
    "\x1b[2J\x1b[H",  # clear the screen, cursor home
    "\x1b]0;owned\x07",  # set the window title (OSC ... BEL)
    "\x9b2J",  # C1 CSI: clears the screen on some terminals
    "ok\rFAIL",  # carriage return: overwrite what was printed
    "\u202eevil",  # right-to-left override: the line reads backwards
    "\x00\x08\x7f",
]


@pytest.mark.parametrize("text", ATTACKS)
def test_printable_shows_every_control_character_as_a_visible_escape(text):
    shown = termsafe.printable(f"holder {text} end")
    assert not termsafe._UNSAFE.search(shown)
    assert shown.startswith("holder ") and shown.endswith(" end")
    assert "\\x" in shown or "\\u" in shown


def test_newlines_tabs_and_plain_unicode_stay():
    text = "v0.3\tlive on h1\nsince 16:33 · ü → 日本"
    assert termsafe.printable(text) == text


def test_guarded_streams_clean_print_and_restore_the_streams():
    out = io.StringIO()
    saved = sys.stdout
    sys.stdout = out
    try:
        with termsafe.guarded_streams():
            print("locked by \x1b[2Jmallory")
        assert sys.stdout is out
    finally:
        sys.stdout = saved
    assert out.getvalue() == "locked by \\x1b[2Jmallory\n"


def test_a_rich_table_keeps_its_colours_and_loses_the_hosts_escapes():
    from rich.table import Table

    out = io.StringIO()
    console = termsafe.safe_console(termsafe.SafeStream(out), force_terminal=True)
    table = Table("host", "holder")
    table.add_row("h1", "[bold]mallory[/] \x1b[2J\x1b]0;owned\x07")
    console.print(table)
    text = out.getvalue()
    assert "\x1b[1m" in text  # rich's own bold: the console writes to the real stream
    assert "\x1b[2J" not in text and "\x07" not in text and "\x1b]0" not in text
    assert "\\x1b[2J" in text and "\\x1b]0;owned" in text  # shown, not obeyed (rich drops BEL)


def test_the_progress_view_and_the_task_console_use_the_safe_console():
    # the one place: every rich console of the tasks and the live progress table
    import inspect

    from moola_ops import progress

    assert "safe_console" in inspect.getsource(terminal.console)
    assert "safe_console" in inspect.getsource(progress.ProgressView.start)

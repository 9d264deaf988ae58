"""Shared plumbing for the Invoke tasks: error handling and output rendering.

Tasks stay thin: parse flags, call one function of moola_ops/moola_core, render, exit.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from invoke.exceptions import Exit

from moola_core.errors import MoolaError


def is_tty() -> bool:
    """True when stdout is an interactive terminal (rich output, colours, progress bars)."""
    return sys.stdout.isatty() and os.environ.get("TERM", "") != "dumb"


def console():
    """A rich Console that never emits colour codes when stdout is not a terminal."""
    from rich.console import Console

    tty = is_tty()
    return Console(force_terminal=tty, no_color=not tty, highlight=False, soft_wrap=not tty)


def print_json(payload: Any) -> None:
    """Print one JSON document on stdout (machine-readable output for --json)."""
    print(json.dumps(payload, indent=2, sort_keys=True, default=str))


def user_errors(fn: Callable) -> Callable:
    """Turn MoolaError into one clear line on stderr and its exit code (no traceback).

    KeyboardInterrupt exits 130 after the callee had its chance to clean up.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MoolaError as exc:
            raise Exit(f"error: {exc}", code=exc.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None

    return wrapper

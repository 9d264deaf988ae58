"""Shared plumbing for the Invoke tasks: error handling and output rendering.

Tasks stay thin: parse flags, call one function of moola_ops/moola_core, render, exit.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import invoke
from invoke.exceptions import Exit, ParseError
from invoke.parser import Argument

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

    KeyboardInterrupt exits 130 after the callee had its chance to clean up; a reader that
    closed the pipe early (`| head`) ends the task quietly. Any other OSError (a full disk, a
    folder where a file should be, no permission) and a file that is not UTF-8 are one
    sentence and exit 1 as well: a task never ends in a traceback for what a person can fix.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MoolaError as exc:
            raise Exit(f"error: {exc}", code=exc.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None
        except BrokenPipeError:
            # `invoke log | head` closed our stdout: what was read is what the reader wanted.
            # Point stdout at /dev/null so the interpreter's final flush cannot fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise Exit(code=0) from None
        except OSError as exc:
            from moola_core.errors import os_error_sentence

            raise Exit(f"error: {os_error_sentence(exc)}", code=1) from None
        except UnicodeDecodeError as exc:
            raise Exit(
                f"error: a file Moola read is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                f"at offset {exc.start}): save it as UTF-8",
                code=1,
            ) from None

    wrapper.user_errors = True  # tests check that every task is wrapped
    return wrapper


class FlagArgument(Argument):
    """An Invoke argument whose bad or missing value (`--timeout abc`) is one plain sentence.

    Invoke casts a flag's text with its kind (int, float) and lets the ValueError escape;
    a ParseError is what Invoke prints as one line and exits 1 on.
    """

    def __repr__(self) -> str:
        # Invoke names a flag given no value by its repr: "Flag --deployment needed value ...",
        # not "Flag <Argument: deployment (d) *> ...".
        return f"--{self.name}"

    def set_value(self, value, cast=True):
        try:
            super().set_value(value, cast=cast)
        except (TypeError, ValueError):
            kind = {int: "a whole number", float: "a number"}.get(self.kind, str(self.kind))
            raise ParseError(
                f"error: --{self.name} takes {kind}, not {value!r}; see `invoke -h TASK`."
            ) from None


class MoolaTask(invoke.Task):
    """Invoke's Task with sound flags: values that fail to parse are one sentence, no flag gets
    a punctuation short flag (Invoke would hand `check_runs` the short flag `--` once its
    letters are taken) nor `-h` (`invoke TASK -h` shows the task's help), and number flags say
    that they take a number in their help.
    """

    def fill_implicit_positionals(self, positional):
        # Required flags stay flags: Invoke checks positionals before it looks at -h, so
        # `invoke deploy -h` said "did not receive required positional arguments" instead of
        # showing help. __call__ names a missing required flag instead.
        return [] if positional is None else positional

    def __call__(self, *args, **kwargs):
        required = [
            name
            for name, param in self.argspec(self.body).parameters.items()
            if param.default is inspect.Parameter.empty and name not in self.positional
        ]
        missing = [name for name in required if kwargs.get(name) is None]
        if missing:
            flags = ", ".join("--" + name.replace("_", "-") for name in missing)
            verb = "is" if len(missing) == 1 else "are"
            raise Exit(f"error: {flags} {verb} required (add -h after the task for its flags)", 1)
        return super().__call__(*args, **kwargs)

    def arg_opts(self, name, default, taken_names):
        opts = super().arg_opts(name, default, taken_names)
        long, *short = opts["names"]
        if short and (short[0] == "h" or not short[0].isalnum()):
            # -h stays help: `invoke healthcheck -h` said "Flag --host needed value" instead
            free = [ch for ch in long if ch.isalnum() and ch != "h" and ch not in taken_names]
            opts["names"] = [long, *free[:1]]
        return opts

    def get_arguments(self, ignore_unknown_help=None):
        args = []
        for arg in super().get_arguments(ignore_unknown_help):
            sound = FlagArgument(
                names=arg.names, kind=arg.kind, default=arg.default, help=arg.help,
                positional=arg.positional, optional=arg.optional,
                incrementable=arg.incrementable, attr_name=arg.attr_name,
            )  # fmt: skip
            # Invoke's help shows =INT or =STRING but nothing for a float flag, which then
            # reads like an on/off switch.
            if sound.kind is float and sound.help and not sound.help.startswith("NUMBER"):
                sound.help = f"NUMBER: {sound.help}"
            args.append(sound)
        return args


def task(*args, **kwargs):
    """`invoke.task` building a MoolaTask; every Moola task is declared with this."""
    return invoke.task(*args, klass=MoolaTask, **kwargs)

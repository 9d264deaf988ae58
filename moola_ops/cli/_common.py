"""Shared plumbing for the Invoke tasks: error handling and output rendering.

Tasks stay thin: parse flags, call one function of moola_ops/moola_core, render, exit.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

import invoke
from invoke.exceptions import Exit

from moola_core.errors import MoolaError
from moola_ops import terminal as termsafe


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


def _exit_quietly_on_a_closed_pipe() -> None:
    """`invoke deploy -h | head -3`: Invoke printed the help, `head` left; the interpreter's
    last flush of stdout would fail with a BrokenPipeError traceback. atexit runs before it."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _closed_pipe_hook(kind, value, tb, _previous=sys.excepthook) -> None:
    """A BrokenPipeError that reached the top (Invoke printing help into `| head -3`) ends
    the program quietly, as a reader that has read enough expects; anything else is reported
    by the previous hook."""
    if issubclass(kind, BrokenPipeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        os._exit(0)
    _previous(kind, value, tb)


atexit.register(_exit_quietly_on_a_closed_pipe)
sys.excepthook = _closed_pipe_hook

# --- settings: Invoke's configuration hierarchy, MOOLA_* environment variables win -----------

# invoke.yaml `moola:` key -> the environment variable the library reads (env wins when set)
ENV_SETTINGS = {
    "inventory": "MOOLA_INVENTORY",
    "log": "MOOLA_LOG",
    "log_max_mb": "MOOLA_LOG_MAX_MB",
    "log_keep": "MOOLA_LOG_KEEP",
    "actor": "MOOLA_ACTOR",
}


def apply_settings(config) -> None:
    """Export the `moola:` settings of Invoke's configuration (invoke.yaml, INVOKE_MOOLA_*,
    `invoke -f FILE`) as MOOLA_* variables, unless the environment already sets them."""
    section = _section(config, "moola")
    for key, env in ENV_SETTINGS.items():
        value = section.get(key)
        if value not in (None, "") and not os.environ.get(env):
            os.environ[env] = str(value)


def _section(config, name: str) -> dict:
    try:
        value = config.get(name) if config is not None else None
    except Exception:  # a config object without .get
        value = None
    return dict(value) if value else {}


def setting(c, dotted: str, default: Any = None) -> Any:
    """A value from Invoke's configuration ("healthcheck.timeout"), or `default` when unset.

    `c` is a task's context or an `invoke.Config` (None: nothing configured)."""
    section, _, key = dotted.partition(".")
    config = c.config if isinstance(c, invoke.Context) else c  # a task's context or a Config
    value = _section(config, section).get(key)
    return default if value in (None, "") else value


# --- flags: numbers parsed here, so a bad value is one sentence ----------------------------


def number(value: Any, flag: str, *, whole: bool = False) -> int | float:
    """`value` of `flag` as a number (a whole one with `whole`), else a MoolaError sentence."""
    if isinstance(value, bool):
        raise MoolaError(f"{flag} needs a value")
    try:
        return int(str(value).strip()) if whole else float(str(value).strip())
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise MoolaError(f"{flag} takes {kind}, not {value!r}; see `invoke -h TASK`.") from None


def whole_number(value: Any, flag: str) -> int:
    """`number(value, flag, whole=True)`."""
    return int(number(value, flag, whole=True))


HELP_WORDS = ("-h", "--help")


def show_task_help(name: str) -> None:
    """`invoke TASK -h` for a task with a positional argument (serve, shadow): Invoke hands
    the `-h` to the positional, so print what `invoke --help TASK` prints, then stop."""
    import subprocess

    argv, core = sys.argv[1:], []
    for i, arg in enumerate(argv[:-1]):
        if arg in ("-r", "--search-root", "-c", "--collection"):
            core += [arg, argv[i + 1]]
    code = subprocess.call([sys.executable, "-m", "invoke", *core, "--help", name])
    raise Exit(code=code)


# --- Invoke's --dry: every task says what it does with it (see `task`) -------------------------

PLAN = "plan"  # --dry is the task's own --plan: what would happen, read from the hosts
READS = "reads"  # the task changes nothing anywhere (hosts, local files, the log): it runs


def dry_refusal(policy, kw: dict) -> str | None:
    """The sentence that refuses `invoke --dry TASK` with these flags, or None when the task
    honours --dry (PLAN, READS, or a callable policy that found nothing to refuse)."""
    if policy in (PLAN, READS):
        return None
    sentence = policy(kw) if callable(policy) else policy
    return f"--dry: {sentence}; nothing was done" if sentence else None


# --- Nagios tasks: a usage error is UNKNOWN (3) with a status line, as for the plugin ---------

UNKNOWN = 3
NAGIOS_TASKS: dict[str, str] = {}  # Invoke task name -> the status line's prefix


def nagios_unknown(prefix: str, message: str) -> Exit:
    """Print the plugin's UNKNOWN status line on stdout; the Exit that ends with 3."""
    print(f"{prefix} UNKNOWN - {' '.join(str(message).split())}", flush=True)
    return Exit(code=UNKNOWN)


def _nagios_parse_errors(program) -> None:
    """Invoke's parser ends `invoke healthcheck --bad-flag` with exit 1; Nagios reads 1 as
    WARNING. Wrap this Program's task parsing so that a ParseError raised inside a Nagios
    task's flags is that task's UNKNOWN status line and exit 3; every other task's parse
    errors, and Invoke itself, are untouched. (Invoke offers no hook for this: the Program
    maps ParseError to 1 in `run`, and the parser raises it from the task's context.)"""
    if getattr(program.parse_tasks, "moola_nagios", False):
        return
    from invoke.exceptions import ParseError

    parse_tasks = program.parse_tasks

    def parse_nagios_aware() -> None:
        try:
            parse_tasks()
        except ParseError as exc:
            name = getattr(getattr(exc, "context", None), "name", None)
            if name not in NAGIOS_TASKS:
                raise
            import re

            # "Flag <Argument: timeout> needed value ..." is Invoke's wording for `--timeout`
            said = re.sub(
                r"Flag <Argument: (\w+)> needed value and was not given one!",
                lambda m: f"--{m.group(1).replace('_', '-')} needs a value",
                str(exc),
            )
            raise nagios_unknown(
                NAGIOS_TASKS[name], f"invoke {name}: {said} (see invoke -h {name})"
            ) from None

    parse_nagios_aware.moola_nagios = True
    program.parse_tasks = parse_nagios_aware


def _watch_invoke_parsing() -> None:
    """Apply `_nagios_parse_errors` to the Program of the `invoke` command when this process
    is one (tasks.py is loaded before the task flags are parsed)."""
    main = sys.modules.get("invoke.main")
    if main is not None and hasattr(main, "program"):
        _nagios_parse_errors(main.program)


def task(*args, dry=None, nagios: str = "", **kwargs):
    """`invoke.task` as Invoke documents it, with Moola's conventions for every task:

    - no automatic short flags (`auto_shortflags=False`): one letter meant different things in
      different tasks; the long names are the interface (`-h` stays help);
    - flags without a default are required flags, never positionals (`positional=[]`), so
      `invoke deploy -h` shows help; a missing one is named in one sentence;
    - number flags are read as text and converted here, so `--timeout abc` is one sentence
      and exit 1 instead of a traceback (the health check converts its own: UNKNOWN, 3);
    - the `moola:` settings of Invoke's configuration are applied first (see apply_settings);
    - `dry` says what Invoke's `--dry` does: PLAN (the task's `plan` flag is set: it says what
      would happen, from the hosts' facts), READS (the task changes nothing, it runs as asked),
      or the sentence that refuses it and names what to use instead (a callable: gets the
      flags, returns that sentence or None). A task that does not say is refused under --dry
      (safe by default) and fails tests/integration/test_dry_run.py, which runs every task of
      `invoke --list` with --dry;
    - `nagios` (the status line's prefix, e.g. "MOOLA"): a Nagios plugin task; its usage
      errors, Invoke's parse errors included, are an UNKNOWN status line and exit 3.
    """
    kwargs.setdefault("auto_shortflags", False)
    kwargs.setdefault("positional", [])

    def decorate(body: Callable) -> invoke.Task:
        signature = inspect.signature(body)
        params = list(signature.parameters.values())[1:]  # after the context
        if dry == PLAN and "plan" not in signature.parameters:
            raise TypeError(f"{body.__name__}: dry=PLAN needs a `plan` flag")
        required = [
            p.name
            for p in params
            if p.default is inspect.Parameter.empty and p.name not in kwargs["positional"]
        ]
        numbers = {p.name: type(p.default) for p in params if type(p.default) in (int, float)}
        kwargs.setdefault("optional", required)  # `--by` with no value is named below
        name = kwargs.get("name") or body.__name__.replace("_", "-")

        def usage_error(message: str) -> Exit:
            if nagios:
                return nagios_unknown(nagios, message.removeprefix("error: "))
            return Exit(message, 1)

        @functools.wraps(body)
        def run(c, *a, **kw):
            apply_settings(getattr(c, "config", None))
            if any(kw.get(n) in HELP_WORDS for n in kwargs["positional"]):
                show_task_help(name)
            missing = [n for n in required if kw.get(n) is None]
            if missing:
                flags = ", ".join("--" + n.replace("_", "-") for n in missing)
                verb = "is" if len(missing) == 1 else "are"
                raise usage_error(
                    f"error: {flags} {verb} required (add -h after the task for its flags)"
                )
            for n in required:
                if kw.get(n) is True:
                    raise usage_error(f"error: --{n.replace('_', '-')} needs a value")
            try:
                for n, kind in numbers.items():
                    if n in kw and not isinstance(kw[n], kind):
                        kw[n] = number(kw[n], "--" + n.replace("_", "-"), whole=kind is int)
            except MoolaError as exc:
                raise usage_error(f"error: {exc}") from None
            if _dry(c):
                refusal = dry_refusal(
                    dry or f"{name} has no dry run; `invoke -h {name}` says what it does", kw
                )
                if refusal:
                    raise usage_error(f"error: {refusal}")
                from moola_ops.hosts.runpod.cache import leave_cache_alone

                leave_cache_alone()  # pods are still looked up; the cache file stays as it is
                if dry == PLAN:
                    kw["plan"] = True
            try:  # text from hosts never drives the terminal (moola_ops/terminal.py)
                with termsafe.guarded_streams():
                    return body(c, *a, **kw)
            except Exit as stop:  # Invoke prints its message after the streams are restored
                if stop.message:
                    stop.message = termsafe.printable(stop.message)
                raise

        run.dry_policy = dry  # tests read it (None: not declared, refused under --dry)
        # Invoke reads flags from the signature: number flags are text here (converted above)
        run.__signature__ = signature.replace(
            parameters=[
                p.replace(default=str(p.default)) if p.name in numbers else p
                for p in signature.parameters.values()
            ]
        )
        helps = kwargs.get("help") or {}
        for n in required:
            if helps.get(n) and not helps[n].endswith("(required)"):
                helps[n] = f"{helps[n]} (required)"
        for n, kind in numbers.items():
            text = helps.get(n, "")
            word = "WHOLE NUMBER" if kind is int else "NUMBER"
            if text and not text.startswith(word):
                helps[n] = f"{word}: {text}"
        if nagios:
            NAGIOS_TASKS[name] = nagios
            _watch_invoke_parsing()
        return invoke.task(*args, **kwargs)(run)

    return decorate


def _dry(c) -> bool:
    """Invoke's `--dry` (config run.dry) for this task's context."""
    try:
        return bool(c.config.run.dry)
    except AttributeError:  # a bare context in a test
        return False

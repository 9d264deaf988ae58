"""`invoke healthcheck` and `moola-healthcheck`: the cron check of phase 8, a Nagios plugin that
also speaks JSON and Prometheus.

Cron-critical: this module and everything it imports stay free of torch, numpy and pandas, it
needs no TTY and no environment beyond PATH, and the whole run ends within --timeout. Every
failure to even run a check (a bad flag value, an unknown host, a broken inventory, a bug) is
Nagios UNKNOWN, exit 3, with one status line.

`moola-healthcheck` (installed with the package) is the same check with the usual plugin flags
(-H, -w, -c, -t), usable from any directory: it runs in the Moola checkout it was installed
from (or $MOOLA_HOME) when the current directory has no inventory.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from invoke.exceptions import Exit

from moola_ops.cli._common import apply_settings, number, setting, task, whole_number
from moola_ops.hosts.runpod import REFRESH_HELP
from moola_ops.terminal import console, guarded_streams, is_tty, print_json

FAST_TIMEOUT_S = 30.0
DEEP_TIMEOUT_S = 300.0
DEFAULT_PARALLEL = 16
UNKNOWN = 3
THRESHOLD_HELP = (
    "Nagios ranges for {what}: FIGURE=RANGE, comma separated, FIGURE one of p99_ms, free_gib, "
    "lock_min (a bare RANGE is p99_ms), e.g. p99_ms=40,free_gib=5: (default: invoke.yaml "
    "healthcheck.{key}, then the host's inventory `{key}:`, then built-in; docs/healthcheck.md)"
)


def _long_output(run) -> list[str]:
    """Nagios long output: one line per host and check after the status line."""
    from moola_ops.watch.health import STATE_NAMES

    lines = []
    for h in run.hosts:
        lines.append(f"{h.host}: {STATE_NAMES[h.state]} ({h.duration_s:.2f} s)")
        for c in h.checks:
            lines.append(f"  {STATE_NAMES[c.state]:<8} {c.name}: {c.message}")
    return lines


def _render_tty(run) -> None:
    from rich.table import Table

    from moola_ops.watch.health import STATE_NAMES
    from moola_ops.watch.health_output import status_line

    colour = {"OK": "green", "WARNING": "yellow", "CRITICAL": "red", "UNKNOWN": "magenta"}
    out = console()
    # the status without its perfdata: the table below shows the same figures for a person
    out.print(status_line(run).split(" | ", 1)[0], markup=False)
    table = Table("host", "state", "check", "message")
    for h in run.hosts:
        for i, c in enumerate(h.checks):
            name = STATE_NAMES[c.state]
            table.add_row(h.host if i == 0 else "", f"[{colour[name]}]{name}[/]", c.name, c.message)
    out.print(table)


def _unknown(message: str, as_json: bool) -> int:
    line = f"MOOLA UNKNOWN - {' '.join(str(message).split())}"
    if as_json:
        print_json({"state": "UNKNOWN", "exit_code": UNKNOWN, "status_line": line})
    else:
        print(line, flush=True)
    return UNKNOWN


def check(
    *,
    host: str = "",
    group: str = "",
    deep: bool = False,
    as_json: bool = False,
    prom: str = "",
    timeout: float = 0.0,
    inventory: str = "",
    parallel: int = 0,
    warning: str = "",
    critical: str = "",
    config=None,
    refresh: bool = False,
    record: bool = True,
) -> int:
    """Run the check, print the result as a Nagios plugin does, return the exit code
    (`record=False`: nothing goes to the deployment log, for Invoke's --dry)."""
    from moola_core.errors import MoolaError

    try:
        # text from the task's flags: a bad value is UNKNOWN with a status line, like any other
        timeout = number(timeout or 0, "--timeout")
        parallel = whole_number(parallel or 0, "--parallel")
        from moola_ops.hosts.runpod import refresh_cache
        from moola_ops.nagios import parse_thresholds
        from moola_ops.progress import show
        from moola_ops.watch.health import HealthPolicy
        from moola_ops.watch.health_run import run_healthcheck

        refresh_cache(refresh)  # runpod_pod_id hosts: the first look-up asks the API

        limit = float(timeout) or float(
            setting(
                config,
                "healthcheck.deep_timeout" if deep else "healthcheck.timeout",
                DEEP_TIMEOUT_S if deep else FAST_TIMEOUT_S,
            )
        )
        parallel = int(parallel) or int(setting(config, "healthcheck.parallel", DEFAULT_PARALLEL))
        policy = HealthPolicy(
            warning=parse_thresholds(
                warning or setting(config, "healthcheck.warning", ""), "--warning"
            ),
            critical=parse_thresholds(
                critical or setting(config, "healthcheck.critical", ""), "--critical"
            ),
        )
        selection = ",".join(s for s in (host, group) if s)  # both given: every host of either
        # a Nagios plugin prints only its status: progress is for a person at a terminal
        with show("healthcheck --deep" if deep else "healthcheck", plain=False):
            run = run_healthcheck(
                selection or None,
                deep=deep,
                timeout_s=limit,
                policy=policy,
                inventory_path=inventory or None,
                parallel=parallel,
                record=record,
                requests=record,  # --dry: nothing recorded, nothing sent to the live service
            )
    except MoolaError as exc:  # the plugin itself could not run (unknown host, bad inventory)
        return _unknown(str(exc), as_json)
    except (ValueError, TypeError) as exc:  # a bad setting in invoke.yaml
        return _unknown(f"bad healthcheck setting: {exc}", as_json)
    except Exception as exc:  # a bug must still be an UNKNOWN status line, not a WARNING
        return _unknown(f"the check could not run: {type(exc).__name__}: {exc}", as_json)
    return _report(run, as_json=as_json, prom=prom)


def _report(run, *, as_json: bool, prom: str) -> int:
    from moola_ops.watch.health import worst
    from moola_ops.watch.health_output import document, prometheus_text, status_line
    from moola_ops.watch.health_output import write_textfile as write_prom

    code = run.state
    if prom:
        try:
            write_prom(prom, prometheus_text(run))
        except OSError as exc:  # the checks ran; their result still counts, plus UNKNOWN
            print(f"cannot write --prom {prom}: {exc.strerror or exc}", file=sys.stderr)
            code = worst([code, UNKNOWN])
    try:
        if as_json:
            print_json(document(run))
        elif is_tty():
            _render_tty(run)
        else:
            print(status_line(run))
            print("\n".join(_long_output(run)), flush=True)
    except BrokenPipeError:  # `| head -1` read the status line and left: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return code


@task(
    help={
        "host": "inventory host names, groups or globs (local-*), comma separated "
        "(default: every host in the inventory)",
        "group": "inventory groups, comma separated; with --host, the hosts of both are checked",
        "deep": "also run the model check through `current` (daily): load, golden, latency",
        "json": "print one JSON document instead of the status line",
        "prom": "also write a Prometheus textfile-collector file here (atomic rename)",
        "timeout": "NUMBER: seconds the whole run may take; a host not done by then is CRITICAL "
        f"(0, the default: invoke.yaml healthcheck.timeout, else {FAST_TIMEOUT_S:g}; with "
        f"--deep healthcheck.deep_timeout, else {DEEP_TIMEOUT_S:g})",
        "inventory": "inventory file (default inventory/hosts.yaml or env MOOLA_INVENTORY)",
        "parallel": "WHOLE NUMBER: hosts checked at once (0, the default: invoke.yaml healthcheck.parallel, "
        f"else {DEFAULT_PARALLEL}; 1 checks one after another)",
        "warning": THRESHOLD_HELP.format(what="WARNING", key="warning"),
        "critical": THRESHOLD_HELP.format(what="CRITICAL", key="critical"),
        "refresh": REFRESH_HELP,
    },
    # --dry: the light check without a request to the live service; nothing recorded
    dry=lambda kw: (
        "--prom writes a file; `invoke --dry healthcheck` without it prints the same figures"
        if kw.get("prom")
        else "--deep loads the model and sends requests on each host; `invoke --dry "
        "healthcheck` without it reads the hosts"
        if kw.get("deep")
        else None
    ),
    nagios="MOOLA",
)
def healthcheck(
    c,
    host="",
    group="",
    deep=False,
    json=False,
    prom="",
    timeout="",
    inventory="",
    parallel="",
    warning="",
    critical="",
    refresh=False,
):
    """Check hosts in parallel; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios)."""
    code = check(
        host=host,
        group=group,
        deep=deep,
        as_json=json,
        prom=prom,
        timeout=timeout,
        inventory=inventory,
        parallel=parallel,
        warning=warning,
        critical=critical,
        config=c.config,
        refresh=refresh,
        record=not c.config.run.dry,
    )
    raise Exit(code=code)


# --- moola-healthcheck: the console script ---------------------------------------------------


class _PluginParser(argparse.ArgumentParser):
    """argparse whose usage errors are a Nagios UNKNOWN status line (exit 3), not exit 2."""

    def error(self, message: str):  # argparse's documented hook for usage errors
        print(f"MOOLA UNKNOWN - {self.prog}: {message} (see {self.prog} --help)", flush=True)
        raise SystemExit(UNKNOWN)


def project_home(cwd: Path | None = None) -> Path | None:
    """Where a cron run without `cd` should work: $MOOLA_HOME, else the checkout this package
    was installed from (editable install), unless the current directory has an inventory."""
    cwd = cwd or Path.cwd()
    if os.environ.get("MOOLA_HOME"):
        return Path(os.environ["MOOLA_HOME"])
    if (cwd / "inventory" / "hosts.yaml").exists():
        return None
    root = Path(__file__).resolve().parents[2]
    return root if (root / "tasks.py").is_file() and (root / "moola_ops").is_dir() else None


def _project_config(home: Path):
    """Invoke's configuration of the project (invoke.yaml beside tasks.py, INVOKE_* env)."""
    from invoke import Config

    config = Config(project_location=str(home))
    config.load_project()
    config.load_shell_env()
    return config


@guarded_streams()  # a host's escape sequences never reach the terminal (moola_ops/terminal.py)
def main(argv: list[str] | None = None) -> int:
    """`moola-healthcheck [-H HOSTS] [-w W] [-c C] [-t S] [--deep] ...`; returns the exit code."""
    parser = _PluginParser(
        prog="moola-healthcheck",
        description="Moola's health check as a Nagios plugin: exit 0 OK, 1 WARNING, "
        "2 CRITICAL, 3 UNKNOWN. Same check as `invoke healthcheck`, from any directory.",
    )
    parser.add_argument(
        "-H",
        "--host",
        default="",
        help="host names, groups or globs, comma separated (default: every host)",
    )
    parser.add_argument("-g", "--group", default="", help="inventory groups, comma separated")
    parser.add_argument("-w", "--warning", default="", help="warning ranges, e.g. p99_ms=40")
    parser.add_argument("-c", "--critical", default="", help="critical ranges, e.g. free_gib=1:")
    parser.add_argument(
        "-t",
        "--timeout",
        type=float,
        default=0.0,
        help="seconds the whole run may take (default 30, --deep 300)",
    )
    parser.add_argument("--deep", action="store_true", help="also run the model check")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--prom", default="", help="also write a Prometheus textfile here")
    parser.add_argument("--inventory", default="", help="inventory file")
    parser.add_argument("--parallel", type=int, default=0, help="hosts checked at once")
    parser.add_argument("--refresh", action="store_true", help=REFRESH_HELP)
    args = parser.parse_args(argv)
    # paths given relative to where cron started us, before we move to the project
    prom = str(Path(args.prom).absolute()) if args.prom else ""
    inventory = str(Path(args.inventory).absolute()) if args.inventory else ""
    config = None
    try:
        home = project_home()
        if home is not None:
            os.chdir(home)
            config = _project_config(home)
            apply_settings(config)
    except Exception as exc:
        return _unknown(f"cannot use the Moola project: {exc}", args.json)
    return check(
        host=args.host,
        group=args.group,
        deep=args.deep,
        as_json=args.json,
        prom=prom,
        timeout=args.timeout,
        inventory=inventory,
        parallel=args.parallel,
        warning=args.warning,
        critical=args.critical,
        config=config,
        refresh=args.refresh,
    )


def console_main() -> None:
    """The console script's entry point (pyproject [project.scripts])."""
    raise SystemExit(main())


EXPORTS = [healthcheck]

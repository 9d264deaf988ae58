"""`python -m moola_core.runtime check --release DIR [--json]`: check a release on this host;
`python -m moola_core.runtime serve --release DIR --port P`: serve it (docs/serving.md).

Prints one JSON document with --json (nothing else on stdout), a short text otherwise. Exit 0
when every check passes, 1 when one fails, 2 when the check could not run.
"""

from __future__ import annotations

import argparse
import sys

# The release is immutable once verified: write no byte-code caches into it (set before the
# rest of the runtime is imported; PYTHONDONTWRITEBYTECODE=1 also covers the two packages
# Python imports before this file runs).
sys.dont_write_bytecode = True

from moola_core.runtime.backends import BACKEND_NAMES  # noqa: E402 - after the flag
from moola_core.runtime.check import DEFAULT_RUNS, DEFAULT_WARMUP, run_check  # noqa: E402
from moola_core.runtime.report import EXIT_ERROR  # noqa: E402
from moola_core.runtime.serve import add_parser as add_serve_parser  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m moola_core.runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="verify, load, compare golden outputs, time a release")
    check.add_argument("--release", required=True, help="extracted bundle folder")
    check.add_argument("--json", action="store_true", help="print the JSON report")
    check.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    check.add_argument("--backend", default="auto", choices=("auto", *BACKEND_NAMES))
    check.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="timed single-window runs")
    check.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="untimed runs first")
    check.add_argument("--sla-p99-ms", type=float, default=None, help="override manifest SLA")
    add_serve_parser(sub)
    return parser


def _text(report) -> str:
    lines = [f"{report.status.upper()}: {report.summary}"]
    for check in report.checks:
        lines.append(f"  [{'ok' if check.ok else 'FAIL'}] {check.name}: {check.detail}")
    for backend in report.backends:
        mark = "*" if backend.chosen else " "
        p50 = "-"
        if backend.trial_p50_ms is not None:
            p50 = f"{backend.trial_p50_ms:.3f} ms on {backend.threads} thread(s)"
        lines.append(f"  {mark} backend {backend.name}: {p50}; {backend.detail}")
    if report.device:
        lines.append(f"  device {report.device.device} ({report.device.device_name})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)  # usage errors exit 2 ("could not run") via argparse
    if args.command == "serve":
        from moola_core.runtime.serve import serve

        return serve(args)
    report = run_check(
        args.release,
        device=args.device,
        backend=args.backend,
        runs=args.runs,
        warmup=args.warmup,
        sla_p99_ms=args.sla_p99_ms,
    )
    print(report.to_json() if args.json else _text(report), flush=True)
    return report.exit_code if report.exit_code in (0, 1) else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

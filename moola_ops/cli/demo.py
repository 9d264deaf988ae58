"""`invoke demo`: the whole checklist end to end on two local stand-in hosts
(moola_ops/demo/walk.py holds the stages)."""

from __future__ import annotations

import time

from invoke.exceptions import Exit

from moola_ops.cli._common import task, user_errors
from moola_ops.demo import DEMO_ROOT
from moola_ops.terminal import print_json


@task(
    help={
        "root": f"folder for everything the demo makes (default {DEMO_ROOT}; wiped first)",
        "keep": "leave the demo's stand-in hosts running afterwards (stop: invoke sandbox down "
        f"--root {DEMO_ROOT}/sandbox)",
        "json": "print a JSON summary of the stages at the end",
    },
    dry="demo starts its own stand-in hosts and writes under --root; `invoke demo` without --dry "
    "touches nothing else",
)
@user_errors
def demo(c, root=DEMO_ROOT, keep=False, json=False):
    """The whole checklist end to end on two local stand-in hosts (about two minutes)."""
    from moola_ops.demo.walk import run_demo, say

    started = time.monotonic()
    run = run_demo(root, keep=keep)
    total = time.monotonic() - started
    if json:
        print_json(
            {
                "ok": run.ok,
                "seconds": round(total, 1),
                "error": run.error,
                "stages": [s.__dict__ for s in run.stages],
            }
        )
    say(
        f"\n{'demo passed' if run.ok else 'demo FAILED'} in {total:.0f} s "
        f"({len(run.stages)} stages); everything it made is in {root}"
    )
    if run.facts.get("report"):
        say(f"report: {run.facts['report']}")
    if not run.ok:
        raise Exit(f"error: {run.error}", code=1)


EXPORTS = [demo]

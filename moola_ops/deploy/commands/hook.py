"""The command line of an inventory hook that runs on the host (moola_ops/deploy/hooks.py)."""

from __future__ import annotations

import shlex

from moola_ops.hosts.layout import Layout

KILL_AFTER_S = 5  # a hook that ignores TERM at its timeout gets KILL this much later


def on_host(layout: Layout, run: str, timeout_s: float, env: dict[str, str]) -> str:
    """`run` in the workspace, with the MOOLA_* variables `env`, under the host's own `timeout`
    (TERM, KILL KILL_AFTER_S later; exit 124 when it ran out)."""
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    seconds = max(1, int(round(timeout_s)))
    return (
        f"cd {layout.root} && {exports} "
        f"timeout -k {KILL_AFTER_S} {seconds} sh -c {shlex.quote(run)}"
    )

"""How long one Ctrl-C takes to end a deploy, with every host reachable and with one cut.

    python benchmarks/dead_host.py [--rounds 2]

Four real OpenSSH stand-in hosts on 127.0.0.1 deploy v1.1 over v1.0 through `invoke deploy
--no-serve`. Each host's runtime check is a stand-in that flags that it started and then runs
on, so the Ctrl-C always lands mid-check. Per round, alternating:

- baseline: all four reachable; SIGINT once every check runs;
- cut: the same, after one host's sshd (listener and sessions) was stopped with SIGSTOP once its
  check started (a cut link: connections stay up, nothing answers).

The figure is the wall time from SIGINT to the end of `invoke deploy` (exit 130), measured here.
The last line printed is a JSON object (with commit, library versions and machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from moola_ops import deploy as engine  # noqa: E402
from moola_ops.hosts.inventory import Inventory  # noqa: E402
from moola_ops.hosts.standin import start_sandbox  # noqa: E402
from tests.integration.conftest import make_bundle  # noqa: E402
from tests.integration.helpers import interrupt_mid_check  # noqa: E402

NAMES = ["bh-1", "bh-2", "bh-3", "bh-4"]
CUT = "bh-3"
SLOW = "987.75"
FAST = engine.Options(check_runs=3, check_warmup=1, check_backend="eager", serve=False)


def one_interrupt(sandbox, inventory, bundles, root: Path, cut: bool) -> dict:
    """Deploy v1.0 (so the run has somewhere to go back to), then interrupt a deploy of v1.1."""

    hosts = inventory.resolve(",".join(NAMES))
    for host in hosts:  # a previous round's cut host may still hold its lock
        engine.break_lock(host)
    result = engine.deploy(hosts, engine.resolve_bundle(str(bundles["v1.0"])), FAST)
    if not result.ok:
        raise SystemExit(f"the set-up deploy failed: {result.outcomes}")
    code, out, err, seconds = interrupt_mid_check(
        hosts,
        sandbox,
        root,
        bundles["v1.1"],
        cut=CUT if cut else None,
        sleep_arg=SLOW,
        env=dict(os.environ),
    )
    if code != 130:
        raise SystemExit(f"invoke deploy exited {code}: {out}\n{err}")
    if cut:  # what the cut run left: the next round starts clean
        (host,) = inventory.resolve(CUT)
        engine.break_lock(host)
        engine.prune([host], FAST)
    return {"seconds": round(seconds, 2), "said": out.strip().splitlines()[1:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="moola-bench-dead-"))
    root.chmod(0o755)
    os.environ["MOOLA_LOG"] = str(root / "deployments.jsonl")  # never the project's own log
    sandbox = start_sandbox(root / "hosts", NAMES)
    try:
        inventory = Inventory.from_sandbox(sandbox, connect_timeout_s=5)
        bundles = {v: make_bundle(root, v, seed=i) for i, v in enumerate(("v1.0", "v1.1"))}
        baseline, cut, said = [], [], []
        for _ in range(args.rounds):
            baseline.append(one_interrupt(sandbox, inventory, bundles, root, False)["seconds"])
            measured = one_interrupt(sandbox, inventory, bundles, root, True)
            cut.append(measured["seconds"])
            said = measured["said"]
    finally:
        sandbox.stop()
        shutil.rmtree(root, ignore_errors=True)

    import paramiko

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    load = os.getloadavg()[0]
    print("\n".join(said))
    result = {
        "benchmark": "dead_host",
        "rounds": args.rounds,
        "ctrl_c_to_exit_all_reachable_s": baseline,
        "ctrl_c_to_exit_one_cut_s": cut,
        "median_all_reachable_s": statistics.median(baseline),
        "median_one_cut_s": statistics.median(cut),
        "commit": commit,
        "paramiko": paramiko.__version__,
        "openssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, load {load:.1f}",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

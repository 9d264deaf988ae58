"""How long `invoke rollback` takes, end to end, on one stand-in host and on a fleet of four.

    python benchmarks/fleet_rollback.py [--rounds 3]

docs/benchmarks/serving.md measures how soon the previous release *answers* after `invoke
rollback` (its warm standby takes the traffic right after the switch). The command itself goes
on: rollback always runs the full runtime check (model load, golden outputs, latency) through
`current` after the switch, and on a fleet every host does so at once. This measures that
wall time as a user sees it, with the defaults a user gets (serving on, the runtime check's own
default number of runs), on real OpenSSH stand-in hosts sharing this machine's cores, and per
host when the switch was done (from the deployment log).

Per round: `invoke rollback` on one host, then on the fleet of four (alternating back and
forth between two releases of the default-size JadeModel, hidden=128). The last line is JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from moola_ops import deploy as engine  # noqa: E402
from moola_ops.hosts.inventory import Inventory  # noqa: E402
from moola_ops.log.journal import read_events  # noqa: E402
from tests.integration.conftest import make_bundle, start_hosts  # noqa: E402
from tests.integration.helpers import write_inventory  # noqa: E402

MODEL = {"hidden": 128}
NAMES = ["fr-1", "fr-2", "fr-3", "fr-4"]
SOLO = "fr-0"


def invoke_rollback(hosts: str, to: str, inventory: Path) -> tuple[float, str]:
    """Wall seconds of `invoke rollback --host HOSTS --to TO` and its deployment id."""
    invoke = str(Path(sys.executable).parent / "invoke")
    args = [invoke, "rollback", "--host", hosts, "--to", to, "--inventory", str(inventory)]
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"invoke rollback failed: {proc.stdout}\n{proc.stderr}")
    deployment = proc.stdout.strip().splitlines()[-1].split()[1].rstrip(":")
    return seconds, deployment


def switched_after(deployment: str) -> list[float]:
    """Per host: seconds from the run's open line to its `switch` step's end."""
    events = read_events(deployment=deployment)
    opened = next(e for e in events if e["step"] == "open")
    start = dt.datetime.fromisoformat(opened["time"].replace("Z", "+00:00"))
    out = []
    for e in events:
        if e["step"] == "switch" and e["status"] == "ok":
            end = dt.datetime.fromisoformat(e["time"].replace("Z", "+00:00"))
            out.append(round((end - start).total_seconds(), 2))
    return sorted(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="moola-bench-fleet-rb-"))
    os.environ["MOOLA_LOG"] = str(work / "deployments.jsonl")
    bundles = {
        v: make_bundle(work, v, seed=i, model_config=MODEL) for i, v in enumerate(("v1", "v2"))
    }
    sandbox, root = start_hosts([SOLO, *NAMES])
    solo_s, fleet_s, switched = [], [], []
    try:
        inventory = Inventory.from_sandbox(sandbox)
        hosts = inventory.resolve(",".join([SOLO, *NAMES]))
        inventory_file = write_inventory(work / "hosts.yaml", {h.name: h for h in hosts})
        for version in ("v1", "v2"):  # serving on, the runtime check's default runs
            result = engine.deploy(hosts, engine.resolve_bundle(str(bundles[version])))
            if not result.ok:
                raise SystemExit(f"set-up deploy failed: {result.outcomes}")
        to = "v1"
        for _ in range(args.rounds):
            seconds, _ = invoke_rollback(SOLO, to, inventory_file)
            solo_s.append(round(seconds, 2))
            seconds, deployment = invoke_rollback(",".join(NAMES), to, inventory_file)
            fleet_s.append(round(seconds, 2))
            switched.append(switched_after(deployment))
            to = "v2" if to == "v1" else "v1"
    finally:
        sandbox.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    import paramiko
    import torch

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "benchmark": "fleet_rollback",
        "rounds": args.rounds,
        "one_host_rollback_s": solo_s,
        "four_host_rollback_s": fleet_s,
        "four_host_switch_done_after_s": switched,
        "one_host_median_s": statistics.median(solo_s),
        "four_host_median_s": statistics.median(fleet_s),
        "four_host_range_s": [min(fleet_s), max(fleet_s)],
        "commit": commit,
        "torch": torch.__version__,
        "paramiko": paramiko.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "load_after": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

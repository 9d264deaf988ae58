"""The deploy engine against stand-in hosts on 127.0.0.1, compared with a hand-written baseline.

    python benchmarks/deploy.py [--rounds 3] [--check-runs 50] [--out docs/benchmarks/deploy.md]

Measured in one run, on real OpenSSH servers (moola_ops.hosts.standin) sharing this machine:
- deploy: `engine.deploy` of a new version of a real bundle (the default JadeModel with
  hidden=128, random weights): lock, facts, upload, remote verify, runtime check, snapshot,
  atomic switch, check through current, prune, unlock, every step in the deployment log;
- baseline: the same transfer, extraction, runtime check and switch by hand with plain
  `scp` and `ssh` (four commands, as a person would type them);
  deploy and baseline alternate, `--rounds` times each, medians compared;
- a redeploy of the current version (no-op), a rollback (including its runtime check);
- a deploy to 8 hosts one after another vs the same 8 in parallel.
Both sides run the same runtime check (`--runs`, `--warmup` alike). These figures deploy files
only (`serve=False`, as `invoke deploy --no-serve`), because the baseline starts no server:
like for like. Then, as figures of their own, two deploys that also start the release's server
and move traffic on a host of their own, alternating with the files-only deploys
(`serve_deploy_vs_files_deploy`, target <= 1.2), rollbacks to the warm standby timed from the
log's lock to its unlock (`serve_rollback_s`, target <= 1.0), and the model loads each made on
the host (its WORKSPACE/model-loads.jsonl). benchmarks/serving.py measures serving itself.
The last line is JSON.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moola_core.runtime import loads  # noqa: E402
from moola_ops import deploy as engine  # noqa: E402
from moola_ops.hosts.inventory import Inventory  # noqa: E402

# the sandbox + remote python, and real bundles of a random model
from tests.integration.conftest import make_bundle, start_hosts  # noqa: E402

MODEL = {"hidden": 128}  # the default JadeModel size: the archive size is what matters here


def baseline(sandbox, name: str, archive: Path, version: str, args) -> float:
    """Seconds for scp + ssh extract + ssh runtime check + ssh switch, each its own command."""
    host = sandbox.hosts[name]
    ssh = ["ssh", "-F", str(sandbox.ssh_config_path), "-o", "BatchMode=yes", name]
    ws = host.workspace
    rel = f"{ws}/releases/{version}"
    started = time.perf_counter()
    subprocess.run(
        [
            "scp",
            "-q",
            "-F",
            str(sandbox.ssh_config_path),
            str(archive),
            f"{name}:{ws}/{archive.name}",
        ],
        check=True,
    )
    subprocess.run(
        ssh + [f"mkdir -p {rel} && tar -xzf {ws}/{archive.name} -C {rel} --strip-components=1"],
        check=True,
    )
    subprocess.run(
        ssh
        + [
            f"cd {rel} && PYTHONPATH={rel}/code {host.python} -m moola_core.runtime "
            f"check --release {rel} --json --runs {args.check_runs} --warmup "
            f"{args.check_warmup} --backend {args.check_backend}"
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        ssh + [f"cd {ws} && ln -sfn releases/{version} .current-tmp && mv -T .current-tmp current"],
        check=True,
    )
    return time.perf_counter() - started


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def must(result) -> None:
    if not result.ok:
        raise SystemExit(f"benchmark deploy failed: {[o.message for o in result.outcomes]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="deploy/baseline pairs (median)")
    parser.add_argument("--check-runs", type=int, default=50, help="runtime check timed runs")
    parser.add_argument("--check-warmup", type=int, default=5)
    parser.add_argument(
        "--check-backend",
        default="eager",
        help="runtime check backend on both sides (backend choice is benchmarks/runtime.py's)",
    )
    parser.add_argument("--out", default="docs/benchmarks/deploy.md")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (a rollback needs a previous release)")

    work = Path(tempfile.mkdtemp(prefix="moola-bench-deploy-"))
    os.environ["MOOLA_LOG"] = str(work / "deployments.jsonl")
    versions = [f"v2.{i}" for i in range(args.rounds)] + [f"v3.{i}" for i in range(4)]
    serve_versions = [f"v4.{i}" for i in range(args.rounds + 1)]  # the deploys that serve
    versions += serve_versions
    archives = {v: make_bundle(work, v, seed=i, model_config=MODEL) for i, v in enumerate(versions)}
    bundle_mb = archives[versions[0]].stat().st_size / 1e6
    names = [f"bench-{i}" for i in range(1, 9)]
    sandbox, root = start_hosts(names + ["base-1", "serve-1"])
    opts = engine.Options(
        check_runs=args.check_runs,
        check_warmup=args.check_warmup,
        check_backend=args.check_backend,
        serve=False,  # files only, like the baseline; serving is measured after
    )
    try:
        inventory = Inventory.from_sandbox(sandbox)
        (host,) = inventory.resolve("bench-1")
        (served,) = inventory.resolve("serve-1")
        serving = _with(opts, serve=True)
        # the first deploy that serves starts the host's proxy and supervisor: not measured
        must(engine.deploy([served], engine.resolve_bundle(str(archives["v4.0"])), serving))

        deploys, baselines, serve_deploys, serve_loads = [], [], [], []
        # alternate files-only deploy, baseline, deploy that serves: load falls on all alike
        for v, sv in zip(versions[: args.rounds], serve_versions[1:], strict=True):
            bundle = engine.resolve_bundle(str(archives[v]))
            seconds, result = timed(lambda b=bundle: engine.deploy([host], b, opts))
            must(result)
            steps = result.outcomes[0].steps
            deploys.append(seconds)
            baselines.append(baseline(sandbox, "base-1", archives[v], v, args))
            before = len(loads.read(served.workspace))
            seconds, result = timed(
                lambda sv=sv: engine.deploy(
                    [served], engine.resolve_bundle(str(archives[sv])), serving
                )
            )
            must(result)
            serve_deploys.append(seconds)
            serve_loads.append(len(loads.read(served.workspace)) - before)
        serve_steps = result.outcomes[0].steps

        # rollbacks to the warm standby: back, forward again (the release left is the standby
        # now), back; each one's lock to unlock from the deployment log
        serve_rollbacks, rollback_loads = [], []
        for to in (None, serve_versions[-1], None):
            before = len(loads.read(served.workspace))
            result = engine.rollback([served], to, serving)
            must(result)
            serve_rollbacks.append(lock_to_unlock_s(result.deployment))
            rollback_loads.append(len(loads.read(served.workspace)) - before)
        last = engine.resolve_bundle(str(archives[versions[args.rounds - 1]]))
        noops = []
        for _ in range(3):
            seconds, result = timed(lambda: engine.deploy([host], last, opts))
            assert result.outcomes[0].status == "noop", result.outcomes
            noops.append(seconds)
        rollbacks = []
        for _ in range(min(2, args.rounds - 1)):  # back one release, then one more (history pops)
            seconds, result = timed(lambda: engine.rollback([host], None, opts))
            must(result)
            rollbacks.append(seconds)

        fleet = inventory.resolve(names)
        serial, parallel = [], []
        # A-B-B-A: serial, parallel, parallel, serial, so drifting background load falls on both
        for v, bound in (("v3.0", 1), ("v3.1", 8), ("v3.2", 8), ("v3.3", 1)):
            seconds, result = timed(
                lambda v=v, b=bound: engine.deploy(
                    fleet, engine.resolve_bundle(str(archives[v])), _with(opts, parallel=b)
                )
            )
            must(result)
            (serial if bound == 1 else parallel).append(seconds)
    finally:
        sandbox.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    deploy_s, baseline_s = statistics.median(deploys), statistics.median(baselines)
    # each round's deploy and baseline ran back to back: their ratio cancels slow load drift
    paired = statistics.median(d / b for d, b in zip(deploys, baselines, strict=True))
    serial_s, parallel_s = sum(serial) / len(serial), sum(parallel) / len(parallel)
    figures = {
        "deploy_s": round(deploy_s, 3),
        "baseline_s": round(baseline_s, 3),
        "deploy_vs_baseline": round(paired, 3),
        "noop_redeploy_s": round(statistics.median(noops), 3),
        "rollback_s": round(statistics.median(rollbacks), 3),
        "fleet8_serial_s": round(serial_s, 3),
        "fleet8_parallel_s": round(parallel_s, 3),
        "fleet8_parallel_vs_serial": round(parallel_s / serial_s, 3),
        "serve_deploy_s": round(statistics.median(serve_deploys), 3),
        # each round's two deploys ran back to back: the median of their ratios
        "serve_deploy_vs_files_deploy": round(
            statistics.median(s / d for s, d in zip(serve_deploys, deploys, strict=True)), 3
        ),
        "serve_rollback_s": round(statistics.median(serve_rollbacks), 3),
        "model_loads_per_serve_deploy": serve_loads,
        "model_loads_per_warm_rollback": rollback_loads,
        "bundle_mb": round(bundle_mb, 3),
        "check_runs": args.check_runs,
    }
    raw = {
        "deploys": deploys,
        "baselines": baselines,
        "noops": noops,
        "rollbacks": rollbacks,
        "fleet_serial": serial,
        "fleet_parallel": parallel,
        "serve_deploys": serve_deploys,
        "serve_rollbacks_lock_to_unlock": serve_rollbacks,
    }
    write_report(Path(args.out), figures, raw, steps, args, serve_steps)
    print(json.dumps(figures))


def lock_to_unlock_s(deployment: str) -> float:
    """From the deployment log: the start of the run's `lock` step to the end of its `unlock`."""
    from moola_ops.log.journal import read_events

    events = read_events(os.environ["MOOLA_LOG"], deployment=deployment)

    def ended(event) -> float:
        return dt.datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()

    lock = next(e for e in events if e["step"] == "lock")
    unlock = [e for e in events if e["step"] == "unlock"][-1]
    return ended(unlock) - (ended(lock) - float(lock.get("duration_s") or 0.0))


def _with(opts: engine.Options, **changes) -> engine.Options:
    from dataclasses import replace

    return replace(opts, **changes)


def _commit() -> str:
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


def _torch_version() -> str:
    import torch

    return torch.__version__


def write_report(path, f, raw, steps, args, serve_steps) -> None:
    load = os.getloadavg()
    rows = "\n".join(f"| {k} | {v:.3f} s |" for k, v in steps.items())
    serve_rows = "\n".join(f"| {k} | {v:.3f} s |" for k, v in serve_steps.items())
    raw_text = ", ".join(f"{k} {[round(x, 2) for x in v]}" for k, v in raw.items())
    text = f"""# Deploy benchmark

Written by `python benchmarks/deploy.py --rounds {args.rounds} --check-runs {args.check_runs}
--check-backend {args.check_backend}` at commit {_commit()}, Python {platform.python_version()},
torch {_torch_version()},
on {dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}, {platform.machine()},
{os.cpu_count()} CPU cores, load average {load[0]:.1f} when it finished (other work shares
this machine; deploy and baseline alternate so that load falls on both alike). Every host is a
real OpenSSH server on 127.0.0.1 sharing those cores; each host's torch gets one OpenMP thread
(with torch's default of one per core, eight concurrent checks on two shared cores spin-wait on
each other and run hundreds of times slower; a real host has its own cores). Bundle: {f["bundle_mb"]:.2f} MB (JadeModel
hidden=128). Both sides run the same runtime check (`--runs {args.check_runs} --backend
{args.check_backend}`; how the runtime picks a backend is measured in benchmarks/runtime.py).

| figure | value | target |
|---|---|---|
| deploy (median of {len(raw["deploys"])}) | {f["deploy_s"]:.2f} s | |
| hand-written scp/ssh baseline (median of {len(raw["baselines"])}) | {f["baseline_s"]:.2f} s | |
| deploy / baseline (median of the per-round ratios) | {f["deploy_vs_baseline"]:.2f} | <= 1.3 |
| redeploy of the current version (no-op) | {f["noop_redeploy_s"]:.2f} s | <= 1 s |
| rollback, including its runtime check | {f["rollback_s"]:.2f} s | <= 3 s |
| 8 hosts one after another (mean of 2) | {f["fleet8_serial_s"]:.2f} s | |
| 8 hosts in parallel (mean of 2) | {f["fleet8_parallel_s"]:.2f} s | |
| parallel / serial | {f["fleet8_parallel_vs_serial"]:.2f} | <= 0.6 |
| deploy that also serves (its server is the check: start, readiness, HTTP check, traffic move; median of {len(raw["serve_deploys"])}, another host, alternating with the rows above) | {f["serve_deploy_s"]:.2f} s | |
| **serve_deploy_vs_files_deploy** (median of the per-round ratios) | **{f["serve_deploy_vs_files_deploy"]:.2f}** | <= 1.2 |
| **serve_rollback_s**: rollback that serves, to the warm standby, lock to unlock (median of {len(raw["serve_rollbacks_lock_to_unlock"])}) | **{f["serve_rollback_s"]:.2f} s** | <= 1.0 |
| model loads on the host per deploy that serves / per rollback to the warm standby (WORKSPACE/model-loads.jsonl) | {f["model_loads_per_serve_deploy"]} / {f["model_loads_per_warm_rollback"]} | 1 / 0 |

The first rows deploy files only (`serve=False`, `invoke deploy --no-serve`): the baseline
starts no server, so this is the like-for-like comparison; they run the runtime check (one
model load). The serving rows are the same engine with serving on (the default), on a host of
their own: the candidate server is the check (one model load, no runtime-check process), and a
rollback to the warm standby loads nothing. Serving's own figures (failed requests during a
deploy and a rollback, time to the first answer) are in serving.md.

Raw seconds, in the order measured: {raw_text}.
The fleet runs alternate serial, parallel, parallel, serial.

What the deploy does that the baseline does not: the lock and host facts, the sha256 check of
the upload and of every file before anything is promoted, the snapshot of the release being
left, the check through `current` after the switch, pruning, the host's revisions.log and one
deployment-log line per step. The runtime check (torch import, model load, golden outputs,
latency) dominates both sides on this machine.

Steps of the last measured deploy (files only):

| step | time |
|---|---|
{rows}

Steps of the last deploy that serves:

| step | time |
|---|---|
{serve_rows}
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    main()

"""Invoke's `--dry` on every task of `invoke --list`: it says what would happen, or refuses.

Issue #24: `invoke --dry serve stop` stopped the servers, `--dry shadow start` started a shadow,
`--dry promote` made a release live, `--dry accept` wrote sign-offs. Each task now declares what
`--dry` does (moola_ops/cli/_common.py `task(dry=...)`): its plan, a read that changes nothing,
or one sentence that refuses and names what to use instead.

The tasks are collected from the task tree itself, so a new task cannot escape: one without a
case below fails the test. They run as a user runs them (`invoke --dry ...` in a project folder
of their own) against a real stand-in host that serves a live release with a warm standby and
a shadow beside it, found through a stand-in RunPod API by its pod id. After every task the
host's workspace (every file, its bytes, mode and mtime), the project folder (inventory,
bundles, runs, data, the deployment log, the pod cache, known_hosts) and HOME are compared with
what they were before.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from moola_ops import deploy as engine
from moola_ops.hosts.inventory import load_inventory
from moola_ops.log.journal import read_events
from moola_ops.shadow import control as shadow
from tests.integration.conftest import start_hosts
from tests.integration.test_deploy_plan import tree
from tests.runpod_standin import StandInRunPod
from tests.unit.tiny_runs import make_tiny_run, tiny_config

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
POD = "drypod0000001"
HOST = "dry-1"

# expectations: "plan" (prints the plan, exit 0), "reads" (runs, changes nothing), "refused"
# (one sentence naming what to use instead, nothing done). {RUN}, {DEPLOYMENT}, {SNAPSHOT},
# {BUNDLE} and {DATA} are filled in from the fixture.
H = ["--host", HOST]
CASES: dict[str, list[tuple[list[str], str]]] = {
    "ab": [(["ab", *H], "refused")],
    "accept": [(["accept", "--deployment", "{DEPLOYMENT}", "--by", "tester"], "refused")],
    "backups": [(["backups", *H], "reads")],
    "checklist": [(["checklist"], "reads")],
    "compare": [(["compare"], "reads")],
    "demo": [(["demo", "--root", "demo"], "refused")],
    "deploy": [(["deploy", *H, "--bundle", "v1.2"], "plan")],
    "doctor": [(["doctor"], "reads")],
    "drill": [(["drill", *H], "plan")],
    "evaluate": [(["evaluate", "--run", "{RUN}"], "reads")],
    "healthcheck": [
        (["healthcheck", *H], "reads"),
        (["healthcheck", "--prom", "h.prom"], "refused"),
    ],
    "lock": [(["lock", *H], "reads"), (["lock", *H, "--break"], "refused")],
    "log": [(["log"], "reads")],
    "monitor": [(["monitor", *H], "refused")],
    "preflight": [(["preflight"], "refused")],
    "pretrain": [(["pretrain"], "refused")],
    "promote": [(["promote", *H], "plan")],
    "prune": [(["prune", *H, "--keep-releases", "0", "--keep-backups", "0"], "plan")],
    "report": [(["report"], "refused")],
    "restore": [(["restore", *H, "--snapshot", "{SNAPSHOT}"], "plan")],
    "rollback": [(["rollback", *H], "plan")],
    "sandbox": [(["sandbox", "up"], "refused"), (["sandbox", "status"], "reads")],
    "select": [(["select"], "refused")],
    "serve": [
        (["serve", "stop", *H], "refused"),
        (["serve", "restart", *H], "refused"),
        (["serve", *H, "--ensure"], "refused"),
        (["serve", "status", *H], "reads"),
        (["serve", "token", *H], "refused"),  # makes a token where none is
        (["serve", "rotate-token", *H], "reads"),  # says what it would replace
    ],
    "shadow": [
        (["shadow", "start", *H, "--candidate", "v1.0"], "plan"),
        (["shadow", "stop", *H], "plan"),
        (["shadow", "status", *H], "reads"),
    ],
    "train": [(["train"], "refused")],
    "verify": [(["verify", *H], "refused")],
    "bundle.build": [(["bundle.build", "--version", "v3.0", "--run", "{RUN}"], "refused")],
    "bundle.show": [(["bundle.show", "--path", "{BUNDLE}"], "reads")],
    "bundle.verify": [(["bundle.verify", "--path", "{BUNDLE}"], "reads")],
    "data.convert-pickled": [
        (["data.convert-pickled", "--src", "{DATA}", "--dst", "out.parquet"], "refused")
    ],
    "data.leakage": [(["data.leakage", "--path", "{DATA}"], "reads")],
    "data.market": [(["data.market", "--out", "data2"], "refused")],
    "data.validate": [(["data.validate", "--path", "{DATA}"], "reads")],
    "label.export": [(["label.export", "--labeled", "{DATA}"], "refused")],
    "label.import": [(["label.import", "--batch", "b1"], "refused")],
    "label.status": [(["label.status", "--offline"], "reads")],
    "label.studio": [(["label.studio"], "refused"), (["label.studio", "--stop"], "refused")],
    "pods.known-host": [
        (["pods.known-host", "--pod", POD], "reads"),
        (["pods.known-host", "--pod", POD, "--pin"], "refused"),
    ],
    "pods.list": [(["pods.list"], "reads")],
    "pods.resume": [(["pods.resume", "--pod", POD, "--yes", POD], "refused")],
    "pods.stop": [(["pods.stop", "--pod", POD, "--yes", POD], "refused")],
    "pods.terminate": [(["pods.terminate", "--pod", POD, "--yes", POD], "refused")],
}
# a task that reads may also give its verdict in the exit code
VERDICTS = {"doctor": {0, 1}, "evaluate": {0, 1}}


def every_task() -> list[str]:
    """Every task `invoke --list` shows, from the task tree tasks.py builds."""
    return sorted(name for name, _ in every_task_object())


def every_task_object() -> list[tuple]:
    """(dotted name, invoke.Task) for every task of tasks.py's tree."""
    sys.path.insert(0, str(REPO))
    try:
        import tasks
    finally:
        sys.path.remove(str(REPO))
    return [(name, tasks.ns[name]) for name in tasks.ns.task_names]


@pytest.fixture(scope="module")
def world(bundles, tmp_path_factory):
    """A project folder and one stand-in host, pod POD of a stand-in RunPod API, serving v1.1
    live with v1.0 as its warm standby and v1.2 as its shadow."""
    api = StandInRunPod("rpa_" + secrets.token_hex(20).upper())
    sandbox, root = start_hosts([HOST])
    project = Path(tempfile.mkdtemp(prefix="moola-dry-"))
    running = sandbox.hosts[HOST]
    env = {
        **os.environ,
        "HOME": str(project / "home"),
        "RUNPOD_API_KEY": api.key,
        "RUNPOD_API_BASE_URL": api.url,
        "MOOLA_RUNPOD_CACHE": str(project / ".moola" / "runpod-pods.json"),
        "MOOLA_LOG": str(project / "logs" / "deployments.jsonl"),
        "MOOLA_INVENTORY": str(project / "inventory" / "hosts.yaml"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    try:
        api.add(POD, "dry", ssh_port=running.port)
        (project / "home").mkdir()
        (project / "inventory").mkdir()
        entry = {
            "runpod_pod_id": POD,
            "user": running.user,
            "identity_file": running.identity_file,
            "known_hosts": str(project / "known_hosts"),
            "workspace": running.workspace,
            "python": running.python,
            "connect_timeout_s": 5,
            "latency_sla_ms": 60000,
            "serve_port": 0,
        }
        (project / "inventory" / "hosts.yaml").write_text(yaml.safe_dump({"hosts": {HOST: entry}}))
        shutil.copytree(Path(bundles["v1.0"]).parent, project / "bundles")
        from moola_core.train.config import dump_yaml

        run_dir = make_tiny_run(project / "runs", "run-dry")
        (run_dir / "config.yaml").write_text(dump_yaml(tiny_config()))
        run = run_dir.name
        from moola_core.data.pipeline import run_data_pipeline

        run_data_pipeline(project / "data", seed=1, n_bars=3000, n_windows=60)

        with pytest.MonkeyPatch.context() as patch:
            for key in ("RUNPOD_API_KEY", "RUNPOD_API_BASE_URL", "MOOLA_RUNPOD_CACHE", "MOOLA_LOG"):
                patch.setenv(key, env[key])
            (host,) = load_inventory(project / "inventory" / "hosts.yaml").resolve(HOST)
            opts = engine.Options(check_runs=3, check_warmup=1, check_backend="eager")
            for i, version in enumerate(("v1.0", "v1.1")):
                bundle = engine.resolve_bundle(str(project / "bundles" / f"moola-{version}.tar.gz"))
                done = engine.deploy([host], bundle, replace(opts, accept_new_host_key=i == 0))
                assert done.ok, done.outcomes
            shadow.start(host, "v1.2", bundles_dir=str(project / "bundles"), device="cpu")
            (snapshot,) = [b["name"] for b in engine.list_backups(host)][:1]
        deployment = read_events(Path(env["MOOLA_LOG"]))[-1]["deployment"]
        fill = {
            "{RUN}": run,
            "{DEPLOYMENT}": deployment,
            "{SNAPSHOT}": snapshot,
            "{BUNDLE}": str(project / "bundles" / "moola-v1.0.tar.gz"),
            "{DATA}": str(project / "data" / "labeled.parquet"),
        }
        yield {"project": project, "workspace": running.workspace, "env": env, "fill": fill}
    finally:
        from moola_ops.hosts.standin import load_state

        leaked = load_state(project / ".sandbox")  # a `sandbox up` that ignored --dry
        if leaked is not None:
            leaked.stop()
        sandbox.stop()
        api.close()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(project, ignore_errors=True)


def state(world) -> dict:
    """Everything --dry must leave alone: the host's workspace, the project folder, HOME."""
    return {"host": tree(world["workspace"]), "project": tree(str(world["project"]))}


def changes(before: dict, after: dict) -> list[str]:
    out = []
    for side in before:
        old, new = before[side], after[side]
        out += [f"{side}: {p} appeared" for p in sorted(set(new) - set(old))]
        out += [f"{side}: {p} vanished" for p in sorted(set(old) - set(new))]
        out += [f"{side}: {p} changed" for p in sorted(set(old) & set(new)) if old[p] != new[p]]
    return out


def test_every_task_has_a_dry_case():
    undeclared = [n for n, t in every_task_object() if getattr(t.body, "dry_policy", None) is None]
    assert not undeclared, f"say what `invoke --dry` does with task(dry=...): {undeclared}"
    missing = [name for name in every_task() if name not in CASES]
    assert not missing, f"say what `invoke --dry` does for: {missing} (add a case above)"
    stale = [name for name in CASES if name not in every_task()]
    assert not stale, f"cases for tasks that no longer exist: {stale}"


def test_dry_changes_nothing_for_every_task(world):
    invoke = str(Path(sys.executable).parent / "invoke")
    problems = []
    for name in every_task():
        for argv, expected in CASES.get(name, []):
            args = [world["fill"].get(a, a) for a in argv]
            before = state(world)
            proc = subprocess.run(
                [invoke, "--search-root", str(REPO), "--dry", *args],
                cwd=world["project"],
                env=world["env"],
                capture_output=True,
                text=True,
                timeout=240,
            )
            said = f"`invoke --dry {' '.join(argv)}` exit {proc.returncode}: " + (
                proc.stdout[-600:] + proc.stderr[-600:]
            )
            problems += [f"{said}\n    -> {c}" for c in changes(before, state(world))]
            if "Traceback" in proc.stderr:
                problems.append(f"{said}\n    -> a traceback")
            if expected == "refused":
                lines = (proc.stderr + proc.stdout).strip().splitlines()
                if proc.returncode == 0 or len(lines) != 1 or "--dry: " not in lines[0]:
                    problems.append(f"{said}\n    -> expected one sentence refusing --dry")
                elif "`invoke " not in lines[0] and "instead" not in lines[0]:
                    problems.append(f"{said}\n    -> the refusal names nothing to use instead")
            elif expected == "plan":
                if proc.returncode != 0 or not proc.stdout.startswith("PLAN "):
                    problems.append(f"{said}\n    -> expected the plan")
            elif proc.returncode not in VERDICTS.get(name, {0}):
                problems.append(f"{said}\n    -> expected it to run")
    assert not problems, "\n".join(problems)

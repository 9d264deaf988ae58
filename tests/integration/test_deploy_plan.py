"""`--plan` and Invoke's `--dry`: facts read, nothing changed, the commands a real run sends.

A planned deploy must leave every host byte-identical (the workspace tree, its contents and
mtimes), take no lock and log nothing; the commands it lists must be the ones the real deploy
then sends, in order (run-time values such as the deployment id and timestamps aside).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from moola_ops import deploy as engine
from moola_ops.deploy import plan as plan_mod
from moola_ops.hosts.inventory import Inventory
from moola_ops.log.journal import read_events
from moola_ops.transport import HostSession
from tests.integration.conftest import running_hosts
from tests.integration.helpers import write_inventory

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

REPO = Path(__file__).parents[2]
# serving off here; SERVED below plans and runs the same flows with the model servers
FAST = engine.Options(
    serve=False,
    check_runs=3,
    check_warmup=1,
    check_backend="eager",
    keep_releases=1,
    keep_backups=1,
)


SERVED = replace(FAST, serve=True)


@pytest.fixture(scope="module")
def hosts():
    with running_hosts(["plan-1"]) as (sandbox, _root):
        yield sandbox, Inventory.from_sandbox(sandbox, connect_timeout_s=5)


def tree(workspace: str) -> dict[str, tuple]:
    """Every path under the workspace: kind, mode, size, mtime (ns), link target, content hash."""
    state = {}
    for base, dirs, files in os.walk(workspace):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            link = os.readlink(path) if os.path.islink(path) else None
            digest = None
            if os.path.isfile(path) and not link:
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            state[os.path.relpath(path, workspace)] = (
                st.st_mode,
                st.st_size,
                st.st_mtime_ns,
                link,
                digest,
            )
    return state


RUN_VALUES = [
    (re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}"), "DEPLOYMENT"),
    (re.compile(r"'\{\"actor\":[^']*\}'"), "HOLDER"),
    (re.compile(r"'\{\"action\":[^']*\}'"), "REVISION"),
    (re.compile(r"(\d{8}T\d{6}\d*Z|TIME)-(?=[^ ]*\.tar)"), "STAMP-"),
]


def normalised(command: str) -> str:
    for pattern, token in RUN_VALUES:
        command = pattern.sub(token, command)
    return command


def test_a_planned_deploy_changes_nothing_and_lists_what_the_deploy_runs(
    hosts, bundles, journal_file, monkeypatch
):
    _, inventory = hosts
    (host,) = inventory.resolve("plan-1")
    assert engine.deploy([host], engine.resolve_bundle(str(bundles["v1.0"])), FAST).ok
    v11 = engine.resolve_bundle(str(bundles["v1.1"]))
    logged_before = read_events(journal_file)
    before = tree(host.workspace)

    planned = engine.deploy([host], v11, replace(FAST, plan=True))
    (outcome,) = planned.outcomes
    assert outcome.status == "planned" and planned.ok, outcome
    plan = outcome.plan
    assert (plan["current"], plan["target"]) == ("v1.0", "v1.1")
    assert plan["upload"]["bytes"] == v11.size and plan["lock"] == "free"
    assert plan["snapshot"] == "TIME-v1.0.tar"
    assert [c["step"] for c in plan["commands"]] == [
        "lock",
        "upload",
        "upload",
        "promote",
        "check",
        "switch",
        "post-check",
        "prune",
        "prune",
        "unlock",
    ]
    assert "PLAN deploy v1.1" in plan_mod.render_plan(planned)
    # nothing changed on the host, nothing logged as a deploy
    assert tree(host.workspace) == before
    assert read_events(journal_file) == logged_before

    sent = recording(monkeypatch)
    done = engine.deploy([host], v11, FAST)
    assert done.ok, done.outcomes
    assert [normalised(c) for c in sent] == [normalised(c["command"]) for c in plan["commands"]]


def recording(monkeypatch) -> list[str]:
    """Every command and upload HostSession sends from now on, in order (they still run)."""
    sent: list[str] = []
    real_run, real_upload = HostSession.run, HostSession.upload

    def run(self, command, **kw):
        sent.append(command)
        return real_run(self, command, **kw)

    def upload(self, local, remote, **kw):
        sent.append(plan_mod.UPLOAD.format(local=local, host=self.host.name, remote=remote))
        return real_upload(self, local, remote, **kw)

    monkeypatch.setattr(HostSession, "run", run)
    monkeypatch.setattr(HostSession, "upload", upload)
    return sent


def started_port(journal_file: Path, deployment: str) -> int:
    """The private port the real run's new server got (its serve-start line)."""
    (line,) = [
        e
        for e in read_events(journal_file, deployment=deployment)
        if e["step"] == "serve-start" and e["status"] == "ok"
    ]
    return int(line["detail"]["port"])


def test_with_serving_the_plan_lists_the_serving_commands_a_deploy_and_rollback_send(
    bundles, journal_file, monkeypatch
):
    with running_hosts(["plan-srv"]) as (sandbox, _root):
        (host,) = Inventory.from_sandbox(sandbox, connect_timeout_s=5).resolve("plan-srv")
        assert engine.deploy([host], engine.resolve_bundle(str(bundles["v1.0"])), SERVED).ok
        v11 = engine.resolve_bundle(str(bundles["v1.1"]))
        logged_before = read_events(journal_file)
        before = tree(host.workspace)

        # deploy: no warm standby of v1.1, so a new server starts on a port picked at run time
        planned = engine.deploy([host], v11, replace(SERVED, plan=True))
        (outcome,) = planned.outcomes
        assert outcome.status == "planned", outcome
        deploy_plan = outcome.plan
        assert [c["step"] for c in deploy_plan["commands"]] == [
            "lock",
            "upload",
            "upload",
            "promote",
            # no runtime-check process: the candidate server is the check (one model load),
            # then `check` (by the server) writes the release's .checked marker
            "serve-start",
            "serve-start",
            "serve-check",
            "check",
            "switch",
            "serve-switch",
            "post-check",
            "serve-post-check",
            "prune",
            "prune",
            "unlock",
        ]
        assert deploy_plan["serving"] == "a new server for v1.1 starts on a private port"
        at_run_time = [
            c["step"] for c in deploy_plan["commands"] if "--port <port>" in c["command"]
        ]
        assert at_run_time == ["serve-check", "serve-switch"]
        text = plan_mod.render_plan(planned)
        assert "[serve-start]" in text and "agent.py serve start --workspace" in text
        assert tree(host.workspace) == before  # servers running, nothing on the host changed
        assert read_events(journal_file) == logged_before

        with monkeypatch.context() as patched:
            sent = recording(patched)
            done = engine.deploy([host], v11, SERVED)
        assert done.ok, done.outcomes
        port = started_port(journal_file, done.deployment)
        ran = [re.sub(rf"--port {port}\b", "--port <port>", c) for c in sent]
        assert [normalised(c) for c in ran] == [
            normalised(c["command"]) for c in deploy_plan["commands"]
        ]

        # rollback: v1.0's server is the warm standby (the lock's facts read serve/state.json), so
        # after the switch one command probes it and moves traffic; nothing starts
        planned = engine.rollback([host], None, replace(SERVED, plan=True))
        (outcome,) = planned.outcomes
        back_plan = outcome.plan
        assert back_plan["serving"].startswith("the warm standby of v1.0 (port ")
        assert [c["step"] for c in back_plan["commands"]] == [
            "lock",
            "verify",
            "switch",
            "serve-standby",
            "post-check",
            # no runtime check through current: the standby was checked over HTTP, nothing
            # loads the model (invoke verify is the deep check)
            "serve-post-check",
            "unlock",
        ]
        with monkeypatch.context() as patched:
            sent = recording(patched)
            back = engine.rollback([host], None, SERVED)
        assert back.ok, back.outcomes
        assert [normalised(c) for c in sent] == [
            normalised(c["command"]) for c in back_plan["commands"]
        ]


def test_invoke_dry_and_plan_flags_plan_instead_of_deploying(
    hosts, bundles, journal_file, tmp_path
):
    _, inventory = hosts
    (host,) = inventory.resolve("plan-1")
    write_inventory(tmp_path / "hosts.yaml", {"plan-1": host})
    invoke = str(Path(sys.executable).parent / "invoke")
    env = {**os.environ, "MOOLA_LOG": str(journal_file)}
    inv = ["--host", "plan-1", "--inventory", str(tmp_path / "hosts.yaml")]
    before = tree(host.workspace)
    for args in (
        ["--dry", "deploy", *inv, "--bundle", str(bundles["v1.2"])],
        ["deploy", *inv, "--bundle", str(bundles["v1.2"]), "--plan"],
        ["--dry", "rollback", *inv],
        ["prune", *inv, "--plan"],
        ["drill", *inv, "--plan"],
        ["--dry", "deploy", *inv, "--bundle", str(bundles["v1.2"]), "--repair"],
    ):
        proc = subprocess.run(
            [invoke, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        assert proc.stdout.startswith("PLAN "), proc.stdout
        assert "nothing was changed" in proc.stdout and "[lock]" in proc.stdout
    assert tree(host.workspace) == before
    assert read_events(journal_file) == []


def planned_then_run(flow, opts, host, monkeypatch) -> tuple[list[str], list[str], object]:
    """`flow(opts)` with --plan, then for real: (the plan's commands, the commands sent, the
    real result), both normalised (RUN_VALUES; a hook that runs here is not an SSH command, so
    `local:` lines are dropped from the plan's list). The plan changes nothing on the host."""
    before = tree(host.workspace)
    planned = flow(replace(opts, plan=True))
    (outcome,) = planned.outcomes
    assert outcome.status == "planned", outcome
    assert tree(host.workspace) == before
    listed = [
        normalised(c["command"])
        for c in outcome.plan["commands"]
        if not c["command"].startswith("local: ")
    ]
    with monkeypatch.context() as patched:
        sent = recording(patched)
        done = flow(opts)
    return listed, [normalised(c) for c in sent], done


def test_every_flow_plans_exactly_the_commands_it_then_sends_hooks_included(
    bundles, journal_file, monkeypatch, tmp_path
):
    from moola_ops.hosts.inventory import Hook

    hooks = (
        Hook("after-upload", "sizes", "du -s releases > /dev/null"),
        Hook("before-switch", "ready", 'test -n "$MOOLA_VERSION"', timeout=20),
        Hook("after-switch", "note", f"echo $MOOLA_VERSION >> {tmp_path}/notes", where="local"),
    )
    with running_hosts(["plan-all"]) as (sandbox, _root):
        inventory = Inventory.from_sandbox(sandbox, connect_timeout_s=5, hooks=hooks)
        (host,) = inventory.resolve("plan-all")
        v10, v11 = (engine.resolve_bundle(str(bundles[v])) for v in ("v1.0", "v1.1"))
        assert engine.deploy([host], v10, FAST).ok

        flows = {
            "deploy": lambda o: engine.deploy([host], v11, o),
            "drill": lambda o: engine.drill([host], o),
            "rollback": lambda o: engine.rollback([host], None, o),
            "prune": lambda o: engine.prune([host], o),
        }
        for name, flow in flows.items():
            listed, sent, done = planned_then_run(flow, FAST, host, monkeypatch)
            assert done.ok, (name, done.outcomes)
            assert listed == sent, name
        # the hooks are in the plan: on the host as sent, here as `local:`
        planned = engine.deploy([host], v11, replace(FAST, plan=True)).outcomes[0].plan
        steps_listed = [c["step"] for c in planned["commands"]]
        assert (
            "hook:before-switch:ready" in steps_listed and "hook:after-switch:note" in steps_listed
        )
        assert any(
            c["command"] == f"local: echo $MOOLA_VERSION >> {tmp_path}/notes"
            for c in planned["commands"]
        )

        (snapshot, *_) = [b["name"] for b in engine.list_backups(host) if b["version"] == "v1.0"]
        listed, sent, done = planned_then_run(
            lambda o: engine.restore([host], snapshot, o), FAST, host, monkeypatch
        )
        assert done.ok and listed == sent, done.outcomes

        # repair: its plan runs the (read-only) verify for real, so it knows the damage
        current = Path(host.workspace) / "current"
        assert current.resolve().name == "v1.0"
        damaged = sorted((current.resolve() / "code").rglob("*.py"))[0]
        damaged.write_text(damaged.read_text() + "# changed on the host\n")
        listed, sent, done = planned_then_run(
            lambda o: engine.repair([host], v10, o), FAST, host, monkeypatch
        )
        assert done.ok and "repaired" in done.outcomes[0].message, done.outcomes
        assert listed == sent

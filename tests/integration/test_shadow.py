"""The shadow on a real stand-in host: real model server and proxy processes, real HTTP.

A shadow never delays or changes a live answer. Three real misbehaving shadow processes prove
it without timing assertions: one that blocks every request until the test lets it go (the
live answers all come back while it holds one, marked by a file it writes), one that answers
500 to everything, and one killed with SIGKILL. The live answers are compared with answers
recorded with no shadow at all, byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from moola_ops import deploy as engine
from moola_ops.hosts.inventory import Inventory
from moola_ops.log import steps
from moola_ops.serving import control as serving
from moola_ops.serving.captures import load_table
from moola_ops.serving.captures_pull import pull_host
from moola_ops.shadow import ab
from moola_ops.shadow import control as shadow
from moola_ops.transport import HostSession
from tests.integration.conftest import start_hosts
from tests.integration.helpers import window, write_inventory
from tests.integration.test_serving import FAST, body, post, wait_for

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

FAKE_SHADOW = r"""
import http.server, json, os, sys, threading, time
mode, folder = sys.argv[1], sys.argv[2]
numbering, count = threading.Lock(), [0]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with numbering:  # requests may arrive together: each its own got-<n>
            n, count[0] = count[0], count[0] + 1
        open(os.path.join(folder, "got-%d" % n), "w").close()
        if mode == "block":
            while not os.path.exists(os.path.join(folder, "..", "release")):
                time.sleep(0.01)
        status = 500 if mode == "500" else 200
        data = json.dumps({"error": "shadow broke", "status": status}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@pytest.fixture(scope="module")
def live_host(bundles, tmp_path_factory):
    """One stand-in host serving v1.0 behind its proxy; v1.1 is the candidate."""
    sandbox, root = start_hosts(["shd-1"])
    log = tmp_path_factory.mktemp("shadow-log") / "deployments.jsonl"
    opts = engine.Options(**{**FAST.__dict__, "journal_path": str(log)})
    try:
        (host,) = Inventory.from_sandbox(sandbox, connect_timeout_s=5).resolve("shd-1")
        assert engine.deploy([host], engine.resolve_bundle(str(bundles["v1.0"])), opts).ok
        with HostSession(host) as session:
            serving.ensure_proxy(session, host)
        (outcome,) = serving.run([host], "start", journal_path=str(log))
        assert outcome.ok, outcome.message
        with HostSession(host) as session:
            PORTS[host.name] = serving.status(session, host).proxy_port
        yield host, Path(sandbox.hosts["shd-1"].workspace), log
    finally:
        sandbox.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


WINDOWS = [window(seed) for seed in range(12)]
PORTS: dict[str, int] = {}  # host -> the port its proxy listens on


def _answers(host) -> list[dict]:
    """Live answers for WINDOWS, one request each (without the release-specific timing)."""
    out = []
    for i, w in enumerate(WINDOWS):
        status, data, _ = post(PORTS[host.name], body(w), {"X-Moola-Request-Id": f"t-{i}"})
        assert status == 200, data
        out.append(data)
    return out


@pytest.fixture(scope="module")
def reference(live_host):
    host, _, _ = live_host
    with HostSession(host) as session:
        shadow.route(session, host, None)
    return _answers(host)


def _fake_shadow(mode: str, tmp_path: Path):
    folder = tmp_path / mode / "got"
    folder.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", FAKE_SHADOW, mode, str(folder)], stdout=subprocess.PIPE, text=True
    )
    port = int(proc.stdout.readline())
    return proc, port, folder


def _route_to(host, port: int) -> None:
    with HostSession(host) as session:
        shadow.route(session, host, {"release": "fake", "port": port, "pid": None, "fraction": 1.0})


def test_a_blocked_shadow_never_delays_live(live_host, reference, tmp_path):
    host, _, _ = live_host
    proc, port, folder = _fake_shadow("block", tmp_path)
    try:
        _route_to(host, port)
        assert post(PORTS[host.name], body(WINDOWS[0]))[0] == 200
        wait_for(lambda: (folder / "got-0").exists(), "the shadow to hold a copy")
        # the shadow now blocks on that copy until the test lets it go: every live answer
        # comes back (and right) while it still holds it
        answers = _answers(host)
        assert not (tmp_path / "block" / "release").exists()
        assert answers == reference
    finally:
        (tmp_path / "block" / "release").touch()
        proc.kill()
        proc.wait()


def test_a_failing_shadow_never_changes_live(live_host, reference, tmp_path):
    host, _, _ = live_host
    proc, port, folder = _fake_shadow("500", tmp_path)
    try:
        _route_to(host, port)
        assert _answers(host) == reference
        wait_for(lambda: len(os.listdir(folder)) == len(WINDOWS), "the shadow's 500s")
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_shadow_never_changes_live(live_host, reference, tmp_path):
    host, _, _ = live_host
    proc, port, folder = _fake_shadow("ok", tmp_path)
    _route_to(host, port)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _answers(host) == reference


def test_real_shadow_captures_pairs_then_stops(live_host, bundles, reference, tmp_path):
    host, workspace, log = live_host
    now = shadow.start(host, str(bundles["v1.1"]), fraction=1.0, journal_path=str(log), opts=FAST)
    assert now.release == "v1.1" and now.running and now.ready and now.live == "v1.0"
    # every thread of the shadow runs at nice 19 under SCHED_IDLE (fields 19 and 41 of
    # /proc/PID/task/TID/stat; policy 5 is SCHED_IDLE)
    stats = [
        (t / "stat").read_text().rsplit(")", 1)[1].split()
        for t in Path(f"/proc/{now.pid}/task").iterdir()
    ]
    assert {(int(f[16]), int(f[38])) for f in stats} == {(shadow.SHADOW_NICE, os.SCHED_IDLE)}
    assert _answers(host) == reference  # live answers unchanged with a real shadow beside

    captured = workspace / "captures" / "v1.1"

    def shadow_lines() -> int:
        files = list(captured.glob("*.jsonl")) if captured.is_dir() else []
        return sum(
            1
            for f in files
            for line in f.read_text().splitlines()
            if line and json.loads(line)["request_id"].startswith("t-")
        )

    wait_for(lambda: shadow_lines() == len(WINDOWS), "the shadow's captures")
    cache = tmp_path / "cache"
    pull_host(host, cache)
    table = load_table(cache, host.name)
    result = ab.analyze(table, shadow_release="v1.1")
    assert result.live_release == "v1.0" and result.n_pairs >= len(WINDOWS)

    # kill -9 the real shadow: live goes on, status says it is gone (and `invoke shadow
    # status` exits 1 saying what to do), stop cleans up
    os.kill(now.pid, signal.SIGKILL)
    wait_for(lambda: not shadow.status(host).running, "the shadow to be seen dead")
    assert _answers(host) == reference
    inventory = write_inventory(tmp_path / "hosts.yaml", {host.name: host}, with_python=True)
    invoke = str(Path(sys.executable).parent / "invoke")
    cli = subprocess.run(
        [invoke, "shadow", "status", "--host", host.name, "--inventory", str(inventory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 1, cli
    assert "NOT RUNNING" in cli.stdout and "invoke shadow stop --host" in cli.stdout
    after = shadow.stop(host, journal_path=str(log))
    assert after.release is None and after.live == "v1.0"


def test_shadow_stop_plans_exactly_the_commands_it_then_sends(live_host, bundles, monkeypatch):
    """`shadow stop --plan` runs stop's own steps against a recorder: the plan lists the route
    change and the drain, the host keeps its shadow, and the real stop sends those very
    commands (besides its status reads)."""
    host, _, log = live_host
    shadow.start(host, str(bundles["v1.1"]), fraction=0.5, journal_path=str(log), opts=FAST)
    running = shadow.status(host)
    assert running.release == "v1.1" and running.running
    plan = shadow.stop(host, plan=True)
    assert [c["step"] for c in plan["commands"]] == [steps.SHADOW_STOP] * 2
    assert " serve shadow --workspace" in plan["commands"][0]["command"]
    assert (
        f" serve drain --workspace {host.workspace} --pid {running.pid}"
        in (plan["commands"][1]["command"])
    )
    assert shadow.status(host).release == "v1.1"  # the plan changed nothing
    sent: list[str] = []
    real_run = HostSession.run

    def run(self, command, **kw):
        sent.append(command)
        return real_run(self, command, **kw)

    monkeypatch.setattr(HostSession, "run", run)
    after = shadow.stop(host, journal_path=str(log))
    assert after.release is None
    changes = [c for c in sent if " serve shadow " in c or " serve drain " in c]
    assert changes == [c["command"] for c in plan["commands"]]


def test_bad_sample_and_live_candidate_are_refused(live_host, bundles):
    host, _, log = live_host
    from moola_core.errors import MoolaError

    with pytest.raises(MoolaError, match="outside"):
        shadow.start(host, str(bundles["v1.1"]), fraction=1.5)
    with pytest.raises(MoolaError, match="live release"):
        shadow.start(host, str(bundles["v1.0"]), journal_path=str(log), opts=FAST)


def test_promote_deploys_the_shadow_and_serves_it(live_host, bundles):
    """Last in the module: v1.1 becomes live through the normal deploy path."""
    host, workspace, log = live_host
    # --plan first: the place flow's own stages, the shadow's included, and nothing changes
    on_disk, logged = _releases(workspace), log.read_text() if log.exists() else ""
    planned = shadow.start(
        host, str(bundles["v1.1"]), fraction=0.5, opts=replace(FAST, plan=True)
    ).outcomes[0]
    assert planned.status == "planned", planned
    listed = [c["step"] for c in planned.plan["commands"]]
    assert {"lock", "check", "start", "deprioritise", "route"} <= set(listed), listed
    assert _releases(workspace) == on_disk and (log.read_text() if log.exists() else "") == logged
    shadow.start(host, str(bundles["v1.1"]), fraction=0.5, journal_path=str(log), opts=FAST)
    bundles_dir = str(bundles["v1.1"].parent)
    (planned,) = shadow.promote(host, bundles_dir=bundles_dir, plan=True).outcomes
    assert planned.status == "planned", planned
    assert "switch" in [c["step"] for c in planned.plan["commands"]]
    result = shadow.promote(host, bundles_dir=str(bundles["v1.1"].parent), journal_path=str(log))
    assert result.ok, [o.message for o in result.outcomes]
    with HostSession(host) as session:
        now = serving.status(session, host)
    assert now.current == "v1.1" and now.served_release == "v1.1" and now.shadow is None
    status, data, _ = post(PORTS[host.name], body(WINDOWS[0]))
    assert status == 200 and data["release"] == "v1.1"


def _releases(workspace: Path) -> set[str]:
    folder = workspace / "releases"
    return {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()


def _shadow_servers(workspace: Path, version: str) -> list[dict]:
    folder = workspace / "serve" / "servers"
    records = [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.is_dir() else []
    return [r for r in records if r.get("release") == version]


def test_a_host_that_requires_signed_bundles_refuses_an_unsigned_shadow(
    live_host, bundles, tmp_path
):
    # deploy refused this bundle; `shadow start` used to upload it and run its code anyway
    from dataclasses import replace

    from moola_core.errors import MoolaError
    from moola_ops.log.journal import read_events

    host, workspace, log = live_host
    key = tmp_path / "release_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"release@moola {key.with_suffix('.pub').read_text()}")
    signed_only = replace(host, allowed_signers=str(allowed))
    with pytest.raises(MoolaError, match="v1.2 refused for shd-1, nothing changed"):
        shadow.start(signed_only, str(bundles["v1.2"]), journal_path=str(log), opts=FAST)
    assert "v1.2" not in _releases(workspace) and not _shadow_servers(workspace, "v1.2")
    steps = {
        e["step"]: e["status"]
        for e in read_events(log, phase="shadow", host=host.name)
        if e["bundle"] == "v1.2"
    }
    assert steps.get("signature") == "failed" and "upload" not in steps and "lock" not in steps


def test_a_shadow_waits_for_nobody_elses_deploy_lock(live_host, bundles):
    from moola_core.errors import MoolaError
    from moola_ops.deploy.commands import lock as lock_cmd
    from moola_ops.hosts.layout import Layout

    host, workspace, log = live_host
    layout = Layout(host.workspace)
    holder = {"deployment": "dep-other", "actor": "someone", "what": "deploy v9", "since": "now"}
    with HostSession(host) as session:
        assert session.run(lock_cmd.acquire(layout, holder), timeout_s=30).ok
    try:
        with pytest.raises(MoolaError, match="locked by"):
            shadow.start(host, str(bundles["v1.2"]), journal_path=str(log), opts=FAST)
        assert "v1.2" not in _releases(workspace) and not _shadow_servers(workspace, "v1.2")
    finally:
        with HostSession(host) as session:
            session.run(lock_cmd.release(layout, "dep-other"), timeout_s=30)

"""Serving that heals itself (issue #23): the host's supervisor restarts a killed live server
while the proxy holds the predictions meant for it, a crash loop backs off and shows CRITICAL
with the server's last log lines, cron `--ensure` still repairs a host whose supervisor is
gone, and a changed bind address is applied by `--ensure` (or refused in one sentence).

Real stand-in host over real SSH, real server, proxy and supervisor processes; every wait is
on a file or a process, never a fixed sleep.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from moola_ops import deploy as engine
from moola_ops.hosts.inventory import Inventory
from moola_ops.serving import control as serving
from moola_ops.transport import HostSession
from tests.integration.conftest import start_hosts
from tests.integration.helpers import pid_alive, wait_for, window

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

FAST = engine.Options(check_runs=3, check_warmup=1, check_backend="eager")
BODY = json.dumps({"windows": [window(5)]}).encode()


@pytest.fixture(scope="module")
def healed(bundles, tmp_path_factory):
    """One stand-in host serving v1.1 (v1.0 as the standby), with its supervisor."""
    sandbox, root = start_hosts(["heal-1"])
    log = tmp_path_factory.mktemp("heal-log") / "deployments.jsonl"
    opts = engine.Options(**{**FAST.__dict__, "journal_path": str(log)})
    try:
        (host,) = Inventory.from_sandbox(sandbox, connect_timeout_s=5).resolve("heal-1")
        for version in ("v1.0", "v1.1"):
            result = engine.deploy([host], engine.resolve_bundle(str(bundles[version])), opts)
            assert result.ok, result.outcomes
        yield host, log
    finally:
        sandbox.stop()
        shutil.rmtree(root, ignore_errors=True)


def status(host):
    with HostSession(host) as session:
        return serving.status(session, host)


def supervisor(host) -> dict:
    try:
        return json.loads((Path(host.workspace) / "serve" / "supervisor.json").read_text())
    except (OSError, ValueError):
        return {}


def service_checks(host):
    from moola_ops.watch.health import STATE_NAMES
    from moola_ops.watch.health_run import run_healthcheck

    run = run_healthcheck(
        host.name, inventory=Inventory(hosts={host.name: host}), record=False, timeout_s=120
    )
    (result,) = run.hosts
    return {c.name: (STATE_NAMES[c.state], c.message) for c in result.checks}


class Clients:
    """`n` clients, each sending one prediction after another on a kept-alive connection."""

    def __init__(self, port: int, n: int = 4):
        self.port, self.stop = port, threading.Event()
        self.answered = [0] * n
        self.failures: list[str] = []
        self.pids: set[int] = set()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n)]

    def _run(self, i):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while not self.stop.is_set():
            try:
                conn.request("POST", "/v1/predict", body=BODY)
                response = conn.getresponse()
                raw = response.read()
                if response.status != 200:
                    self.failures.append(f"{response.status}: {raw[:200]!r}")
                self.answered[i] += 1
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)

    def each_answered(self, more_than: list[int]) -> bool:
        return all(a > b for a, b in zip(self.answered, more_than, strict=True))


def server_record(host, entry) -> dict:
    return json.loads((Path(host.workspace) / "serve" / "servers" / entry["record"]).read_text())


def kill_family(pid: int) -> None:
    """SIGKILL a server and its spare together (their own process group), as the OOM killer
    of a container or a pod restart would: no spare is left to take over."""
    os.killpg(os.getpgid(pid), signal.SIGKILL)


def test_kill_9_with_clients_running_fails_no_request(healed):
    host, _ = healed
    before = status(host)
    assert before.serving and before.served_release == "v1.1", before
    sup = wait_for(lambda: supervisor(host).get("pid") and supervisor(host), "the supervisor")
    assert pid_alive(sup["pid"]) and sup["restarts"] == 0 and sup["takeovers"] == 0
    spare = server_record(host, before.live)["spare_pid"]
    assert pid_alive(spare)
    with Clients(before.proxy_port) as clients:
        wait_for(lambda: clients.each_answered([2] * 4), "every client answered")
        os.kill(before.live["pid"], signal.SIGKILL)
        wait_for(lambda: not pid_alive(before.live["pid"]), "the killed server to be gone")
        seen = list(clients.answered)
        wait_for(lambda: supervisor(host).get("takeovers") == 1, "the spare's takeover", 120)
        wait_for(lambda: clients.each_answered([n + 3 for n in seen]), "answers after", 120)
    assert clients.failures == [], clients.failures[:5]
    after = status(host)
    assert after.serving and after.served_release == "v1.1"
    # the spare took over the same private port: nothing was started, nothing was loaded
    assert after.live["pid"] == spare and after.live["port"] == before.live["port"]
    assert after.standby and after.standby["release"] == "v1.0"  # the standby was kept
    record = supervisor(host)
    assert record["last_exit"]["pid"] == before.live["pid"] and not record["crash_loop"]
    assert record["restarts"] == 0 and record["last_takeover"]["from"] == before.live["pid"]
    assert pid_alive(server_record(host, after.live)["spare_pid"])  # and has a spare itself
    supervision = service_checks(host)["supervision"]
    assert supervision[0] == "OK" and "1 takeovers by a spare" in supervision[1], supervision
    assert "; spare pid " in supervision[1], supervision


def test_with_its_spare_gone_too_the_supervisor_starts_a_server(healed):
    host, _ = healed
    before = status(host)
    restarts = supervisor(host)["restarts"]
    with Clients(before.proxy_port) as clients:
        wait_for(lambda: clients.each_answered([2] * 4), "every client answered")
        kill_family(before.live["pid"])
        wait_for(lambda: not pid_alive(before.live["pid"]), "the killed server to be gone")
        seen = list(clients.answered)
        wait_for(lambda: supervisor(host).get("restarts") == restarts + 1, "the restart", 120)
        wait_for(lambda: clients.each_answered([n + 3 for n in seen]), "answers after", 120)
    assert clients.failures == [], clients.failures[:5]  # the proxy held them meanwhile
    after = status(host)
    assert after.serving and after.served_release == "v1.1"
    assert after.live["port"] != before.live["port"]  # a new server, a new private port
    assert pid_alive(server_record(host, after.live)["spare_pid"])


def test_a_crash_loop_backs_off_and_is_critical_with_the_last_log_lines(healed):
    host, _ = healed
    now = status(host)
    release = Path(host.workspace) / "releases" / "v1.1"
    manifest = json.loads((release / "manifest.json").read_text())
    victim = release / manifest["model"].get("weights", "weights.pt")
    kept = victim.with_name(victim.name + ".kept")
    os.replace(victim, kept)  # a new file, not an edit: a hard-linked copy elsewhere stays intact
    victim.write_bytes(kept.read_bytes() + b"corrupt")  # every new v1.1 server fails its checksum
    try:
        kill_family(now.live["pid"])  # the spare has the good weights loaded: it goes too
        record = wait_for(
            lambda: supervisor(host).get("crash_loop") and supervisor(host), "a crash loop", 180
        )
        assert record["failures"] >= 3 and record["next_try_at"]
        assert "did not start" in record["last_error"]
        checks = service_checks(host)
        state, message = checks["supervision"]
        assert state == "CRITICAL" and "crash-loops" in message, message
        assert "last log lines:" in message and "the manifest says" in message, message
        assert checks["service"][0] == "CRITICAL"
    finally:
        os.replace(kept, victim)
    # the next try (after its back-off) starts a good server again
    wait_for(lambda: status(host).serving, "serving again after the loop", 180)
    assert status(host).served_release == "v1.1"


def test_without_its_supervisor_the_host_is_critical_until_cron_ensure(healed):
    host, log = healed
    sup = supervisor(host)
    os.kill(sup["pid"], signal.SIGTERM)
    wait_for(lambda: not pid_alive(sup["pid"]), "the supervisor to stop")
    before = status(host)
    kill_family(before.live["pid"])  # as after a pod restart: the spare is gone too
    wait_for(lambda: not pid_alive(before.live["pid"]), "the killed server to be gone")
    checks = service_checks(host)
    assert checks["service"][0] == "CRITICAL" and "is not running" in checks["service"][1]
    assert checks["supervision"][0] == "WARNING" and "not running" in checks["supervision"][1]
    (outcome,) = serving.run([host], "ensure", journal_path=str(log))
    assert outcome.ok and "started the server for v1.1" in outcome.message, outcome.message
    assert status(host).serving
    assert "started the supervisor" in outcome.message, outcome.message
    wait_for(lambda: pid_alive(supervisor(host).get("pid") or 0), "a new supervisor")
    supervision = service_checks(host)["supervision"]
    assert supervision[0] == "OK", supervision


def test_a_changed_bind_is_warned_then_applied_or_refused(healed):
    host, log = healed
    before = status(host)
    port = before.proxy_port
    moved = replace(host, serve_bind="127.0.0.2", serve_port=port)
    checks = service_checks(moved)
    assert checks["serve-config"][0] == "WARNING", checks
    assert "127.0.0.1 (inventory 127.0.0.2)" in checks["serve-config"][1]
    old_proxy = json.loads((Path(host.workspace) / "serve" / "proxy.json").read_text())["pid"]
    (outcome,) = serving.run([moved], "ensure", journal_path=str(log))
    assert outcome.ok, outcome.message
    wait_for(lambda: not pid_alive(old_proxy), "the old proxy to drain and exit")
    conn = http.client.HTTPConnection("127.0.0.2", port, timeout=60)
    conn.request("POST", "/v1/predict", body=BODY)
    assert conn.getresponse().status == 200
    conn.close()
    assert "serve-config" not in service_checks(moved)
    # 0.0.0.0 on the same port overlaps 127.0.0.2: that move needs an outage, so it is refused
    wide = replace(host, serve_bind="0.0.0.0", serve_port=port)
    (refused,) = serving.run([wide], "ensure", journal_path=str(log))
    assert not refused.ok and "needs an outage: restart it" in refused.message, refused.message
    assert "bind 127.0.0.2 -> 0.0.0.0" in refused.message
    assert "\n" not in refused.message and "Traceback" not in refused.message

"""The model server as it runs on a host: real server and proxy processes on a stand-in host
(started over real SSH, detached from it), real HTTP from this machine to the host's ports.

Covers every bad input (one 4xx sentence, never a traceback, the server keeps serving), the
captures contract, kill -9 then `--ensure`, traffic moved under a steady request stream with
no failed request, SIGTERM drain with a request held in flight (a file hook controls the
moment, no sleeps), and a release whose server never gets ready.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from moola_core.bundle.build import build_bundle
from moola_core.runtime import loads
from moola_ops import deploy as engine
from moola_ops.hosts.inventory import Inventory
from moola_ops.log.journal import read_events
from moola_ops.serving import control as serving
from moola_ops.transport import HostSession
from tests.integration.conftest import start_hosts
from tests.integration.helpers import pid_alive, wait_for, window, write_inventory
from tests.unit.tiny_runs import freeze_runtime_code, make_tiny_run

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

FAST = engine.Options(check_runs=3, check_warmup=1, check_backend="eager")


def body(*windows) -> bytes:
    return json.dumps({"windows": list(windows)}).encode()


def post(port: int, data: bytes, headers: dict | None = None, path: str = "/v1/predict"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=data, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        conn.close()


def get(port: int, path: str):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        raw = response.read()
        kind = response.getheader("Content-Type", "")
        return response.status, json.loads(raw) if "json" in kind else raw.decode()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def served(bundles, tmp_path_factory):
    """One stand-in host with v1.0 then v1.1 deployed, serving v1.1 behind its proxy."""
    sandbox, root = start_hosts(["srv-1"])
    log = tmp_path_factory.mktemp("serve-log") / "deployments.jsonl"
    opts = engine.Options(**{**FAST.__dict__, "journal_path": str(log)})
    try:
        (host,) = Inventory.from_sandbox(sandbox, connect_timeout_s=5).resolve("srv-1")
        for version in ("v1.0", "v1.1"):
            result = engine.deploy([host], engine.resolve_bundle(str(bundles[version])), opts)
            assert result.ok, result.outcomes
        with HostSession(host) as session:
            serving.ensure_proxy(session, host, read_timeout_s=1.0)
        (outcome,) = serving.run([host], "start", journal_path=str(log))
        assert outcome.ok, outcome.message
        yield host, log
    finally:
        sandbox.stop()
        shutil.rmtree(root, ignore_errors=True)


def host_status(host):
    with HostSession(host) as session:
        return serving.status(session, host)


def test_predict_health_metrics_and_captures_through_the_public_port(served):
    host, log = served
    now = host_status(host)
    assert now.serving and now.served_release == "v1.1" == now.current, now
    port = now.proxy_port
    status, answer, headers = post(
        port, body(window(1), {"id": "w-2", "ohlc": window(2)}), {"X-Moola-Request-Id": "req-1"}
    )
    assert status == 200, answer
    assert answer["release"] == "v1.1" and answer["request_id"] == "req-1"
    assert headers["X-Moola-Request-Id"] == "req-1"
    first, second = answer["predictions"]
    assert (first["index"], first["id"], second["id"]) == (0, None, "w-2")
    for p in answer["predictions"]:
        assert p["label"] in ("consolidation", "retracement") and p["release"] == "v1.1"
        assert abs(sum(p["probs"].values()) - 1) < 1e-4 and 0 <= p["start"] <= p["end"] <= 104
        assert p["abstain"] is False
    assert get(port, "/readyz") == (200, {"ready": True, "release": "v1.1"})
    status, health = get(port, "/healthz")
    assert status == 200 and health["release"] == "v1.1" and health["device"] == "cpu"
    assert len(health["sha256"]) == 64 and health["uptime_s"] > 0
    status, metrics = get(port, "/metrics")
    assert status == 200
    for line in (
        'moola_serve_info{device="cpu",release="v1.1"',
        'requests_total{status="200"}',
        "moola_serve_request_duration_seconds_bucket",
        "moola_serve_batch_size_bucket",
        'moola_serve_predictions_total{label="consolidation"}',
    ):
        assert line in metrics, line
    # captures: one line per window, the shared contract (docs/serving.md)
    folder = Path(host.workspace) / "captures" / "v1.1"

    def lines():
        texts = [f.read_text() for f in sorted(folder.glob("*.jsonl"))]
        found = [json.loads(x) for text in texts for x in text.splitlines()]
        return [x for x in found if x["request_id"] == "req-1"]

    captured = wait_for(lambda: len(lines()) == 2 and lines(), "two capture lines")
    for i, line in enumerate(captured):
        assert line["v"] == 1 and line["index"] == i and line["role"] == "live"
        assert line["release"] == "v1.1" and line["status"] == 200
        assert line["latency_ms"] > 0 and line["batch_size"] >= 2
        assert len(line["ohlc"]) == 105 and line["ohlc"][0] == window(i + 1)[0]
        assert set(line["output"]) == {"label", "probs", "start", "end", "abstain", "confidence"}
    assert [line["window_id"] for line in captured] == [None, "w-2"]
    assert captured[1]["output"] == {k: second[k] for k in captured[1]["output"]}
    assert any(e["phase"] == "serve" and e["step"] == "start" for e in read_events(log))


def test_invoke_serve_status_and_ensure_from_the_command_line(served, tmp_path):
    import subprocess
    import sys

    host, log = served
    inventory = write_inventory(tmp_path / "hosts.yaml", {host.name: host}, with_python=True)
    invoke = str(Path(sys.executable).with_name("invoke"))
    env = dict(os.environ, MOOLA_LOG=str(log))

    def run(*args):
        return subprocess.run(
            [invoke, "serve", *args, "--inventory", str(inventory)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    status = run("status", "--host", host.name)
    assert status.returncode == 0, status.stderr
    assert (
        status.stdout.startswith(f"{host.name}\tok\t") and "serving v1.1 on port" in status.stdout
    )
    assert "; spare pid " in status.stdout, status.stdout  # a CPU live server has its spare
    ensure = run("--host", host.name, "--ensure")
    assert ensure.returncode == 0 and "nothing to do" in ensure.stdout, ensure.stdout
    bad = run("restart-all", "--host", host.name)
    assert bad.returncode == 1 and "unknown serve action 'restart-all'" in bad.stderr
    assert "Traceback" not in bad.stderr


BAD_INPUTS = [
    (b"{", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"windows": []}', 400, "non-empty list"),
    (json.dumps({"windows": [window(1)[:104]]}).encode(), 400, "expected 105 bars"),
    (json.dumps({"windows": [[[1, 2, 0.5]] * 105]}).encode(), 400, "[open, high, low, close]"),
    (json.dumps({"windows": [[[1, 2, 0.5, "x"]] * 105]}).encode(), 400, "is not a number"),
    (json.dumps({"windows": [[[1, 2, 0.5, True]] * 105]}).encode(), 400, "true is not a number"),
    (json.dumps({"windows": [[[1, 2, 0.5, None]] * 105]}).encode(), 400, "null is not a number"),
    (b'{"windows": [[[NaN, 1, 1, 1]]]}', 400, "NaN is not a number"),
    (b'{"windows": [[[Infinity, 1, 1, 1]]]}', 400, "Infinity is not a number"),
    (
        json.dumps({"windows": [[[1, 2, 0.5, 1]] * 104 + [[1, 1e400, 0.5, 1]]]})
        .encode()
        .replace(b"Infinity", b"1e400"),
        400,
        "finite",
    ),
    (json.dumps({"windows": [[[1, 0.5, 2, 1]] * 105]}).encode(), 400, "must contain open"),
    (json.dumps({"windows": [[[-1, 2, -2, 1]] * 105]}).encode(), 400, "positive"),
    (json.dumps({"windows": [{"id": 7, "ohlc": window(1)}]}).encode(), 400, "id must be"),
    (json.dumps({"windows": [window(1)] * 257}).encode(), 413, "at most 256"),
    (b" " * (5 * 1024 * 1024), 413, "bytes, at most"),
]


def test_every_bad_input_gets_one_sentence_and_the_server_keeps_serving(served):
    host, _ = served
    port = host_status(host).proxy_port
    for data, expected, words in BAD_INPUTS:
        status, answer, _ = post(port, data)
        assert status == expected, (data[:60], answer)
        assert words in answer["error"], answer
        assert "Traceback" not in answer["error"] and "\n" not in answer["error"]
    assert post(port, b"", path="/v2/nothing")[0] == 404
    # no Content-Length, and a client too slow to send its body: 411 and 408 from the proxy
    for raw, expected in (
        (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n\r\n", 411),
        (b"POST /v1/predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{", 408),
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(raw)
            reply = sock.recv(4096)
        assert reply.startswith(f"HTTP/1.1 {expected}".encode()), reply[:80]
        assert b'"error"' in reply and b"Traceback" not in reply
    assert post(port, body(window(3)))[0] == 200  # still serving
    status, metrics = get(port, "/metrics")
    assert 'moola_serve_requests_total{status="400"}' in metrics


def service_check(host, deep: bool = False):
    """The healthcheck's live-service result for this host: (state name, check messages)."""
    from moola_ops.hosts.inventory import Inventory as Inv
    from moola_ops.watch.health import STATE_NAMES
    from moola_ops.watch.health_run import run_healthcheck

    run = run_healthcheck(
        host.name, deep=deep, inventory=Inv(hosts={host.name: host}), record=False, timeout_s=120
    )
    (result,) = run.hosts
    checks = {c.name: (STATE_NAMES[c.state], c.message) for c in result.checks}
    return checks, result


def test_kill_9_is_critical_then_ensure_restores_serving(served):
    host, log = served
    checks, result = service_check(host, deep=True)
    assert checks["service"][0] == "OK" and "serving v1.1" in checks["service"][1]
    assert checks["service-latency"][0] == "OK" and result.service_p99_ms > 0
    before = host_status(host)
    # without its supervisor (test_supervision.py covers the restart), as after a pod restart
    supervisor = json.loads((Path(host.workspace) / "serve" / "supervisor.json").read_text())
    os.kill(supervisor["pid"], signal.SIGTERM)
    wait_for(lambda: not pid_alive(supervisor["pid"]), "the supervisor to stop")
    os.killpg(os.getpgid(before.live["pid"]), signal.SIGKILL)  # with its spare, as a pod restart
    wait_for(lambda: not pid_alive(before.live["pid"]), "the killed server to be gone")
    after = host_status(host)
    assert not after.serving and "is not running" in after.problem()
    assert get(after.proxy_port, "/readyz")[0] == 502  # a clean error, not a hang
    checks, result = service_check(host)
    assert checks["service"][0] == "CRITICAL" and "is not running" in checks["service"][1]
    assert result.service_up is False
    (outcome,) = serving.run([host], "ensure", journal_path=str(log))
    assert outcome.ok and "started the server for v1.1" in outcome.message, outcome.message
    restored = host_status(host)
    assert restored.serving and restored.served_release == "v1.1"
    assert restored.live["pid"] != before.live["pid"]
    (again,) = serving.run([host], "ensure", journal_path=str(log))
    assert again.ok and again.message == "nothing to do"  # idempotent: cron-safe
    assert service_check(host)[0]["service"][0] == "OK"


def test_serving_another_release_than_current_is_critical(served):
    host, _ = served
    current = Path(host.workspace) / "current"
    target = os.readlink(current)
    os.symlink("releases/v1.0", f"{current}.tmp")
    os.replace(f"{current}.tmp", current)  # someone moved `current` by hand
    try:
        checks, _ = service_check(host)
        assert checks["service"][0] == "CRITICAL"
        assert "serving v1.1, but current is v1.0" in checks["service"][1]
    finally:
        os.symlink(target, f"{current}.tmp")
        os.replace(f"{current}.tmp", current)
    assert service_check(host)[0]["service"][0] == "OK"


class Stream:
    """A client sending one request after another on a kept-alive connection."""

    def __init__(self, port: int):
        self.port, self.stop = port, threading.Event()
        self.failures: list[str] = []
        self.releases: dict[str, int] = {}
        self.longest_gap_s = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data, last = body(window(5)), time.monotonic()
        while not self.stop.is_set():
            try:
                conn.request("POST", "/v1/predict", body=data)
                response = conn.getresponse()
                answer = json.loads(response.read())
                if response.status != 200:
                    self.failures.append(f"{response.status}: {answer}")
                else:
                    self.releases[answer["release"]] = self.releases.get(answer["release"], 0) + 1
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            now = time.monotonic()
            self.longest_gap_s, last = max(self.longest_gap_s, now - last), now
        conn.close()

    def __enter__(self):
        self.thread.start()
        wait_for(lambda: sum(self.releases.values()) or self.failures, "a first answer")
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=60)


def test_traffic_moves_and_back_under_a_steady_stream_without_a_failed_request(served):
    host, _ = served
    before = host_status(host)
    with HostSession(host) as session, Stream(before.proxy_port) as stream:
        started = serving.start_candidate(session, host, "v1.0")
        assert started.ok, started
        moved = serving.move_traffic(session, host, "v1.0", port=started.port)
        assert moved["live"]["release"] == "v1.0" and moved["standby"]["release"] == "v1.1"
        count = sum(stream.releases.values())
        wait_for(lambda: stream.releases.get("v1.0", 0) >= 3, "answers from v1.0")
        assert pid_alive(before.live["pid"])  # the old server is a warm standby, not killed
        back = serving.move_traffic(session, host, "v1.1")  # back to the standby: no start
        assert back["live"]["pid"] == before.live["pid"] and back["standby"]["release"] == "v1.0"
        wait_for(lambda: sum(stream.releases.values()) > count + 6, "more answers")
    assert stream.failures == [], stream.failures[:3]
    assert set(stream.releases) == {"v1.0", "v1.1"}


def test_deploy_and_rollback_move_live_traffic_without_a_failed_request(served, bundles):
    host, log = served
    opts = engine.Options(**{**FAST.__dict__, "journal_path": str(log)})
    v12 = engine.resolve_bundle(str(bundles["v1.2"]))
    before = host_status(host)
    assert before.serving and before.current == "v1.1"
    with HostSession(host) as session:  # a stray: as if an interrupted deploy left it behind
        stray = serving.start_candidate(session, host, "v1.0")
    assert stray.ok and pid_alive(stray.pid)
    ledger = len(loads.read(host.workspace))
    with Stream(before.proxy_port) as stream:
        deployed = engine.deploy([host], v12, opts)
        assert deployed.ok, deployed.outcomes
        wait_for(lambda: stream.releases.get("v1.2", 0) >= 3, "answers from v1.2")
        now = host_status(host)
        assert now.served_release == "v1.2" and now.standby["release"] == "v1.1"
        # ONE model load on the host for the whole deploy: the candidate server was the check
        deploy_loads = loads.read(host.workspace)[ledger:]
        assert [(x["release"], x["by"], x["pid"]) for x in deploy_loads] == [
            ("v1.2", "serve", now.live["pid"])
        ]
        wait_for(lambda: not pid_alive(stray.pid), "the stray server to drain at the switch")
        ledger = len(loads.read(host.workspace))
        back = engine.rollback([host], None, opts)
        assert back.ok, back.outcomes
        # a rollback to the verified warm standby loads nothing: probe, move, check over HTTP
        assert loads.read(host.workspace)[ledger:] == []
        seen = stream.releases.get("v1.1", 0)
        wait_for(lambda: stream.releases.get("v1.1", 0) >= seen + 3, "answers from v1.1 again")
    assert stream.failures == [], stream.failures[:3]
    after = host_status(host)
    assert after.served_release == after.current == "v1.1" and after.standby["release"] == "v1.2"
    assert after.live["pid"] == now.standby["pid"]  # the warm standby took the traffic back
    deploy_steps = {
        e["step"]: e["status"] for e in read_events(log, deployment=deployed.deployment)
    }
    for step in ("serve-start", "serve-check", "switch", "serve-switch", "serve-post-check"):
        assert deploy_steps[step] == "ok", (step, deploy_steps)
    events = read_events(log, deployment=back.deployment)
    rollback_steps = {e["step"]: e["status"] for e in events}
    for step in ("serve-standby", "switch", "serve-switch", "serve-post-check"):
        assert rollback_steps[step] == "ok", (step, rollback_steps)
    assert "serve-start" not in rollback_steps  # nothing had to start: the standby was warm
    assert "post-check-runtime" not in rollback_steps  # no torch process after the switch
    # no runtime-check process: the candidate server was the check (its verdict logged as such)
    checked = next(
        e for e in read_events(log, deployment=deployed.deployment) if e["step"] == "check"
    )
    assert checked["detail"]["by"] == "server"
    started = next(
        e for e in read_events(log, deployment=deployed.deployment) if e["step"] == "serve-start"
    )
    assert started["detail"]["device"]["device"] == "cpu"  # the device report of the check
    order = [e["step"] for e in events]
    # the standby was probed (a real request answered by v1.1) before traffic moved to it
    assert order.index("serve-standby") < order.index("serve-switch")
    probed = next(e for e in events if e["step"] == "serve-standby")["detail"]
    assert probed["probe"]["releases"] == {"v1.1": 1} and probed["standby"]["release"] == "v1.1"


def test_a_failed_post_switch_check_moves_traffic_back_too(served, bundles):
    host, log = served
    opts = engine.Options(**{**FAST.__dict__, "journal_path": str(log)})
    failing = replace(host, smoke="false")  # the operator's smoke command fails after the switch
    before = host_status(host)
    with Stream(before.proxy_port) as stream:
        result = engine.deploy([failing], engine.resolve_bundle(str(bundles["v1.0"])), opts)
        count = sum(stream.releases.values())
        wait_for(lambda: sum(stream.releases.values()) > count + 3, "answers after the switch back")
    (outcome,) = result.outcomes
    assert outcome.status == "failed" and "switched back to v1.1" in outcome.message, outcome
    assert stream.failures == [], stream.failures[:3]
    after = host_status(host)
    assert after.current == after.served_release == "v1.1" and after.serving
    steps = {e["step"]: e["status"] for e in read_events(log, deployment=result.deployment)}
    assert steps["serve-switch"] == "ok" and steps["serve-switch-back"] == "ok", steps


def test_sigterm_drains_a_request_held_in_flight(served):
    host, _ = served
    hold_dir = Path(host.workspace) / "hold"
    hold_dir.mkdir(exist_ok=True)
    hold_dir.chmod(0o777)
    with HostSession(host) as session:
        started = serving.start_candidate(
            session,
            host,
            "v1.0",
            server_args=("--test-hold-dir", str(hold_dir), "--read-timeout-s", "1"),
        )
        assert started.ok, started
        # the server's own bounded read: a client that stops sending gets a 408
        with socket.create_connection(("127.0.0.1", started.port), timeout=30) as sock:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
            assert sock.recv(4096).startswith(b"HTTP/1.1 408")
        (hold_dir / "hold").touch()
        answers: list = []
        client = threading.Thread(
            target=lambda: answers.append(post(started.port, body(window(6)))), daemon=True
        )
        client.start()
        wait_for(lambda: (hold_dir / "in-forward").exists(), "the request to be in flight")
        assert serving.drain(session, host, started.pid)

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", started.port), timeout=1).close()
            except (ConnectionRefusedError, ConnectionResetError):
                return True  # reset: it was queued on the listener as it closed
            return False

        wait_for(refused, "the listener to close")
        assert client.is_alive() and not answers  # held, not dropped
        (hold_dir / "hold").unlink()
        client.join(timeout=60)
        ((status, answer, _),) = answers
        assert status == 200 and answer["release"] == "v1.0"
        wait_for(lambda: not pid_alive(started.pid), "the drained server to exit")


def test_a_release_whose_server_never_gets_ready_is_stopped_and_nothing_moves(served, tmp_path):
    host, _ = served
    code = freeze_runtime_code(tmp_path / "code")
    serve_py = code / "moola_core" / "runtime" / "serve.py"
    serve_py.write_text(
        serve_py.read_text().replace(
            '        manifest_bytes = (self.release / "manifest.json").read_bytes()',
            '        raise RuntimeError("this release cannot serve")',
        )
    )
    make_tiny_run(tmp_path / "runs", "run-broken", seed=5)
    built = build_bundle(
        "v3.0-broken",
        "run-broken",
        runs_dir=tmp_path / "runs",
        out_dir=tmp_path / "bundles",
        sla_p99_ms=60000.0,
        code_root=code,
    )
    before = host_status(host)
    log = served[1]
    opts = engine.Options(**{**FAST.__dict__, "journal_path": str(log)})
    result = engine.deploy([host], engine.resolve_bundle(str(built.path)), opts)
    (outcome,) = result.outcomes
    assert outcome.status == "failed" and "never got ready" in outcome.message, outcome.message
    assert "this release cannot serve" in outcome.message and "nothing switched" in outcome.message
    after = host_status(host)
    assert after.current == before.current and after.live == before.live and after.serving
    assert post(after.proxy_port, body(window(7)))[1]["release"] == before.served_release
    assert not [s for s in after.servers if s.get("release") == "v3.0-broken"]  # none lingers
    events = read_events(log, deployment=result.deployment)
    by_step = {e["step"]: e["status"] for e in events}
    assert by_step["serve-start"] == "failed" and "switch" not in by_step


def test_a_dead_standby_is_replaced_by_a_started_server_and_nothing_fails(served, bundles):
    host, log = served
    opts = engine.Options(**{**FAST.__dict__, "journal_path": str(log)})
    if host_status(host).current != "v1.1":
        assert engine.rollback([host], "v1.1", opts).ok
    assert engine.deploy([host], engine.resolve_bundle(str(bundles["v1.2"])), opts).ok
    now = host_status(host)
    assert now.served_release == "v1.2" and now.standby["release"] == "v1.1"
    # with its spare (its process group): state.json still names it, the facts do too
    os.killpg(os.getpgid(now.standby["pid"]), signal.SIGKILL)
    wait_for(lambda: not pid_alive(now.standby["pid"]), "the standby to die")
    with Stream(now.proxy_port) as stream:
        back = engine.rollback([host], "v1.1", opts)
        assert back.ok, back.outcomes
        wait_for(lambda: stream.releases.get("v1.1", 0) >= 3, "answers from v1.1")
    assert stream.failures == [], stream.failures[:3]
    events = read_events(log, deployment=back.deployment)
    by_step = {e["step"]: e for e in events}
    assert by_step["serve-standby"]["status"] == "skipped"  # probed: not running, nothing moved
    assert by_step["serve-start"]["status"] == by_step["serve-switch"]["status"] == "ok"
    after = host_status(host)
    assert (
        after.served_release == after.current == "v1.1" and after.live["pid"] != now.standby["pid"]
    )


def _cli(host, tmp_path, log, *args, env=None, popen=False):
    import subprocess
    import sys

    from tests.integration.helpers import default_signals

    inventory = write_inventory(tmp_path / "hosts.yaml", {host.name: host}, with_python=True)
    argv = [str(Path(sys.executable).with_name("invoke")), *args, "--inventory", str(inventory)]
    environ = {**os.environ, "MOOLA_LOG": str(log), **(env or {})}
    if popen:
        return subprocess.Popen(
            argv,
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=default_signals,
        )
    return subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_stopping_a_deploy_between_serve_start_and_the_switch_stops_the_candidate(
    served, bundles, tmp_path, sig
):
    host, log = served
    before = host_status(host)
    # a release with no server running (run alone, the fixture leaves v1.0 as the standby)
    alive = {s.get("release") for s in before.servers if s["alive"]}
    target = next(v for v in ("v1.0", "v1.2") if v not in alive and v != before.current)
    assert before.serving
    gate = tmp_path / "gate"
    # the deploy waits at the entry of serve-check: v1.0's candidate is up, traffic not moved
    env = {"MOOLA_PAUSE_AT": "serve-check", "MOOLA_PAUSE_FILE": str(gate)}
    args = ("deploy", "--host", host.name, "--bundle", str(bundles[target]), "--check-runs", "3")
    proc = _cli(host, tmp_path, log, *args, env=env, popen=True)
    wait_for(lambda: Path(f"{gate}.waiting").exists() or proc.poll() is not None, "the pause")
    assert proc.poll() is None, proc.communicate()
    candidates = [s for s in host_status(host).servers if s.get("release") == target and s["alive"]]
    assert len(candidates) == 1  # the candidate runs on its private port
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, (out, err)
    wait_for(lambda: not pid_alive(candidates[0]["pid"]), "the candidate to drain and exit")
    after = host_status(host)
    assert after.current == before.current and after.live == before.live and after.serving
    cleanup = [e for e in read_events(log) if e["step"] == "cleanup"][-1]
    stopped = cleanup["detail"]["stopped_candidate"]
    assert [s["pid"] for s in stopped] == [candidates[0]["pid"]]


def test_deploy_no_serve_ships_the_files_and_leaves_traffic_alone(served, bundles, tmp_path):
    host, log = served
    before = host_status(host)
    assert before.serving and before.current == "v1.1"
    done = _cli(
        host,
        tmp_path,
        log,
        *("deploy", "--host", host.name, "--bundle", str(bundles["v1.0"]), "--no-serve"),
        *("--check-runs", "3"),
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    after = host_status(host)
    assert after.current == "v1.0"  # the files moved ...
    assert after.live == before.live and after.served_release == "v1.1"  # ... traffic did not
    deployment = done.stdout.strip().splitlines()[-1].split()[1].rstrip(":")
    steps = [e["step"] for e in read_events(log, deployment=deployment)]
    assert "switch" in steps and not [s for s in steps if s.startswith("serve-")], steps
    # back as it was, serving untouched again
    opts = engine.Options(**{**FAST.__dict__, "journal_path": str(log), "serve": False})
    assert engine.rollback([host], "v1.1", opts).ok
    assert host_status(host).current == "v1.1"


def test_a_host_that_never_served_says_so_and_how_to_start(bundles, tmp_path):
    """Files deployed with serving off (`--no-serve`): the service check is OK (nothing was
    meant to serve) but says it is not serving and names the command that starts it."""
    sandbox, root = start_hosts(["files-1"])
    try:
        (host,) = Inventory.from_sandbox(sandbox, connect_timeout_s=5).resolve("files-1")
        opts = engine.Options(
            **{**FAST.__dict__, "journal_path": str(tmp_path / "log.jsonl"), "serve": False}
        )
        assert engine.deploy([host], engine.resolve_bundle(str(bundles["v1.0"])), opts).ok
        checks, result = service_check(host)
        state, message = checks["service"]
        assert state == "OK" and message.startswith("not serving"), message
        assert f"invoke serve --host {host.name} start" in message
        assert result.service_up is not True  # not counted as a live service
    finally:
        sandbox.stop()
        shutil.rmtree(root, ignore_errors=True)

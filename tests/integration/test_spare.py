"""The model server's spare (issue #23, docs/serving.md "Supervision"): a forked copy of the
ready server that takes over its listening socket when the server dies without a word, with
no second model load, and exits when the server ends on purpose.

A real server process for a tiny release on 127.0.0.1, no proxy and no supervisor (those are
in test_supervision.py); every wait is on a file, a port or a process, never a fixed sleep.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
from pathlib import Path

import pytest

from moola_core.runtime import loads
from tests.integration.helpers import pid_alive, release_server, wait_for, window
from tests.unit.test_runtime import make_release

BODY = json.dumps({"windows": [window(5)]}).encode()


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return make_release(tmp_path_factory.mktemp("spare"), "v0.9", sla_p99_ms=10_000.0)


def get(port: int, path: str, body: bytes | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST" if body else "GET", path, body=body)
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def model_loads(release: Path) -> int:
    path = loads.ledger_path(release)
    return len(path.read_text().splitlines()) if path and path.exists() else 0


def refused(port: int) -> bool:
    try:
        get(port, "/healthz")
    except ConnectionRefusedError:
        return True
    return False


def stop(pid: int) -> None:
    """End a server this test's kill left running (a spare that took over), by its pid."""
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not pid_alive(pid), f"server {pid} to exit")


def test_a_killed_server_is_served_again_by_its_spare_with_no_second_model_load(release, tmp_path):
    state = tmp_path / "state.json"
    with release_server(release, state, "--no-capture", "--spare") as (port, proc):
        first = json.loads(state.read_text())
        spare = first["spare_pid"]
        assert pid_alive(spare) and first["generation"] == 0
        code, health = get(port, "/healthz")
        assert code == 200 and health["spare"] == {"pid": spare, "waiting": True}
        assert get(port, "/v1/predict", BODY)[0] == 200
        loaded = model_loads(release)
        assert loaded >= 1  # the ledger counts loads: the takeover below adds none

        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        heir = {}
        try:
            # the same port answers: the spare holds the same listening socket
            code, answer = get(port, "/v1/predict", BODY)
            assert code == 200 and answer["predictions"], answer
            heir = json.loads(state.read_text())
            assert heir["pid"] == spare and heir["generation"] == 1
            assert heir["took_over"]["from"] == proc.pid and heir["ready"]
            code, health = get(port, "/healthz")
            assert code == 200 and health["pid"] == spare and health["generation"] == 1
            assert health["spare"]["waiting"] and health["spare"]["pid"] not in (spare, proc.pid)
            assert get(port, "/readyz")[0] == 200
            assert model_loads(release) == loaded
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/metrics")
            metrics = conn.getresponse().read().decode()
            conn.close()
            assert "\nmoola_serve_spare_waiting 1\n" in metrics
            assert "\nmoola_serve_takeovers 1\n" in metrics
        finally:
            stop(heir.get("pid") or spare)
    # the heir drained on SIGTERM and its own spare left with it
    assert not pid_alive(health["spare"]["pid"]) and refused(port)


def test_a_server_that_ends_on_purpose_takes_its_spare_with_it(release, tmp_path):
    state = tmp_path / "state.json"
    with release_server(release, state, "--no-capture", "--spare") as (port, proc):
        spare = json.loads(state.read_text())["spare_pid"]
        assert pid_alive(spare)
    # release_server sent SIGTERM and waited: the spare was told, exited and was reaped
    assert proc.returncode == 0
    assert not os.path.exists(f"/proc/{spare}"), "the spare is left (or a zombie)"
    assert refused(port)


def test_a_spare_does_not_take_over_from_a_server_that_had_just_taken_over(release, tmp_path):
    state = tmp_path / "state.json"
    flags = ("--no-capture", "--spare", "--spare-after-s", "3600")
    with release_server(release, state, *flags) as (port, proc):
        spare = json.loads(state.read_text())["spare_pid"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        wait_for(lambda: json.loads(state.read_text())["pid"] == spare, "the takeover")
        heir = json.loads(state.read_text())
        assert get(port, "/readyz")[0] == 200
        os.kill(spare, signal.SIGKILL)  # dies "at once" (--spare-after-s 3600): a crash loop
        wait_for(lambda: not pid_alive(heir["spare_pid"]), "the heir's spare to give up")
        assert refused(port)  # left to the supervisor and its back-off (test_supervision.py)


def test_a_shadow_has_no_spare(release, tmp_path):
    state = tmp_path / "state.json"
    flags = ("--no-capture", "--spare", "--role", "shadow")
    with release_server(release, state, *flags) as (port, _proc):
        assert json.loads(state.read_text())["spare_pid"] is None
        assert get(port, "/healthz")[1]["spare"] is None

"""The proxy's mirror process (proxy._start_mirror): the live path hands each copy's bytes
to a socket without waiting; a forked process at nice 19 sends them to the shadow, byte for
byte (also a body larger than one socket message), counts them, and ends with the proxy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from moola_core.agent import proxy as serve_proxy
from tests.integration.helpers import wait_for

AGENT = Path(serve_proxy.__file__).with_name("__main__.py")

# a stand-in model server: keeps every body it gets as got-<n>, answers 200
STUB = r"""
import http.server, json, os, sys, threading
folder, mode = sys.argv[1], sys.argv[2]
numbering, count = threading.Lock(), [0]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        rid = self.headers.get("X-Moola-Request-Id", "")
        with numbering:  # requests may arrive together: each its own got-<n>
            n, count[0] = count[0], count[0] + 1
        with open(os.path.join(folder, "got-%d" % n), "wb") as fh:
            fh.write(rid.encode() + b"\n" + body)
        data = json.dumps({"ok": True, "port": self.server.server_address[1]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        # "close": drop the connection after each answer without saying so (as a server whose
        # keep-alive timed out): the next request on it fails
        self.close_connection = mode == "close"
    def log_message(self, *a):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


@pytest.fixture
def proxied(tmp_path, request):
    """A proxy whose live and shadow are stub servers; yields (port, proxy, folders, ws).
    Parametrised indirectly with the shadow stub's mode ("keep" by default)."""
    modes = {"live": "keep", "shadow": getattr(request, "param", "keep")}
    procs, folders, ports = [], {}, {}
    for role in ("live", "shadow"):
        folders[role] = tmp_path / role
        folders[role].mkdir()
        proc = subprocess.Popen(
            [sys.executable, "-c", STUB, str(folders[role]), modes[role]],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        ports[role] = int(proc.stdout.readline())
    ws = tmp_path / "ws"
    (ws / "serve").mkdir(parents=True)
    (ws / "serve" / "state.json").write_text(
        json.dumps(
            {
                "v": 1,
                "live": {"release": "a", "port": ports["live"], "pid": procs[0].pid},
                "shadow": {"release": "b", "port": ports["shadow"], "fraction": 1.0},
            }
        )
    )
    proxy = subprocess.Popen(
        [sys.executable, "-S", str(AGENT), "proxy", "--workspace", str(ws), "--port", "0"],
        stderr=subprocess.PIPE,
    )
    procs.append(proxy)
    record = ws / "serve" / "proxy.json"
    wait_for(record.is_file, "the proxy's record", timeout_s=30.0, poll_s=0.05)
    try:
        yield json.loads(record.read_text())["port"], proxy, folders, ws
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _post(port: int, body: bytes, rid: str) -> bytes:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/predict", data=body, headers={"X-Moola-Request-Id": rid}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read()


def _stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_proxy/state", timeout=30) as r:
        return json.loads(r.read())["stats"]


def test_copies_reach_the_shadow_byte_for_byte_from_a_low_priority_process(proxied):
    port, proxy, folders, _ws = proxied
    bodies = [json.dumps({"windows": [[[i, i + 1, i - 1, i]] * 105]}).encode() for i in range(20)]
    big = json.dumps({"pad": "x" * (3 * serve_proxy.MIRROR_CHUNK + 17)}).encode()
    for i, body in enumerate([*bodies, big]):
        answer = json.loads(_post(port, body, f"req-{i}"))
        assert answer["ok"]  # the live stub answered
    wait_for(
        lambda: _stats(port).get("shadow_sent") == 21, "21 copies sent", timeout_s=30.0, poll_s=0.05
    )
    got = {}
    for path in folders["shadow"].iterdir():
        rid, _, body = path.read_bytes().partition(b"\n")
        got[rid.decode()] = body
    assert got == {f"req-{i}": body for i, body in enumerate([*bodies, big])}
    stats = _stats(port)
    assert stats.get("shadow_errors", 0) == 0 and stats.get("shadow_dropped", 0) == 0
    (mirror,) = _children(proxy.pid)
    assert os.getpriority(os.PRIO_PROCESS, mirror) == serve_proxy.MIRROR_NICE
    # the mirror does not hold the public port: only the proxy answers there
    proxy.send_signal(signal.SIGTERM)
    assert proxy.wait(timeout=60) == 0
    wait_for(
        lambda: not Path(f"/proc/{mirror}").exists() or _zombie(mirror),
        "the mirror's exit",
        timeout_s=30.0,
        poll_s=0.05,
    )


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_dead_shadow_is_counted_and_the_live_answers_go_on(proxied):
    port, _proxy, folders, ws = proxied
    path = ws / "serve" / "state.json"
    state = json.loads(path.read_text())
    state["shadow"]["port"] = _closed_port()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)  # as the shadow tasks write it: the proxy sees it on the next request
    for i in range(5):
        assert json.loads(_post(port, b'{"windows": []}', f"dead-{i}"))["ok"]
    wait_for(
        lambda: _stats(port).get("shadow_errors") == 5,
        "5 failed copies counted",
        timeout_s=30.0,
        poll_s=0.05,
    )
    assert len(list(folders["live"].iterdir())) == 5
    assert list(folders["shadow"].iterdir()) == []


@pytest.mark.parametrize("proxied", ["close"], indirect=True)
def test_a_connection_the_shadow_dropped_is_retried_once_fresh(proxied):
    port, _proxy, folders, _ws = proxied
    for i in range(6):
        assert json.loads(_post(port, b'{"windows": []}', f"c-{i}"))["ok"]
    wait_for(
        lambda: _stats(port).get("shadow_sent") == 6, "6 copies sent", timeout_s=30.0, poll_s=0.05
    )
    assert _stats(port).get("shadow_errors", 0) == 0
    assert len(list(folders["shadow"].iterdir())) == 6


def _closed_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_a_new_shadow_starts_its_counters_from_zero_and_totals_are_named_so(proxied):
    # a fresh shadow used to show the errors of the one before it (shadow_errors 4142)
    port, _proxy, folders, ws = proxied
    path = ws / "serve" / "state.json"

    def route(shadow: dict) -> None:
        state = json.loads(path.read_text())
        state["shadow"] = shadow
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)

    good = json.loads(path.read_text())["shadow"]
    route({"release": "dead", "port": _closed_port(), "fraction": 1.0, "since": 1.0})
    for i in range(4):
        _post(port, b'{"windows": []}', f"old-{i}")
    wait_for(lambda: _stats(port).get("shadow_errors") == 4, "4 failed copies", timeout_s=30.0)
    route(dict(good, since=2.0))  # the next shadow
    stats = _stats(port)
    assert (stats["shadow_sent"], stats["shadow_errors"], stats["shadow_dropped"]) == (0, 0, 0)
    assert stats["total_shadow_errors"] == 4
    for i in range(3):
        _post(port, b'{"windows": []}', f"new-{i}")
    wait_for(lambda: _stats(port).get("shadow_sent") == 3, "3 copies sent", timeout_s=30.0)
    stats = _stats(port)
    assert stats["shadow_errors"] == 0 and stats["total_shadow_sent"] == 3
    route(None)
    assert "shadow_sent" not in _stats(port)  # no shadow, no per-shadow counters

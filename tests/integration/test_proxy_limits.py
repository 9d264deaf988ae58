"""The public proxy's limits against clients Moola does not control, over real sockets to a real
proxy process (moola_core/agent/proxy.py on the agent's HTTP front) in front of a stub model server.

Time is controlled by small configured deadlines (`--read-timeout-s`), and the moments by
files: the stub holds every request until the test lets it go, so "every slot is busy" is a
fact the test waits for, not a guess. Covers the whole-request deadline (slowloris), the
connection cap (503 at once, never an empty reply; an idle kept-alive connection gives its
place), one Content-Length only, token authentication, what is forwarded, the drain, and that
a slow model server never holds up the proxy's own answers to other clients.
"""

from __future__ import annotations

import contextlib
import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from moola_core.agent import proxy as serve_proxy
from tests.integration.helpers import wait_for

AGENT = Path(serve_proxy.__file__).with_name("__main__.py")

# a stand-in model server: writes each request it gets (headers, body) as got-<n> (numbered under
# a lock: counting the files raced when requests arrived together, and two wrote got-1; written
# whole and renamed: a poll read a file half written), waits while the file `hold` exists,
# answers 200 with its port
STUB = r"""
import http.server, json, os, sys, threading, time
folder = sys.argv[1]
numbering = threading.Lock()
count = [0]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with numbering:  # handler threads run at once: each request its own number
            n, count[0] = count[0], count[0] + 1
        # written whole, then renamed: the test polls the folder and must never read half a file
        with open(os.path.join(folder, ".part-%d" % n), "w") as fh:
            json.dump({"path": self.path, "headers": dict(self.headers),
                       "items": self.headers.items(), "body": body.decode("latin-1")}, fh)
        os.replace(os.path.join(folder, ".part-%d" % n), os.path.join(folder, "got-%d" % n))
        while os.path.exists(os.path.join(folder, "hold")):
            time.sleep(0.01)
        data = json.dumps({"ok": True, "release": "stub"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    do_GET = do_POST = _answer
    def log_message(self, *a):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class Proxy:
    """A running proxy (its port, workspace, the stub's folder) with helpers to talk to it."""

    def __init__(self, port: int, ws: Path, folder: Path, proc):
        self.port, self.ws, self.folder, self.proc = port, ws, folder, proc

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def got(self) -> list[dict]:
        files = sorted(self.folder.glob("got-*"), key=lambda p: int(p.name[4:]))
        return [json.loads(p.read_text()) for p in files]


@pytest.fixture
def start_proxy(tmp_path):
    """Start a stub live server and a proxy in front of it: start_proxy(*proxy flags)."""
    procs = []

    def start(*flags: str, token: str | None = None) -> Proxy:
        folder = tmp_path / f"stub-{len(procs)}"
        folder.mkdir()
        stub = subprocess.Popen(
            [sys.executable, "-c", STUB, str(folder)], stdout=subprocess.PIPE, text=True
        )
        procs.append(stub)
        stub_port = int(stub.stdout.readline())
        ws = tmp_path / f"ws-{len(procs)}"
        (ws / "serve").mkdir(parents=True)
        live = {"release": "stub", "port": stub_port, "pid": stub.pid}
        (ws / "serve" / "state.json").write_text(json.dumps({"v": 1, "live": live}))
        if token is not None:
            (ws / "serve" / "token").write_text(token + "\n")
        proxy = subprocess.Popen(
            [
                sys.executable,
                "-S",
                str(AGENT),
                "proxy",
                "--workspace",
                str(ws),
                "--port",
                "0",
                *flags,
            ],
            stderr=subprocess.PIPE,
        )
        procs.append(proxy)
        record = ws / "serve" / "proxy.json"
        wait_for(record.is_file, "the proxy's record", timeout_s=30.0, poll_s=0.05)
        return Proxy(json.loads(record.read_text())["port"], ws, folder, proxy)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def read_answer(sock: socket.socket) -> tuple[int, dict, bytes]:
    """One whole answer (status, headers, body); (0, {}, b"") when the proxy closed first."""
    data = b""
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
            if len(rest) >= int(headers["content-length"]):
                return int(lines[0].split()[1]), headers, rest[: int(headers["content-length"])]
        chunk = sock.recv(65536)
        if not chunk:
            return 0, {}, b""
        data += chunk


def request(
    proxy: Proxy,
    method: str = "GET",
    path: str = "/v1/predict",
    body: bytes = b"",
    headers: dict | None = None,
    sock: socket.socket | None = None,
):
    lines = [f"{method} {path} HTTP/1.1", "Host: x"]
    if method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    own = sock is None
    sock = sock or proxy.connect()
    try:
        sock.sendall(raw)
        return read_answer(sock)
    finally:
        if own:
            sock.close()


def closed_within(sock: socket.socket, limit_s: float) -> bool:
    """True when the proxy closes `sock` (after any answer) within `limit_s`."""
    ready, _, _ = select.select([sock], [], [], limit_s)
    if not ready:
        return False
    while True:
        try:
            if not sock.recv(65536):
                return True
        except OSError:
            return True


# --- the whole-request deadline ------------------------------------------------------------------


@pytest.mark.parametrize("where", ["head", "body"])
def test_a_client_trickling_one_byte_at_a_time_gets_408_at_the_deadline(start_proxy, where):
    proxy = start_proxy("--read-timeout-s", "1")
    body = json.dumps({"windows": [[1, 2, 3]] * 50}).encode()
    if where == "head":
        raw = b"POST /v1/predict HTTP/1.1\r\nX-Pad: " + b"a" * 400 + b"\r\n"
    else:
        raw = f"POST /v1/predict HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    with proxy.connect() as sock:
        sock.sendall(raw[:1])
        answered = b""
        # a byte every 0.25 s: each read waits far less than the 1 s limit, so only a deadline
        # on the whole request ends it; 60 bytes (15 s) is far past it
        for byte in raw[1:61]:
            if select.select([sock], [], [], 0.25)[0]:
                answered = sock.recv(65536)
                break
            sock.sendall(bytes([byte]))
        assert answered.startswith(b"HTTP/1.1 408 "), answered[:80]
        assert b"within 1s" in answered and b"Connection: close" in answered
    assert proxy.got() == []  # nothing of it reached the model server


def test_a_connection_that_never_sends_is_closed_at_the_deadline(start_proxy):
    proxy = start_proxy("--read-timeout-s", "1")
    with proxy.connect() as sock:
        assert closed_within(sock, 20.0)  # not the 75 s a kept-alive idle connection gets
    status, _, body = request(proxy, "GET", "/_proxy/healthz")
    assert status == 200, body


# --- the connection cap --------------------------------------------------------------------------


def test_at_the_cap_a_new_client_gets_503_at_once_then_is_served_when_a_slot_frees(start_proxy):
    proxy = start_proxy("--max-connections", "3", "--read-timeout-s", "30")
    (proxy.folder / "hold").touch()  # the stub holds each request: three slots stay busy
    held = [proxy.connect() for _ in range(3)]
    try:
        for i, sock in enumerate(held):
            sock.sendall(f"GET /held-{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        wait_for(lambda: len(proxy.got()) == 3, "three requests held by the model server")
        for _ in range(2):  # refused while every slot is busy: an answer, never an empty reply
            status, headers, body = request(proxy, "GET", "/_proxy/healthz")
            assert status == 503 and headers["connection"] == "close"
            assert "3 connections" in json.loads(body)["error"]
        (proxy.folder / "hold").unlink()
        assert [read_answer(sock)[0] for sock in held] == [200, 200, 200]
        # the three are idle kept-alive connections now: a new client takes the place of one
        answer = {}

        def served() -> bool:
            answer["got"] = request(proxy, "GET", "/_proxy/healthz")
            return answer["got"][0] == 200

        wait_for(served, "a new client to be served in an idle connection's place")
        wait_for(lambda: any(closed_within(s, 0.05) for s in held), "an idle one to give way")
    finally:
        for sock in held:
            sock.close()


def test_slowloris_beyond_the_cap_never_starves_new_clients_for_longer_than_the_deadline(
    start_proxy,
):
    proxy = start_proxy("--max-connections", "4", "--read-timeout-s", "1")
    slow = [proxy.connect() for _ in range(8)]  # twice the cap, each sends a byte and stalls
    try:
        for sock in slow:
            with contextlib.suppress(OSError):  # a refused one may be closed already
                sock.sendall(b"P")
        # each either got its 503 at once or 408 at the deadline; none stays open
        for sock in slow:
            assert closed_within(sock, 20.0)
        status, _, _ = request(proxy, "GET", "/_proxy/healthz")
        assert status == 200
    finally:
        for sock in slow:
            sock.close()


# --- framing ---------------------------------------------------------------------------------------


def test_two_content_lengths_are_refused_before_anything_is_forwarded(start_proxy):
    proxy = start_proxy()
    inner = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    for first, second in ((b"0", str(len(inner)).encode()), (b"7", b"7")):
        raw = (
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: "
            + first
            + b"\r\nContent-Length: "
            + second
            + b"\r\n\r\n"
            + inner
        )
        with proxy.connect() as sock:
            sock.sendall(raw)
            status, headers, body = read_answer(sock)
            assert status == 400, body
            assert "more than one Content-Length" in json.loads(body)["error"]
            assert closed_within(sock, 20.0)  # nothing after it is read as a request
    for bad in (b"+5", b"5_0", b"0x5"):
        raw = b"POST /v1/predict HTTP/1.1\r\nContent-Length: " + bad + b"\r\n\r\n12345"
        with proxy.connect() as sock:
            sock.sendall(raw)
            assert read_answer(sock)[0] == 400
    assert proxy.got() == []
    status, _, _ = request(proxy, "POST", body=b"{}")
    (got,) = proxy.got()  # the model server sees one Content-Length, the proxy's own
    assert status == 200 and got["headers"]["Content-Length"] == "2"


# --- the token ---------------------------------------------------------------------------------------

TOKEN = "tok-" + "a1" * 20


def test_with_auth_every_path_but_the_hosts_own_probes_needs_the_token(start_proxy):
    proxy = start_proxy("--auth", "always", token=TOKEN)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for method, path in (("POST", "/v1/predict"), ("GET", "/metrics"), ("GET", "/_proxy/state")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            status, answer_headers, body = request(proxy, method, path, b"{}", headers)
            assert status == 401, (path, headers, body)
            assert answer_headers["www-authenticate"] == 'Bearer realm="moola"'
            sentence = json.loads(body)["error"]
            assert "Authorization: Bearer" in sentence and TOKEN not in sentence
    assert proxy.got() == []  # nothing unauthenticated reached the model server
    for path in ("/healthz", "/readyz", "/_proxy/healthz"):  # from the host itself: open
        assert request(proxy, "GET", path)[0] == 200
    status, _, body = request(proxy, "GET", "/_proxy/state", headers=bearer)
    assert status == 200 and json.loads(body)["auth_required"] is True
    status, _, _ = request(proxy, "POST", "/v1/predict", b"{}", bearer)
    assert status == 200
    forwarded = proxy.got()[-1]["headers"]
    assert "Authorization" not in forwarded  # the model server never sees the token
    proxy.proc.terminate()
    assert TOKEN.encode() not in proxy.proc.communicate(timeout=60)[1]  # nor the proxy's log


def test_a_rotated_token_applies_to_the_next_request_without_a_restart(start_proxy):
    proxy = start_proxy("--auth", "always", token=TOKEN)
    with proxy.connect() as sock:  # a kept-alive client with the old token
        old = {"Authorization": f"Bearer {TOKEN}"}
        assert request(proxy, "POST", "/v1/predict", b"{}", old, sock=sock)[0] == 200
        fresh = TOKEN[::-1]
        tmp = proxy.ws / "serve" / "token.tmp"
        tmp.write_text(fresh)
        tmp.replace(proxy.ws / "serve" / "token")
        assert request(proxy, "POST", "/v1/predict", b"{}", old, sock=sock)[0] == 401
    new = {"Authorization": f"Bearer {fresh}"}
    assert request(proxy, "POST", "/v1/predict", b"{}", new)[0] == 200


def test_no_token_file_with_auth_required_lets_nothing_in(start_proxy):
    proxy = start_proxy("--auth", "always")  # fail closed
    status, _, body = request(proxy, "POST", "/v1/predict", b"{}", {"Authorization": "Bearer "})
    assert status == 401 and "rotate-token" in json.loads(body)["error"]
    assert request(proxy, "GET", "/healthz")[0] == 200


def test_a_proxy_bound_beyond_loopback_requires_the_token_by_default(start_proxy):
    proxy = start_proxy("--bind", "0.0.0.0", token=TOKEN)
    assert json.loads((proxy.ws / "serve" / "proxy.json").read_text())["auth_required"] is True
    assert request(proxy, "POST", "/v1/predict", b"{}")[0] == 401
    loopback = start_proxy(token=TOKEN)  # auto on loopback: no token needed
    assert request(loopback, "POST", "/v1/predict", b"{}")[0] == 200


def test_loopback_is_told_apart_from_every_other_address():
    assert serve_proxy.is_loopback("127.0.0.1") and serve_proxy.is_loopback("127.8.0.3")
    assert serve_proxy.is_loopback("::1") and serve_proxy.is_loopback("::ffff:127.0.0.1")
    for other in ("0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "localhost", ""):
        assert not serve_proxy.is_loopback(other), other


def test_a_kept_alive_request_gets_its_own_deadline_from_its_first_byte(start_proxy):
    proxy = start_proxy("--read-timeout-s", "1")
    with proxy.connect() as sock:
        assert request(proxy, "GET", "/_proxy/healthz", sock=sock)[0] == 200
        time.sleep(1.5)  # idle longer than the deadline: the idle limit's business, not its
        assert request(proxy, "GET", "/_proxy/healthz", sock=sock)[0] == 200


# --- the front never waits on a model server ------------------------------------------------------


def test_a_slow_model_server_never_delays_another_clients_probe_or_state(start_proxy):
    proxy = start_proxy("--read-timeout-s", "30")
    (proxy.folder / "hold").touch()  # the stub holds every request it gets
    held = [proxy.connect() for _ in range(4)]
    try:
        for i, sock in enumerate(held):
            sock.sendall(f"GET /slow-{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        wait_for(lambda: len(proxy.got()) == 4, "four requests held by the model server")
        for _ in range(3):  # answered while all four wait upstream, each on its own connection
            status, _, body = request(proxy, "GET", "/_proxy/healthz")
            assert status == 200 and json.loads(body)["status"] == "alive"
        status, _, body = request(proxy, "GET", "/_proxy/state")
        assert status == 200 and json.loads(body)["connections"] >= 4
        (proxy.folder / "hold").unlink()
        assert [read_answer(sock)[0] for sock in held] == [200] * 4
    finally:
        for sock in held:
            sock.close()


def test_forwarding_takes_no_thread_and_the_connection_cap_holds(start_proxy):
    proxy = start_proxy("--max-connections", "3", "--read-timeout-s", "30")
    tasks = Path(f"/proc/{proxy.proc.pid}/task")
    assert len(list(tasks.iterdir())) == 1  # the front alone: no thread per connection
    (proxy.folder / "hold").touch()
    held = [proxy.connect() for _ in range(3)]
    try:
        for round_ in range(2):  # a second round reuses the kept-alive upstream connections
            for i, sock in enumerate(held):
                sock.sendall(f"GET /r{round_}-{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            wait_for(lambda n=3 * (round_ + 1): len(proxy.got()) == n, "the requests upstream")
            # three requests wait upstream on the front's own selector: still one thread
            assert len(list(tasks.iterdir())) == 1
            assert request(proxy, "GET", "/_proxy/healthz")[0] == 503  # the cap holds
            (proxy.folder / "hold").unlink()
            assert [read_answer(sock)[0] for sock in held] == [200] * 3
            (proxy.folder / "hold").touch()
    finally:
        for sock in held:
            sock.close()


def test_sigterm_answers_the_request_upstream_then_exits(start_proxy):
    proxy = start_proxy("--read-timeout-s", "30")
    (proxy.folder / "hold").touch()
    with proxy.connect() as busy, proxy.connect() as idle:
        assert request(proxy, "GET", "/_proxy/healthz", sock=idle)[0] == 200
        busy.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        wait_for(lambda: len(proxy.got()) == 1, "the request held by the model server")
        proxy.proc.send_signal(signal.SIGTERM)
        assert closed_within(idle, 20.0)  # an idle connection is closed at once
        wait_for(lambda: refused(proxy), "the port to stop accepting", timeout_s=20.0)
        (proxy.folder / "hold").unlink()
        status, headers, body = read_answer(busy)
        assert status == 200 and json.loads(body)["ok"] and headers["connection"] == "close"
    assert proxy.proc.wait(timeout=60) == 0  # drained
    assert not (proxy.ws / "serve" / "proxy.json").exists()


def test_a_client_that_shuts_its_writing_side_still_gets_its_answer(start_proxy):
    proxy = start_proxy("--read-timeout-s", "30")
    (proxy.folder / "hold").touch()
    with proxy.connect() as sock:
        sock.sendall(b"GET /half-closed HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)  # as `nc -N` does: the request is all it will send
        wait_for(lambda: len(proxy.got()) == 1, "the request held by the model server")
        (proxy.folder / "hold").unlink()
        status, _, body = read_answer(sock)
        assert status == 200 and json.loads(body)["ok"]
        assert closed_within(sock, 20.0)


def test_a_kept_alive_upstream_closed_before_answering_is_retried_once_fresh(start_proxy):
    """A model server may close a kept-alive connection just as the next request goes out on
    it: that request goes again on a fresh connection, and the client never sees the failure."""
    listener = socket.create_server(("127.0.0.1", 0))
    connections = []

    def serve(conn):  # answers the first request of each connection, closes on the second
        with conn:
            buf = b""
            for n in (1, 2):
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                buf = buf.split(b"\r\n\r\n", 1)[1]  # GET: no body
                if n == 2:
                    return
                data = json.dumps({"connection": len(connections)}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data) + data)

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connections.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        proxy = start_proxy()
        live = {"release": "closing", "port": listener.getsockname()[1]}
        (proxy.ws / "serve" / "state.json").write_text(json.dumps({"v": 1, "live": live}))
        with proxy.connect() as sock:
            first = request(proxy, "GET", "/a", sock=sock)
            second = request(proxy, "GET", "/b", sock=sock)
        assert (first[0], json.loads(first[2])) == (200, {"connection": 1})
        assert (second[0], json.loads(second[2])) == (200, {"connection": 2})  # a fresh one
        stats = json.loads(request(proxy, "GET", "/_proxy/state")[2])["stats"]
        assert stats["upstream_errors"] == 1 and stats["requests"] == 2
    finally:
        listener.close()


def refused(proxy: Proxy) -> bool:
    try:
        proxy.connect().close()
    except OSError:
        return True
    return False


# --- what is forwarded ---------------------------------------------------------------------------------


def test_headers_reach_the_model_server_as_sent_less_the_hop_by_hop_ones(start_proxy):
    proxy = start_proxy()
    raw = (
        b"POST /v1/predict?x=1 HTTP/1.1\r\nHost: public.example\r\nX-Tag: a\r\nx-tag: b\r\n"
        b"Connection: keep-alive, X-Tag\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
        b"Content-Type: application/vnd.moola.ohlc-f32le\r\nX-Moola-Windows: 1\r\n"
        b"X-Moola-Request-Id: rid-1\r\nContent-Length: 4\r\n\r\n\x00\x01\x02\xff"
    )
    with proxy.connect() as sock:
        sock.sendall(raw)
        status, headers, _ = read_answer(sock)
        assert status == 200 and "server" in headers and headers["content-length"]
        assert request(proxy, "GET", "/v1/predict", sock=sock)[0] == 200  # kept alive
    first, second = proxy.got()
    assert first["path"] == "/v1/predict?x=1" and first["body"] == "\x00\x01\x02\xff"
    assert [pair for pair in first["items"] if pair[0].lower() == "x-tag"] == [
        ["X-Tag", "a"],
        ["x-tag", "b"],
    ]
    names = {name.lower() for name, _ in first["items"]}
    assert not names & {"connection", "keep-alive", "te"}
    assert first["headers"]["Host"] == "127.0.0.1" and first["headers"]["X-Moola-Windows"] == "1"
    assert first["headers"]["X-Moola-Request-Id"] == "rid-1"
    assert first["headers"]["Content-Type"] == "application/vnd.moola.ohlc-f32le"
    assert len(second["headers"]["X-Moola-Request-Id"]) == 32  # a fresh id when none was sent


def test_expect_100_continue_is_met_by_the_proxy_and_not_forwarded(start_proxy):
    # the proxy's front answers the Expect; it has the whole body before it forwards, so the
    # model server is asked nothing (it would answer an interim `100 Continue` for nothing)
    proxy = start_proxy("--auth", "always", token=TOKEN)
    body = b'{"windows": []}'
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with proxy.connect() as sock:
        sock.sendall(head)  # the body waits for the interim answer, as curl's does
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        assert data == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        status, _, answer = read_answer(sock)
        assert status == 200 and json.loads(answer)["release"] == "stub"
    with proxy.connect() as sock:
        # a wrong token is refused from the head: the final answer alone, never a 100; the
        # connection closes, as the client may send its body after all or never
        sock.sendall(head.replace(TOKEN.encode(), b"nope"))
        status, headers, _ = read_answer(sock)
        assert status == 401 and headers["connection"] == "close"
        assert closed_within(sock, 30)
    ((got),) = proxy.got()
    assert got["body"] == body.decode()
    assert "expect" not in {name.lower() for name, _ in got["items"]}
    other = request(proxy, "POST", "/v1/predict", body, {"Expect": "x-fast"})
    assert other[0] == 417 and "x-fast" in json.loads(other[2])["error"]
    assert len(proxy.got()) == 1  # refused before anything was forwarded


def test_an_answer_to_head_is_not_waited_on_for_a_body(start_proxy):
    # the stub answers HEAD 501 with the length of a body it does not send (as HTTP says): the
    # proxy waited for that many bytes, and answered 502 when the stub closed (a server that
    # keeps the connection would have held it for the 120 s upstream timeout)
    proxy = start_proxy()
    with proxy.connect() as sock:
        sock.settimeout(20)
        sock.sendall(b"HEAD /v1/predict HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_answer(sock)
        assert status == 501 and body == b""
        assert request(proxy, "GET", "/_proxy/healthz", sock=sock)[0] == 200  # still in step


def test_a_refused_token_keeps_the_connection_for_the_next_request(start_proxy):
    proxy = start_proxy("--auth", "always", token=TOKEN)
    with proxy.connect() as sock:
        wrong = {"Authorization": "Bearer nope"}
        status, headers, _ = request(proxy, "POST", "/v1/predict", b'{"a": 1}', wrong, sock=sock)
        assert status == 401 and headers.get("connection") != "close"
        right = {"Authorization": f"Bearer {TOKEN}"}  # the unread body was skipped, not parsed
        assert request(proxy, "POST", "/v1/predict", b"{}", right, sock=sock)[0] == 200
    assert [got["body"] for got in proxy.got()] == ["{}"]


# --- holding predictions while the live server is down -------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _route(proxy: Proxy, port: int) -> None:
    path = proxy.ws / "serve" / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"v": 1, "live": {"release": "stub", "port": port, "pid": 1}}))
    tmp.replace(path)  # atomically, as the one writer does


def _state(proxy: Proxy) -> dict:
    return json.loads(request(proxy, "GET", "/_proxy/state")[2])


def test_predictions_are_held_up_to_the_cap_until_a_server_takes_the_live_place(start_proxy):
    proxy = start_proxy("--hold-s", "60", "--hold-max", "1")
    stub_port = json.loads((proxy.ws / "serve" / "state.json").read_text())["live"]["port"]
    _route(proxy, _closed_port())  # the live server died
    with proxy.connect() as held:
        held.sendall(b"POST /v1/predict HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
        wait_for(lambda: _state(proxy)["held_now"] == 1, "the prediction to be held")
        status, headers, body = request(proxy, "POST", "/v1/predict", b"{}")  # beyond the cap
        assert status == 503 and headers["retry-after"] == "1"
        assert "already holds 1 requests" in json.loads(body)["error"]
        status, _, body = request(proxy, "GET", "/metrics")  # not a prediction: never held
        assert status == 502 and "did not answer" in json.loads(body)["error"]
        _route(proxy, stub_port)  # the supervisor's replacement is live
        status, _, body = read_answer(held)
        assert status == 200 and json.loads(body)["ok"]  # slower, not an error
    stats = _state(proxy)["stats"]
    assert stats["held"] == 1 and stats["held_then_answered"] == 1 and stats["hold_refused"] == 1


def test_a_held_prediction_gets_503_when_no_server_takes_the_place_in_time(start_proxy):
    proxy = start_proxy("--hold-s", "0.5")
    _route(proxy, _closed_port())
    status, headers, body = request(proxy, "POST", "/v1/predict", b"{}")
    assert status == 503 and headers["retry-after"] == "1"
    assert "no server took its place within 0.5s" in json.loads(body)["error"]
    assert _state(proxy)["stats"]["hold_timeouts"] == 1

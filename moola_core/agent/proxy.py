"""The front proxy on a host's public port: it forwards every request to the live model server.

Which server is live is a small JSON file, WORKSPACE/serve/state.json, that the deploy engine
replaces atomically (write a temp file, rename over it). The proxy looks at the file's identity
(inode, size, mtime) on every request, so the request after a rename goes to the new server;
requests already forwarded finish on the old one, which is then drained (SIGTERM: it stops
accepting, answers what it holds, exits). Nothing is dropped, and no listening socket ever
changes hands (docs/serving.md explains why not SO_REUSEPORT).

    {"v": 1, "live": {"release": "v1.1", "port": 41234, "pid": 901},
     "standby": {"release": "v1.0", "port": 40111, "pid": 877} | null,
     "shadow": {"release": "v1.2", "port": 42000, "fraction": 0.1} | null}

A minimal HTTP/1.1 forwarder (Content-Length bodies, keep-alive on both sides, one upstream
connection per client connection), because a general-purpose client would add more latency
than the model takes. A request is retried once on a fresh connection when the upstream closed
a kept-alive connection before answering (predictions are idempotent). A prediction whose live
server stays unreachable (it crashed; the host's supervisor, serve_ctl.py `supervise`, starts
another) is held, at most `--hold-max` at once for up to `--hold-s` each, until the state file
names the replacement, then sent there: the client sees a slower answer, not an error. `shadow`
copies a
sampled fraction of /v1/predict requests to a candidate server after the live answer went out:
the proxy hands the request's bytes, without waiting, to a socket read by the mirror, a process
it forked at start (nice 19) that sends them to the shadow; a full socket buffer drops the copy
(counted per shadow: a new shadow starts from zero). The live answer never waits for the
shadow, and the copying never holds the proxy's interpreter lock. Without fork or
SOCK_SEQPACKET, a thread with a bounded queue copies instead.

The port faces clients Moola does not control, so every request has limits:
- a whole-request deadline (`--read-timeout-s`, from its first byte to the end of its body; a
  fresh connection's first request counts from the accept): a client that trickles one byte
  at a time gets 408 and the connection closes, however often it sends;
- a connection cap (`--max-connections`, one thread each): at the cap a new client takes the
  place of the connection idle longest, and gets 503 at once when every one is busy;
- one Content-Length, digits only (a second one would let a request hide inside another);
- a token (`Authorization: Bearer TOKEN`, the file WORKSPACE/serve/token, re-read when it
  changes so rotation needs no restart) whenever the proxy listens beyond loopback, or always
  with `--auth always`; only the liveness and readiness probes from the host itself go
  without it. The token is never logged and never forwarded to a model server.

Standard library only; Python 3.8+. Run: `python3 serve_proxy.py --workspace WS --port P`.
"""

import argparse
import collections
import contextlib
import hmac
import ipaddress
import json
import os
import random
import select
import signal
import socket
import socketserver
import sys
import threading
import time
import uuid

MAX_HEADER_BYTES = 65536
MAX_BODY_BYTES = 4 * 1024 * 1024  # the server's default limit, refused here before forwarding
DISCARD_BYTES = 32 * 1024 * 1024  # an over-limit body up to this is read and dropped, so the
# client reads its 413 instead of a connection reset
IDLE_TIMEOUT_S = 75.0  # a kept-alive client connection may sit idle this long
READ_TIMEOUT_S = 10.0  # a whole request, first byte to last, must arrive within this
MAX_CONNECTIONS = 256  # client connections at once (one thread each)
RECV_BYTES = 65536
UPSTREAM_TIMEOUT_S = 120.0
HOLD_S = 15.0  # a prediction waits this long for a restarted live server (--hold-s)
HOLD_MAX = 128  # predictions held at once; beyond it 503 + Retry-After (--hold-max)
HOLD_POLL_S = 0.02  # how often a held request looks at the state file
SHADOW_QUEUE = 256
SHADOW_GENERATIONS_KEPT = 8  # per-shadow counters of the last few shadows
MIRROR_CHUNK = 60 * 1024  # one message on the mirror socket (fits the default socket buffer)
MIRROR_NICE = 19
MIRROR_BUFFER_BYTES = 8 * 1024 * 1024  # asked for; copies beyond what is granted are dropped
MIRROR_ASK_S = 0.5  # /_proxy/state waits this long for the mirror's counters
AUTH_MODES = ("auto", "always")  # auto: a token is required when bound beyond loopback
OPEN_PATHS = (b"/healthz", b"/readyz", b"/_proxy/healthz")  # probes from the host: no token
HOP_HEADERS = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"te",
    b"upgrade",
    b"proxy-authorization",
    b"proxy-authenticate",
    b"trailer",
}
# never forwarded: the hop headers, the client's Host, its token (the model servers and their
# logs never see it) and its Content-Length (the proxy states the length it read itself)
NOT_FORWARDED = HOP_HEADERS | {b"host", b"authorization", b"content-length"}
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    408: "Request Timeout",
    411: "Length Required",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class ClientError(Exception):
    def __init__(self, status, message):
        Exception.__init__(self, message)
        self.status = status


def is_loopback(address):
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for anything else (a name)."""
    try:
        ip = ipaddress.ip_address(str(address).split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


class Watched:
    """A small file re-read whenever its identity (inode, size, mtime) changes: one stat per
    request. `parse(bytes)` makes the value; a file that cannot be read or parsed mid-change
    keeps the last good value; a missing file is `missing`."""

    def __init__(self, path, parse, missing):
        self.path, self.parse, self.missing = path, parse, missing
        self.key = None
        self.value = missing
        self.lock = threading.Lock()

    def current(self):
        try:
            st = os.stat(self.path)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            key = None
        if key != self.key:
            with self.lock:
                if key != self.key:
                    value = self.missing
                    if key is not None:
                        try:
                            with open(self.path, "rb") as fh:
                                value = self.parse(fh.read())
                        except (OSError, ValueError):
                            return self.value  # mid-write or unreadable: keep the last good one
                    self.value, self.key = value, key
        return self.value


def _parse_state(data):
    state = json.loads(data.decode("utf-8"))
    return state if isinstance(state, dict) else {}


def _parse_token(data):
    token = data.strip()
    return token if token else None


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()

    def add(self, key, n=1):
        with self.lock:
            self.counts[key] += n


class ShadowTally:
    """Copies sent, failed and dropped per shadow (each shadow routed gets a new generation, so a
    fresh shadow starts from zero) and over the process's life (`total`)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_gen = collections.OrderedDict()
        self.total = collections.Counter()

    def add(self, gen, name, n=1):
        with self.lock:
            counts = self.by_gen.get(gen)
            if counts is None:
                counts = self.by_gen[gen] = collections.Counter()
                while len(self.by_gen) > SHADOW_GENERATIONS_KEPT:
                    self.by_gen.popitem(last=False)
            counts[name] += n
            self.total[name] += n

    def snapshot(self):
        with self.lock:
            return {
                "by_gen": {str(g): dict(c) for g, c in self.by_gen.items()},
                "total": dict(self.total),
            }


def _merge_tallies(*snapshots):
    by_gen, total = {}, collections.Counter()
    for snap in snapshots:
        for gen, counts in (snap.get("by_gen") or {}).items():
            into = by_gen.setdefault(gen, collections.Counter())
            into.update(counts)
        total.update(snap.get("total") or {})
    return by_gen, total


class Reader:
    """A client connection's bytes, read under one deadline for the whole request: each wait
    for more bytes gets only the time left, so a byte every few seconds cannot keep a request
    open (a per-read timeout would restart with every byte)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.deadline = None  # monotonic; set when a request starts
        self.limit_s = 0.0

    def wait(self, timeout_s):
        """Wait up to `timeout_s` for the next request's first byte; False when the client
        closed, stayed silent, or the connection was taken away (evicted)."""
        if self.buf:
            return True
        if timeout_s <= 0:
            return False
        try:
            self.sock.settimeout(timeout_s)
            data = self.sock.recv(RECV_BYTES)
        except (TimeoutError, OSError):
            return False
        self.buf += data
        return bool(data)

    def _fill(self):
        left = self.deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError()
            self.sock.settimeout(left)
            data = self.sock.recv(RECV_BYTES)
        except TimeoutError:
            raise ClientError(408, f"the request did not arrive within {self.limit_s:g}s") from None
        if not data:
            raise ConnectionResetError("the client closed the connection mid-request")
        self.buf += data

    def readline(self, limit):
        """One line with its newline, or `limit` bytes of a longer one."""
        while True:
            end = self.buf.find(b"\n", 0, limit)
            if end >= 0 or len(self.buf) >= limit:
                size = end + 1 if end >= 0 else limit
                line = bytes(self.buf[:size])
                del self.buf[:size]
                return line
            self._fill()

    def read(self, n):
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


class Upstream:
    """One kept-alive connection to one server port."""

    def __init__(self, port):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=2.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(UPSTREAM_TIMEOUT_S)
        self.rfile = self.sock.makefile("rb")

    def close(self):
        for closer in (self.rfile.close, self.sock.close):
            with contextlib.suppress(OSError):
                closer()

    def exchange(self, head, body):
        """Send one request; return (status line, headers [(name, value)], body, keep)."""
        self.sock.sendall(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.sock.sendall(body)
        status_line = self.rfile.readline(MAX_HEADER_BYTES)
        if not status_line:
            raise ConnectionResetError("upstream closed the connection")
        headers, length, keep = _read_headers(self.rfile)
        data = _read_exact(self.rfile, length) if length else b""  # our servers always send it
        if status_line.startswith(b"HTTP/1.0"):
            keep = False
        return status_line, headers, data, keep


def _read_headers(rfile):
    headers, length, keep, total = [], None, True, 0
    while True:
        line = rfile.readline(MAX_HEADER_BYTES)
        total += len(line)
        if not line:
            raise ConnectionResetError("connection closed inside the headers")
        if line in (b"\r\n", b"\n"):
            return headers, length, keep
        if total > MAX_HEADER_BYTES or len(headers) > 100:
            raise ClientError(431, "the request headers are too large")
        name, sep, value = line.partition(b":")
        if not sep:
            raise ClientError(400, "a request header is malformed")
        name, value = name.strip(), value.strip()
        lower = name.lower()
        if lower == b"content-length":
            if length is not None:  # which one frames the body? a guess desyncs the stream
                raise ClientError(400, "the request has more than one Content-Length header")
            if not value.isdigit():  # bytes.isdigit: ASCII digits only, no sign, no "_"
                raise ClientError(400, "the Content-Length header is not a whole number")
            length = int(value)
        elif lower == b"connection" and value.lower() == b"close":
            keep = False
        elif lower == b"transfer-encoding":
            raise ClientError(411, "send the body with a Content-Length, not chunked")
        headers.append((name, value))


def _read_exact(rfile, length):
    data = rfile.read(length)
    if len(data) < length:
        raise ConnectionResetError("the body ended early")
    return data


def _pooled_exchange(pool, port, head, body):
    """One request over `pool`'s kept-alive connection to `port` (opened when missing); a
    connection that failed, or that the server will close, leaves the pool. Returns what
    Upstream.exchange returns and raises what it raised."""
    upstream = pool.get(port)
    try:
        if upstream is None:
            upstream = pool[port] = Upstream(port)
        answer = upstream.exchange(head, body)
    except Exception:
        pool.pop(port, None)
        if upstream is not None:
            upstream.close()
        raise
    if not answer[3]:
        pool.pop(port, None)
        upstream.close()
    return answer


def _copy_to_shadow(pool, port, head, body):
    """Send one shadow copy; a kept-alive connection the shadow had closed is tried once more
    on a fresh one. Returns the counter to add: "shadow_sent" or "shadow_errors"."""
    for _attempt in (0, 1):
        fresh = port not in pool
        try:
            _pooled_exchange(pool, port, head, body)
            return "shadow_sent"
        except (OSError, ValueError, ClientError):
            if fresh:
                break
    return "shadow_errors"


def _json_response(status, payload, keep, extra=""):
    body = json.dumps(payload, separators=(",", ":")).encode()
    head = (
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}{}\r\n".format(
            status,
            REASONS.get(status, "Error"),
            len(body),
            extra,
            "" if keep else "Connection: close\r\n",
        )
    )
    return head.encode() + body


class Handler(socketserver.BaseRequestHandler):
    def setup(self):
        self.sock = self.request
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = Reader(self.sock)
        self.upstreams = {}
        peer = self.client_address[0] if isinstance(self.client_address, tuple) else ""
        self.from_host = is_loopback(peer)  # the host itself (its own probes)

    def finish(self):
        for upstream in self.upstreams.values():
            upstream.close()

    def handle(self):
        server = self.server
        reader = self.reader
        limit = reader.limit_s = server.read_timeout_s
        # a fresh connection's first request counts from the accept: silence is no way around
        reader.deadline = time.monotonic() + limit
        wait_s = limit
        while not server.stopping:
            if not reader.wait(wait_s) or not server.busy(self.sock):
                return  # closed, silent too long, or its place went to a new client
            if reader.deadline is None:  # a kept-alive connection's next request starts now
                reader.deadline = time.monotonic() + limit
            server.enter()
            try:
                keep = self.one()
            except ClientError as exc:
                payload = {"error": str(exc), "status": exc.status}
                self._send(_json_response(exc.status, payload, False), quiet=True)
                keep = False
            except OSError:
                keep = False  # the client went away mid-request, or did not read its answer
            finally:
                server.leave()
                server.idle(self.sock)
            if not keep:
                return
            wait_s, reader.deadline = IDLE_TIMEOUT_S, None

    def _send(self, data, quiet=False):
        """The answer, within the same limit a request has to arrive (a client that does not
        read it is dropped)."""
        try:
            self.sock.settimeout(self.server.read_timeout_s)
            self.sock.sendall(data)
        except OSError:
            if not quiet:
                raise

    def one(self):
        server = self.server
        reader = self.reader
        line = reader.readline(MAX_HEADER_BYTES)
        if line in (b"\r\n", b"\n"):
            return False
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise ClientError(400, "the request line is malformed")
        method, target, version = parts
        headers, length, keep = _read_headers(reader)
        if length is None:
            if method in (b"POST", b"PUT", b"PATCH"):
                raise ClientError(411, "a Content-Length header is required")
            length = 0
        if length > MAX_BODY_BYTES:
            left = length if length <= DISCARD_BYTES else 0
            while left > 0:
                left -= len(reader.read(min(RECV_BYTES, left)))
            raise ClientError(
                413, f"the body has {length} bytes, at most {MAX_BODY_BYTES} are accepted"
            )
        body = reader.read(length) if length else b""
        if version == b"HTTP/1.0":
            keep = False
        path = target.split(b"?", 1)[0]
        if not self._allowed(method, path, headers):
            server.stats.add("unauthorized")
            challenge = 'WWW-Authenticate: Bearer realm="moola"\r\n'
            self._send(_json_response(401, server.unauthorized_answer(), keep, challenge))
            return keep
        if path.startswith(b"/_proxy/"):
            self._send(_json_response(*self._local(path), keep))
            return keep
        state = server.route.current()
        request_id = None
        out = [method + b" " + target + b" HTTP/1.1\r\n"]
        for name, value in headers:
            lower = name.lower()
            if lower in NOT_FORWARDED:
                continue
            if lower == b"x-moola-request-id":
                request_id = value
            out.append(name + b": " + value + b"\r\n")
        if request_id is None:
            request_id = uuid.uuid4().hex.encode()
            out.append(b"X-Moola-Request-Id: " + request_id + b"\r\n")
        out.append(b"Host: 127.0.0.1\r\n")
        if length or method in (b"POST", b"PUT", b"PATCH"):
            out.append(b"Content-Length: " + str(length).encode() + b"\r\n")
        head = b"".join(out) + b"\r\n"
        hold = method == b"POST" and path == b"/v1/predict"  # idempotent: safe to send again
        status_line, up_headers, data = self._forward(state, head, body, hold)
        reply = [status_line]
        for name, value in up_headers:
            if name.lower() not in HOP_HEADERS:
                reply.append(name + b": " + value + b"\r\n")
        if not keep:
            reply.append(b"Connection: close\r\n")
        reply.append(b"\r\n")
        self._send(b"".join(reply) + data)
        shadow = state.get("shadow")
        if shadow and method == b"POST" and path == b"/v1/predict":
            server.shadow(shadow, head, body)
        server.stats.add("requests")
        return keep

    def _allowed(self, method, path, headers):
        """No token needed: auth is off, or a liveness/readiness probe from the host itself."""
        server = self.server
        if not server.auth_required:
            return True
        if self.from_host and method in (b"GET", b"HEAD") and path in OPEN_PATHS:
            return True
        return server.token_matches(headers)

    def _forward(self, state, head, body, hold=False):
        """Send to the live server; one retry on a fresh connection (after re-reading the
        state file) when a connection fails before any answer arrives. With `hold` (a
        prediction), a live server that stays unreachable is waited for: the request is held
        (at most --hold-max at once, each up to --hold-s) until the state file names another
        server (the supervisor restarted it), then sent there."""
        server = self.server
        deadline = None
        try:
            for attempt in range(1 << 30):
                live = state.get("live") or {}
                port = live.get("port")
                if not isinstance(port, int):
                    server.stats.add("no_live")
                    return _bad_gateway(
                        503,
                        "no release is live on this host: start one with "
                        "`invoke serve --host H start`",
                    )
                for other in [p for p in self.upstreams if p != port]:
                    self.upstreams.pop(other).close()  # traffic moved: let the old server drain
                try:
                    status_line, headers, data, _keep = _pooled_exchange(
                        self.upstreams, port, head, body
                    )
                except (OSError, ValueError, ClientError) as exc:
                    server.stats.add("upstream_errors")
                    if attempt == 0:
                        state = server.route.current()
                        continue
                    if not hold:
                        return _bad_gateway(
                            502,
                            "the model server for {} on port {} did not answer ({})".format(
                                live.get("release"), port, type(exc).__name__
                            ),
                        )
                    if deadline is None:
                        if not server.hold_enter():
                            server.stats.add("hold_refused")
                            return _bad_gateway(
                                503,
                                "the live server of {} is restarting and the proxy already "
                                "holds {} requests: retry in a moment".format(
                                    live.get("release"), server.hold_max
                                ),
                            )
                        deadline = time.monotonic() + server.hold_s
                    state = server.next_route(port, deadline)
                    if state is None:
                        server.stats.add("hold_timeouts")
                        return _bad_gateway(
                            503,
                            "the live server of {} on port {} is down and no server took its "
                            "place within {:g}s: the host's supervisor is restarting it "
                            "(`invoke serve --host H status`)".format(
                                live.get("release"), port, server.hold_s
                            ),
                        )
                    continue
                if deadline is not None:
                    server.stats.add("held_then_answered")
                return status_line, headers, data
            raise AssertionError("unreachable")
        finally:
            if deadline is not None:
                server.hold_leave()

    def _local(self, path):
        server = self.server
        if path == b"/_proxy/state":
            state = server.route.current()
            return 200, {
                "state": state,
                "pid": os.getpid(),
                "port": server.server_address[1],
                "stats": dict(server.stats.counts, **server.shadow_counts(state.get("shadow"))),
                "connections": server.connection_count(),
                "max_connections": server.max_connections,
                "auth_required": server.auth_required,
                "held_now": server.held,
                "hold_s": server.hold_s,
                "hold_max": server.hold_max,
                "uptime_s": round(time.time() - server.started, 3),
            }
        if path == b"/_proxy/healthz":
            return 200, {"status": "alive", "pid": os.getpid()}
        return 404, {"error": "no such proxy path", "status": 404}


def _bad_gateway(status, message):
    reason = b"Bad Gateway" if status == 502 else b"Service Unavailable"
    body = json.dumps({"error": message, "status": status}).encode()
    headers = [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode())]
    if status == 503:
        headers.append((b"Retry-After", b"1"))
    return b"HTTP/1.1 " + str(status).encode() + b" " + reason + b"\r\n", headers, body


class ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(
        self,
        address,
        state_path,
        read_timeout_s=READ_TIMEOUT_S,
        *,
        max_connections=MAX_CONNECTIONS,
        token_path=None,
        auth="auto",
        hold_s=HOLD_S,
        hold_max=HOLD_MAX,
    ):
        socketserver.ThreadingTCPServer.__init__(self, address, Handler)
        self.hold_s, self.hold_max = float(hold_s), max(0, int(hold_max))
        self.held = 0
        self.hold_lock = threading.Lock()
        self.read_timeout_s = read_timeout_s
        self.max_connections = max(1, int(max_connections))
        self.route = Watched(state_path, _parse_state, {})
        self.token = Watched(token_path or "", _parse_token, None)
        self.auth_required = auth == "always" or not is_loopback(address[0])
        self.stats = Stats()
        self.started = time.time()
        self.stopping = False
        self.inflight = 0
        self.cond = threading.Condition()
        self.conns = {}  # client socket -> [busy, monotonic time it last became idle]
        self.conn_lock = threading.Lock()
        self.shadow_items = collections.deque()
        self.shadow_cond = threading.Condition()
        self.copy_ids = iter(range(1, 1 << 62))
        self.tally = ShadowTally()  # copies this process dropped (mirror full) or sent itself
        self.generation = (None, 0)  # (the shadow entry seen last, its generation)
        self.mirror_lock = threading.Lock()  # a copy's chunks go out together
        self.ask_lock = threading.Lock()
        self.mirror_tally = {}
        self.mirror = _start_mirror(self.socket)
        if self.mirror is None:  # no fork / no SOCK_SEQPACKET here: copy from a thread instead
            threading.Thread(target=self._shadow_loop, name="shadow", daemon=True).start()

    # -- connections: the cap, and who is busy ---------------------------------------------------

    def process_request(self, request, client_address):
        if not self._admit(request):
            self.stats.add("refused_connections")
            _refuse(request, self.max_connections)
            socketserver.TCPServer.shutdown_request(self, request)
            return
        socketserver.ThreadingTCPServer.process_request(self, request, client_address)

    def _admit(self, sock):
        """Room for one more connection: at the cap the connection idle longest gives its place
        (its thread sees the socket shut and ends); False when every one is busy."""
        with self.conn_lock:
            if len(self.conns) >= self.max_connections:
                idle = [(entry[1], conn) for conn, entry in self.conns.items() if not entry[0]]
                if not idle:
                    return False
                victim = min(idle, key=lambda item: item[0])[1]
                del self.conns[victim]
                with contextlib.suppress(OSError):
                    victim.shutdown(socket.SHUT_RDWR)
                self.stats.add("idle_closed_for_new")
            self.conns[sock] = [False, time.monotonic()]
            return True

    def busy(self, sock):
        """A request started on `sock`; False when its place was given away meanwhile."""
        with self.conn_lock:
            entry = self.conns.get(sock)
            if entry is None:
                return False
            entry[0] = True
            return True

    def idle(self, sock):
        with self.conn_lock:
            entry = self.conns.get(sock)
            if entry is not None:
                entry[0], entry[1] = False, time.monotonic()

    def connection_count(self):
        with self.conn_lock:
            return len(self.conns)

    def shutdown_request(self, request):
        with self.conn_lock:
            self.conns.pop(request, None)
        socketserver.ThreadingTCPServer.shutdown_request(self, request)

    # -- the token ---------------------------------------------------------------------------------

    def token_matches(self, headers):
        token = self.token.current()
        if not token:
            return False  # required but missing: nothing gets in (fail closed)
        for name, value in headers:
            if name.lower() == b"authorization":
                scheme, _, given = value.partition(b" ")
                if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token):
                    return True
        return False

    def unauthorized_answer(self):
        if not self.token.current():
            why = "this host has no client token yet: make one with `invoke serve --host H rotate-token`"
        else:
            why = (
                "this port needs the host's token: send the header `Authorization: Bearer TOKEN` "
                "(`invoke serve --host H token` prints it)"
            )
        return {"error": why, "status": 401}

    # -- holding predictions while the live server restarts -------------------------------------

    def hold_enter(self):
        with self.hold_lock:
            if self.held >= self.hold_max:
                return False
            self.held += 1
            self.stats.add("held")
            return True

    def hold_leave(self):
        with self.hold_lock:
            self.held -= 1

    def next_route(self, failed_port, deadline):
        """The state once it names a live server other than the one on `failed_port`, or None
        at `deadline` (or when the proxy stops)."""
        while time.monotonic() < deadline and not self.stopping:
            state = self.route.current()
            port = (state.get("live") or {}).get("port")
            if port != failed_port:
                return state
            time.sleep(HOLD_POLL_S)
        return None

    # -- drain -------------------------------------------------------------------------------------

    def enter(self):
        with self.cond:
            self.inflight += 1

    def leave(self):
        with self.cond:
            self.inflight -= 1
            self.cond.notify_all()

    def wait_idle(self, timeout_s):
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while self.inflight > 0 and time.monotonic() < deadline:
                self.cond.wait(max(0.0, deadline - time.monotonic()))
            return self.inflight == 0

    # -- the shadow --------------------------------------------------------------------------------

    def shadow_generation(self, shadow):
        """A number per shadow routed: the state file's shadow entry changed (a new release,
        port, pid or start) -> the next number; its counters start from zero."""
        seen, gen = self.generation
        if shadow is seen:  # the route hands out the same dict until the file changes
            return gen
        key = [shadow.get(k) for k in ("release", "port", "pid", "since")]
        if seen is None or key != [seen.get(k) for k in ("release", "port", "pid", "since")]:
            gen += 1
        self.generation = (shadow, gen)
        return gen

    def shadow(self, shadow, head, body):
        """Queue a copy for the shadow server (sampled, bounded, never waited for)."""
        try:
            fraction = float(shadow.get("fraction", 0.0))
            port = int(shadow["port"])
        except (KeyError, TypeError, ValueError, AttributeError):
            return
        if fraction <= 0 or random.random() >= fraction:
            return
        gen = self.shadow_generation(shadow)
        if self.mirror is not None:
            self._to_mirror(port, gen, head, body)
            return
        with self.shadow_cond:
            if len(self.shadow_items) >= SHADOW_QUEUE:
                self.tally.add(gen, "shadow_dropped")
                return
            self.shadow_items.append((port, gen, head, body))
            self.shadow_cond.notify()

    def _to_mirror(self, port, gen, head, body):
        """Hand the copy's bytes to the mirror process without waiting: a full socket buffer
        drops the copy (counted). Sent in chunks under a lock; the mirror discards a copy
        whose chunks stop early."""
        data = head + body
        with self.mirror_lock:
            copy_id = next(self.copy_ids)
            for lo in range(0, len(data), MIRROR_CHUNK):
                more = 1 if lo + MIRROR_CHUNK < len(data) else 0
                label = f"{copy_id} {port} {more} {gen}\n".encode()
                try:
                    self.mirror.sendmsg(
                        [label, data[lo : lo + MIRROR_CHUNK]], [], socket.MSG_DONTWAIT
                    )
                except OSError:  # full (EAGAIN), or the mirror is gone
                    self.tally.add(gen, "shadow_dropped")
                    return

    def shadow_counts(self, shadow):
        """The current shadow's counters (shadow_sent / shadow_errors / shadow_dropped, zero
        for a shadow just routed) and the process's lifetime totals (total_shadow_*)."""
        by_gen, total = _merge_tallies(self.tally.snapshot(), self._mirror_counts())
        out = {"total_" + name: n for name, n in total.items()}
        if isinstance(shadow, dict) and shadow:
            counts = by_gen.get(str(self.shadow_generation(shadow)), {})
            for name in ("shadow_sent", "shadow_errors", "shadow_dropped"):
                out[name] = counts.get(name, 0)
        return out

    def _mirror_counts(self):
        """The mirror's tally: asked for on the mirror socket, answered after the copies
        already queued there (waited for at most MIRROR_ASK_S; else the last known one)."""
        if self.mirror is None:
            return {}
        with self.ask_lock:
            self._read_counts()
            with self.mirror_lock:
                try:
                    self.mirror.send(b"0 0 0 0\n", socket.MSG_DONTWAIT)
                except OSError:
                    return dict(self.mirror_tally)
            if select.select([self.mirror], [], [], MIRROR_ASK_S)[0]:
                self._read_counts()
            return dict(self.mirror_tally)

    def _read_counts(self):
        while True:
            try:
                data = self.mirror.recv(1 << 20, socket.MSG_DONTWAIT)
            except OSError:
                return
            if not data:
                return
            with contextlib.suppress(ValueError):
                self.mirror_tally = json.loads(data.decode())

    def _shadow_loop(self):
        upstreams = {}
        while True:
            with self.shadow_cond:
                while not self.shadow_items:
                    self.shadow_cond.wait()
                port, gen, head, body = self.shadow_items.popleft()
            self.tally.add(gen, _copy_to_shadow(upstreams, port, head, body))


def _refuse(sock, cap):
    """The answer of a connection over the cap: 503 at once (never an empty reply), without a
    thread; what the client already sent is read off first so the close does not reset it."""
    payload = {
        "error": f"the proxy already holds {cap} connections: retry in a moment",
        "status": 503,
    }
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            while sock.recv(RECV_BYTES):
                pass
        sock.send(_json_response(503, payload, False, "Retry-After: 1\r\n"))


def _start_mirror(listener):
    """Fork the mirror: a process at low CPU priority that sends the copies to the shadow, so
    the proxy's live path only hands bytes it already holds to a socket: it never waits for the
    shadow and never shares its interpreter lock with the copying. Forked before any thread
    starts. Returns the proxy's end of the socket pair, or None where this is not possible."""
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for end in (ours, theirs):  # the kernel caps it at net.core.wmem_max
            with contextlib.suppress(OSError):
                end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MIRROR_BUFFER_BYTES)
        pid = os.fork()
    except (AttributeError, OSError):
        return None
    if pid:
        theirs.close()
        return ours
    code = 0
    try:
        listener.close()  # the public port stays with the proxy alone
        ours.close()
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, MIRROR_NICE)
        _mirror_loop(theirs)
    except BaseException:  # the child never returns into the proxy's code
        code = 1
    finally:
        os._exit(code)


def _mirror_loop(conn):
    """The mirror process: reassemble each copy from its chunks onto a bounded queue (full:
    dropped, counted) that a sender thread empties into the shadow over a kept-alive
    connection. Reading eagerly keeps the socket from filling while the shadow is slow.
    Ends when the proxy's end closes (the proxy exited)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the proxy's drain decides, not a Ctrl-C
    queue, cond, tally = collections.deque(), threading.Condition(), ShadowTally()
    threading.Thread(target=_mirror_send, args=(queue, cond, tally), daemon=True).start()
    parts, current = [], None
    while True:
        message = conn.recv(MIRROR_CHUNK + 64)
        if not message:
            return
        label, _, chunk = message.partition(b"\n")
        copy_id, port, more, gen = label.split()
        if copy_id == b"0":  # the proxy asks for the counters
            with contextlib.suppress(OSError):
                conn.send(json.dumps(tally.snapshot()).encode(), socket.MSG_DONTWAIT)
            continue
        if copy_id != current:  # a new copy (an unfinished one before it was cut short and
            current, parts = copy_id, []  # already counted as dropped by the proxy)
        parts.append(chunk)
        if more == b"1":
            continue
        data, parts = b"".join(parts), []
        with cond:
            if len(queue) >= SHADOW_QUEUE:
                tally.add(int(gen), "shadow_dropped")
            else:
                queue.append((int(port), int(gen), data))
                cond.notify()


def _mirror_send(queue, cond, tally):
    upstreams = {}
    while True:
        with cond:
            while not queue:
                cond.wait()
            port, gen, data = queue.popleft()
        end = data.find(b"\r\n\r\n") + 4
        tally.add(gen, _copy_to_shadow(upstreams, port, data[:end], data[end:]))


def _write_json(path, payload):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(payload, fh)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="serve_proxy.py")
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--port", type=int, required=True, help="public port; 0 picks one")
    parser.add_argument("--bind", default="127.0.0.1", help="address (0.0.0.0: every interface)")
    parser.add_argument("--drain-timeout-s", type=float, default=30.0)
    parser.add_argument(
        "--read-timeout-s",
        type=float,
        default=READ_TIMEOUT_S,
        help="a whole request (first byte to the end of its body) must arrive within this",
    )
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS)
    parser.add_argument(
        "--auth",
        choices=AUTH_MODES,
        default="auto",
        help="auto: a token is required when --bind is not a loopback address; always: everywhere",
    )
    parser.add_argument("--token-file", default=None, help="default WORKSPACE/serve/token")
    parser.add_argument(
        "--hold-s",
        type=float,
        default=HOLD_S,
        help="a prediction whose live server is down waits this long for its replacement",
    )
    parser.add_argument("--hold-max", type=int, default=HOLD_MAX, help="predictions held at once")
    args = parser.parse_args(argv)
    serve_dir = os.path.join(args.workspace, "serve")
    os.makedirs(serve_dir, exist_ok=True)
    try:
        server = ProxyServer(
            (args.bind, args.port),
            os.path.join(serve_dir, "state.json"),
            args.read_timeout_s,
            max_connections=args.max_connections,
            token_path=args.token_file or os.path.join(serve_dir, "token"),
            auth=args.auth,
            hold_s=args.hold_s,
            hold_max=args.hold_max,
        )
    except OSError as exc:
        print(f"moola proxy: cannot listen on {args.bind}:{args.port}: {exc}", file=sys.stderr)
        return 2
    port = server.server_address[1]
    record_path = os.path.join(serve_dir, "proxy.json")
    _write_json(
        record_path,
        {
            "pid": os.getpid(),
            "port": port,
            "bind": args.bind,
            "auth": args.auth,
            "read_timeout_s": args.read_timeout_s,
            "auth_required": server.auth_required,
            "max_connections": server.max_connections,
            "started": time.time(),
        },
    )

    def on_signal(signum, _frame):
        if not server.stopping:
            server.stopping = True
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        "moola proxy: listening on {}:{} for {} (token {})".format(
            args.bind, port, args.workspace, "required" if server.auth_required else "not required"
        ),
        file=sys.stderr,
        flush=True,
    )
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    drained = server.wait_idle(args.drain_timeout_s)
    try:
        with open(record_path) as fh:
            if json.load(fh).get("pid") == os.getpid():
                os.unlink(record_path)
    except (OSError, ValueError):
        pass
    print(
        "moola proxy: stopped; {}".format("drained" if drained else "drain timed out"),
        file=sys.stderr,
        flush=True,
    )
    return 0 if drained else 1


if __name__ == "__main__":
    sys.exit(main())

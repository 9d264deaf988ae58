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
a kept-alive connection before answering (predictions are idempotent). `shadow` copies a
sampled fraction of /v1/predict requests to a candidate server after the live answer went out:
the proxy hands the request's bytes, without waiting, to a socket read by the mirror, a process
it forked at start (nice 19) that sends them to the shadow; a full socket buffer drops the copy
(counted). The live answer never waits for the shadow, and the copying never holds the proxy's
interpreter lock. Without fork or SOCK_SEQPACKET, a thread with a bounded queue copies instead.

Standard library only; Python 3.8+. Run: `python3 serve_proxy.py --workspace WS --port P`.
"""

import argparse
import collections
import contextlib
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
READ_TIMEOUT_S = 10.0  # the rest of a request must arrive within this
UPSTREAM_TIMEOUT_S = 120.0
SHADOW_QUEUE = 256
MIRROR_CHUNK = 60 * 1024  # one message on the mirror socket (fits the default socket buffer)
MIRROR_NICE = 19
MIRROR_BUFFER_BYTES = 8 * 1024 * 1024  # asked for; copies beyond what is granted are dropped
MIRROR_ASK_S = 0.5  # /_proxy/state waits this long for the mirror's counters
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


class ClientError(Exception):
    def __init__(self, status, message):
        Exception.__init__(self, message)
        self.status = status


class Route:
    """The state file, re-read whenever its identity changes (one stat per request)."""

    def __init__(self, path):
        self.path = path
        self.key = None
        self.state = {}
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
                    state = {}
                    if key is not None:
                        try:
                            with open(self.path) as fh:
                                state = json.load(fh)
                        except (OSError, ValueError):
                            return self.state  # mid-write or unreadable: keep the last good one
                    self.state, self.key = state if isinstance(state, dict) else {}, key
        return self.state


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()

    def add(self, key, n=1):
        with self.lock:
            self.counts[key] += n


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
            try:
                length = int(value)
            except ValueError:
                raise ClientError(400, "the Content-Length header is not a number") from None
            if length < 0:
                raise ClientError(400, "the Content-Length header is negative")
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


def _json_response(status, payload, keep):
    body = json.dumps(payload, separators=(",", ":")).encode()
    reason = {
        200: "OK",
        400: "Bad Request",
        404: "Not Found",
        408: "Request Timeout",
        411: "Length Required",
        413: "Payload Too Large",
        431: "Request Header Fields Too Large",
        502: "Bad Gateway",
        503: "Service Unavailable",
    }.get(status, "Error")
    head = (
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n".format(
            status, reason, len(body), "" if keep else "Connection: close\r\n"
        )
    )
    return head.encode() + body


class Handler(socketserver.StreamRequestHandler):
    def setup(self):
        socketserver.StreamRequestHandler.setup(self)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.upstreams = {}

    def finish(self):
        for upstream in self.upstreams.values():
            upstream.close()
        with contextlib.suppress(OSError):
            socketserver.StreamRequestHandler.finish(self)

    def handle(self):
        server = self.server
        while not server.stopping:
            self.connection.settimeout(IDLE_TIMEOUT_S)
            try:
                line = self.rfile.readline(MAX_HEADER_BYTES)
            except OSError:
                return
            if not line or line in (b"\r\n", b"\n"):
                return
            server.enter()
            try:
                keep = self.one(line)
            except ClientError as exc:
                self._reply(
                    _json_response(exc.status, {"error": str(exc), "status": exc.status}, False)
                )
                keep = False
            except OSError:
                keep = False  # the client went away or timed out mid-request
            finally:
                server.leave()
            if not keep:
                return

    def _reply(self, data):
        with contextlib.suppress(OSError):
            self.wfile.write(data)

    def one(self, line):
        server = self.server
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise ClientError(400, "the request line is malformed")
        method, target, version = parts
        read_timeout = server.read_timeout_s
        self.connection.settimeout(read_timeout)
        try:
            headers, length, keep = _read_headers(self.rfile)
            if length is None:
                if method in (b"POST", b"PUT", b"PATCH"):
                    raise ClientError(411, "a Content-Length header is required")
                length = 0
            if length > MAX_BODY_BYTES:
                left = length if length <= DISCARD_BYTES else 0
                while left > 0:
                    chunk = self.rfile.read(min(1 << 16, left))
                    if not chunk:
                        break
                    left -= len(chunk)
                raise ClientError(
                    413, f"the body has {length} bytes, at most {MAX_BODY_BYTES} are accepted"
                )
            body = _read_exact(self.rfile, length) if length else b""
        except TimeoutError:
            raise ClientError(408, f"the request did not arrive within {read_timeout:g}s") from None
        if version == b"HTTP/1.0":
            keep = False
        path = target.split(b"?", 1)[0]
        if path.startswith(b"/_proxy/"):
            self._reply(_json_response(*self._local(path), keep))
            return keep
        state = server.route.current()
        request_id = None
        out = [method + b" " + target + b" HTTP/1.1\r\n"]
        for name, value in headers:
            lower = name.lower()
            if lower in HOP_HEADERS or lower == b"host":
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
        status_line, up_headers, data = self._forward(state, head, body)
        reply = [status_line]
        for name, value in up_headers:
            if name.lower() not in HOP_HEADERS:
                reply.append(name + b": " + value + b"\r\n")
        if not keep:
            reply.append(b"Connection: close\r\n")
        reply.append(b"\r\n")
        self.wfile.write(b"".join(reply) + data)
        shadow = state.get("shadow")
        if shadow and method == b"POST" and path == b"/v1/predict":
            server.shadow(shadow, head, body)
        server.stats.add("requests")
        return keep

    def _forward(self, state, head, body):
        """Send to the live server; one retry on a fresh connection (after re-reading the
        state file) when a connection fails before any answer arrives."""
        server = self.server
        for attempt in (0, 1):
            live = state.get("live") or {}
            port = live.get("port")
            if not isinstance(port, int):
                server.stats.add("no_live")
                return _bad_gateway(
                    503,
                    "no release is live on this host: start one with `invoke serve --host H start`",
                )
            for other in [p for p in self.upstreams if p != port]:
                self.upstreams.pop(other).close()  # traffic moved: let the old server drain
            try:
                status_line, headers, data, _keep = _pooled_exchange(
                    self.upstreams, port, head, body
                )
            except (OSError, ValueError) as exc:
                server.stats.add("upstream_errors")
                if attempt == 0:
                    state = server.route.current()
                    continue
                return _bad_gateway(
                    502,
                    "the model server for {} on port {} did not answer ({})".format(
                        live.get("release"), port, type(exc).__name__
                    ),
                )
            return status_line, headers, data
        raise AssertionError("unreachable")

    def _local(self, path):
        server = self.server
        if path == b"/_proxy/state":
            return 200, {
                "state": server.route.current(),
                "pid": os.getpid(),
                "port": server.server_address[1],
                "stats": dict(server.stats.counts, **server.shadow_counts()),
                "uptime_s": round(time.time() - server.started, 3),
            }
        if path == b"/_proxy/healthz":
            return 200, {"status": "alive", "pid": os.getpid()}
        return 404, {"error": "no such proxy path", "status": 404}


def _bad_gateway(status, message):
    reason = b"Bad Gateway" if status == 502 else b"Service Unavailable"
    body = json.dumps({"error": message, "status": status}).encode()
    headers = [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode())]
    return b"HTTP/1.1 " + str(status).encode() + b" " + reason + b"\r\n", headers, body


class ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address, state_path, read_timeout_s=READ_TIMEOUT_S):
        socketserver.ThreadingTCPServer.__init__(self, address, Handler)
        self.read_timeout_s = read_timeout_s
        self.route = Route(state_path)
        self.stats = Stats()
        self.started = time.time()
        self.stopping = False
        self.inflight = 0
        self.cond = threading.Condition()
        self.shadow_items = collections.deque()
        self.shadow_cond = threading.Condition()
        self.copy_ids = iter(range(1, 1 << 62))
        self.mirror_lock = threading.Lock()  # a copy's chunks go out together
        self.ask_lock = threading.Lock()
        self.mirror_stats = {}
        self.mirror = _start_mirror(self.socket)
        if self.mirror is None:  # no fork / no SOCK_SEQPACKET here: copy from a thread instead
            threading.Thread(target=self._shadow_loop, name="shadow", daemon=True).start()

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

    def shadow(self, shadow, head, body):
        """Queue a copy for the shadow server (sampled, bounded, never waited for)."""
        try:
            fraction = float(shadow.get("fraction", 0.0))
            port = int(shadow["port"])
        except (KeyError, TypeError, ValueError):
            return
        if fraction <= 0 or random.random() >= fraction:
            return
        if self.mirror is not None:
            self._to_mirror(port, head, body)
            return
        with self.shadow_cond:
            if len(self.shadow_items) >= SHADOW_QUEUE:
                self.stats.add("shadow_dropped")
                return
            self.shadow_items.append((port, head, body))
            self.shadow_cond.notify()

    def _to_mirror(self, port, head, body):
        """Hand the copy's bytes to the mirror process without waiting: a full socket buffer
        drops the copy (counted). Sent in chunks under a lock; the mirror discards a copy
        whose chunks stop early."""
        data = head + body
        with self.mirror_lock:
            copy_id = next(self.copy_ids)
            for lo in range(0, len(data), MIRROR_CHUNK):
                more = 1 if lo + MIRROR_CHUNK < len(data) else 0
                label = f"{copy_id} {port} {more}\n".encode()
                try:
                    self.mirror.sendmsg(
                        [label, data[lo : lo + MIRROR_CHUNK]], [], socket.MSG_DONTWAIT
                    )
                except OSError:  # full (EAGAIN), or the mirror is gone
                    self.stats.add("shadow_dropped")
                    return

    def shadow_counts(self):
        """The mirror's counters: asked for on the mirror socket, answered after the copies
        already queued there (waited for at most MIRROR_ASK_S; else the last known ones)."""
        if self.mirror is None:
            return {}
        with self.ask_lock:
            self._read_counts()
            with self.mirror_lock:
                try:
                    self.mirror.send(b"0 0 0\n", socket.MSG_DONTWAIT)
                except OSError:
                    return dict(self.mirror_stats)
            if select.select([self.mirror], [], [], MIRROR_ASK_S)[0]:
                self._read_counts()
            return dict(self.mirror_stats)

    def _read_counts(self):
        while True:
            try:
                data = self.mirror.recv(65536, socket.MSG_DONTWAIT)
            except OSError:
                return
            if not data:
                return
            with contextlib.suppress(ValueError):
                self.mirror_stats = json.loads(data.decode())

    def _shadow_loop(self):
        upstreams = {}
        while True:
            with self.shadow_cond:
                while not self.shadow_items:
                    self.shadow_cond.wait()
                port, head, body = self.shadow_items.popleft()
            self.stats.add(_copy_to_shadow(upstreams, port, head, body))


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
    queue, cond, counts = collections.deque(), threading.Condition(), collections.Counter()
    threading.Thread(target=_mirror_send, args=(queue, cond, counts), daemon=True).start()
    parts, current = [], None
    while True:
        message = conn.recv(MIRROR_CHUNK + 64)
        if not message:
            return
        label, _, chunk = message.partition(b"\n")
        copy_id, port, more = label.split()
        if copy_id == b"0":  # the proxy asks for the counters
            with cond:
                totals = json.dumps(dict(counts)).encode()
            with contextlib.suppress(OSError):
                conn.send(totals, socket.MSG_DONTWAIT)
            continue
        if copy_id != current:  # a new copy (an unfinished one before it was cut short and
            current, parts = copy_id, []  # already counted as dropped by the proxy)
        parts.append(chunk)
        if more == b"1":
            continue
        data, parts = b"".join(parts), []
        with cond:
            if len(queue) >= SHADOW_QUEUE:
                counts["shadow_dropped"] += 1
            else:
                queue.append((int(port), data))
                cond.notify()


def _mirror_send(queue, cond, counts):
    upstreams = {}
    while True:
        with cond:
            while not queue:
                cond.wait()
            port, data = queue.popleft()
        end = data.find(b"\r\n\r\n") + 4
        outcome = _copy_to_shadow(upstreams, port, data[:end], data[end:])
        with cond:
            counts[outcome] += 1


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
    parser.add_argument("--read-timeout-s", type=float, default=READ_TIMEOUT_S)
    args = parser.parse_args(argv)
    serve_dir = os.path.join(args.workspace, "serve")
    os.makedirs(serve_dir, exist_ok=True)
    try:
        server = ProxyServer(
            (args.bind, args.port), os.path.join(serve_dir, "state.json"), args.read_timeout_s
        )
    except OSError as exc:
        print(f"moola proxy: cannot listen on {args.bind}:{args.port}: {exc}", file=sys.stderr)
        return 2
    port = server.server_address[1]
    record_path = os.path.join(serve_dir, "proxy.json")
    _write_json(
        record_path, {"pid": os.getpid(), "port": port, "bind": args.bind, "started": time.time()}
    )

    def on_signal(signum, _frame):
        if not server.stopping:
            server.stopping = True
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        f"moola proxy: listening on {args.bind}:{port} for {args.workspace}",
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

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

Clients speak to the agent's one HTTP front (http.py, the model server's too): one thread
reads, parses, refuses and answers every connection, and never waits on a model server. The
upstream connections run on the same thread's selector (nginx's shape): a request to forward
is written to a kept-alive non-blocking connection to the live server (`Link`), and the answer
is read as it arrives and completed there: no thread hand-off per request. Content-Length bodies
only, keep-alive on both sides; hop-by-hop headers are not forwarded, binary bodies pass
through untouched. A request is retried once on a fresh connection when the upstream closed a
kept-alive connection before answering (predictions are idempotent). Threads remain where
waiting is the point (`Workers`): a prediction whose live server stays unreachable (it
crashed; the host's supervisor, `agent.py serve supervise`, starts another) is held, at most
`--hold-max` at once for up to `--hold-s` each, until the state file names the replacement,
then sent there: the client sees a slower answer, not an error. `shadow` copies a sampled
fraction of /v1/predict requests to a candidate server after the live answer was handed to the
front: the front hands the request's bytes, without waiting, to a socket read by the mirror, a
process forked at start (nice 19) that sends them to the shadow; a full socket buffer drops the
copy (counted per shadow: a new shadow starts from zero). The live answer never waits for the
shadow, and the copying never holds the proxy's interpreter lock. Without fork or
SOCK_SEQPACKET, a thread with a bounded queue copies instead.

The port faces clients Moola does not control, so every request has limits (the front's):
- a whole-request deadline (`--read-timeout-s`, from its first byte to the end of its body; a
  fresh connection's first request counts from the accept): a client that trickles one byte
  at a time gets 408 and the connection closes, however often it sends;
- a connection cap (`--max-connections`): at the cap a new client takes the place of the
  connection idle longest, and gets 503 at once when every one is busy;
- one Content-Length, digits only (a second one would let a request hide inside another);
- a token (`Authorization: Bearer TOKEN`, the file WORKSPACE/serve/token, re-read when it
  changes so rotation needs no restart) whenever the proxy listens beyond loopback, or always
  with `--auth always`; only the liveness and readiness probes from the host itself go
  without it. The token is never logged and never forwarded to a model server.

Standard library only. Run: `python3 -S agent.py proxy --workspace WS --port P`.
"""

import argparse
import collections
import contextlib
import errno
import hmac
import ipaddress
import json
import os
import queue
import random
import select
import selectors
import signal
import socket
import sys
import threading
import time
import traceback

from moola_core.agent.http import (
    MAX_LINE,
    RECV_BYTES,
    Front,
    HeadError,
    Response,
    head_end,
    parse_answer_head,
)

MAX_HEADER_BYTES = 65536  # an upstream answer's head
MAX_BODY_BYTES = 4 * 1024 * 1024  # the server's default limit, refused here before forwarding
READ_TIMEOUT_S = 10.0  # a whole request, first byte to last, must arrive within this
MAX_CONNECTIONS = 256  # client connections at once; also the most worker threads
UPSTREAM_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 2.0
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
OPEN_PATHS = ("/healthz", "/readyz", "/_proxy/healthz")  # probes from the host: no token
HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "trailer",
}
# never forwarded: the hop headers, the client's Host, its token (the model servers and their
# logs never see it), its Content-Length (the proxy states the length it read itself) and its
# Expect (the front met it; the body goes upstream with the head, asking nothing)
NOT_FORWARDED = HOP_HEADERS | {"host", "authorization", "content-length", "expect"}
# not passed back: the front states its own length, Server and Date (as nginx does)
NOT_RETURNED = HOP_HEADERS | {"content-length", "server", "date"}
UPSTREAM_ERRORS = (OSError, ValueError, HeadError)  # what a failed exchange raises


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

    def snapshot(self):
        with self.lock:
            return dict(self.counts)


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


class Upstream:
    """One blocking kept-alive connection to one server port: the shadow copies' (the mirror
    process, or the proxy's copying thread)."""

    def __init__(self, port):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(UPSTREAM_TIMEOUT_S)
        self.rfile = self.sock.makefile("rb")

    def close(self):
        for closer in (self.rfile.close, self.sock.close):
            with contextlib.suppress(OSError):
                closer()

    def exchange(self, head, body):
        """Send one request; return (status, header fields [(name, value)], body, keep)."""
        self.sock.sendall(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.sock.sendall(body)
        status, lines = 100, []
        while 100 <= status < 200:  # an interim answer (100 Continue) is followed by the real one
            lines = self._head_lines()
            status, headers, fields = parse_answer_head(b"".join(lines).rstrip(b"\r\n"))
        if "transfer-encoding" in headers:  # never sent by our servers; read on, it would desync
            raise ValueError("the upstream answer is not framed by a Content-Length")
        length = headers.get("content-length", "0")
        if not (length.isdigit() and length.isascii()):
            raise ValueError("the upstream answer's Content-Length is not a whole number")
        if head.startswith(b"HEAD ") or status in (204, 304):
            length = "0"  # answers without a body, whatever their length says
        data = self.rfile.read(int(length)) if length != "0" else b""
        if len(data) < int(length):
            raise ConnectionResetError("the upstream answer's body ended early")
        keep = "close" not in headers.get("connection", "").lower()
        return status, fields, data, keep and lines[0].startswith(b"HTTP/1.1")

    def _head_lines(self):
        """The next answer's status line and header lines, up to the blank line."""
        lines, total = [], 0
        while True:
            line = self.rfile.readline(MAX_LINE + 2)
            if not line:
                raise ConnectionResetError("upstream closed the connection")
            if line in (b"\r\n", b"\n"):
                if lines:
                    return lines
                continue  # a stray blank line before the status line
            total += len(line)
            if total > MAX_HEADER_BYTES:
                raise ValueError("the upstream answer's head is too large")
            lines.append(line)


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
        except UPSTREAM_ERRORS:
            if fresh:
                break
    return "shadow_errors"


class Link:
    """One non-blocking connection to a model server's port, run by the front's selector: it
    sends a request's bytes and reads the answer as it arrives (`http.head_end`,
    `parse_answer_head`), then reports to its Forward (`answered` / `failed`) and, when the
    server keeps it, waits in the proxy's idle pool. An idle link that becomes readable was
    closed by its server (or sent what nobody asked for): it leaves the pool."""

    def __init__(self, proxy, port):
        self.proxy, self.port = proxy, port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connecting = True
        self.closed = False
        self.job = None  # the Forward whose request is upstream
        self.out = b""
        self.inbuf = bytearray()
        self.answer = None  # (status, fields, length, keep) once the head is parsed
        self.head_only = False  # the request was HEAD: no body follows the answer's head
        self.deadline = 0.0
        self.mask = 0  # what the front's selector watches for
        self.on_event = self._on_event  # one bound method: the selector's callback
        code = self.sock.connect_ex(("127.0.0.1", port))
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self.sock.close()
            self.closed = True
            raise ConnectionRefusedError(code, os.strerror(code))
        self.connecting = code != 0

    def send(self, job, data, head_only):
        """Start one exchange: the answer is reported to `job`."""
        self.job, self.out, self.head_only, self.answer = job, data, head_only, None
        now = time.monotonic()
        self.deadline = now + (CONNECT_TIMEOUT_S if self.connecting else UPSTREAM_TIMEOUT_S)
        self.proxy.busy.add(self)
        if not self.connecting:
            self._write()
        if not self.closed and self.job is job:
            self._watch()

    def _watch(self):
        mask = selectors.EVENT_WRITE if self.connecting or self.out else 0
        mask |= selectors.EVENT_READ  # always: an idle link learns that its server closed it
        if mask != self.mask:
            self.proxy.front.watch(self.sock, mask, self.on_event)
            self.mask = mask

    def _on_event(self, events):
        if self.closed:
            return
        if self.job is None:  # idle: the server closed it (or spoke unasked)
            self._drop()
            return
        if events & selectors.EVENT_WRITE:
            if self.connecting:
                code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    self.fail(ConnectionRefusedError(code, os.strerror(code)))
                    return
                self.connecting = False
                self.deadline = time.monotonic() + UPSTREAM_TIMEOUT_S
            self._write()
            if self.closed or self.job is None:
                return
            if not self.out:
                self._watch()
        if events & selectors.EVENT_READ and not self.connecting:
            self._read()

    def _write(self):
        try:
            while self.out:
                sent = self.sock.send(self.out)
                self.out = self.out[sent:]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.fail(exc)

    def _read(self):
        try:
            data = self.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.fail(exc)
            return
        if not data:
            self.fail(ConnectionResetError("upstream closed the connection"))
            return
        self.inbuf += data
        try:
            answer = self._parse()
        except UPSTREAM_ERRORS as exc:
            self.fail(exc)
            return
        if answer is None:
            return
        status, fields, body, keep = answer
        job, self.job = self.job, None
        self.proxy.busy.discard(self)
        if keep:
            self.proxy.keep(self)
        else:
            self.close()
        job.answered(status, fields, body)

    def _parse(self):
        """The whole answer (status, fields, body, keep) once it arrived; None until then."""
        buf = self.inbuf
        while True:
            if self.answer is None:
                while buf[:2] == b"\r\n" or buf[:1] == b"\n":  # stray blank lines
                    del buf[: 2 if buf[:1] == b"\r" else 1]
                end, start = head_end(buf)
                if end < 0 and len(buf) <= MAX_HEADER_BYTES:
                    return None
                if end < 0 or end > MAX_HEADER_BYTES:
                    raise ValueError("the upstream answer's head is too large")
                status, headers, fields = parse_answer_head(bytes(buf[:end]))
                http11 = buf.startswith(b"HTTP/1.1")
                del buf[:start]
                if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
                    continue
                if "transfer-encoding" in headers:  # never sent by our servers
                    raise ValueError("the upstream answer is not framed by a Content-Length")
                length = headers.get("content-length", "0")
                if not (length.isdigit() and length.isascii()):
                    raise ValueError("the upstream answer's Content-Length is not a whole number")
                if self.head_only or status in (204, 304):
                    length = "0"  # answers without a body, whatever their length says
                keep = http11 and "close" not in headers.get("connection", "").lower()
                self.answer = (status, fields, int(length), keep)
            status, fields, length, keep = self.answer
            if len(buf) < length:
                return None
            body = bytes(buf[:length])
            del buf[:length]
            # bytes beyond the answer: the connection is out of step, not reused
            return status, fields, body, keep and not buf

    def fail(self, exc):
        """The exchange failed: the connection closes and its Forward decides what next."""
        job, self.job = self.job, None
        self.close()
        if job is not None:
            job.failed(exc)

    def _drop(self):
        idle = self.proxy.idle.get(self.port)
        if idle and self in idle:
            idle.remove(self)
        self.close()

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.proxy.busy.discard(self)
        if self.proxy.front is not None:
            self.proxy.front.unwatch(self.sock)
        with contextlib.suppress(OSError):
            self.sock.close()


class Forward:
    """One request on its way to the live server, on the front's thread: sent over a kept-alive
    Link; retried once on a fresh connection (after re-reading the state file) when the
    exchange fails; a prediction whose live server stays unreachable is held (at most
    --hold-max at once, each up to --hold-s: a worker waits for the state file to name another
    server, then the front sends it there). Answers through `reply`, then copies a sampled
    prediction to the shadow."""

    def __init__(self, proxy, request, body, reply):
        self.proxy, self.request, self.body, self.reply = proxy, request, body, reply
        self.attempt = 0
        self.deadline = None  # held: give up at this time
        self.port = None
        self.live = {}

    def start(self):
        try:
            self.state = self.first_state = self.proxy.route.current()
            self.head = _upstream_head(self.request, len(self.body))
            self.data = self.head + self.body
            self.predict = self.request.method == "POST" and self.request.path == "/v1/predict"
            self._try()
        except Exception:  # a bug: the client gets an answer, the log the traceback
            self._finish(_internal_error(), ok=False)

    def _try(self):
        self.live = self.state.get("live") or {}
        port = self.port = self.live.get("port")
        if not isinstance(port, int):
            self.proxy.stats.add("no_live")
            message = (
                "no release is live on this host: start one with `invoke serve --host H start`"
            )
            self._finish(_unavailable(503, message))
            return
        self.proxy.moved_to(port)
        try:
            link = self.proxy.link(port, fresh=self.attempt > 0)
        except OSError as exc:
            self.failed(exc)
            return
        link.send(self, self.data, self.request.method == "HEAD")

    def answered(self, status, fields, body):
        try:
            if self.deadline is not None:
                self.proxy.stats.add("held_then_answered")
            headers = [(n, v) for n, v in fields if n.lower() not in NOT_RETURNED]
            answer = Response(status, body, None, headers)
        except Exception:
            answer = _internal_error()
        self._finish(answer)

    def failed(self, exc):
        try:
            self._failed(exc)
        except Exception:
            self._finish(_internal_error(), ok=False)

    def _failed(self, exc):
        proxy = self.proxy
        proxy.stats.add("upstream_errors")
        self.attempt += 1
        if self.attempt == 1:
            self.state = proxy.route.current()
            self._try()
            return
        release, port = self.live.get("release"), self.port
        if not self.predict:
            message = f"the model server for {release} on port {port} did not answer ({type(exc).__name__})"
            self._finish(_unavailable(502, message))
            return
        if self.deadline is None:
            if not proxy._hold_enter():
                proxy.stats.add("hold_refused")
                message = (
                    f"the live server of {release} is restarting and the proxy already holds "
                    f"{proxy.hold_max} requests: retry in a moment"
                )
                self._finish(_unavailable(503, message))
                return
            self.deadline = time.monotonic() + proxy.hold_s
        front, deadline = proxy.front, self.deadline

        def wait(_upstreams):
            state = proxy._next_route(port, deadline)
            front.call_soon(lambda: self._resume(state))

        proxy.workers.submit(wait)

    def _resume(self, state):
        if state is None:
            self.proxy.stats.add("hold_timeouts")
            message = (
                f"the live server of {self.live.get('release')} on port {self.port} is down and "
                f"no server took its place within {self.proxy.hold_s:g}s: the host's supervisor "
                "is restarting it (`invoke serve --host H status`)"
            )
            self._finish(_unavailable(503, message))
            return
        self.state = state
        try:
            self._try()
        except Exception:
            self._finish(_internal_error(), ok=False)

    def _finish(self, answer, ok=True):
        proxy = self.proxy
        if self.deadline is not None:
            with proxy.hold_lock:
                proxy.held -= 1
            self.deadline = None
        if ok:
            proxy.stats.add("requests")
        self.reply(answer)
        shadow = self.first_state.get("shadow") if ok else None
        if shadow and self.predict:
            try:
                proxy.shadow(shadow, self.head, self.body)
            except Exception:  # a copy never fails the live answer, already given
                traceback.print_exc(file=sys.stderr)


class Workers:
    """The threads that do what the front must not wait for (a held prediction waiting for a
    restarted server, the mirror's counters): started as needed up to `limit` (the connection
    cap: one request per connection, so nothing queues). `submit(task)`: the next free worker
    runs `task(upstreams)`."""

    def __init__(self, limit):
        self.limit = max(1, int(limit))
        self.tasks = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.started = 0
        self.idle = 0  # workers waiting for a task and not yet promised one

    def submit(self, task):
        with self.lock:
            if self.idle:
                self.idle -= 1
            elif self.started < self.limit:
                self.started += 1
                threading.Thread(target=self._work, name="proxy-worker", daemon=True).start()
        self.tasks.put(task)

    def _work(self):
        upstreams = {}
        while True:
            task = self.tasks.get()
            try:
                task(upstreams)
            except Exception:  # the tasks answer their own failures; this is a last resort
                traceback.print_exc(file=sys.stderr)
            with self.lock:
                self.idle += 1


def _json(status, payload, close=False):
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {"Retry-After": "1"} if status == 503 else {}
    return Response(status, body, "application/json", headers, close)


def _internal_error():
    """The answer when the proxy itself failed on a request (a bug): the log keeps the detail."""
    traceback.print_exc(file=sys.stderr)
    return _json(500, {"error": "internal error; see the proxy log", "status": 500}, close=True)


def _unavailable(status, message):
    """The proxy's own answer in place of the live server's: 502, or 503 with Retry-After."""
    return _json(status, {"error": message, "status": status})


class Proxy:
    """What the proxy answers (the front asks it, on the front's thread): framing and the token
    at the head, its own probes at once, forwarding over Links on the front's selector,
    /_proxy/state through a worker."""

    def __init__(
        self,
        state_path,
        token_path=None,
        *,
        auth_required=False,
        hold_s=HOLD_S,
        hold_max=HOLD_MAX,
        max_connections=MAX_CONNECTIONS,
        mirror=None,
    ):
        self.front = None  # set once the front listens
        self.hold_s, self.hold_max = float(hold_s), max(0, int(hold_max))
        self.held = 0
        self.hold_lock = threading.Lock()
        self.max_connections = max(1, int(max_connections))
        self.workers = Workers(self.max_connections)  # /_proxy/state, held predictions
        self.idle = {}  # port -> [Link]: kept-alive upstream connections with nothing to do
        self.busy = set()  # Links with a request upstream (their deadlines run)
        self.route = Watched(state_path, _parse_state, {})
        self.token = Watched(token_path or "", _parse_token, None)
        self.auth_required = auth_required
        self.stats = Stats()
        self.started = time.time()
        self.stopping = False
        self.shadow_items = collections.deque()
        self.shadow_cond = threading.Condition()
        self.copy_ids = iter(range(1, 1 << 62))
        self.tally = ShadowTally()  # copies this process dropped (mirror full) or sent itself
        self.generation = (None, 0)  # (the shadow entry seen last, its generation)
        self.mirror_lock = threading.Lock()  # a copy's chunks go out together
        self.ask_lock = threading.Lock()
        self.mirror_tally = {}
        self.mirror = mirror
        if self.mirror is None:  # no fork / no SOCK_SEQPACKET here: copy from a thread instead
            threading.Thread(target=self._shadow_loop, name="shadow", daemon=True).start()

    # -- the front's calls (its thread: nothing here waits) ----------------------------------------

    def head(self, request):
        """The body length to read, or the answer that refuses the request (or a probe's)."""
        method, headers = request.method, request.headers
        if "transfer-encoding" in headers:
            return self.error(request, 411, "send the body with a Content-Length, not chunked")
        length = headers.get("content-length")
        if length is None:
            if method in ("POST", "PUT", "PATCH"):
                return self.error(request, 411, "a Content-Length header is required")
            length = "0"
        if not (length.isdigit() and length.isascii()):  # int() would take "+5" and "5_0"
            return self.error(request, 400, "the Content-Length header is not a whole number")
        if int(length) > MAX_BODY_BYTES:
            sentence = f"the body has {int(length)} bytes, at most {MAX_BODY_BYTES} are accepted"
            return self.error(request, 413, sentence)
        path = request.path
        if not self._allowed(request):
            self.stats.add("unauthorized")
            answer = _json(401, self._unauthorized())
            answer.headers["WWW-Authenticate"] = 'Bearer realm="moola"'
            return answer
        if path == "/_proxy/healthz":
            return _json(200, {"status": "alive", "pid": os.getpid()})
        if path.startswith("/_proxy/") and path != "/_proxy/state":
            return _json(404, {"error": "no such proxy path", "status": 404})
        return int(length)

    def request(self, request, body, reply, alone=False):
        """Start forwarding the request on the front's selector (/_proxy/state: a worker);
        the answer comes through `reply`, never from here."""
        if request.path == "/_proxy/state":
            front = {
                "connections": self.front.open_connections(),
                "counts": dict(self.front.counts),
                "port": self.front.port,
            }
            self.workers.submit(lambda _upstreams: self._state_one(front, reply))
        else:
            Forward(self, request, body, reply).start()
        return None

    def error(self, request, status, sentence):
        """The answer to what the front or the head refused: one JSON sentence, then close."""
        return _json(status, {"error": sentence, "status": status}, close=True)

    def _allowed(self, request):
        """No token needed: auth is off, or a liveness/readiness probe from the host itself."""
        if not self.auth_required:
            return True
        probe = request.method in ("GET", "HEAD") and request.path in OPEN_PATHS
        if probe and is_loopback(request.peer):
            return True
        token = self.token.current()
        if not token:
            return False  # required but missing: nothing gets in (fail closed)
        for name, value in request.fields:
            if name.lower() == "authorization":
                scheme, _, given = value.partition(" ")
                given = given.strip().encode("iso-8859-1")
                if scheme.lower() == "bearer" and hmac.compare_digest(given, token):
                    return True
        return False

    def _unauthorized(self):
        if not self.token.current():
            why = "this host has no client token yet: make one with `invoke serve --host H rotate-token`"
        else:
            why = (
                "this port needs the host's token: send the header `Authorization: Bearer TOKEN` "
                "(`invoke serve --host H token` prints it)"
            )
        return {"error": why, "status": 401}

    # -- forwarding (the front's thread) -------------------------------------------------------

    def link(self, port, fresh):
        """A connection to `port`: a kept-alive idle one unless `fresh`, else a new one."""
        idle = self.idle.get(port)
        if idle and not fresh:
            return idle.pop()
        return Link(self, port)

    def keep(self, link):
        """An upstream connection that answered and stays open waits here for the next request."""
        idle = self.idle.setdefault(link.port, [])
        if len(idle) >= self.max_connections:
            link.close()
            return
        idle.append(link)

    def moved_to(self, port):
        """Traffic goes to `port` now: idle connections to other ports close (the old server
        drains)."""
        if len(self.idle) > 1 or (self.idle and port not in self.idle):
            for other in [p for p in self.idle if p != port]:
                for link in self.idle.pop(other):
                    link.close()

    def tick(self, now):
        for link in [link for link in self.busy if now > link.deadline]:
            link.fail(TimeoutError("the upstream did not answer in time"))

    def close_links(self):
        for link in list(self.busy) + [k for idle in self.idle.values() for k in idle]:
            link.close()
        self.idle.clear()

    def _hold_enter(self):
        with self.hold_lock:
            if self.held >= self.hold_max:
                return False
            self.held += 1
            self.stats.add("held")
            return True

    def _next_route(self, failed_port, deadline):
        """The state once it names a live server other than the one on `failed_port`, or None
        at `deadline` (or when the proxy stops)."""
        while time.monotonic() < deadline and not self.stopping:
            state = self.route.current()
            port = (state.get("live") or {}).get("port")
            if port != failed_port:
                return state
            time.sleep(HOLD_POLL_S)
        return None

    def _state_one(self, front, reply):
        try:
            answer = self._state(front)
        except Exception:  # a bug: the client gets an answer, the log the traceback
            answer = _internal_error()
        reply(answer)

    def _state(self, front):
        """GET /_proxy/state (a worker: the mirror's counters are asked for and waited on)."""
        state = self.route.current()
        stats = dict(self.stats.snapshot(), **front["counts"])
        stats.update(self.shadow_counts(state.get("shadow")))
        return _json(
            200,
            {
                "state": state,
                "pid": os.getpid(),
                "port": front["port"],
                "stats": stats,
                "connections": front["connections"],
                "max_connections": self.max_connections,
                "auth_required": self.auth_required,
                "held_now": self.held,
                "hold_s": self.hold_s,
                "hold_max": self.hold_max,
                "uptime_s": round(time.time() - self.started, 3),
            },
        )

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


def _upstream_head(request, length):
    """The request's head as the live server gets it: the client's headers as sent (case,
    order, repeats) less NOT_FORWARDED, a request id (the client's, or a new one), and the
    length the front read."""
    out = [f"{request.method} {request.target} HTTP/1.1\r\n"]
    request_id = None
    for name, value in request.fields:
        lower = name.lower()
        if lower in NOT_FORWARDED:
            continue
        if lower == "x-moola-request-id":
            request_id = value
        out.append(f"{name}: {value}\r\n")
    if request_id is None:
        out.append(f"X-Moola-Request-Id: {os.urandom(16).hex()}\r\n")  # 128 random bits
    out.append("Host: 127.0.0.1\r\n")
    if length or request.method in ("POST", "PUT", "PATCH"):
        out.append(f"Content-Length: {length}\r\n")
    out.append("\r\n")
    return "".join(out).encode("iso-8859-1")


def _start_mirror():
    """Fork the mirror: a process at low CPU priority that sends the copies to the shadow, so
    the proxy's live path only hands bytes it already holds to a socket: it never waits for the
    shadow and never shares its interpreter lock with the copying. Forked before any thread
    starts and before the public port is opened. Returns the proxy's end of the socket pair, or None where this is not possible."""
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
    parser = argparse.ArgumentParser(prog="agent.py proxy")
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
    # the mirror is forked first: before any thread starts, and without the public port
    mirror = _start_mirror()
    proxy = Proxy(
        os.path.join(serve_dir, "state.json"),
        args.token_file or os.path.join(serve_dir, "token"),
        auth_required=args.auth == "always" or not is_loopback(args.bind),
        hold_s=args.hold_s,
        hold_max=args.hold_max,
        max_connections=args.max_connections,
        mirror=mirror,
    )
    try:
        front = proxy.front = Front(
            args.bind,
            args.port,
            proxy,
            args.read_timeout_s,
            max_connections=proxy.max_connections,
            name="proxy",
        )
    except OSError as exc:
        print(f"moola proxy: cannot listen on {args.bind}:{args.port}: {exc}", file=sys.stderr)
        return 2
    record_path = os.path.join(serve_dir, "proxy.json")
    _write_json(
        record_path,
        {
            "pid": os.getpid(),
            "port": front.port,
            "bind": args.bind,
            "auth": args.auth,
            "read_timeout_s": args.read_timeout_s,
            "auth_required": proxy.auth_required,
            "max_connections": proxy.max_connections,
            "started": time.time(),
        },
    )

    def on_signal(signum, _frame):
        proxy.stopping = True  # held predictions give up: the drain answers them 503
        front.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        "moola proxy: listening on {}:{} for {} (token {})".format(
            args.bind,
            front.port,
            args.workspace,
            "required" if proxy.auth_required else "not required",
        ),
        file=sys.stderr,
        flush=True,
    )
    drained = front.run(args.drain_timeout_s)
    proxy.close_links()
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

"""The one HTTP/1.1 front of the host agent, for the model server and the front proxy alike: one
thread, non-blocking sockets, one selector.

Why not `http.server` with a thread per connection: at 32 concurrent clients that server spent
more CPU waking and switching 32 interpreter threads (each wakes on its socket, takes the
interpreter lock, parses, waits on an event) than parsing, and the batcher thread, which needs
the lock back between the model's operators, queued behind them; a profile showed the forward
passes taking three times their quiet-machine time and the batcher idle a third of the time
for want of parsed requests. Here one thread reads, parses and answers every connection; the
batcher is the only other thread that wants the lock (docs/serving.md has the figures).

What it speaks: Content-Length bodies, keep-alive (HTTP/1.0 only with `Connection:
keep-alive`), one request at a time per connection (a pipelined next request waits in the
buffer until the answer went out), `Expect: 100-continue` (the interim `100 Continue` goes
out once the app's `head` accepted the request, before its body is read; a request refused
from its head gets the final answer alone; any other expectation gets 417). Limits, each
answered with one JSON sentence by the app:
request line 65536 bytes (414), a header line 65536 bytes or more than 100 headers (431), a
request that has not fully arrived `read_timeout_s` after its first byte (408, then the
connection closes), an unknown method (501). An idle kept-alive connection closes after
IDLE_TIMEOUT_S; an answer the client does not read within `read_timeout_s` is dropped. A fresh
connection's first request counts from the accept, so a connection that never sends is closed
at the same deadline. With `max_connections`, a new connection at the cap takes the place of
the connection idle longest, or gets 503 at once when every one is busy. A connection closed
after an answer is shut for writing and read until the client closes (for at most LINGER_S),
so the answer is never lost to a reset caused by bytes the client had still in flight.

The app (serve.App, proxy.Proxy) decides everything else through these calls, all on this thread:
`head(request)` -> body length to read, or an immediate Response; `request(request, body,
reply, alone)` -> a Response, or None when it answers later by calling `reply(answer)` from
any thread (a Response, or a function that builds it on this thread); `alone` says that no other request is
being answered or waiting to be read, so the app may answer it on this thread at once;
`error(request_or_None, status, sentence)` -> Response for what this module refuses.
`tick(now)` runs about every 0.25 s. An app that does slow work hands it to threads of its own
(the server's batcher) or to non-blocking sockets of its own on this loop (`watch(sock, mask,
callback)`: the proxy's upstream connections) and answers through `reply` (from the loop: at
once; from another thread: through a wake-up): this thread never waits. While the app holds a
request its connection stays registered: what the client sends meanwhile is buffered (up to
HELD_INBUF_BYTES), and a client that shut its writing side still gets its answer. A
Response decided by `head` that keeps the connection (a 401) skips the unread body instead of
closing. The proxy reads its upstream's answers with the same header parser
(`parse_answer_head`).

Standard library only.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import selectors
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

MAX_LINE = 65536  # request line and each header line, as http.server
MAX_HEADERS = 100
IDLE_TIMEOUT_S = 75.0  # a kept-alive connection with no request in it closes after this
LINGER_S = 2.0  # after a closing answer, the client's unread bytes are drained this long at most
LINGER_MAX = (
    256  # connections lingering at once; beyond it a closing answer closes at once (a flood)
)
MAX_SKIP_BYTES = (
    4 << 20
)  # a body unread behind a head-decided answer: skipped up to this, or closed
TICK_S = 0.25
HELD_INBUF_BYTES = 1 << 18  # read ahead while a request is answered; beyond it reading pauses
RECV_BYTES = 1 << 16
REASONS = {  # RFC 9110's phrases, for what the server, the proxy and their upstreams answer
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


# headers that frame the body: a repeat is refused (RFC 9112 6.3), never resolved by a guess
SINGLE_HEADERS = ("content-length", "transfer-encoding")
# the interim answer to `Expect: 100-continue`: the client (curl for bodies over 1 MiB or of
# unknown length, older curl and cpp-httplib over 1 KiB) holds its body back until it comes,
# or for a second when it never does
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Headers(dict):
    """A request's headers by lower-case name (the first of a repeated name wins; a repeated
    SINGLE_HEADERS name is refused by parse_head)."""

    def get(self, name, default=None):
        return dict.get(self, name.lower(), default)


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: Headers
    keep_alive: bool
    started: float  # perf_counter when its head was parsed
    fields: list = field(default_factory=list)  # (name, value) as sent: case, order, repeats
    peer: str = ""  # the client's address (the front sets it)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str | None = "application/json"  # None: `headers` carries it (or none)
    headers: dict | list = field(default_factory=dict)  # a dict, or (name, value) pairs
    close: bool = False  # close the connection after it


class HeadError(Exception):
    def __init__(self, status: int, sentence: str):
        super().__init__(sentence)
        self.status = status


def parse_head(head: bytes, started: float) -> Request:
    """The request line and headers (without the blank line) -> Request; HeadError when wrong.
    Obsolete folded header lines are joined to the previous one; lines may end in LF alone."""
    lines = head.decode("iso-8859-1").split("\n")  # decoded once: one byte, one character
    line = lines[0].rstrip("\r")
    if len(line) > MAX_LINE:
        raise HeadError(414, "the request line is too long")
    words = line.split()
    if len(words) != 3 or not words[2].startswith("HTTP/"):
        raise HeadError(400, "the request line or headers are malformed")
    method, target, version = words
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HeadError(505, f"{version[:16]} is not supported: speak HTTP/1.1")
    headers, fields = parse_fields(lines[1:])
    connection = headers.get("connection", "").lower()
    # HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 only when asked
    keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    return Request(method, target, version, headers, keep_alive, started, fields)


def expects_continue(request: Request) -> bool:
    """True when `request` asks for `100 Continue` before it sends its body; HeadError(417) for
    any other expectation (RFC 9110 10.1.1, where 100-continue is the only one defined). An
    HTTP/1.0 request's Expect is ignored, as the RFC asks."""
    if request.version != "HTTP/1.1" or "expect" not in request.headers:
        return False
    members = {
        member.strip().lower()
        for name, value in request.fields
        if name.lower() == "expect"
        for member in value.split(",")
    } - {""}
    unknown = sorted(members - {"100-continue"})
    if unknown:
        raise HeadError(
            417, f"the expectation {unknown[0][:40]!r} cannot be met: only 100-continue is known"
        )
    return bool(members)


def parse_answer_head(head: bytes) -> tuple[int, Headers, list]:
    """An answer's status line and headers (the proxy reads its upstream's) -> (status,
    Headers, fields); HeadError when wrong."""
    lines = head.decode("iso-8859-1").split("\n")
    words = lines[0].rstrip("\r").split(None, 2)
    if len(words) < 2 or not words[0].startswith("HTTP/1.") or not words[1].isdigit():
        raise HeadError(502, "the upstream answer's status line is malformed")
    headers, fields = parse_fields(lines[1:])
    return int(words[1]), headers, fields


def parse_fields(lines: list) -> tuple[Headers, list]:
    """Header lines (str as decoded from ISO-8859-1, CRLF or LF) -> (Headers, [(name, value)
    as sent]); HeadError when malformed, too many or too long, or when a SINGLE_HEADERS name
    repeats."""
    if len(lines) > MAX_HEADERS:
        raise HeadError(431, "the request headers are too large")
    headers, fields, stored = Headers(), [], False  # stored: the last field is in `headers`
    for text in lines:
        if len(text) > MAX_LINE:
            raise HeadError(431, "the request headers are too large")
        if text[:1] in (" ", "\t"):
            if not fields:
                raise HeadError(400, "the request line or headers are malformed")
            name, value = fields[-1]
            fields[-1] = (name, f"{value} {text.strip()}")
            if stored:
                headers[name.lower()] = fields[-1][1]
            continue
        name, colon, value = text.partition(":")
        name = name.strip()
        if not colon or not name:
            raise HeadError(400, "the request line or headers are malformed")
        value = value.strip()  # also the line's CR
        fields.append((name, value))
        lower = name.lower()
        stored = lower not in headers
        if stored:
            headers[lower] = value
        elif lower in SINGLE_HEADERS:  # two lengths: a proxy and we could split the stream apart
            raise HeadError(400, f"the request has more than one {name[:40]} header")
    return headers, fields


def head_end(buf: bytearray) -> tuple[int, int]:
    """(end of the head, start of the body) in `buf`, or (-1, -1) while incomplete."""
    crlf = buf.find(b"\r\n\r\n")
    # a bare-LF end counts only before a CRLF one: no scan of the body and what follows it
    lf = buf.find(b"\n\n", 0, len(buf) if crlf < 0 else crlf)
    if crlf >= 0 and lf < 0:
        return crlf, crlf + 4
    if lf >= 0:
        return lf, lf + 2
    return -1, -1


class _Conn:
    __slots__ = (
        "sock",
        "inbuf",
        "out",
        "request",
        "body_len",
        "first_byte",
        "last_active",
        "handling",
        "close_after",
        "write_since",
        "closed",
        "mask",
        "peer",
        "fresh",
        "skip",
        "linger_until",
    )

    def __init__(self, sock: socket.socket, now: float, peer: str):
        self.sock = sock
        self.inbuf = bytearray()
        self.out = b""
        self.request: Request | None = None  # head parsed, body still arriving
        self.body_len = 0
        # monotonic time of the current request's first byte; a fresh connection's counts from
        # the accept, so silence is no way around the deadline
        self.first_byte: float | None = now
        self.last_active = now
        self.handling = False  # the app holds a request of this connection
        self.close_after = False
        self.write_since = 0.0
        self.closed = False
        self.mask = 0
        self.peer = peer
        self.fresh = True  # no request head parsed on it yet
        self.skip = 0  # body bytes of a head-decided answer still to drop
        self.linger_until = 0.0  # > 0: answered and shut for writing; reading until the close

    def busy(self) -> bool:
        """A request is in it: arriving, with the app, or its answer still going out."""
        if self.linger_until:
            return False
        return bool(self.handling or self.out or self.inbuf.strip() or self.request or self.skip)


class Front:
    """Listens on (host, port) and runs the connections until stopped and drained."""

    def __init__(
        self,
        host: str,
        port: int,
        app,
        read_timeout_s: float,
        backlog: int = 256,
        max_connections: int | None = None,
        name: str = "server",
        listener: socket.socket | None = None,
    ):
        self.app = app
        self.name = name  # "server" or "proxy": the Server header and the refusal say it
        self._server_line = f"Server: moola-{name}"
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections  # None: as many as the descriptors allow
        self.counts: collections.Counter = collections.Counter()  # refused / evicted connections
        self._lingering = 0
        # a listener handed over keeps its queue: a spare that takes over (runtime/serve.py)
        # answers the connections that waited while the server it replaces died
        self.listener = listener or socket.create_server((host, port), backlog=backlog)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._soon: collections.deque = collections.deque()
        self._woken = False  # a wake-up byte was sent and the loop has not run `_soon` since
        self._ready: collections.deque = collections.deque()  # connections with a request buffered
        self.conns: dict[int, _Conn] = {}
        self._handling = 0  # connections whose request the app holds
        self._round = 0  # connections with something to do in this round of the loop
        self.stopping = False
        self._listening = True
        self._accept_paused = False
        self._date = (0, "")
        self._loop_thread = None  # the thread in run()
        self._in_app = False  # app.request is running: an answer given now waits for the loop

    # -- from the loop's thread ---------------------------------------------------------------

    def watch(self, sock: socket.socket, mask: int, callback) -> None:
        """Have the loop call `callback(events)` when `sock` is ready (the proxy's upstream
        connections); called again for a registered socket, it changes the mask or callback."""
        try:
            key = self.selector.get_key(sock)
        except KeyError:
            self.selector.register(sock, mask, callback)
            return
        if key.events != mask or key.data is not callback:
            self.selector.modify(sock, mask, callback)

    def unwatch(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)

    # -- from any thread ---------------------------------------------------------------------

    def call_soon(self, fn) -> None:
        """Run `fn()` on the loop's thread (thread-safe; the batcher answers through it). One
        wake-up byte until the loop runs them: a pass of 32 requests sends one, not 32 (the
        sends were 7% of the batcher's time at 32 clients, py-spy)."""
        self._soon.append(fn)
        if not self._woken:
            self._woken = True
            with contextlib.suppress(BlockingIOError, OSError):
                self._wake_w.send(b"\0")

    def open_connections(self) -> int:
        """Client connections held now (those only waiting for their client to close: not)."""
        return len(self.conns) - self._lingering

    def abandon(self) -> socket.socket:
        """In a forked copy of this process: close the copy's descriptors of this front (the
        selector, the wake-up pair, the client connections) and return the listener, which
        the copy keeps. The parent's connections and loop are untouched: a socket closed in
        one process stays open in the other (no shutdown is sent), and a connection the copy
        kept would not end when the parent closes it."""
        for conn in list(self.conns.values()):
            conn.closed = True
            with contextlib.suppress(OSError):
                conn.sock.close()
        self.conns.clear()
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()
        return self.listener

    def stop(self) -> None:
        """Stop accepting; answer what is in flight, then `run()` returns (signal-safe)."""
        self.stopping = True
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # -- the loop -----------------------------------------------------------------------------

    def run(self, drain_timeout_s: float) -> bool:
        """Serve until `stop()`; then drain. True when everything in flight was answered."""
        next_tick = time.monotonic() + TICK_S
        drain_deadline = None
        self._loop_thread = threading.get_ident()
        try:
            while True:
                if self.stopping:
                    if self._listening:
                        self._stop_listening()
                        drain_deadline = time.monotonic() + drain_timeout_s
                    if not any(c.busy() for c in self.conns.values()):
                        return True
                    if time.monotonic() > drain_deadline:
                        return False
                timeout = 0.0 if self._ready else max(0.0, next_tick - time.monotonic())
                selected = self.selector.select(timeout)
                # connections with something to do; accepts and wake-ups are no requests (an
                # answer due shows in _handling and _soon)
                self._round = len(self._ready) + sum(
                    isinstance(key.data, _Conn) for key, _events in selected
                )
                for key, events in selected:
                    if key.data is None:
                        self._accept()
                    elif key.data == "wake":
                        self._run_soon()
                    elif not isinstance(key.data, _Conn):  # a socket of the app's (watch)
                        key.data(events)
                    elif not key.data.closed:  # closed earlier in this same round
                        conn = key.data
                        if events & selectors.EVENT_WRITE:
                            self._flush(conn)
                        if events & selectors.EVENT_READ and not conn.closed:
                            self._read(conn)
                if self._soon:  # queued in this round (a wake-up byte, if any, is read then)
                    self._run_soon()
                self._round = len(self._ready)
                for _ in range(len(self._ready)):
                    conn = self._ready.popleft()
                    if not conn.closed:
                        self._advance(conn)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK_S
                    self._tick(now)
        finally:
            for conn in list(self.conns.values()):
                self._close(conn)
            if self._listening:
                self._stop_listening()
            self.selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _stop_listening(self) -> None:
        self._listening = False
        if not self._accept_paused:
            self.selector.unregister(self.listener)
        self.listener.close()

    def _run_soon(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass
        # cleared after the wake-up bytes are read and before the queue is emptied: a call
        # appended from now on is run below or sends a byte of its own that the next select sees
        self._woken = False
        while self._soon:
            try:
                self._soon.popleft()()
            except Exception:  # the answers are guarded themselves; this is a last resort
                traceback.print_exc(file=sys.stderr)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors: stop accepting until the next tick (no spin)
                traceback.print_exc(file=sys.stderr)
                self._pause_accepting()
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peer = addr[0] if isinstance(addr, tuple) else ""
            conn = _Conn(sock, time.monotonic(), peer)
            self.conns[sock.fileno()] = conn
            self._want(conn, selectors.EVENT_READ)
            cap = self.max_connections
            if cap and self.open_connections() > cap and not self._make_room(conn):
                self.counts["refused_connections"] += 1
                sentence = f"the {self.name} already holds {cap} connections: retry in a moment"
                self._respond(conn, self.app.error(None, 503, sentence), close=True)

    def _make_room(self, new: _Conn) -> bool:
        """At the cap: the connection idle longest gives its place; False when all are busy."""
        idle = [
            c for c in self.conns.values() if c is not new and not c.linger_until and not c.busy()
        ]
        if not idle:
            return False
        self._close(min(idle, key=lambda c: c.last_active))
        self.counts["idle_closed_for_new"] += 1
        return True

    def _pause_accepting(self) -> None:
        if self._listening and not self._accept_paused:
            self._accept_paused = True
            self.selector.unregister(self.listener)

    def _want(self, conn: _Conn, mask: int) -> None:
        if conn.closed or mask == conn.mask:
            return
        if conn.mask == 0:
            self.selector.register(conn.sock, mask, conn)
        elif mask == 0:
            self.selector.unregister(conn.sock)
        else:
            self.selector.modify(conn.sock, mask, conn)
        conn.mask = mask

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        self._want(conn, 0)
        conn.closed = True
        if conn.linger_until:
            self._lingering -= 1
        self.conns.pop(conn.sock.fileno(), None)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            if conn.handling:  # shut for writing: its answer still goes out, then it closes
                self._want(conn, 0)
                return
            self._close(conn)  # the client left; nothing of it is being answered
            return
        if conn.linger_until:  # answered and closing: what still comes is dropped
            return
        now = time.monotonic()
        conn.last_active = now
        if conn.first_byte is None:
            conn.first_byte = now
        conn.inbuf += data
        if conn.handling:  # a pipelined request waits in the buffer for the answer to go out
            if len(conn.inbuf) >= HELD_INBUF_BYTES:
                self._want(conn, 0)  # read on once the answer is out
            return
        self._advance(conn)

    def _advance(self, conn: _Conn) -> None:
        """Take the next request out of the buffer when it is complete, and hand it over."""
        while not (conn.closed or conn.handling or conn.out or conn.close_after):
            if conn.skip:
                dropped = min(conn.skip, len(conn.inbuf))
                del conn.inbuf[:dropped]
                conn.skip -= dropped
                if conn.skip:
                    return
            if conn.request is None:
                while conn.inbuf[:2] == b"\r\n" or conn.inbuf[:1] == b"\n":  # stray blank lines
                    del conn.inbuf[: 2 if conn.inbuf[:1] == b"\r" else 1]
                if not conn.inbuf:
                    if not conn.fresh:  # a fresh connection's deadline runs from the accept
                        conn.first_byte = None
                    return
                if conn.first_byte is None:
                    conn.first_byte = time.monotonic()
                end, body_start = head_end(conn.inbuf)
                if end < 0:
                    if len(conn.inbuf) > MAX_LINE * 2 + 1024:
                        first = conn.inbuf.find(b"\n")
                        too_long = first < 0 or first > MAX_LINE
                        status = 414 if too_long else 431
                        sentence = (
                            "the request line is too long"
                            if too_long
                            else "the request headers are too large"
                        )
                        self._respond(conn, self.app.error(None, status, sentence), close=True)
                    return
                try:
                    request = parse_head(bytes(conn.inbuf[:end]), time.perf_counter())
                except HeadError as exc:
                    self._respond(conn, self.app.error(None, exc.status, str(exc)), close=True)
                    return
                del conn.inbuf[:body_start]
                request.peer, conn.fresh = conn.peer, False
                try:
                    wants_continue = expects_continue(request)
                except HeadError as exc:  # an expectation it cannot meet: 417, app unasked
                    wants_continue, decided = False, self.app.error(request, exc.status, str(exc))
                else:
                    try:
                        decided = self.app.head(request)
                    except Exception:
                        self._broken(conn)
                        return
                if isinstance(decided, Response):
                    # the body (if any) is not read: it is skipped when its length is plain,
                    # else the connection cannot be reused
                    length = request.headers.get("content-length", "0")
                    framed = length.isdigit() and length.isascii() and int(length) <= MAX_SKIP_BYTES
                    close = decided.close or not request.keep_alive
                    close = close or not framed or "transfer-encoding" in request.headers
                    # a client told no `100 Continue` may send its body after all or never
                    # (curl closes): unread, it cannot be told from a next request (as Apache)
                    close = close or (wants_continue and len(conn.inbuf) < int(length))
                    if not close:
                        conn.skip = int(length)
                    if not conn.skip:
                        conn.first_byte = None
                    self._respond(conn, decided, close=close)
                    return
                conn.request, conn.body_len = request, int(decided)
                if wants_continue and len(conn.inbuf) < conn.body_len:
                    # only now, with the head accepted: a request refused from its head above
                    # gets its final answer alone, never a 100 that invites the body
                    conn.out += CONTINUE
                    conn.write_since = time.monotonic()
                    self._flush(conn)
            if len(conn.inbuf) < conn.body_len:
                return
            request = conn.request
            body = bytes(conn.inbuf[: conn.body_len])
            del conn.inbuf[: conn.body_len]
            conn.request, conn.first_byte = None, None
            # alone: nothing else in this round, no answer due, nothing queued for this thread
            alone = self._handling == 0 and self._round <= 1 and not self._soon
            conn.handling = True
            self._handling += 1
            # the connection stays registered while the app answers (two epoll_ctl calls
            # fewer per request): what the client sends meanwhile is buffered (_read)
            self._in_app = True
            try:
                answered = self.app.request(request, body, self._replier(conn, request), alone)
            except Exception:
                self._broken(conn)
                return
            finally:
                self._in_app = False
            if answered is not None:
                self._answer(conn, request, answered)

    def _broken(self, conn: _Conn) -> None:
        """The app failed on a request (a bug): log it, answer 500, close; the loop goes on."""
        traceback.print_exc(file=sys.stderr)
        self._release(conn)
        body = b'{"error":"internal error; see the server log","status":500}'
        self._respond(conn, Response(500, body), close=True)

    def _replier(self, conn: _Conn, request: Request):
        def reply(make) -> None:
            if threading.get_ident() == self._loop_thread and not self._in_app:
                self._answer(conn, request, make)  # from the loop (an app's socket): at once
            else:
                self.call_soon(lambda: self._answer(conn, request, make))

        return reply

    def _release(self, conn: _Conn) -> None:
        if conn.handling:
            conn.handling = False
            self._handling -= 1

    def _answer(self, conn: _Conn, request: Request, response) -> None:
        self._release(conn)
        if callable(response):
            try:
                response = response()
            except Exception:  # a broken answer closes its connection, never the loop
                self._broken(conn)
                return
        if conn.closed:
            return
        close = response.close or not request.keep_alive or self.stopping
        self._respond(conn, response, close=close)

    def _respond(self, conn: _Conn, response: Response, close: bool) -> None:
        if conn.closed:
            return
        now = time.time()
        if int(now) != self._date[0]:
            self._date = (int(now), email.utils.formatdate(now, usegmt=True))
        reason = REASONS.get(response.status, "Error")
        lines = [
            f"HTTP/1.1 {response.status} {reason}",
            self._server_line,
            f"Date: {self._date[1]}",
        ]
        if response.content_type is not None:
            lines.append(f"Content-Type: {response.content_type}")
        lines.append(f"Content-Length: {len(response.body)}")
        extra = response.headers
        lines += [f"{k}: {v}" for k, v in (extra.items() if isinstance(extra, dict) else extra)]
        if close:
            lines.append("Connection: close")
            conn.close_after = True
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")
        conn.out += head + response.body
        conn.write_since = time.monotonic()
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            while conn.out:
                sent = conn.sock.send(conn.out)
                conn.out = conn.out[sent:]
        except (BlockingIOError, InterruptedError):
            self._want(conn, selectors.EVENT_WRITE)
            return
        except OSError:
            self._close(conn)
            return
        conn.last_active = time.monotonic()
        if conn.close_after:
            self._linger(conn)
        elif not conn.handling:
            self._want(conn, selectors.EVENT_READ)
            if self.stopping and not conn.busy():
                self._close(conn)
            elif conn.inbuf:
                # the next pipelined request starts from the loop, never from inside this
                # send: answering from here nested one call deeper per request
                self._ready.append(conn)

    def _linger(self, conn: _Conn) -> None:
        """The answer is out: shut the writing side and drop what the client still sends until
        it closes (LINGER_S at most): closing with its bytes unread would reset the connection,
        and a reset can throw away the answer before the client reads it."""
        if conn.linger_until:
            return
        if self._lingering >= LINGER_MAX:
            self._close(conn)
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.linger_until = time.monotonic() + LINGER_S
        self._lingering += 1
        conn.inbuf, conn.request, conn.skip = bytearray(), None, 0
        self._want(conn, selectors.EVENT_READ)

    def _tick(self, now: float) -> None:
        if self._accept_paused and self._listening:
            self._accept_paused = False
            self.selector.register(self.listener, selectors.EVENT_READ, None)
        try:
            self.app.tick(now)
        except Exception:
            traceback.print_exc(file=sys.stderr)
        for conn in list(self.conns.values()):
            if conn.closed or conn.handling:
                continue
            if conn.linger_until:
                if now > conn.linger_until or self.stopping:
                    self._close(conn)
            elif conn.out:
                if now - conn.write_since > self.read_timeout_s:
                    self._close(conn)  # the client does not read its answer
            elif conn.first_byte is not None and now - conn.first_byte > self.read_timeout_s:
                if conn.request is None and not conn.inbuf.strip() and not conn.skip:
                    self._close(conn)  # nothing of a request came: no answer to give
                    continue
                what = "request body" if conn.request is not None else "request"
                sentence = f"the {what} did not arrive within {self.read_timeout_s:g}s"
                self._respond(conn, self.app.error(conn.request, 408, sentence), close=True)
            elif conn.first_byte is None and (
                self.stopping or now - conn.last_active > IDLE_TIMEOUT_S
            ):
                self._close(conn)

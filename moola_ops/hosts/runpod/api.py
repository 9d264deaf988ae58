"""RunPod's GraphQL API over the standard library: the key, the base URL, and Client.

Every call ends by its deadline (`budget_s`, all tries together), whatever the server does: a
watcher thread shuts the call's socket down at the deadline, so an API that answers one byte at
a time cannot stretch it, and at once when the caller's `cancel` event is set (Ctrl-C in a
fleet). Reads are retried with backoff within the budget. The key is checked for its form
before it is used, and never appears in a message: whatever the API answers has the key and its
echoes (any run of MIN_ECHO characters of it, URL-encoded or base64) blanked before it is read.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import random
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moola_ops.hosts.runpod.pods import Pod, RunPodError, check_pod_id

KEY_ENV = "RUNPOD_API_KEY"
BASE_ENV = "RUNPOD_API_BASE_URL"  # the official SDK's variable, so one setting serves both
DEFAULT_BASE = "https://api.runpod.io"
REQUEST_TIMEOUT_S = 10.0  # one read of one HTTP request
BUDGET_S = 25.0  # all tries of one call together, the whole call's deadline (cron has 30 s)
ATTEMPTS = 4
MAX_ANSWER_BYTES = 16 * 1024**2  # an answer bigger than this is refused, not read into memory
MIN_ECHO = 8  # this many characters of the key (or of an encoding of it) in an answer: blanked
_KEY_FORM = re.compile(r"[\x21-\x7e]{8,512}")  # printable ASCII, no spaces: what a key can be

# The fields Moola reads, as RunPod documents them (docs.runpod.io, GraphQL "Manage Pods"; the
# SDK's queries ask for the same names).
POD_FIELDS = """
    id
    name
    desiredStatus
    lastStatusChange
    imageName
    costPerHr
    gpuCount
    machine { gpuDisplayName }
    runtime {
      uptimeInSeconds
      ports { ip isIpPublic privatePort publicPort type }
    }
"""
LIST_QUERY = "query Pods { myself { pods {" + POD_FIELDS + "} } }"


# --- the API key and the base URL ---------------------------------------------------------------


def api_key(key_file: str | os.PathLike | None = None) -> str:
    """The API key: env RUNPOD_API_KEY, else the file the inventory's defaults name; checked
    for its form (one word of printable ASCII) in a sentence that never shows it."""
    env = os.environ.get(KEY_ENV, "").strip()
    if env:
        if not _KEY_FORM.fullmatch(env):
            raise RunPodError(
                f"{KEY_ENV} does not hold an API key: {_what_is_wrong(env)}; copy the key again "
                "from RunPod's console (Settings, API Keys)"
            )
        return env
    if not key_file:
        raise RunPodError(
            f"no RunPod API key: set {KEY_ENV} or name a key file with `runpod_api_key_file:` "
            "under the inventory's defaults (docs/inventory.md)"
        )
    path = Path(key_file).expanduser()
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise RunPodError(
            f"the RunPod API key file {path} (runpod_api_key_file) does not exist: put the key "
            "from RunPod's console (Settings, API Keys) in it, mode 600"
        ) from None
    except OSError as exc:
        raise RunPodError(
            f"cannot read the RunPod API key file {path}: {exc.strerror or exc}"
        ) from None
    if mode & 0o077:
        raise RunPodError(
            f"the RunPod API key file {path} can be read by other users: chmod 600 {path}"
        )
    key = text.strip()
    if not _KEY_FORM.fullmatch(key):
        raise RunPodError(
            f"the RunPod API key file {path} must hold the key alone on one line: "
            f"{_what_is_wrong(key)}"
        )
    return key


def _what_is_wrong(key: str) -> str:
    """Why `key` is not an API key, in words that reveal none of it."""
    if not key:
        return "it is empty"
    if any(ch in "\r\n" for ch in key):
        return "it holds a line break"
    if any(ch.isspace() for ch in key):
        return "it holds a space or a tab"
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in key):
        return "it holds a character outside printable ASCII"
    return f"it is {len(key)} characters long, not 8 to 512"


def api_base() -> str:
    """The API's base URL (env RUNPOD_API_BASE_URL, default https://api.runpod.io), checked."""
    raw = os.environ.get(BASE_ENV, "").strip() or DEFAULT_BASE
    url = urllib.parse.urlsplit(raw)
    if url.query or url.fragment or url.username or url.password:
        raise RunPodError(
            f"{BASE_ENV} must be a bare URL such as {DEFAULT_BASE}: no query or credentials "
            "(the key travels in a header)"
        )
    loopback = False
    with contextlib.suppress(ValueError):
        loopback = ipaddress.ip_address(url.hostname or "").is_loopback
    loopback = loopback or url.hostname == "localhost"
    if url.scheme != "https" and not (url.scheme == "http" and loopback):
        raise RunPodError(
            f"{BASE_ENV} must be an https:// URL (plain http only to this machine, for a "
            "stand-in): the API key must not travel in clear"
        )
    return raw.rstrip("/")


def _scrub(text: str, key: str) -> str:
    """`text` with the key and its echoes blanked (see `redact`); one line, bounded."""
    return " ".join(redact(text, key).split())[:200]


def _key_pieces(key: str) -> frozenset[str]:
    """Every MIN_ECHO-character run of the key and of its encodings, lowercased: the key
    itself, URL-encoded (quote, quote_plus) and base64 (standard and URL-safe, at each of the
    three alignments, so a piece of the key encoded on its own is found as well)."""
    forms = {key, urllib.parse.quote(key, safe=""), urllib.parse.quote_plus(key)}
    for shift in range(3):
        raw = key[shift:].encode()
        forms.add(base64.b64encode(raw).decode())
        forms.add(base64.urlsafe_b64encode(raw).decode())
    pieces = set()
    for form in forms:
        form = form.rstrip("=").lower()
        pieces.update(form[i : i + MIN_ECHO] for i in range(len(form) - MIN_ECHO + 1))
    return frozenset(pieces)


def redact(text: str, key: str) -> str:
    """`text` with every echo of `key` blanked as `***`: the key, any run of MIN_ECHO or more
    of its characters (a truncated quote), and the same of its URL-encoded and base64 forms,
    in any letter case."""
    if not key or len(key) < MIN_ECHO or len(text) < MIN_ECHO:
        return text
    pieces = _key_pieces(key)
    lowered = text.lower()
    hidden = bytearray(len(text))
    for i in range(len(text) - MIN_ECHO + 1):
        if lowered[i : i + MIN_ECHO] in pieces:
            hidden[i : i + MIN_ECHO] = b"\x01" * MIN_ECHO
    if not any(hidden):
        return text
    out, i = [], 0
    while i < len(text):
        if hidden[i]:
            while i < len(text) and hidden[i]:
                i += 1
            out.append("***")
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


# --- the deadline of one call -------------------------------------------------------------------


class _Cutter:
    """Ends one call's network waits at its deadline, or at once when `cancel` is set: a
    watcher thread shuts the call's sockets down (a blocked read returns), so no server can
    stretch a call by answering slowly. `why` says what cut it ("deadline", "cancelled")."""

    def __init__(self, deadline: float, cancel: threading.Event | None):
        self.deadline, self.cancel = deadline, cancel
        self.why: str | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()

    def watch(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
            if self.why:
                self._shut(sock)
        return sock

    def __enter__(self) -> _Cutter:
        threading.Thread(target=self._run, name="moola-runpod-deadline", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()

    def _run(self) -> None:
        while not self._done.wait(0.05):
            if self.cancel is not None and self.cancel.is_set():
                return self._cut("cancelled")
            if time.monotonic() >= self.deadline:
                return self._cut("deadline")

    def _cut(self, why: str) -> None:
        with self._lock:
            self.why = why
            for sock in self._sockets:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _opener(cutter: _Cutter):
    """urllib's opener (proxies and TLS as usual) whose connections the cutter watches."""
    import http.client  # here, not at import: `invoke --list` stays fast
    import urllib.request

    def watched(cls):
        class Watched(cls):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                connect = self._create_connection
                self._create_connection = lambda *a, **k: cutter.watch(connect(*a, **k))

        return Watched

    plain, tls = watched(http.client.HTTPConnection), watched(http.client.HTTPSConnection)

    class Plain(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(plain, req)

    class Tls(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(tls, req, context=self._context)

    return urllib.request.build_opener(Plain(), Tls())


# --- the client -------------------------------------------------------------------------------


class _Retry(Exception):
    def __init__(self, why: str, wait_s: float | None = None, *, final: bool = False):
        super().__init__(why)
        self.why, self.wait_s, self.final = why, wait_s, final


class Client:
    """A small GraphQL client for RunPod: bounded in time, reads retried with backoff.

    `read=True` calls (queries) are retried on a timeout, a dropped connection, HTTP 429 and
    5xx, within `budget_s` for all tries together; mutations are retried only when the server
    cannot have acted (connection refused, 429). A bad key is never retried. `budget_s` is the
    whole call's deadline, a slow answer included; `cancel` (an Event, e.g. a HostSession's)
    ends the call at once with RunPodError.
    """

    def __init__(
        self,
        key: str,
        base: str | None = None,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        budget_s: float = BUDGET_S,
        attempts: int = ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
        cancel: threading.Event | None = None,
    ):
        self._key = key
        self.base = base or api_base()
        self.timeout_s, self.budget_s, self.attempts, self._sleep = (
            timeout_s,
            budget_s,
            attempts,
            sleep,
        )
        self.cancel = cancel
        self.requests = 0  # HTTP requests sent (tests, benchmarks)

    def __repr__(self) -> str:  # never show the key
        return f"Client(base={self.base!r})"

    def call(self, query: str, *, read: bool) -> dict[str, Any]:
        """Send one GraphQL document; return its `data` or raise RunPodError (one sentence,
        with nothing of the key in it) by the call's deadline."""
        deadline = time.monotonic() + self.budget_s
        what = "read" if read else "change"
        last = ""
        for attempt in range(1, self.attempts + 1):
            self._check_cancelled()
            left = deadline - time.monotonic()
            if left <= 0.05:
                break
            try:
                with _Cutter(deadline, self.cancel) as cutter:
                    return self._once(
                        query, read=read, timeout_s=min(self.timeout_s, left), cutter=cutter
                    )
            except _Retry as retry:
                last = retry.why
                if attempt == self.attempts or retry.final:
                    break
                wait = retry.wait_s
                if wait is None:
                    wait = min(8.0, 0.5 * 2 ** (attempt - 1)) * (0.75 + random.random() / 2)
                if time.monotonic() + wait >= deadline:
                    break
                self._pause(max(0.0, wait))
            except RunPodError as exc:  # every sentence leaves here without the key
                raise RunPodError(redact(str(exc), self._key)) from None
        raise RunPodError(
            f"the RunPod API did not {what} within {self.budget_s:g} s "
            f"({_scrub(last, self._key)}): try again later (RunPod's status page says whether "
            "the API is down)"
        )

    def _check_cancelled(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise RunPodError("the RunPod look-up was stopped (Ctrl-C)")

    def _pause(self, seconds: float) -> None:
        if self.cancel is None:
            self._sleep(seconds)
        elif self.cancel.wait(seconds):
            self._check_cancelled()

    def _once(self, query: str, *, read: bool, timeout_s: float, cutter: _Cutter) -> dict[str, Any]:
        try:
            return self._exchange(query, read=read, timeout_s=timeout_s, cutter=cutter)
        except (_Retry, RunPodError):
            if cutter.why == "cancelled":
                self._check_cancelled()
            if cutter.why == "deadline":
                self._past_deadline(read)
            raise
        except Exception as exc:  # a library's surprise is still one sentence, without the key
            if cutter.why == "cancelled":
                self._check_cancelled()
            if cutter.why == "deadline":
                self._past_deadline(read)
            raise RunPodError(
                f"the RunPod API call failed ({type(exc).__name__}: "
                f"{_scrub(str(exc), self._key)}): try again; if it persists, check "
                f"{BASE_ENV} and the network"
            ) from None

    def _past_deadline(self, read: bool) -> None:
        if read:
            raise _Retry(f"no whole answer within {self.budget_s:g} s", final=True)
        raise RunPodError(
            f"the RunPod API did not answer within {self.budget_s:g} s while changing the pod; "
            "whether the change happened is unknown: check with `invoke pods`"
        )

    def _exchange(
        self, query: str, *, read: bool, timeout_s: float, cutter: _Cutter
    ) -> dict[str, Any]:
        import http.client  # here, not at import: `invoke --list` stays fast
        import urllib.error
        import urllib.request

        body = json.dumps({"query": query}).encode()
        request = urllib.request.Request(
            f"{self.base}/graphql",
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": "moola-ops",
                "Authorization": f"Bearer {self._key}",
            },
        )
        self.requests += 1
        try:
            with _opener(cutter).open(request, timeout=timeout_s) as response:
                status, raw = response.status, _read_capped(response)
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, _read_quietly(exc)
            headers = exc.headers
            if status in (401, 403):
                raise RunPodError(
                    f"RunPod refused the API key (HTTP {status}): check {KEY_ENV} or the key "
                    "file (runpod_api_key_file); keys are made in RunPod's console, Settings"
                ) from None
            if status == 429:
                raise _Retry("rate limited, HTTP 429", _retry_after(headers)) from None
            if status >= 500:
                if read:
                    raise _Retry(f"HTTP {status}", _retry_after(headers)) from None
                raise RunPodError(
                    f"the RunPod API failed (HTTP {status}) while changing the pod; whether the "
                    "change happened is unknown: check with `invoke pods` before trying again"
                ) from None
            message = _graphql_error(raw) or f"HTTP {status}"
            raise RunPodError(
                f"the RunPod API refused the request: {_scrub(message, self._key)}"
            ) from None
        except TimeoutError:
            if read:
                raise _Retry(f"no answer within {timeout_s:.3g} s") from None
            raise RunPodError(
                f"the RunPod API did not answer within {timeout_s:.3g} s while changing the "
                "pod; whether the change happened is unknown: check with `invoke pods`"
            ) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                if read:
                    raise _Retry(f"no answer within {timeout_s:.3g} s") from None
                raise RunPodError(
                    "the RunPod API did not answer while changing the pod; whether the change "
                    "happened is unknown: check with `invoke pods`"
                ) from None
            if isinstance(reason, ConnectionRefusedError) or read:
                text = getattr(reason, "strerror", None) or str(reason)
                raise _Retry(f"cannot connect: {_scrub(text, self._key)}") from None
            raise RunPodError(
                f"cannot reach the RunPod API at {self.base}: {_scrub(str(reason), self._key)}"
            ) from None
        except (ConnectionError, OSError, http.client.HTTPException) as exc:  # cut mid-answer
            if read:
                raise _Retry(f"connection broke: {type(exc).__name__}") from None
            raise RunPodError(
                "the connection to the RunPod API broke while changing the pod; whether the "
                "change happened is unknown: check with `invoke pods`"
            ) from None
        raw = redact(raw.decode("utf-8", "replace"), self._key)  # before anything reads it
        try:
            payload = json.loads(raw)
        except ValueError:
            if read:
                raise _Retry(f"HTTP {status} with a body that is not JSON") from None
            raise RunPodError(
                "the RunPod API answered with something that is not JSON while changing the "
                "pod: check with `invoke pods`"
            ) from None
        if not isinstance(payload, dict):
            raise RunPodError("the RunPod API answered with an unexpected document")
        errors = payload.get("errors")
        if errors:
            message = _graphql_error(raw) or "unknown error"
            if "unauthor" in message.lower() or "api key" in message.lower():
                raise RunPodError(
                    f"RunPod refused the API key ({_scrub(message, self._key)}): check "
                    f"{KEY_ENV} or the key file (runpod_api_key_file)"
                )
            raise RunPodError(f"the RunPod API refused the request: {_scrub(message, self._key)}")
        data = payload.get("data")
        if not isinstance(data, dict):
            raise RunPodError("the RunPod API answered without data")
        return data

    # -- operations ------------------------------------------------------------------------

    def list_pods(self) -> list[Pod]:
        """Every pod of the key's account (one request)."""
        data = self.call(LIST_QUERY, read=True)
        pods = (data.get("myself") or {}).get("pods") or []
        return [Pod.from_api(p) for p in pods if isinstance(p, dict)]

    def get_pod(self, pod_id: str) -> Pod | None:
        """One pod by id, or None when the account has no such pod."""
        literal = json.dumps(check_pod_id(pod_id))
        data = self.call(
            "query Pod { pod(input: {podId: " + literal + "}) {" + POD_FIELDS + "} }", read=True
        )
        raw = data.get("pod")
        return Pod.from_api(raw) if isinstance(raw, dict) else None

    def stop_pod(self, pod_id: str) -> str:
        """Stop the pod (its volume stays, billing for the GPU stops); its new desired status."""
        literal = json.dumps(check_pod_id(pod_id))
        data = self.call(
            "mutation { podStop(input: {podId: " + literal + "}) { id desiredStatus } }",
            read=False,
        )
        return str((data.get("podStop") or {}).get("desiredStatus") or "")

    def resume_pod(self, pod_id: str, gpu_count: int) -> str:
        """Start a stopped pod again with `gpu_count` GPUs; its new desired status."""
        literal = json.dumps(check_pod_id(pod_id))
        data = self.call(
            "mutation { podResume(input: {podId: "
            + literal
            + f", gpuCount: {int(gpu_count)}"
            + "}) { id desiredStatus } }",
            read=False,
        )
        return str((data.get("podResume") or {}).get("desiredStatus") or "")

    def terminate_pod(self, pod_id: str) -> None:
        """Delete the pod and its volume. Irreversible: callers confirm first."""
        literal = json.dumps(check_pod_id(pod_id))
        self.call("mutation { podTerminate(input: {podId: " + literal + "}) }", read=False)


def _read_capped(response) -> bytes:
    """The answer's body, refused past MAX_ANSWER_BYTES (never read whole into memory)."""
    raw = response.read(MAX_ANSWER_BYTES + 1)
    if len(raw) > MAX_ANSWER_BYTES:
        raise RunPodError(
            f"the RunPod API answered more than {MAX_ANSWER_BYTES >> 20} MiB: refusing it; "
            f"check {BASE_ENV}"
        )
    return raw


def _read_quietly(exc) -> bytes:
    try:
        return exc.read(MAX_ANSWER_BYTES)
    except Exception:  # noqa: BLE001 - an error page that cannot be read is an empty one
        return b""


def _retry_after(headers) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After")))
    except (TypeError, ValueError, AttributeError):
        return None


def _graphql_error(raw: bytes | str) -> str:
    try:
        payload = json.loads(raw)
    except ValueError:
        return ""
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("message") or "")
    return ""

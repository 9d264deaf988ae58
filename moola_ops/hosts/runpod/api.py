"""RunPod's GraphQL API over the standard library: the key, the base URL, and Client
(bounded in time, reads retried with backoff; the key never appears in a message)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moola_ops.hosts.runpod.pods import Pod, RunPodError, check_pod_id

KEY_ENV = "RUNPOD_API_KEY"
BASE_ENV = "RUNPOD_API_BASE_URL"  # the official SDK's variable, so one setting serves both
DEFAULT_BASE = "https://api.runpod.io"
REQUEST_TIMEOUT_S = 10.0  # one HTTP request
BUDGET_S = 25.0  # all tries of one call together (a cron healthcheck has 30 s)
ATTEMPTS = 4

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
    """The API key: env RUNPOD_API_KEY, else the file the inventory's defaults name."""
    env = os.environ.get(KEY_ENV, "").strip()
    if env:
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
    if not key or any(ch.isspace() for ch in key):
        raise RunPodError(f"the RunPod API key file {path} must hold the key alone on one line")
    return key


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
    """`text` with the key (should a server ever echo it) blanked; one line, bounded."""
    if key:
        text = text.replace(key, "***")
    return " ".join(text.split())[:200]


# --- the client -------------------------------------------------------------------------------


class _Retry(Exception):
    def __init__(self, why: str, wait_s: float | None = None):
        super().__init__(why)
        self.why, self.wait_s = why, wait_s


class Client:
    """A small GraphQL client for RunPod: bounded in time, reads retried with backoff.

    `read=True` calls (queries) are retried on a timeout, a dropped connection, HTTP 429 and
    5xx, within `budget_s` for all tries together; mutations are retried only when the server
    cannot have acted (connection refused, 429). A bad key is never retried.
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
    ):
        self._key = key
        self.base = base or api_base()
        self.timeout_s, self.budget_s, self.attempts, self._sleep = (
            timeout_s,
            budget_s,
            attempts,
            sleep,
        )
        self.requests = 0  # HTTP requests sent (tests, benchmarks)

    def __repr__(self) -> str:  # never show the key
        return f"Client(base={self.base!r})"

    def call(self, query: str, *, read: bool) -> dict[str, Any]:
        """Send one GraphQL document; return its `data` or raise RunPodError (one sentence)."""
        deadline = time.monotonic() + self.budget_s
        what = "read" if read else "change"
        last = ""
        for attempt in range(1, self.attempts + 1):
            left = deadline - time.monotonic()
            if left <= 0.05:
                break
            try:
                return self._once(query, read=read, timeout_s=min(self.timeout_s, left))
            except _Retry as retry:
                last = retry.why
                if attempt == self.attempts:
                    break
                wait = retry.wait_s
                if wait is None:
                    wait = min(8.0, 0.5 * 2 ** (attempt - 1)) * (0.75 + random.random() / 2)
                if time.monotonic() + wait >= deadline:
                    break
                self._sleep(max(0.0, wait))
        raise RunPodError(
            f"the RunPod API did not {what} within {self.budget_s:g} s ({last}): "
            "try again later (RunPod's status page says whether the API is down)"
        )

    def _once(self, query: str, *, read: bool, timeout_s: float) -> dict[str, Any]:
        import urllib.error  # here, not at import: `invoke --list` stays fast
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
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                status, raw = response.status, response.read()
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
        except (ConnectionError, OSError) as exc:  # reset mid-response
            if read:
                raise _Retry(f"connection broke: {type(exc).__name__}") from None
            raise RunPodError(
                "the connection to the RunPod API broke while changing the pod; whether the "
                "change happened is unknown: check with `invoke pods`"
            ) from None
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


def _read_quietly(exc) -> bytes:
    try:
        return exc.read()
    except OSError:
        return b""


def _retry_after(headers) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After")))
    except (TypeError, ValueError, AttributeError):
        return None


def _graphql_error(raw: bytes) -> str:
    try:
        payload = json.loads(raw)
    except ValueError:
        return ""
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("message") or "")
    return ""

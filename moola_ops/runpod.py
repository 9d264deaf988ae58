"""RunPod pods by id: where a pod's SSH is now, and the pod operations Moola offers.

A pod's public IP and the port mapped to 22 change when it is stopped and resumed; an inventory
host may therefore name `runpod_pod_id:` instead of `hostname:`/`port:`, and the address is
looked up here when the host is connected to (never for hostname-based hosts).

Why not the official `runpod` SDK: it pulls ~190 MB of dependencies (boto3, fastapi, aiohttp,
...) into the cron path, `import runpod` takes ~1.6 s, and its GraphQL call has a fixed 30 s
timeout and no retry (measured and read in docs/inventory.md). This module speaks the same
documented wire format with the standard library: POST `<base>/graphql` with a JSON body
`{"query": ...}`, the key in an `Authorization: Bearer` header (never in the URL), the answer
`{"data": ...}` or `{"errors": [{"message": ...}]}`. The base URL comes from
`RUNPOD_API_BASE_URL` (the SDK's own variable), which is how the tests point it at a local
stand-in of the API.

The key comes from `RUNPOD_API_KEY` or a file named by `runpod_api_key_file:` in the
inventory's defaults; it never appears in a message, a log line or a cache file.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import random
import re
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from moola_core.errors import MoolaError

KEY_ENV = "RUNPOD_API_KEY"
BASE_ENV = "RUNPOD_API_BASE_URL"  # the official SDK's variable, so one setting serves both
DEFAULT_BASE = "https://api.runpod.io"
CACHE_ENV = "MOOLA_RUNPOD_CACHE"
DEFAULT_CACHE = Path(".moola/runpod-pods.json")
CACHE_MAX_AGE_S = 60.0  # one deploy or cron run asks once; a restart is seen within a minute
REQUEST_TIMEOUT_S = 10.0  # one HTTP request
BUDGET_S = 25.0  # all tries of one call together (a cron healthcheck has 30 s)
ATTEMPTS = 4
SSH_PORT = 22
REFRESH_HELP = "ask RunPod where pods are now instead of using the 60 s cache (runpod_pod_id hosts)"
KEY_ALIAS_PREFIX = "runpod-"  # known_hosts name of a pod's key: `runpod-<pod id>` (HostKeyAlias)

_POD_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")

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


class RunPodError(MoolaError):
    """The RunPod API could not answer (key, network, rate limit, server): state unknown."""

    check = "pod"  # the healthcheck's name for this check
    nagios_state = 3  # UNKNOWN: we could not learn where the pod is


class PodUnavailable(RunPodError):
    """The pod is known but cannot be reached over SSH: stopped, no public IP, no TCP 22."""

    nagios_state = 2  # CRITICAL: the host is down as far as a deploy is concerned


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


def check_pod_id(pod_id: str) -> str:
    """A pod id is letters and digits (e.g. `ldl1dxirsim64n`); anything else is refused."""
    if not isinstance(pod_id, str) or not _POD_ID.match(pod_id):
        raise MoolaError(
            f"{pod_id!r} is not a RunPod pod id (letters and digits, as `invoke pods` or the "
            "console shows it)"
        )
    return pod_id


# --- pods ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Port:
    """One entry of a pod's `runtime.ports`."""

    ip: str | None
    is_ip_public: bool
    private_port: int | None
    public_port: int | None
    type: str


@dataclass(frozen=True)
class Pod:
    """What Moola knows of one pod, read from the API."""

    id: str
    name: str
    desired_status: str
    gpu_count: int
    gpu_name: str | None
    cost_per_hr: float | None
    uptime_s: int | None  # None: no runtime (stopped or starting)
    ports: tuple[Port, ...]
    image: str | None = None
    last_status_change: str | None = None
    has_runtime: bool = False

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> Pod:
        runtime = raw.get("runtime") if isinstance(raw.get("runtime"), dict) else None
        ports = []
        for p in (runtime or {}).get("ports") or []:
            if isinstance(p, dict):
                ports.append(
                    Port(
                        ip=p.get("ip") or None,
                        is_ip_public=bool(p.get("isIpPublic")),
                        private_port=_int(p.get("privatePort")),
                        public_port=_int(p.get("publicPort")),
                        type=str(p.get("type") or "").lower(),
                    )
                )
        machine = raw.get("machine") if isinstance(raw.get("machine"), dict) else {}
        cost = raw.get("costPerHr")
        return cls(
            id=str(raw.get("id") or ""),
            name=str(raw.get("name") or ""),
            desired_status=str(raw.get("desiredStatus") or "UNKNOWN").upper(),
            gpu_count=_int(raw.get("gpuCount")) or 0,
            gpu_name=machine.get("gpuDisplayName") or None,
            cost_per_hr=float(cost) if isinstance(cost, int | float) else None,
            uptime_s=_int((runtime or {}).get("uptimeInSeconds")),
            ports=tuple(ports),
            image=raw.get("imageName") or None,
            last_status_change=raw.get("lastStatusChange") or None,
            has_runtime=runtime is not None,
        )

    @property
    def label(self) -> str:
        return f"pod {self.id} ({self.name})" if self.name else f"pod {self.id}"

    def ssh_endpoint(self) -> tuple[str, int]:
        """(public IP, public port) mapped to 22 over TCP, or PodUnavailable saying the fix."""
        if self.desired_status == "TERMINATED":
            raise PodUnavailable(
                f"{self.label} was terminated: create a pod and put its id in `runpod_pod_id:`"
            )
        if self.desired_status != "RUNNING":
            raise PodUnavailable(
                f"{self.label} is stopped ({self.desired_status}): resume it with "
                f"`invoke pods.resume --pod {self.id}` or in RunPod's console"
            )
        if not self.has_runtime:
            raise PodUnavailable(
                f"{self.label} is starting (RunPod reports no runtime yet): wait a minute, "
                "then retry"
            )
        ssh = [p for p in self.ports if p.private_port == SSH_PORT]
        tcp = [p for p in ssh if p.type == "tcp"]
        if not tcp:
            how = " (only over HTTP)" if ssh else ""
            raise PodUnavailable(
                f"{self.label} exposes no TCP port for 22{how}: expose TCP port 22 in the "
                "pod's template (Edit Pod, Expose TCP Ports) and restart it; RunPod's proxied "
                "SSH refuses commands"
            )
        public = [p for p in tcp if p.is_ip_public and p.ip and p.public_port]
        if not public:
            raise PodUnavailable(
                f"{self.label} has no public IP for port 22 (only {tcp[0].ip or 'none'}): "
                "deploy the pod on a machine with a public IP (supportPublicIp; Secure Cloud "
                "has one)"
            )
        return public[0].ip, int(public[0].public_port)

    def ssh_text(self) -> str:
        """`ip:port`, or why there is none (for listings)."""
        try:
            ip, port = self.ssh_endpoint()
        except PodUnavailable as exc:
            return f"- ({_reason_word(exc)})"
        return f"{ip}:{port}"

    def to_dict(self) -> dict[str, Any]:
        try:
            ip, port = self.ssh_endpoint()
            ssh, problem = {"ip": ip, "port": port}, None
        except PodUnavailable as exc:
            ssh, problem = None, str(exc)
        return {
            "id": self.id,
            "name": self.name,
            "status": self.desired_status,
            "gpu": self.gpu_name,
            "gpu_count": self.gpu_count,
            "cost_per_hr": self.cost_per_hr,
            "uptime_s": self.uptime_s,
            "image": self.image,
            "ssh": ssh,
            "ssh_problem": problem,
        }


def _reason_word(exc: PodUnavailable) -> str:
    text = str(exc)
    for word, short in (
        ("terminated", "terminated"),
        ("is stopped", "stopped"),
        ("starting", "starting"),
        ("no TCP port", "no TCP 22"),
        ("no public IP", "no public IP"),
    ):
        if word in text:
            return short
    return "unreachable"


def _int(value: Any) -> int | None:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


# --- the cache and host resolution --------------------------------------------------------------

_LOCK = threading.Lock()
_fresh_after = 0.0  # cache entries fetched before this (unix time) are stale: --refresh


def refresh_cache(enabled: bool = True) -> None:
    """`--refresh`: the next look-up in this process asks the API; later ones reuse its answer."""
    global _fresh_after
    if enabled:
        _fresh_after = time.time()


def cache_path() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def _account(base: str, key: str) -> str:
    # which account and API the cache belongs to, without storing anything that reveals the key
    return hashlib.sha256(f"moola-runpod-cache\n{base}\n{key}".encode()).hexdigest()[:16]


def _read_cache(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pods"), dict) else None


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs a request next time


def find_pod(
    pod_id: str,
    *,
    key_file: str | None = None,
    refresh: bool = False,
    client: Client | None = None,
    max_age_s: float = CACHE_MAX_AGE_S,
) -> Pod:
    """The pod `pod_id`, from the cache when it is younger than `max_age_s`, else from the API.

    A fetch lists every pod of the account at once and caches them all, so a fleet of pods costs
    one request per run. Threads share one lock: parallel hosts wait for one answer.
    """
    check_pod_id(pod_id)
    client = client or Client(api_key(key_file))
    account = _account(client.base, client._key)
    path = cache_path()
    with _LOCK:
        cached = _read_cache(path)
        if (
            not refresh
            and cached
            and cached.get("account") == account
            and _fresh_after <= float(cached.get("fetched_at", 0)) <= time.time()
            and time.time() - float(cached.get("fetched_at", 0)) <= max_age_s
            and pod_id in cached["pods"]
        ):
            return Pod.from_api(cached["pods"][pod_id])
        raw = client.call(LIST_QUERY, read=True)
        listed = (raw.get("myself") or {}).get("pods") or []
        pods = {str(p.get("id")): p for p in listed if isinstance(p, dict) and p.get("id")}
        _write_cache(path, {"account": account, "fetched_at": time.time(), "pods": pods})
    if pod_id in pods:
        return Pod.from_api(pods[pod_id])
    pod = client.get_pod(pod_id)  # not listed (another team's pod the key may still see)
    if pod is None:
        raise PodUnavailable(
            f"the RunPod account of this API key has no pod {pod_id}: check `runpod_pod_id:` "
            "in the inventory (`invoke pods` lists the account's pods)"
        )
    return pod


def fetch_all(client: Client) -> list[Pod]:
    """Every pod of the account, fresh from the API; the cache is renewed on the way."""
    raw = client.call(LIST_QUERY, read=True)
    listed = [p for p in (raw.get("myself") or {}).get("pods") or [] if isinstance(p, dict)]
    pods = {str(p.get("id")): p for p in listed if p.get("id")}
    with _LOCK:
        account = _account(client.base, client._key)
        _write_cache(cache_path(), {"account": account, "fetched_at": time.time(), "pods": pods})
    return [Pod.from_api(p) for p in listed]


def forget(pod_id: str) -> None:
    """Drop one pod from the cache (it was stopped, resumed or terminated): the next look-up
    of it, in any process, asks the API."""
    path = cache_path()
    with _LOCK:
        cached = _read_cache(path)
        if cached and pod_id in cached["pods"]:
            del cached["pods"][pod_id]
            _write_cache(path, cached)


def resolve_host(host, *, refresh: bool = False):
    """`host` (an inventory Host with runpod_pod_id) with hostname and port of its pod now."""
    pod = find_pod(host.runpod_pod_id, key_file=host.runpod_api_key_file, refresh=refresh)
    ip, port = pod.ssh_endpoint()
    return replace(host, hostname=ip, port=port, user=host.user or "root")


def key_alias(pod_id: str) -> str:
    """The known_hosts name under which a pod's host key is pinned (OpenSSH HostKeyAlias)."""
    return f"{KEY_ALIAS_PREFIX}{pod_id}"

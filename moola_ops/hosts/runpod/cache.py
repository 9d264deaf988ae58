"""Where pods are: the account's pod list cached for 60 s in `.moola/runpod-pods.json`
(one request per run for a whole fleet), `--refresh`, and an inventory host resolved to
its pod's address now."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from moola_ops.hosts.runpod.api import LIST_QUERY, Client, api_key
from moola_ops.hosts.runpod.pods import Pod, PodUnavailable, check_pod_id

CACHE_ENV = "MOOLA_RUNPOD_CACHE"
DEFAULT_CACHE = Path(".moola/runpod-pods.json")
CACHE_MAX_AGE_S = 60.0  # one deploy or cron run asks once; a restart is seen within a minute
REFRESH_HELP = "ask RunPod where pods are now instead of using the 60 s cache (runpod_pod_id hosts)"

_LOCK = threading.Lock()
_fresh_after = 0.0  # cache entries fetched before this (unix time) are stale: --refresh
_writes = True  # False under Invoke's --dry: answers are used, never written to the cache


def refresh_cache(enabled: bool = True) -> None:
    """`--refresh`: the next look-up in this process asks the API; later ones reuse its answer."""
    global _fresh_after
    if enabled:
        _fresh_after = time.time()


def leave_cache_alone() -> None:
    """Invoke's `--dry`: pods are still looked up (a plan needs their addresses), but this
    process writes nothing to the cache file."""
    global _writes
    _writes = False


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
    if not _writes:
        return
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
    cancel: threading.Event | None = None,
) -> Pod:
    """The pod `pod_id`, from the cache when it is younger than `max_age_s`, else from the API.

    A fetch lists every pod of the account at once and caches them all, so a fleet of pods costs
    one request per run. Threads share one lock: parallel hosts wait for one answer. `cancel`
    set (Ctrl-C) ends the API call at once (RunPodError).
    """
    check_pod_id(pod_id)
    client = client or Client(api_key(key_file), cancel=cancel)
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


def resolve_host(host, *, refresh: bool = False, cancel: threading.Event | None = None):
    """`host` (an inventory Host with runpod_pod_id) with hostname and port of its pod now;
    `cancel` set ends the look-up at once."""
    pod = find_pod(
        host.runpod_pod_id, key_file=host.runpod_api_key_file, refresh=refresh, cancel=cancel
    )
    ip, port = pod.ssh_endpoint()
    return replace(host, hostname=ip, port=port, user=host.user or "root")

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

Modules: `api` (key, base URL, Client), `pods` (Pod, Port, errors, ids, key alias), `cache`
(the 60 s pod cache, find_pod, resolve_host). Import the names from `moola_ops.hosts.runpod`.
"""

from __future__ import annotations

from moola_ops.hosts.runpod.api import (
    ATTEMPTS,
    BASE_ENV,
    BUDGET_S,
    DEFAULT_BASE,
    KEY_ENV,
    LIST_QUERY,
    POD_FIELDS,
    REQUEST_TIMEOUT_S,
    Client,
    api_base,
    api_key,
    redact,
)
from moola_ops.hosts.runpod.cache import (
    CACHE_ENV,
    CACHE_MAX_AGE_S,
    DEFAULT_CACHE,
    REFRESH_HELP,
    cache_path,
    fetch_all,
    find_pod,
    forget,
    refresh_cache,
    resolve_host,
)
from moola_ops.hosts.runpod.pods import (
    KEY_ALIAS_PREFIX,
    SSH_PORT,
    Pod,
    PodUnavailable,
    Port,
    RunPodError,
    check_pod_id,
    key_alias,
)

__all__ = [
    "ATTEMPTS",
    "BASE_ENV",
    "BUDGET_S",
    "CACHE_ENV",
    "CACHE_MAX_AGE_S",
    "DEFAULT_BASE",
    "DEFAULT_CACHE",
    "KEY_ALIAS_PREFIX",
    "KEY_ENV",
    "LIST_QUERY",
    "POD_FIELDS",
    "REFRESH_HELP",
    "REQUEST_TIMEOUT_S",
    "SSH_PORT",
    "Client",
    "Pod",
    "PodUnavailable",
    "Port",
    "RunPodError",
    "api_base",
    "api_key",
    "cache_path",
    "check_pod_id",
    "fetch_all",
    "find_pod",
    "forget",
    "key_alias",
    "redact",
    "refresh_cache",
    "resolve_host",
]

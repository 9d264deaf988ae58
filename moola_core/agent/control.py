"""Runs ON the host: start, probe, switch, drain and stop model servers and the front proxy.

The agent's `serve` action (`python3 -S agent.py serve ACTION --workspace WS ...`, see
moola_core/agent/__init__.py): the engine runs it from the uploaded agent folder, and a pod's
start command runs it from the current release after a restart:
`python3 -S WS/current/code/moola_core/agent/__main__.py serve ensure --workspace WS --port P`.

Everything lives under WORKSPACE/serve/:
    state.json            which server is live / standby / shadow (the proxy reads it); every
                          change goes through `write_state` under `state_lock` (flock on
                          state.lock), so two commands at once never lose each other's edit
    token                 the clients' token (mode 0600; the proxy requires it beyond
                          loopback); made with the proxy, replaced by `token --rotate`
    proxy.json            the proxy's pid and port (the proxy runs from the agent's folder)
    servers/<release>-<stamp>.json   one per server process: pid, port, ready (the server writes it)
    logs/*.log            one log per process, the newest kept
Servers and the proxy are started in their own session (setsid): they outlive the SSH session.

Every action prints one JSON document on stdout; exit 0 ok, 1 the action failed, 2 bad input.
"""

import argparse
import contextlib
import fcntl
import hashlib
import http.client
import ipaddress
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time

from moola_core.agent.home import launcher

WINDOW_LEN = 105
DEFAULT_READY_TIMEOUT_S = 180.0
DEFAULT_DRAIN_TIMEOUT_S = 30.0
# a probe request's timeout derives from the latency SLA (p99): a request that takes this many
# times the SLA is a stuck server, not a slow one; within [MIN, MAX]; DEFAULT when none is known
PROBE_TIMEOUT_SLA_FACTOR = 20.0
PROBE_TIMEOUT_MIN_S = 2.0
PROBE_TIMEOUT_MAX_S = 60.0
PROBE_TIMEOUT_DEFAULT_S = 10.0
LOGS_KEPT = 20
STATE_LOCK_WAIT_S = 30.0  # a writer waits this long for another one (env MOOLA_STATE_LOCK_WAIT_S)
AUTH_MODES = ("auto", "always")
CLIENT_TOKEN = None  # the host's token, sent with every request this program makes (run())


class Failed(Exception):
    """The action could not do what was asked: one sentence."""


# --- paths and records ------------------------------------------------------------------------


def serve_dir(ws):
    return os.path.join(ws, "serve")


def _read_json(path):
    try:
        with open(path) as fh:
            value = json.load(fh)
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def _write_json(path, payload):
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as fh:
            json.dump(payload, fh, sort_keys=True)
        os.replace(tmp, path)  # the proxy sees the old file or the new one, never half of one
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a full disk or a folder in the way leaves no half file behind
        raise


def read_state(ws):
    return _read_json(os.path.join(serve_dir(ws), "state.json")) or {"v": 1}


_HELD = threading.local()  # how deep this thread is inside state_lock


@contextlib.contextmanager
def state_lock(ws):
    """Serialise every change of serve/: an exclusive flock on serve/state.lock, waited for
    up to STATE_LOCK_WAIT_S. Read the state, change it and write it inside one block."""
    depth = getattr(_HELD, "depth", 0)
    if depth:  # already ours (a switch inside ensure)
        _HELD.depth = depth + 1
        try:
            yield
        finally:
            _HELD.depth = depth
        return
    wait_s = float(os.environ.get("MOOLA_STATE_LOCK_WAIT_S") or STATE_LOCK_WAIT_S)
    os.makedirs(serve_dir(ws), exist_ok=True)
    fd = os.open(os.path.join(serve_dir(ws), "state.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Failed(
                        f"another serving command has been changing {serve_dir(ws)} for over "
                        f"{wait_s:g}s: try again; if it stays, look for a stuck `agent.py serve` there"
                    ) from None
                time.sleep(0.02)
        _HELD.depth = 1
        try:
            yield
        finally:
            _HELD.depth = 0
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def write_state(ws, state):
    """THE writer of serve/state.json (atomic rename), only ever called inside state_lock."""
    if not getattr(_HELD, "depth", 0):
        raise RuntimeError("serve/state.json written outside state_lock")
    state = dict(state, v=1, updated=time.time())
    _write_json(os.path.join(serve_dir(ws), "state.json"), state)
    return state


# --- the clients' token ------------------------------------------------------------------------


def token_path(ws):
    return os.path.join(serve_dir(ws), "token")


def read_token(ws):
    try:
        with open(token_path(ws)) as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def token_fingerprint(token):
    """What may be shown or logged about a token: the start of its sha256, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:12] if token else None


def write_token(ws, rotate=False):
    """The host's client token: kept when it exists (unless `rotate`), else a new random one
    written with mode 0600 and renamed into place (the proxy reads the new one on its next
    request). Returns the token."""
    global CLIENT_TOKEN
    with state_lock(ws):
        fresh = read_token(ws)
        if rotate or not fresh:
            fresh = secrets.token_urlsafe(32)
            tmp = f"{token_path(ws)}.tmp-{os.getpid()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(fresh + "\n")
            os.replace(tmp, token_path(ws))
    CLIENT_TOKEN = fresh  # this program's own requests from now on
    return fresh


def token_required(bind, auth):
    """The proxy's rule (proxy.py): `always`, or an address other than loopback."""
    try:
        loopback = ipaddress.ip_address(bind).is_loopback
    except ValueError:
        loopback = False
    return auth == "always" or not loopback


def _exists(pid):
    """Whether process `pid` exists (ours to signal or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def alive(pid, ws):
    """True when `pid` runs and is one of this workspace's processes (guards pid reuse)."""
    if not isinstance(pid, int) or pid <= 0 or not _exists(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
        with open(f"/proc/{pid}/stat", "rb") as fh:
            if fh.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                return False  # a zombie has exited
    except OSError:
        return True  # no /proc: trust kill(0)
    return os.path.realpath(ws).encode() in cmdline or ws.encode() in cmdline


def servers(ws):
    """Every server record under serve/servers/, with `alive` filled in; dead ones pruned."""
    folder = os.path.join(serve_dir(ws), "servers")
    found = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not name.endswith(".json"):
            continue
        path = os.path.join(folder, name)
        record = _read_json(path)
        if record is None:
            continue
        record["file"] = name
        record["alive"] = alive(record.get("pid"), ws)
        record["spare_alive"] = alive(record.get("spare_pid"), ws)
        taking_over = not record["alive"] and record["spare_alive"]
        if not record["alive"] and not record.get("failed") and not taking_over:
            with contextlib.suppress(OSError):  # an exited server leaves nothing behind
                os.unlink(path)
            continue
        found.append(record)
    return found


def current_version(ws):
    try:
        target = os.readlink(os.path.join(ws, "current"))
    except OSError:
        return None
    return target.rstrip("/").rsplit("/", 1)[-1] or None


# --- HTTP on the host --------------------------------------------------------------------------


def ask(port, path, body=None, timeout=5.0):
    """(status, parsed JSON or text) from 127.0.0.1:port; (0, reason) when nothing answers.
    http.client, not urllib: urllib.request alone costs ~60 ms of start-up per command."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        headers.update(_auth())
        conn.request("POST" if body is not None else "GET", path, body=body, headers=headers)
        response = conn.getresponse()
        status, raw = response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        return 0, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def _auth():
    return {"Authorization": f"Bearer {CLIENT_TOKEN}"} if CLIENT_TOKEN else {}


def synthetic_window(seed):
    """A plausible 105-bar OHLC window (random walk), for probes: nothing to ship to the host."""
    rng = random.Random(seed)
    rows, price = [], 100.0
    for _ in range(WINDOW_LEN):
        close = price * (1.0 + rng.gauss(0.0, 0.002))
        high = max(price, close) * (1.0 + abs(rng.gauss(0.0, 0.001)))
        low = min(price, close) * (1.0 - abs(rng.gauss(0.0, 0.001)))
        rows.append([round(price, 6), round(high, 6), round(low, 6), round(close, 6)])
        price = close
    return rows


def probe_timeout(ws, release=None, sla_ms=None):
    """Seconds one probe request may take: PROBE_TIMEOUT_SLA_FACTOR x the p99 SLA in ms (the
    inventory's `latency_sla_ms` when the engine passes it, else the manifest's of `release`,
    else of the live release), within [PROBE_TIMEOUT_MIN_S, PROBE_TIMEOUT_MAX_S]."""
    if sla_ms is None:
        release = release or (read_state(ws).get("live") or {}).get("release")
        if isinstance(release, str) and release and "/" not in release and release != "..":
            manifest = _read_json(os.path.join(ws, "releases", release, "manifest.json")) or {}
            sla_ms = manifest.get("latency_sla_p99_ms")
    if isinstance(sla_ms, bool) or not isinstance(sla_ms, int | float) or not sla_ms > 0:
        return PROBE_TIMEOUT_DEFAULT_S
    seconds = PROBE_TIMEOUT_SLA_FACTOR * float(sla_ms) / 1e3
    return round(min(PROBE_TIMEOUT_MAX_S, max(PROBE_TIMEOUT_MIN_S, seconds)), 3)


def percentile(values, q):
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-int(q * len(ordered)) // 100)))
    return ordered[rank - 1]


def probe(port, requests=20, concurrency=1, windows=1, timeout=PROBE_TIMEOUT_DEFAULT_S, warmup=0):
    """Send real prediction requests; latency percentiles, failures and who answered. The
    first `warmup` answers of each client are not timed (connection set-up, first calls)."""
    bodies = [
        json.dumps({"windows": [synthetic_window(i * 31 + j) for j in range(windows)]}).encode()
        for i in range(min(requests, 16))
    ]
    latencies, failures, releases, errors = [], 0, {}, []
    lock = threading.Lock()
    counter = iter(range(requests + warmup * max(1, concurrency)))

    def worker():
        nonlocal failures
        conn = None  # one kept-alive connection per client, as a real client holds it
        untimed = warmup
        for i in counter:
            started = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                conn.request(
                    "POST",
                    "/v1/predict",
                    bodies[i % len(bodies)],
                    {"Content-Type": "application/json", **_auth()},
                )
                response = conn.getresponse()
                status, raw = response.status, response.read()
                try:
                    answer = json.loads(raw)
                except ValueError:
                    answer = raw.decode("utf-8", "replace")
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                status, answer = 0, f"{type(exc).__name__}: {exc}"
                if conn is not None:
                    conn.close()
                conn = None
            ms = (time.perf_counter() - started) * 1e3
            timed = untimed <= 0
            untimed -= 1
            with lock:
                if status == 200 and isinstance(answer, dict):
                    if timed:
                        latencies.append(ms)
                    release = answer.get("release")
                    releases[release] = releases.get(release, 0) + 1
                else:
                    failures += 1
                    if len(errors) < 3:
                        reason = answer.get("error") if isinstance(answer, dict) else answer
                        errors.append(f"{status or 'no answer'}: {str(reason)[:160]}")
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(max(1, concurrency))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = {
        "port": port,
        "requests": requests,
        "concurrency": concurrency,
        "windows": windows,
        "timeout_s": timeout,  # per request (probe_timeout: from the SLA)
        # a client thread that died answered nothing: that is a failure too
        "ok": failures == 0 and sum(releases.values()) == requests + warmup * max(1, concurrency),
        "failures": failures,
        "errors": errors,
        "releases": releases,
    }
    if latencies:
        result.update(
            p50_ms=round(percentile(latencies, 50), 3),
            p99_ms=round(percentile(latencies, 99), 3),
            max_ms=round(max(latencies), 3),
        )
    return result


# --- processes ---------------------------------------------------------------------------------


def _log_path(ws, stem):
    folder = os.path.join(serve_dir(ws), "logs")
    os.makedirs(folder, exist_ok=True)
    logs = sorted(os.listdir(folder))
    for old in logs[: max(0, len(logs) - LOGS_KEPT)]:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, old))
    return os.path.join(folder, f"{stem}.log")


def _stamp():
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time() % 1:.6f}"[1:].replace(
        ".", ""
    )


def _spawn(argv, cwd, env, log):
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc


def _tail(path, chars=600):
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - chars))
            return fh.read().decode("utf-8", "replace").strip().replace("\n", " | ")
    except OSError:
        return ""


def has_spare(folder):
    """Whether the release's own server knows `--spare` (a forked copy that takes over if it
    dies: docs/serving.md). A release built before it runs, and rolls back, without one."""
    try:
        with open(os.path.join(folder, "code", "moola_core", "runtime", "serve.py"), "rb") as fh:
            return b'"--spare"' in fh.read()
    except OSError:
        return False


def start_server(ws, release, device="auto", extra=(), timeout=DEFAULT_READY_TIMEOUT_S):
    """Start a server for releases/<release> on a free private port and wait until it is ready
    (golden parity passed), failed, or `timeout` passed. Never touches live traffic."""
    folder = os.path.join(ws, "releases", release)
    if not os.path.isfile(os.path.join(folder, "manifest.json")):
        raise Failed(f"release {release} is not in {ws}/releases: deploy it first")
    os.makedirs(os.path.join(serve_dir(ws), "servers"), exist_ok=True)
    stem = f"{release}-{_stamp()}"
    record_path = os.path.join(serve_dir(ws), "servers", f"{stem}.json")
    log = _log_path(ws, f"server-{stem}")
    # the release's own code first; what the host's python needs (its PYTHONPATH) after it
    path = os.pathsep.join(
        p for p in (os.path.join(folder, "code"), os.environ.get("PYTHONPATH")) if p
    )
    env = dict(os.environ, PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1")
    argv = [
        sys.executable,
        "-m",
        "moola_core.runtime",
        "serve",
        "--release",
        folder,
        "--port",
        "0",
        "--device",
        device,
        "--state-file",
        record_path,
        *(["--spare"] if has_spare(folder) else []),
        *extra,
    ]
    started = time.monotonic()
    proc = _spawn(argv, folder, env, log)
    record = None
    while time.monotonic() - started < timeout:
        record = _read_json(record_path)
        if record and (record.get("ready") or record.get("failed")):
            break
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    record = _read_json(record_path) or {}
    manifest = _read_json(os.path.join(folder, "manifest.json")) or {}
    result = {
        "release": release,
        "sla_p99_ms": manifest.get("latency_sla_p99_ms"),
        "pid": proc.pid,
        "port": record.get("port"),
        "log": log,
        "record": os.path.basename(record_path),
        "start_s": round(time.monotonic() - started, 3),
        "device": record.get("device"),  # what it runs on (the deploy's device report)
    }
    if record.get("ready") and proc.poll() is None:
        status, answer = ask(record["port"], "/readyz")
        if status == 200:
            # how to start it again: the supervisor restarts a dead live server with these
            # (the server wrote its record for the last time when it got ready)
            record["launch"] = {"device": device, "extra": list(extra), "log": log}
            _write_json(record_path, record)
            result.update(ok=True, ready=True)
            return result
        reason = f"/readyz answered {status}: {answer}"
    elif record.get("failed"):
        reason = record["failed"]
    elif proc.poll() is not None:
        reason = f"the server exited with code {proc.returncode}"
    else:
        reason = f"not ready within {timeout:g}s"
    if proc.poll() is None:
        _terminate(proc.pid, ws, 5.0)  # a server that is not ready never lingers
    with contextlib.suppress(OSError):
        os.unlink(record_path)
    result.update(ok=False, ready=False, reason=reason, log_tail=_tail(log))
    return result


def _terminate(pid, ws, wait_s):
    """SIGTERM (drain), wait up to `wait_s`, then SIGKILL; True when it exited in time."""
    if not alive(pid, ws):
        return True
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return True
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not alive(pid, ws):
            return True
        time.sleep(0.02)
    with contextlib.suppress(OSError):
        group = os.getpgid(pid)
        # a server leads its own group (or its group's leader died: a spare took over from
        # it): the group is the server and its spare, which must not take over now
        if group != os.getpgrp() and (group == pid or not _exists(group)):
            os.killpg(group, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    return False


def drain(pid, ws):
    """SIGTERM: the server stops accepting, answers what it holds and exits on its own."""
    if alive(pid, ws):
        try:
            os.kill(pid, signal.SIGTERM)
            return True
        except OSError:
            return False
    return False


def proxy_drift(record, port, bind, auth):
    """How the running proxy differs from what the inventory asks (None: it does not)."""
    if not record:
        return None
    changes = []
    if port and record.get("port") != port:
        changes.append(f"port {record.get('port')} -> {port}")
    if record.get("bind") and record["bind"] != bind:
        changes.append(f"bind {record['bind']} -> {bind}")
    if bool(record.get("auth_required")) != token_required(bind, auth):
        changes.append(
            "token "
            + (
                "required -> not required"
                if record.get("auth_required")
                else "not required -> required"
            )
        )
    return ", ".join(changes) or None


def _movable(old_bind, bind, port):
    """True when a new proxy could listen on (bind, port) while the old one still listens on
    (old_bind, port): two different specific addresses, and nothing else holds the new one."""
    wildcard = ("0.0.0.0", "::")
    if old_bind == bind or old_bind in wildcard or bind in wildcard:
        return False
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with contextlib.closing(socket.socket(family, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind((bind, port))
        except OSError:
            return False
    return True


def ensure_proxy(
    ws, port, bind, read_timeout=None, keep_running=False, auth="auto", supervise=True
):
    """Start the front proxy on `port` unless it already runs; -> {pid, port, started,
    auth_required, supervisor}. The clients' token is made first when the host has none, and
    the supervisor is started when it is not running. A running proxy whose address or token
    rule differs from the one asked for (config drift) is replaced: the new proxy starts on the
    new address first, then the old one drains (requests it holds are answered); when the new
    address cannot be taken while the old proxy listens (the same port on an overlapping
    address) that is refused in one sentence. `keep_running`: no port was configured, keep
    the proxy's."""
    folder = serve_dir(ws)
    os.makedirs(folder, exist_ok=True)
    write_token(ws)
    record = _read_json(os.path.join(folder, "proxy.json"))
    old = None
    if record and alive(record.get("pid"), ws):
        if keep_running or not port:
            port = record.get("port")  # no port configured, or 0: the one it has is the one
        drift = proxy_drift(record, port, bind, auth)
        if drift is None:
            return {
                "pid": record["pid"],
                "port": record["port"],
                "started": False,
                "auth_required": token_required(bind, auth),
                "supervisor": ensure_supervisor(ws) if supervise else None,
            }
        if port == record.get("port") and not _movable(record.get("bind"), bind, port):
            raise Failed(
                f"the proxy on {record.get('bind', '?')}:{port} differs from the inventory "
                f"({drift}) and applying that on the same port needs an outage: restart it "
                "(`invoke serve --host H stop`, then `start`)"
            )
        old = record
    if not port and record and record.get("port"):
        port = record["port"]  # keep the port the host had (stand-in hosts pick one once)
    log = _log_path(ws, f"proxy-{_stamp()}")
    argv = [*launcher(), "proxy", "--workspace", ws, "--port", str(port or 0), "--bind", bind]
    argv += ["--auth", auth]
    if read_timeout:
        argv += ["--read-timeout-s", str(read_timeout)]
    proc = _spawn(
        argv,
        ws,
        dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
        log,
    )
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        record = _read_json(os.path.join(folder, "proxy.json"))
        if record and record.get("pid") == proc.pid:
            result = {
                "pid": proc.pid,
                "port": record["port"],
                "started": True,
                "auth_required": bool(record.get("auth_required")),
            }
            if old:  # the new address serves: the old proxy answers what it holds and exits
                drain(old["pid"], ws)
                result["replaced"] = {
                    "pid": old["pid"],
                    "port": old.get("port"),
                    "bind": old.get("bind"),
                    "drift": proxy_drift(old, port, bind, auth),
                }
            result["supervisor"] = ensure_supervisor(ws) if supervise else None
            return result
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise Failed(f"the proxy did not start on port {port}: {_tail(log, 300) or 'no log'}")


def proxy_port(ws):
    record = _read_json(os.path.join(serve_dir(ws), "proxy.json"))
    if record and alive(record.get("pid"), ws):
        return record.get("port")
    return None


def _server_entry(record):
    entry = {
        "release": record.get("release"),
        "port": record.get("port"),
        "pid": record.get("pid"),
        "record": record.get("file"),
    }
    if record.get("launch"):
        entry["launch"] = record["launch"]
    return entry


def successor(ws, entry):
    """The server that took over from the dead server `entry` names (its spare: the server's
    record now carries the spare's pid), or None. -> (record or None, spare still running)."""
    name = (entry or {}).get("record")
    record = _read_json(os.path.join(serve_dir(ws), "servers", name)) if name else None
    if not record:
        return None, False
    pid = record.get("pid")
    if pid != entry.get("pid") and alive(pid, ws) and record.get("ready"):
        return record, False
    return None, alive(record.get("spare_pid"), ws)


def adopt(ws):
    """Point the live and standby entries of state.json at the spares that took over from
    their dead servers (same port, same release: only the pid changes). -> {role: entry}."""
    state = read_state(ws)
    dead = [r for r in ("live", "standby") if state.get(r) and not alive(state[r].get("pid"), ws)]
    if not dead:
        return {}
    adopted = {}
    with state_lock(ws):
        state = read_state(ws)
        for role in dead:
            entry = state.get(role)
            if not entry or alive(entry.get("pid"), ws):
                continue
            record, _waiting = successor(ws, entry)
            if record:
                adopted[role] = dict(entry, pid=record["pid"], port=record.get("port"))
        if adopted:
            write_state(ws, dict(state, **adopted))
    return adopted


def switch(ws, release, port=None, keep_standby=True):
    """Make the ready server of `release` (on `port`, or the newest) live; the server that was
    live becomes the standby (or drains), and a standby pushed out drains. The proxy is asked
    which server it now routes to before this returns."""
    candidates = [
        s
        for s in servers(ws)
        if s.get("release") == release
        and s["alive"]
        and s.get("ready")
        and (port is None or s.get("port") == port)
    ]
    if not candidates:
        raise Failed(f"no ready server of {release} runs on this host: start it first")
    new = _server_entry(candidates[-1])
    adopt(ws)  # a standby that died and was taken over by its spare stays the standby
    with state_lock(ws):
        state = read_state(ws)
        old_live, old_standby = state.get("live"), state.get("standby")
        drained = []
        standby = None
        for old in (old_live, old_standby):
            if not old or old.get("pid") == new["pid"] or not alive(old.get("pid"), ws):
                continue
            if keep_standby and standby is None and old.get("release") != release:
                standby = old
            elif drain(old["pid"], ws):
                drained.append(old)
        # any other server is a stray (an old instance after a restart, a candidate left by an
        # interrupted deploy): it drains too; the shadow (issue #11) is not ours to stop
        keep = {d["pid"] for d in drained} | {new["pid"]}
        keep |= {(x or {}).get("pid") for x in (standby, state.get("shadow"))}
        shadow_port = (state.get("shadow") or {}).get("port")
        for s in servers(ws):
            stray = s["alive"] and s["pid"] not in keep and s.get("port") != shadow_port
            if stray and drain(s["pid"], ws):
                drained.append(_server_entry(s))
        new_state = write_state(ws, dict(state, live=new, standby=standby))
    seen = None
    pport = proxy_port(ws)
    if pport:
        status, answer = ask(pport, "/_proxy/state")
        seen = answer.get("state", {}).get("live") if status == 200 else None
        if not seen or seen.get("port") != new["port"]:
            raise Failed(f"the proxy on port {pport} still routes to {seen}: check serve/ logs")
    return {
        "ok": True,
        "live": new,
        "standby": standby,
        "drained": drained,
        "proxy_port": pport,
        "proxy_sees": seen,
        "state_updated": new_state["updated"],
    }


def standby_check(ws, release, requests=3, sla_ms=None):
    """The warm standby of `release`: alive, /readyz 200, and real requests answered by it
    (each within the probe timeout the SLA gives)."""
    timeout = probe_timeout(ws, release, sla_ms)
    adopt(ws)
    standby = read_state(ws).get("standby") or {}
    if standby.get("release") != release or not alive(standby.get("pid"), ws):
        return {
            "ok": False,
            "error": f"no running standby of {release}",
            "standby": standby or None,
        }
    code, _answer = ask(standby["port"], "/readyz", timeout=timeout)
    if code != 200:
        return {
            "ok": False,
            "error": f"the standby of {release} is not ready ({code})",
            "standby": standby,
        }
    result = probe(standby["port"], requests, timeout=timeout)
    ok = result["ok"] and set(result["releases"]) == {release}
    return {
        "ok": ok,
        "standby": standby,
        "probe": result,
        "error": None if ok else f"the standby answered {result['releases']} {result['errors']}",
    }


def stop_candidates(ws, release):
    """Drain every server of `release` that is neither live, standby nor shadow: the candidate
    a failed or interrupted deploy started (live traffic never reached it)."""
    state = read_state(ws)
    keep = {(state.get(role) or {}).get("pid") for role in ("live", "standby", "shadow")}
    shadow_port = (state.get("shadow") or {}).get("port")
    drained = []
    for s in servers(ws):
        mine = s.get("release") == release and s["pid"] not in keep
        if s["alive"] and mine and s.get("port") != shadow_port and drain(s["pid"], ws):
            drained.append(_server_entry(s))
    return {"ok": True, "drained": drained}


def standby_switch(ws, release, requests=1, keep_standby=True, sla_ms=None):
    """Rollback's fast path in ONE round trip: probe the warm standby of `release` (alive,
    /readyz 200, real requests answered by it), and only when it passed, move traffic to it.
    Prints {ok, passed, standby, probe, moved, error}; nothing moves when the probe fails."""
    began = time.monotonic()
    checked = standby_check(ws, release, requests, sla_ms)
    checked["check_ms"] = round((time.monotonic() - began) * 1e3, 1)
    if not checked["ok"]:
        return dict(checked, passed=False, moved=None)
    port = checked["standby"]["port"]
    began = time.monotonic()
    try:
        moved = switch(ws, release, port, keep_standby)
    except Failed as exc:
        return dict(checked, ok=False, passed=True, moved=None, error=str(exc))
    return dict(
        checked, passed=True, moved=moved, switch_ms=round((time.monotonic() - began) * 1e3, 1)
    )


def status(ws):
    adopt(ws)  # true without the supervisor too: a spare that took over is the live server
    state = read_state(ws)
    found = servers(ws)
    for s in found:
        if s["alive"] and s.get("port"):
            code, answer = ask(s["port"], "/readyz", timeout=2.0)
            s["ready_now"] = code == 200
    pport = proxy_port(ws)
    record = _read_json(os.path.join(serve_dir(ws), "proxy.json")) or {}
    live = state.get("live")
    result = {
        "ok": True,
        "workspace": ws,
        "current": current_version(ws),
        "proxy": {
            "running": pport is not None,
            "port": pport or record.get("port"),
            "bind": record.get("bind"),
            "auth_required": record.get("auth_required"),
            "pid": record.get("pid") if pport else None,
        },
        "supervisor": supervisor_status(ws),
        "live": live,
        "standby": state.get("standby"),
        "shadow": state.get("shadow"),
        "servers": found,
    }
    if live:
        live_alive = alive(live.get("pid"), ws)
        result["live_alive"] = live_alive
        if pport and live_alive:
            code, answer = ask(pport, "/healthz", timeout=2.0)
            result["served_release"] = answer.get("release") if code == 200 else None
            code, answer = ask(pport, "/readyz", timeout=2.0)
            result["live_ready"] = code == 200
    return result


def health(ws, burst=0, concurrency=4, requests=True):
    """The live service as a monitor sees it, in one round trip: status, one real request
    through the public port, and with `burst` a short burst's latency percentiles
    (`requests=False`: the status alone, nothing sent, nothing captured)."""
    result = status(ws)
    result["set_up"] = os.path.exists(os.path.join(serve_dir(ws), "state.json"))
    manifest = _read_json(os.path.join(ws, "current", "manifest.json")) or {}
    result["sla_p99_ms"] = manifest.get("latency_sla_p99_ms")
    pport = result["proxy"]["port"] if result["proxy"]["running"] else None
    if pport and result.get("live_alive") and requests:
        timeout = probe_timeout(ws)
        result["probe"] = probe(pport, 1, timeout=timeout, warmup=0)
        if burst:
            result["burst"] = probe(pport, burst, concurrency, timeout=timeout, warmup=2)
    return result


def stop(ws, wait_s):
    """Stop the proxy and every server of this workspace (each drains first)."""
    stopped = []
    supervisor = stop_supervisor(ws)  # first: it would start again what is stopped below
    if supervisor:
        stopped.append(supervisor)
    record = _read_json(os.path.join(serve_dir(ws), "proxy.json"))
    pids = [s["pid"] for s in servers(ws) if s["alive"]]
    if record and alive(record.get("pid"), ws):
        pids.insert(0, record["pid"])
    for pid in pids:
        clean = _terminate(pid, ws, wait_s)
        stopped.append({"pid": pid, "drained": clean})
    with state_lock(ws):
        write_state(ws, dict(read_state(ws), live=None, standby=None, shadow=None))
    return {"ok": True, "stopped": stopped}


def set_shadow(ws, shadow):
    """Route a copy of live traffic to `shadow` ({release, port, pid, fraction, since}), or
    stop copying (None); the proxy sees it on its next request. -> {ok, old, shadow}."""
    if shadow is not None and not (
        isinstance(shadow, dict)
        and isinstance(shadow.get("release"), str)
        and isinstance(shadow.get("port"), int)
        and isinstance(shadow.get("fraction"), (int, float))
        and 0 < shadow["fraction"] <= 1
    ):
        raise Failed("a shadow needs release (text), port (whole number), fraction in (0, 1]")
    with state_lock(ws):
        state = read_state(ws)
        old = state.get("shadow")
        if shadow is not None and not state.get("live"):
            raise Failed("nothing is live on this host")
        if shadow is not None or old is not None:
            state = write_state(ws, dict(state, shadow=shadow))
    return {"ok": True, "old": old, "shadow": state.get("shadow")}


def proxy_state(ws):
    """What the proxy says of itself (GET /_proxy/state with the host's token): its route,
    counters (per shadow, and total_*), connections."""
    pport = proxy_port(ws)
    if not pport:
        raise Failed("the proxy is not running: start serving first")
    code, answer = ask(pport, "/_proxy/state")
    if code != 200 or not isinstance(answer, dict):
        raise Failed(f"the proxy on port {pport} answered {code or 'nothing'}: {str(answer)[:200]}")
    return {"ok": True, "proxy": answer}


def show_token(ws, rotate=False):
    """The clients' token (a new one with `rotate`), its fingerprint and whether the proxy
    requires it. The token is printed for the caller only: Moola never logs it."""
    value = write_token(ws, rotate=rotate)
    record = _read_json(os.path.join(serve_dir(ws), "proxy.json")) or {}
    running = alive(record.get("pid"), ws)
    return {
        "ok": True,
        "token": value,
        "fingerprint": token_fingerprint(value),
        "rotated": bool(rotate),
        "required": bool(record.get("auth_required")) if running else None,
    }


def ensure(ws, port, bind, device, extra, keep_standby, timeout, keep_running=False, auth="auto"):
    """Idempotent (cron-safe): the proxy runs and the live server is `current`'s, ready."""
    actions = []
    # the supervisor starts after the live server is sorted out: started first, it would race
    # this command to restart a dead live server
    proxy = ensure_proxy(ws, port, bind, keep_running=keep_running, auth=auth, supervise=False)
    if proxy["started"]:
        actions.append(f"started the proxy on port {proxy['port']}")
    version = current_version(ws)
    if version is None:
        raise Failed(f"{ws}/current does not exist: deploy a release first")
    adopt(ws)
    state = read_state(ws)
    live = state.get("live") or {}
    if live.get("release") == version and alive(live.get("pid"), ws):
        code, _answer = ask(live["port"], "/readyz", timeout=5.0)
        if code == 200:
            if ensure_supervisor(ws)["started"]:
                actions.append("started the supervisor")
            return {
                "ok": True,
                "actions": actions or ["nothing to do"],
                "live": live,
                "proxy": proxy,
            }
    started = start_server(ws, version, device, extra, timeout)
    if not started["ok"]:
        raise Failed(
            f"the server for {version} did not get ready: {started['reason']} "
            f"(log {started['log']}: {started.get('log_tail', '')[-300:]})"
        )
    actions.append(f"started the server for {version} on port {started['port']}")
    moved = switch(ws, version, started["port"], keep_standby)
    actions.append(f"moved traffic to {version}")
    if ensure_supervisor(ws)["started"]:
        actions.append("started the supervisor")
    return {"ok": True, "actions": actions, "live": moved["live"], "proxy": proxy}


# --- supervision: a dead live server (or proxy) is started again within seconds ---------------

SUPERVISE_INTERVAL_S = 0.1  # how often the supervisor looks at the live server and the proxy
HEALTHY_AFTER_S = 30.0  # a restarted server that lives this long ends a crash loop
BACKOFF_MAX_S = 60.0  # the longest wait between two tries for a crash-looping server
CRASH_LOOP_AFTER = 3  # failed restarts in a row before the health check says CRITICAL
SPARE_GRACE_S = 5.0  # how long a dead server's running spare gets to take over before a start


def supervisor_path(ws):
    return os.path.join(serve_dir(ws), "supervisor.json")


def process_manager():
    """The host's own process manager, when there is one (reported, not used: see
    docs/serving.md "Supervision")."""
    if os.environ.get("SUPERVISOR_ENABLED"):
        return "supervisord"
    if os.environ.get("INVOCATION_ID") or os.path.isdir("/run/systemd/system"):
        return "systemd"
    if os.path.exists("/.dockerenv"):
        return "docker"
    return None


def supervisor_status(ws):
    record = _read_json(supervisor_path(ws)) or {}
    record["running"] = alive(record.get("pid"), ws)
    return record


def ensure_supervisor(ws):
    """Start the supervisor unless it runs; -> {pid, started}. One per workspace (it holds
    an flock on serve/supervisor.lock: a second one exits at once)."""
    record = _read_json(supervisor_path(ws)) or {}
    if alive(record.get("pid"), ws):
        return {"pid": record["pid"], "started": False}
    log = _log_path(ws, f"supervisor-{_stamp()}")
    argv = [*launcher(), "serve", "supervise", "--workspace", ws]
    proc = _spawn(argv, ws, dict(os.environ, PYTHONDONTWRITEBYTECODE="1"), log)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        record = _read_json(supervisor_path(ws)) or {}
        if record.get("pid") == proc.pid:
            return {"pid": proc.pid, "started": True}
        if proc.poll() is not None:  # another one holds the lock: it supervises
            record = _read_json(supervisor_path(ws)) or {}
            if alive(record.get("pid"), ws):
                return {"pid": record["pid"], "started": False}
            break
        time.sleep(0.02)
    raise Failed(f"the supervisor did not start: {_tail(log, 300) or 'no log'}")


def stop_supervisor(ws, wait_s=10.0):
    record = _read_json(supervisor_path(ws)) or {}
    if not alive(record.get("pid"), ws):
        return None
    return {"pid": record["pid"], "drained": _terminate(record["pid"], ws, wait_s)}


def deprioritise(pid, nice):
    """Lower every thread of `pid` to `nice` and SCHED_IDLE where Linux allows it (a shadow
    server: it gets only the CPU time the live server does not want). Linux sets both per
    thread; threads started later inherit them from the thread that starts them."""
    done = idle = 0
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
            done += 1
        except OSError:
            pass
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            idle += 1
        except (AttributeError, OSError):
            pass
    return {"ok": done > 0, "threads": done, "sched_idle": idle}


def _say(message):
    print(f"{time.strftime('%H:%M:%S', time.gmtime())} moola supervisor: {message}", flush=True)


def _proxy_died(ws, rec):
    """The proxy's record is there but its process is gone (a clean stop removes the record):
    start it again on the same address."""
    record = _read_json(os.path.join(serve_dir(ws), "proxy.json"))
    if not record or not record.get("pid") or alive(record.get("pid"), ws):
        return False
    bind = record.get("bind") or "127.0.0.1"
    auth = record.get("auth") or (
        "always" if record.get("auth_required") and not token_required(bind, "auto") else "auto"
    )
    try:
        ensure_proxy(ws, record.get("port"), bind, record.get("read_timeout_s"), auth=auth)
        rec["proxy_restarts"] = rec.get("proxy_restarts", 0) + 1
        _say(f"the proxy (pid {record.get('pid')}) had died: started it again")
    except Failed as exc:
        rec["last_error"] = f"the proxy could not be started again: {exc}"
        _say(rec["last_error"])
    return True


def _backoff(rec):
    """Seconds before the next try: none after a first death, then 1, 2, 4 ... BACKOFF_MAX_S;
    a crash loop from CRASH_LOOP_AFTER failures in a row."""
    wait = min(BACKOFF_MAX_S, 2.0 ** (rec["failures"] - 1)) if rec["failures"] else 0.0
    rec["crash_loop"] = rec["failures"] >= CRASH_LOOP_AFTER
    rec["next_try_at"] = round(time.time() + wait, 3) if rec["failures"] else None
    return wait


def _note_exit(ws, live, rec, ours):
    """The live server's process is gone: remember how it ended (its last log lines) and count
    a failure when it was one we started less than HEALTHY_AFTER_S ago. -> seconds to wait."""
    dead = live.get("pid")
    launch = live.get("launch") or {}
    born = ours.pop(dead, None)
    if born is not None and time.monotonic() - born < HEALTHY_AFTER_S:
        rec["failures"] += 1
    rec["last_exit"] = {
        "release": live.get("release"),
        "pid": dead,
        "at": round(time.time(), 3),
        "log": launch.get("log"),
        "log_tail": _tail(launch["log"], 1200) if launch.get("log") else "",
    }
    _say(f"the live server of {live.get('release')} (pid {dead}) is gone")
    return _backoff(rec)


def _took_over(live, adopted, rec, ours):
    """The dead live server's spare took over (same port) and state.json names it now (adopt):
    count it. A spare that dies soon after counts as a failure, as a restarted server does."""
    ours[adopted["pid"]] = time.monotonic()
    rec["takeovers"] += 1
    rec["last_takeover"] = {
        "release": live.get("release"),
        "pid": adopted["pid"],
        "from": live.get("pid"),
        "at": round(time.time(), 3),
    }
    rec["last_error"] = None
    _say(f"live again: the spare of {live.get('release')} (pid {adopted['pid']}) took over")


def _start_again(ws, live, rec, ours):
    """Start a server of the dead live server's release with its launch, and make it live when
    nobody else moved traffic meanwhile. -> seconds to wait before another try."""
    dead = live.get("pid")
    launch = live.get("launch") or {}
    began = time.monotonic()
    try:
        started = start_server(
            ws, live.get("release"), launch.get("device") or "auto", launch.get("extra") or []
        )
    except Failed as exc:
        started = {"ok": False, "reason": str(exc), "log": None}
    if started["ok"]:
        with state_lock(ws):
            if (read_state(ws).get("live") or {}).get("pid") == dead:
                switch(ws, live["release"], started["port"], keep_standby=True)
                ours[started["pid"]] = time.monotonic()
                rec["restarts"] += 1
                rec["last_restart"] = {
                    "release": live["release"],
                    "pid": started["pid"],
                    "at": round(time.time(), 3),
                    "took_s": round(time.monotonic() - began, 3),
                }
                rec["last_error"] = None
                _say(f"live again: {live['release']} pid {started['pid']} ({started['start_s']}s)")
            else:  # a deploy, rollback or ensure moved traffic meanwhile: ours is not needed
                drain(started["pid"], ws)
        return _backoff(rec)
    rec["failures"] += 1
    rec["last_error"] = f"the server of {live.get('release')} did not start: {started['reason']}"
    if started.get("log"):
        rec["last_exit"] = dict(
            rec.get("last_exit") or {},
            log=started["log"],
            log_tail=started.get("log_tail") or "",
        )
    _say(rec["last_error"])
    return _backoff(rec)


def supervise(ws, interval=SUPERVISE_INTERVAL_S):
    """Run until SIGTERM: every `interval`, restart the live server when its process is gone
    (a crash, OOM, kill -9) and the proxy when it died. A server that dies again within
    HEALTHY_AFTER_S of its restart, or fails to start, counts as a failure: the next try waits
    1, 2, 4 ... up to BACKOFF_MAX_S seconds, and CRASH_LOOP_AFTER failures in a row are a crash
    loop (supervisor.json, shown CRITICAL by the health check with the server's last lines).
    A clean `serve stop` stops the supervisor first; cron `--ensure` starts it when it is gone."""
    os.makedirs(serve_dir(ws), exist_ok=True)
    fd = os.open(os.path.join(serve_dir(ws), "supervisor.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return {"ok": True, "already_supervised": True}
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    rec = {
        "pid": os.getpid(),
        "started": time.time(),
        "manager": process_manager(),
        "interval_s": interval,
        "restarts": 0,
        "takeovers": 0,
        "last_takeover": None,
        "proxy_restarts": 0,
        "failures": 0,
        "crash_loop": False,
        "next_try_at": None,
        "last_exit": None,
        "last_restart": None,
        "last_error": None,
    }
    _write_json(supervisor_path(ws), rec)
    _say(f"watching {ws} every {interval:g}s (pid {os.getpid()})")
    ours, next_try, noted, noted_at = {}, 0.0, None, 0.0
    while not stopping:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass  # servers and proxies we started that exited: no zombies
        before = json.dumps(rec, sort_keys=True, default=str)
        live = read_state(ws).get("live")
        _proxy_died(ws, rec)
        if live and isinstance(live.get("pid"), int) and not alive(live["pid"], ws):
            if noted != live["pid"]:
                noted, noted_at = live["pid"], time.monotonic()
                next_try = time.monotonic() + _note_exit(ws, live, rec, ours)
            adopted = adopt(ws).get("live")
            if adopted:
                _took_over(live, adopted, rec, ours)  # its spare serves: nothing to start
            elif time.monotonic() - noted_at < SPARE_GRACE_S and successor(ws, live)[1]:
                pass  # its spare runs: it is taking over right now
            elif time.monotonic() >= next_try:
                next_try = time.monotonic() + _start_again(ws, live, rec, ours)
        elif rec["failures"] and live:
            born = ours.get(live.get("pid"))
            if born is None or time.monotonic() - born > HEALTHY_AFTER_S:
                rec.update(failures=0, crash_loop=False, next_try_at=None)  # it stayed up
        if json.dumps(rec, sort_keys=True, default=str) != before:
            _write_json(supervisor_path(ws), rec)
        time.sleep(interval)
    with contextlib.suppress(OSError):
        if (_read_json(supervisor_path(ws)) or {}).get("pid") == os.getpid():
            os.unlink(supervisor_path(ws))
    _say("stopped")
    return {"ok": True}


# --- command line ------------------------------------------------------------------------------


def _parser():
    parser = argparse.ArgumentParser(prog="agent.py serve")
    sub = parser.add_subparsers(dest="action", required=True)

    def add(name):
        p = sub.add_parser(name)
        p.add_argument("--workspace", required=True)
        return p

    p = add("start")
    p.add_argument("--release", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--timeout", type=float, default=DEFAULT_READY_TIMEOUT_S)
    p.add_argument("--server-arg", action="append", default=[])
    p = add("proxy")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--read-timeout", type=float, default=None)
    p.add_argument("--keep-running", action="store_true", help="accept a proxy on another port")
    p.add_argument("--auth", choices=AUTH_MODES, default="auto")
    p = add("switch")
    p.add_argument("--release", required=True)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--no-standby", action="store_true")
    p = add("drain")
    p.add_argument("--pid", type=int, required=True)
    add("status")
    p = add("health")
    p.add_argument("--burst", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--no-requests", action="store_true", help="status only: send nothing")
    sla_help = "the p99 latency SLA in ms the probe timeout derives from (default: the manifest's)"
    p = add("standby")
    p.add_argument("--release", required=True)
    p.add_argument("--requests", type=int, default=3)
    p.add_argument("--sla-ms", type=float, default=None, help=sla_help)
    p = add("stop-candidates")
    p.add_argument("--release", required=True)
    p = add("standby-switch")
    p.add_argument("--release", required=True)
    p.add_argument("--requests", type=int, default=1)
    p.add_argument("--no-standby", action="store_true")
    p.add_argument("--sla-ms", type=float, default=None, help=sla_help)
    p = add("stop")
    p.add_argument("--wait", type=float, default=DEFAULT_DRAIN_TIMEOUT_S)
    p = add("probe")
    p.add_argument("--port", type=int, default=0, help="0: the proxy (the path users hit)")
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--windows", type=int, default=1)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--release", default=None, help="whose manifest's SLA sets the timeout")
    p.add_argument("--sla-ms", type=float, default=None, help=sla_help)
    p = add("ensure")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--device", default="auto")
    p.add_argument("--timeout", type=float, default=DEFAULT_READY_TIMEOUT_S)
    p.add_argument("--server-arg", action="append", default=[])
    p.add_argument("--no-standby", action="store_true")
    p.add_argument("--keep-running", action="store_true", help="accept a proxy on another port")
    p.add_argument("--auth", choices=AUTH_MODES, default="auto")
    p = add("shadow")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--set", default=None, help="the shadow as JSON")
    which.add_argument("--clear", action="store_true")
    add("proxy-state")
    p = add("token")
    p.add_argument("--rotate", action="store_true", help="replace the token with a new one")
    p = add("supervise")
    p.add_argument("--interval", type=float, default=SUPERVISE_INTERVAL_S)
    p = add("deprioritise")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--nice", type=int, default=19)
    return parser


def run(args):
    global CLIENT_TOKEN
    ws = os.path.abspath(os.path.expanduser(args.workspace))
    if not os.path.isdir(ws):
        raise Failed(f"workspace {ws} does not exist")
    CLIENT_TOKEN = read_token(ws)
    if args.action == "start":
        return start_server(ws, args.release, args.device, args.server_arg, args.timeout)
    if args.action == "proxy":
        return dict(
            ensure_proxy(ws, args.port, args.bind, args.read_timeout, args.keep_running, args.auth),
            ok=True,
        )
    if args.action == "switch":
        return switch(ws, args.release, args.port, not args.no_standby)
    if args.action == "drain":
        return {"ok": True, "drained": drain(args.pid, ws)}
    if args.action == "status":
        return status(ws)
    if args.action == "health":
        return health(ws, args.burst, args.concurrency, not args.no_requests)
    if args.action == "standby":
        return standby_check(ws, args.release, args.requests, args.sla_ms)
    if args.action == "stop-candidates":
        return stop_candidates(ws, args.release)
    if args.action == "standby-switch":
        return standby_switch(ws, args.release, args.requests, not args.no_standby, args.sla_ms)
    if args.action == "stop":
        return stop(ws, args.wait)
    if args.action == "probe":
        port = args.port or proxy_port(ws)
        if not port:
            raise Failed("the proxy is not running: start serving first")
        timeout = probe_timeout(ws, args.release, args.sla_ms)
        return probe(
            port, args.requests, args.concurrency, args.windows, timeout=timeout, warmup=args.warmup
        )
    if args.action == "ensure":
        return ensure(
            ws,
            args.port,
            args.bind,
            args.device,
            args.server_arg,
            not args.no_standby,
            args.timeout,
            args.keep_running,
            args.auth,
        )
    if args.action == "shadow":
        if args.clear:
            return set_shadow(ws, None)
        try:
            shadow = json.loads(args.set)
        except ValueError:
            raise Failed("--set takes the shadow as JSON") from None
        return set_shadow(ws, shadow)
    if args.action == "proxy-state":
        return proxy_state(ws)
    if args.action == "token":
        return show_token(ws, args.rotate)
    if args.action == "supervise":
        return supervise(ws, args.interval)
    if args.action == "deprioritise":
        return deprioritise(args.pid, args.nice)
    raise Failed(f"unknown action {args.action}")


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        result = run(args)
    except Failed as exc:
        result = {"ok": False, "error": str(exc)}
    except Exception as exc:  # one JSON document even when something unexpected breaks
        result = {
            "ok": False,
            "error": f"agent serve {args.action} crashed: {type(exc).__name__}: {exc}",
        }
    print(json.dumps(result, sort_keys=True, default=str), flush=True)
    return 0 if result.get("ok") else 1

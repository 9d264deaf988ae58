"""The model server on a stand-in host, measured through the path users hit.

    python benchmarks/serving.py [--seconds 6] [--out docs/benchmarks/serving.md]
    python benchmarks/serving.py --local [--clients 64] [--seconds 10] [--device auto]
    python benchmarks/serving.py --server-ab GITREF [--ab-captures] [--clients 32] [--seconds 6]
    python benchmarks/serving.py --gil [--seconds 2]

Stand-in mode (one run, real OpenSSH host on 127.0.0.1, the default JadeModel, random weights):
- http_over_inprocess_p50: on the host, with the host's python: p50 of one window through the
  public port (proxy -> server, HTTP keep-alive) over the p50 of `Predictor.predict_ohlc` in
  process (features + model, one thread, as the server runs), same release, alternating
  blocks of 30 calls (10 rounds, 1 ms rest after each call on every path) so the load of the
  shared machine falls on both alike. The client is a lean one, as a load generator's: one
  kept-alive socket, the request's bytes built once, the answer read by its Content-Length.
  The same path with Python's http.client is reported beside it (its request building and
  header parsing add ~0.4 ms of the client's own);
- batched_vs_unbatched_throughput: windows/s at 32 concurrent clients against a server with
  dynamic batching (defaults) over one with `--max-batch 1`, same release, same host;
- failed_during_deploy / failed_during_rollback and the longest gap between answers: a client
  sends one request after another through the public port while `engine.deploy` and then
  `invoke rollback` (a subprocess, as a person runs it) move traffic;
- rollback_to_served_s: from starting `invoke rollback` to the first answer served by the
  previous release (warm standby), the median of three rollbacks (each to the standby), with
  where the time went (the deployment log's steps); rollback_cold_s is the same for a release
  without standby;
- the SO_REUSEPORT experiment behind docs/serving.md's choice of a front proxy.

Local mode (a GPU box, no sshd): builds a release, starts the server on 127.0.0.1 in this
machine and prints windows/s and p99 at `--clients` concurrent clients (batched and unbatched).

Server A/B mode (no sshd): this checkout's server (`runtime/serve.py` and `agent/http.py`)
against GITREF's, the same release served by both, alternating on the same machine (one-window
latency, windows/s at `--clients` with batching on and off, captures off, or on with
`--ab-captures`): a before/after of a server change measured in one run, not across runs on a
shared machine.

The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.helpers import window, write_inventory  # noqa: E402

MODEL: dict = {}  # the default JadeModel config (build_model fills every key)
ROLLBACK_STREAM_PAUSE_S = 0.005  # the timed rollbacks' client: one request every ~8 ms


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-int(q * len(ordered)) // 100)))
    return ordered[rank - 1]


class Client:
    """One kept-alive HTTP connection."""

    def __init__(self, port: int):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, body: bytes, headers: dict | None = None) -> tuple[int, dict | None]:
        try:
            self.conn.request("POST", "/v1/predict", body=body, headers=headers or {})
            response = self.conn.getresponse()
            return response.status, json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            return 0, None

    def close(self) -> None:
        self.conn.close()


BINARY_TYPE = "application/vnd.moola.ohlc-f32le"  # docs/serving.md "Binary requests"


def binary_body(windows: list) -> bytes:
    """float32 little-endian [N, 105, 4], as a client with numpy sends `array.astype('<f4')`."""
    return b"".join(struct.pack("<4f", *bar) for w in windows for bar in w)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` (every thread), None when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(
    port: int,
    clients: int,
    seconds: float,
    windows: int = 1,
    binary: bool = False,
    pids: dict[str, int] | None = None,
) -> dict:
    """Windows/s and latency with `clients` threads each sending back-to-back requests (JSON
    bodies, or binary ones with `binary`). With `pids` ({"server": pid, "proxy": pid}) also the
    CPU each of those processes and this one (the clients) spent per answered window, ms."""
    grids = [[window(i * 7 + j) for j in range(windows)] for i in range(clients)]
    if binary:
        bodies = [binary_body(g) for g in grids]
        headers = {"Content-Type": BINARY_TYPE, "X-Moola-Windows": str(windows)}
    else:
        bodies = [json.dumps({"windows": g}).encode() for g in grids]
        headers = {"Content-Type": "application/json"}
    stop, start = threading.Event(), threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients

    def run(i: int) -> None:
        client = Client(port)
        client.post(bodies[i], headers)  # connect and warm up before the clock starts
        start.wait()
        while not stop.is_set():
            began = time.perf_counter()
            status, _ = client.post(bodies[i], headers)
            if status == 200:
                latencies[i].append((time.perf_counter() - began) * 1e3)
            else:
                failures[i] += 1
        client.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    watched = dict(pids or {}, client=os.getpid()) if pids else {}
    cpu_before = {name: cpu_seconds(pid) for name, pid in watched.items()}
    time.sleep(seconds)  # the measurement window (a benchmark, not a test)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    # the server writes captures in the background: the clock runs until what was answered is
    # also on disk, so a run does not hand its capture work to the next measurement
    while unwritten_captures(port) > 0 and time.perf_counter() - began < 300:
        time.sleep(0.05)
    elapsed = time.perf_counter() - began
    flat = [x for per in latencies for x in per]
    cpu = {}
    for name, pid in watched.items():
        now = cpu_seconds(pid)
        if now is not None and cpu_before[name] is not None and flat:
            cpu[name] = round((now - cpu_before[name]) / (len(flat) * windows) * 1e3, 3)
    return {
        **({"cpu_ms_per_window": cpu} if cpu else {}),
        "windows_per_s": round(len(flat) * windows / elapsed, 1),
        "requests": len(flat),
        "failures": sum(failures),
        "p50_ms": round(percentile(flat, 50), 3) if flat else None,
        "p99_ms": round(percentile(flat, 99), 3) if flat else None,
        "clients": clients,
        "seconds": round(elapsed, 2),
    }


def unwritten_captures(port: int) -> float:
    """The server's moola_serve_captures_unwritten_windows gauge (0 when it has none)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    for line in text.splitlines():
        if line.startswith("moola_serve_captures_unwritten_windows "):
            return float(line.split()[1])
    return 0.0


class Stream:
    """A client sending one request after another (`pause_s` between an answer and the next
    request); records who answered and when."""

    def __init__(self, port: int, pause_s: float = 0.0):
        self.port, self.stop, self.pause_s = port, threading.Event(), pause_s
        self.answers: list[tuple[float, str]] = []
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client, body = Client(self.port), json.dumps({"windows": [window(9)]}).encode()
        while not self.stop.is_set():
            status, answer = client.post(body)
            if status == 200:
                self.answers.append((time.perf_counter(), answer["release"]))
            else:
                self.failures.append(f"{status}: {answer}")
            if self.pause_s:
                self.stop.wait(self.pause_s)
        client.close()

    def longest_gap_ms(self) -> float:
        times = [t for t, _ in self.answers]
        return round(
            max((b - a for a, b in zip(times, times[1:], strict=False)), default=0) * 1e3, 1
        )

    def first_after(self, t0: float, release: str) -> float | None:
        return next((t - t0 for t, r in self.answers if t >= t0 and r == release), None)

    def __enter__(self) -> Stream:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.answers and not self.failures and time.monotonic() < deadline:
            time.sleep(0.005)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def reuseport_experiment(connections: int = 40) -> dict:
    """Two SO_REUSEPORT listeners; connections queue; the old listener closes unaccepted."""

    def listener(port: int = 0) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        s.listen(128)
        return s

    old = listener()
    port = old.getsockname()[1]
    new = listener(port)
    clients = []
    for _ in range(connections):
        c = socket.create_connection(("127.0.0.1", port))
        c.sendall(b"GET / HTTP/1.1\r\n\r\n")
        clients.append(c)
    time.sleep(0.1)  # let the kernel queue them
    old.close()
    reset = 0
    for c in clients:
        c.settimeout(0.3)
        try:
            if c.recv(10) == b"":
                reset += 1
        except ConnectionResetError:
            reset += 1
        except TimeoutError:
            pass  # still queued on the new listener: it would be served
        c.close()
    new.close()
    return {"connections": connections, "reset": reset}


# Run ON the host, by the host's own python (the stand-in's wrapper, as the server itself runs):
# predict() in process and one window over HTTP (proxy, then the server's private port), in
# alternating blocks so the load of a shared machine falls on every path alike.
ON_HOST = r"""
import http.client, json, random, socket, sys, time
import torch
from moola_core.runtime.serve import Predictor

release, proxy_port, direct_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(1)
rows, price = [], 100.0
for _ in range(105):
    close = price * (1 + rng.gauss(0, 0.003))
    rows.append([price, max(price, close) * 1.001, min(price, close) * 0.999, close])
    price = close
body = json.dumps({"windows": [rows]}).encode()
torch.set_num_threads(1)
predictor = Predictor(release, "cpu")
predictor.load()
ohlc = torch.tensor([rows], dtype=torch.float64)

def lean_call(port):
    # a load generator's client: one kept-alive socket, the request's bytes built once, the
    # answer read by its Content-Length (status checked); what HTTP costs, not what a client
    # library's request building and header parsing cost on top
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
               b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    buf = bytearray()
    def call():
        sock.sendall(request)
        while (end := buf.find(b"\r\n\r\n")) < 0:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection"
            buf.extend(chunk)
        head = bytes(buf[:end]).lower()
        del buf[: end + 4]
        assert head.startswith(b"http/1.1 200 "), head[:40]
        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
        while len(buf) < length:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection"
            buf.extend(chunk)
        del buf[:length]
    return call

def stdlib_call(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    def call():
        conn.request("POST", "/v1/predict", body=body)
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
    return call

paths = {"inprocess": lambda: predictor.predict_ohlc(ohlc), "proxy": lean_call(proxy_port),
         "direct": lean_call(direct_port), "proxy_stdlib": stdlib_call(proxy_port)}
times = {name: [] for name in paths}
for call in paths.values():
    for _ in range(30):
        call()
for _ in range(10):
    for name, call in paths.items():
        for _ in range(30):
            started = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - started) * 1e3)
            # every path rests between calls, as a request/response client does: on a busy
            # machine the scheduler slows a busy loop more than a process that sleeps
            time.sleep(0.001)
print(json.dumps(times))
"""


def on_host_latency(host, proxy_port: int, direct_port: int) -> dict[str, list[float]]:
    release = Path(host.workspace) / "releases" / "v1.1"
    env = dict(os.environ, PYTHONPATH=str(release / "code"))
    proc = subprocess.run(
        [host.python, "-c", ON_HOST, str(release), str(proxy_port), str(direct_port)],
        cwd=release,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the on-host latency run failed: {proc.stderr[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def step_offsets(log: Path, skip: int, t0_wall: float) -> list[list]:
    """[step, seconds from t0 to the step's end, its own duration] of the run logged after
    line `skip` up to the traffic move: where the time to the first answer goes."""
    out = []
    for line in log.read_text().splitlines()[skip:]:
        event = json.loads(line)
        ended = dt.datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()
        out.append([event["step"], round(ended - t0_wall, 3), event.get("duration_s", 0.0)])
        if event["step"] == "serve-switch":
            break
    return out


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def private_mib(pid: int) -> float | None:
    """Memory only this process holds (private pages; a forked spare shares the rest)."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return None
    kib = sum(int(x.split()[1]) for x in lines if x.startswith(("Private_Clean", "Private_Dirty")))
    return round(kib / 1024, 1)


def versions() -> dict:
    import torch

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


# --- stand-in hosts ----------------------------------------------------------------------------


def run_standin(args) -> dict:
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch loads: as the stand-in hosts run it
    from moola_ops import deploy as engine
    from moola_ops.hosts.inventory import Inventory
    from moola_ops.serving import control as serving
    from moola_ops.transport import HostSession
    from tests.integration.conftest import make_bundle, start_hosts

    work = Path(tempfile.mkdtemp(prefix="moola-bench-serve-"))
    log = work / "deployments.jsonl"
    os.environ["MOOLA_LOG"] = str(log)
    sandbox, root = start_hosts(["bench-1"])
    result: dict = {}
    try:
        print("building bundles (default JadeModel, random weights) ...", flush=True)
        bundles = {
            v: engine.resolve_bundle(str(make_bundle(work, v, seed=i, model_config=MODEL)))
            for i, v in enumerate(("v1.0", "v1.1", "v1.2"))
        }
        (host,) = Inventory.from_sandbox(sandbox, connect_timeout_s=5).resolve("bench-1")
        opts = engine.Options(check_runs=20, check_warmup=5, check_backend="eager")
        for v in ("v1.0", "v1.1"):
            outcome = engine.deploy([host], bundles[v], opts)
            if not outcome.ok:
                raise SystemExit(f"deploy {v} failed: {outcome.outcomes}")
        with HostSession(host) as session:
            now = serving.status(session, host)
        if not now.serving or now.served_release != "v1.1":
            raise SystemExit(f"the engine did not leave v1.1 serving: {now}")
        public, live = now.proxy_port, now.live

        print("latency: in process vs through the public port ...", flush=True)
        times = on_host_latency(host, public, live["port"])
        p50 = {name: percentile(values, 50) for name, values in times.items()}
        result.update(
            inprocess_p50_ms=round(p50["inprocess"], 3),
            http_p50_ms=round(p50["proxy"], 3),
            http_p99_ms=round(percentile(times["proxy"], 99), 3),
            http_direct_p50_ms=round(p50["direct"], 3),
            http_over_inprocess_p50=round(p50["proxy"] / p50["inprocess"], 3),
            http_stdlib_client_p50_ms=round(p50["proxy_stdlib"], 3),
            http_stdlib_client_over_inprocess_p50=round(p50["proxy_stdlib"] / p50["inprocess"], 3),
        )

        print(f"throughput at {args.clients} clients, batched vs unbatched ...", flush=True)
        with HostSession(host) as session:
            # the same server as the live one, batching off; then both again without captures
            plain = serving.start_candidate(session, host, "v1.1", server_args=("--max-batch", "1"))
            plain_nocap = serving.start_candidate(
                session, host, "v1.1", server_args=("--max-batch", "1", "--no-capture")
            )
            capless = serving.start_candidate(session, host, "v1.1", server_args=("--no-capture",))
        batched = throughput(live["port"], args.clients, args.seconds)
        unbatched = throughput(plain.port, args.clients, args.seconds)
        batched_nocap = throughput(capless.port, args.clients, args.seconds)
        unbatched_nocap = throughput(plain_nocap.port, args.clients, args.seconds)
        with HostSession(host) as session:
            for started in (plain, plain_nocap, capless):
                serving.drain(session, host, started.pid)
        result.update(
            batched=batched,
            unbatched=unbatched,
            batched_without_captures=batched_nocap,
            unbatched_without_captures=unbatched_nocap,
            batched_vs_unbatched_throughput=round(
                batched["windows_per_s"] / max(unbatched["windows_per_s"], 1e-9), 2
            ),
        )

        print(f"binary vs JSON bodies at {args.clients} clients, public port ...", flush=True)
        pids = {"server": live["pid"], "proxy": proxy_pid(public)}
        result["binary"] = binary_vs_json(public, args.clients, args.seconds, pids)
        result["model_ms_per_window"] = model_cost()
        result["binary_vs_json_throughput"] = result["binary"]["ratio_1"]
        result["parse_ms_per_window"] = parse_cost()

        print("kill -9 of the live server under 4 steady clients ...", flush=True)
        with HostSession(host) as session:
            now = serving.status(session, host)
        result["spare_private_mib"] = private_mib(now.live_spare or 0)
        result["live_private_mib"] = private_mib(now.live["pid"])
        result.update(kill_live(host, public))
        print("kill -9 of the live server and its spare (the cold-start baseline) ...", flush=True)
        result.update(kill_live(host, public, with_spare=True))

        print("deploy v1.2 under a steady stream ...", flush=True)
        with Stream(public) as stream:
            t0 = time.perf_counter()
            deployed = engine.deploy([host], bundles["v1.2"], opts)
            deploy_s = time.perf_counter() - t0
            switched_at = stream.first_after(t0, "v1.2")
            time.sleep(0.3)  # a few answers after the switch
        if not deployed.ok:
            raise SystemExit(f"deploy v1.2 failed: {deployed.outcomes}")
        result.update(
            failed_during_deploy=len(stream.failures),
            deploy_longest_gap_ms=stream.longest_gap_ms(),
            deploy_s=round(deploy_s, 2),
            deploy_first_v12_answer_s=round(switched_at, 3) if switched_at else None,
            deploy_failures_sample=stream.failures[:3],
        )

        print("invoke rollback (warm standby) under a steady stream ...", flush=True)
        inventory = work / "hosts.yaml"
        write_inventory(inventory, {host.name: host}, with_python=True, serve_port=0)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        # as an installed tool starts: with its bytecode compiled (pip compiles on install; a
        # sandbox that sets PYTHONDONTWRITEBYTECODE would add ~70 ms of compiling per start)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "moola_ops", "moola_core", "tasks.py"],
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
        invoke = str(Path(sys.executable).with_name("invoke"))
        # three rollbacks, each to the warm standby (v1.1, then back to v1.2, then v1.1 again:
        # the previous live server is the standby each time); the first is plain `invoke
        # rollback` (to the previous release), as a person runs it. Median reported, all kept.
        # The client pauses ROLLBACK_STREAM_PAUSE_S after each answer: back to back, client,
        # proxy and server take one of this machine's two cores from the CLI being timed (on a
        # pod they run on the pod, the CLI elsewhere); the pause bounds the resolution.
        served_s, command_s, failures, gaps, steps_of = [], [], [], [], []
        for target in ("v1.1", "v1.2", "v1.1"):
            logged = len(log.read_text().splitlines())
            to = ["--to", target] if served_s else []
            with Stream(public, ROLLBACK_STREAM_PAUSE_S) as stream:
                t0, t0_wall = time.perf_counter(), time.time()
                proc = subprocess.run(
                    [invoke, "rollback", "--host", "bench-1", "--inventory", str(inventory), *to],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                )
                command_s.append(round(time.perf_counter() - t0, 2))
                served = stream.first_after(t0, target)
                time.sleep(0.3)
            if proc.returncode != 0 or served is None:
                raise SystemExit(f"invoke rollback failed: {proc.stdout} {proc.stderr}")
            served_s.append(round(served, 3))
            failures += stream.failures
            gaps.append(stream.longest_gap_ms())
            steps_of.append(step_offsets(log, logged, t0_wall))
        middle = sorted(range(3), key=lambda i: served_s[i])[1]
        result.update(
            rollback_steps=steps_of[middle],
            failed_during_rollback=len(failures),
            rollback_longest_gap_ms=max(gaps),
            rollback_to_served_s=served_s[middle],
            rollback_to_served_runs_s=served_s,
            rollback_stream_pause_ms=ROLLBACK_STREAM_PAUSE_S * 1e3,
            rollback_command_s=command_s[middle],
            rollback_failures_sample=failures[:3],
        )

        print("in-process rollback and a cold rollback (no standby) ...", flush=True)
        with Stream(public, ROLLBACK_STREAM_PAUSE_S) as stream:  # live v1.1, standby v1.2
            t0 = time.perf_counter()
            warm = engine.rollback([host], "v1.2", opts)
            result["rollback_inprocess_to_served_s"] = round(
                stream.first_after(t0, "v1.2") or -1, 3
            )
            t0 = time.perf_counter()
            cold = engine.rollback([host], "v1.0", opts)  # v1.0's server drained long ago
            result["rollback_cold_s"] = round(stream.first_after(t0, "v1.0") or -1, 3)
            time.sleep(0.3)
        result["failed_during_inprocess_rollbacks"] = len(stream.failures)
        if not (warm.ok and cold.ok):
            raise SystemExit(f"rollbacks failed: {warm.outcomes} {cold.outcomes}")
        with HostSession(host) as session:
            now = serving.status(session, host)
        result["standby_rss_mib"] = rss_mib((now.standby or {}).get("pid") or 0)
        result["live_rss_mib"] = rss_mib((now.live or {}).get("pid") or 0)
        steps = [json.loads(x) for x in log.read_text().splitlines()]
        result["logged_serve_steps"] = sorted(
            {e["step"] for e in steps if e["step"].startswith("serve-")}
        )
    finally:
        sandbox.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    result["reuseport"] = reuseport_experiment()
    return result


def binary_vs_json(port: int, clients: int, seconds: float, pids: dict | None = None) -> dict:
    """Windows/s with binary over JSON bodies, alternating JSON, binary, binary, JSON so a
    drift of the shared machine's load falls on both; one window per request (`ratio_1`) and
    16 (`ratio_16`). With `pids`, where the CPU went per window (server, proxy, clients)."""
    out: dict = {}
    for windows in (1, 16):
        runs: dict = {"json": [], "binary": []}
        for kind in ("json", "binary", "binary", "json"):
            runs[kind].append(
                throughput(port, clients, seconds / 2, windows, kind == "binary", pids)
            )
        rate = {k: sum(r["windows_per_s"] for r in v) / len(v) for k, v in runs.items()}
        out[f"windows_{windows}"] = {
            k: {
                "windows_per_s": round(rate[k], 1),
                "p99_ms": max(r["p99_ms"] or 0 for r in v),
                "failures": sum(r["failures"] for r in v),
                "cpu_ms_per_window": {
                    name: round(sum(r["cpu_ms_per_window"][name] for r in v) / len(v), 3)
                    for name in (v[0].get("cpu_ms_per_window") or {})
                    if all(name in r.get("cpu_ms_per_window", {}) for r in v)
                },
            }
            for k, v in runs.items()
        }
        out[f"ratio_{windows}"] = round(rate["binary"] / max(rate["json"], 1e-9), 2)
    return out


def proxy_pid(port: int) -> int:
    """The pid of the proxy on `port` (its /_proxy/healthz; the benchmark runs on the host)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/_proxy/healthz")
        return int(json.loads(conn.getresponse().read())["pid"])
    finally:
        conn.close()


def model_cost(batches: tuple[int, ...] = (1, 16, 32), reps: int = 200) -> dict:
    """CPU ms per window of `Predictor.predict_ohlc` (features, model, decode; one thread, as
    the server runs) at a few batch sizes: the floor of a window's cost whatever its body."""
    import torch

    from moola_core.bundle import safe_extract
    from moola_core.runtime.serve import Predictor
    from tests.integration.conftest import make_bundle

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="moola-bench-model-"))
    try:
        release = safe_extract(make_bundle(work, "v1.0", model_config=MODEL), work / "release")
        predictor = Predictor(release, "cpu")
        predictor.load()
        out = {}
        for size in batches:
            ohlc = torch.tensor([window(i) for i in range(size)], dtype=torch.float64)
            for _ in range(3):
                predictor.predict_ohlc(ohlc)
            count = max(5, reps // size)
            began = time.process_time()
            for _ in range(count):
                predictor.predict_ohlc(ohlc)
            out[f"batch_{size}"] = round((time.process_time() - began) / count / size * 1e3, 3)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def gil_handback(seconds: float = 2.0, batches: tuple[int, ...] = (1, 16)) -> dict:
    """Why the server spends more CPU per window than `model_cost` (no sshd needed; `--gil`).

    `Predictor.predict_ohlc` makes a few hundred small torch calls per pass, and each lets go
    of the interpreter lock. A thread that needs the lock back while another thread runs
    Python waits until that thread gives it up: at the latest after the switch interval
    (`sys.getswitchinterval()`, 5 ms). The server's front thread parsing JSON is such a
    thread. Measured here: wall ms per pass alone (the baseline), then beside one thread that
    parses a JSON window body in a loop, at the default 5 ms and at 0.5 ms."""
    import torch

    from moola_core.bundle import safe_extract
    from moola_core.runtime.serve import Predictor, parse_windows
    from tests.integration.conftest import make_bundle

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="moola-bench-gil-"))
    default = sys.getswitchinterval()
    try:
        release = safe_extract(make_bundle(work, "v1.0", model_config=MODEL), work / "release")
        predictor = Predictor(release, "cpu")
        predictor.load()
        body = json.dumps({"windows": [window(3)]}).encode()

        def passes(ohlc) -> float:
            predictor.predict_ohlc(ohlc)
            count, began = 0, time.perf_counter()
            while time.perf_counter() - began < seconds or count < 2:
                predictor.predict_ohlc(ohlc)
                count += 1
            return round((time.perf_counter() - began) / count * 1e3, 3)

        out: dict = {"switch_interval_ms": round(default * 1e3, 3)}
        for size in batches:
            ohlc = torch.tensor([window(i) for i in range(size)], dtype=torch.float64)
            row = {"alone_ms": passes(ohlc)}
            for name, interval in (("beside_json", default), ("beside_json_0_5ms", 0.0005)):
                stop = threading.Event()

                def parse_forever(stop=stop) -> None:
                    while not stop.is_set():
                        parse_windows(body, 1)

                sys.setswitchinterval(interval)
                other = threading.Thread(target=parse_forever, daemon=True)
                other.start()
                try:
                    row[f"{name}_ms"] = passes(ohlc)
                finally:
                    stop.set()
                    other.join()
                    sys.setswitchinterval(default)
            row["slowdown"] = round(row["beside_json_ms"] / row["alone_ms"], 1)
            out[f"batch_{size}"] = row
        return out
    finally:
        sys.setswitchinterval(default)
        shutil.rmtree(work, ignore_errors=True)


def parse_cost(reps: int = 2000) -> dict:
    """ms per window to parse and check a request body in this process (the server's own
    functions), JSON against binary, 1 and 16 windows per body: the part of a request that
    a binary body removes."""
    from moola_core.runtime.serve import parse_binary, parse_windows

    out = {}
    for n in (1, 16):
        grids = [window(i) for i in range(n)]
        as_json, as_binary = json.dumps({"windows": grids}).encode(), binary_body(grids)
        headers = {"content-type": BINARY_TYPE, "x-moola-windows": str(n)}
        calls = {
            "json": lambda b=as_json: parse_windows(b, 256),
            "binary": lambda b=as_binary, h=headers: parse_binary(b, h, 256),
        }
        for name, call in calls.items():
            for _ in range(50):
                call()
            began, count = time.perf_counter(), max(1, reps // n)
            for _ in range(count):
                call()
            out[f"{name}_{n}"] = round((time.perf_counter() - began) / count / n * 1e3, 4)
    return out


def kill_live(host, public: int, clients: int = 4, with_spare: bool = False) -> dict:
    """SIGKILL the live server while `clients` streams send through the public port: requests
    that failed (target 0) and seconds from the kill to the first answer after the outage (the
    answer that ends the longest silence of any stream, target <= 3 on CPU stand-ins). The
    server alone: its spare takes over. `with_spare`: its whole process group, so the
    supervisor's cold start is what serves again (the baseline, as before the spare)."""
    from moola_ops.serving import control as serving
    from moola_ops.transport import HostSession

    with HostSession(host) as session:
        before = serving.status(session, host)
    spare = before.live_spare
    streams = [Stream(public, ROLLBACK_STREAM_PAUSE_S) for _ in range(clients)]
    for stream in streams:
        stream.__enter__()
    time.sleep(0.5)  # every stream answered a few times
    t0 = time.perf_counter()
    if with_spare:
        os.killpg(os.getpgid(before.live["pid"]), 9)
    else:
        os.kill(before.live["pid"], 9)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with HostSession(host) as session:
            now = serving.status(session, host)
        if now.serving and now.live["pid"] != before.live["pid"]:
            break
        time.sleep(0.2)
    time.sleep(1.0)  # answers from the new server on every stream
    for stream in streams:
        stream.__exit__()
    again = []
    for stream in streams:
        times = [t for t, _ in stream.answers]
        after = [(b - a, b) for a, b in zip(times, times[1:], strict=False) if b > t0]
        if after:
            again.append(max(after)[1] - t0)
    failures = [f for s in streams for f in s.failures]
    key = "_with_spare" if with_spare else ""
    return {
        f"failed_during_kill{key}": len(failures),
        f"served_again_after_kill{key}_s": round(max(again), 3) if again else None,
        f"kill{key}_failures_sample": failures[:3],
        f"kill{key}_by": "the supervisor's cold start"
        if with_spare
        else ("the spare" if now.live["pid"] == spare else f"a new server (spare {spare})"),
    }


# --- local (GPU box) ---------------------------------------------------------------------------


def run_local(args) -> dict:
    from moola_core.bundle import safe_extract
    from tests.integration.conftest import make_bundle

    work = Path(tempfile.mkdtemp(prefix="moola-bench-local-"))
    procs = []
    try:
        archive = make_bundle(work, "v1.0", model_config=MODEL)
        release = safe_extract(archive, work / "ws" / "releases" / "v1.0")
        result = {"device_flag": args.device, "clients": args.clients}
        for name, extra in (("batched", []), ("unbatched", ["--max-batch", "1"])):
            state = work / f"{name}.json"
            # the GPU box's own thread count: no one-thread cap as on a shared stand-in host
            proc, port = _start_server(
                release,
                release / "code",
                state,
                ["--no-capture", *extra],
                device=args.device,
                one_thread=False,
            )
            procs.append(proc)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/healthz")
            result["device"] = json.loads(conn.getresponse().read())["device"]
            conn.close()
            result[name] = throughput(port, args.clients, args.seconds)
            if name == "batched":  # the same server, binary bodies (docs/serving.md)
                result["batched_binary"] = throughput(port, args.clients, args.seconds, binary=True)
            proc.terminate()
            proc.wait(timeout=60)
        result["windows_per_s"] = result["batched"]["windows_per_s"]
        result["p99_ms"] = result["batched"]["p99_ms"]
        result["binary_windows_per_s"] = result["batched_binary"]["windows_per_s"]
        result["binary_p99_ms"] = result["batched_binary"]["p99_ms"]
        result["binary_vs_json_throughput"] = round(
            result["binary_windows_per_s"] / max(result["windows_per_s"], 1e-9), 2
        )
        result["batched_vs_unbatched_throughput"] = round(
            result["batched"]["windows_per_s"] / max(result["unbatched"]["windows_per_s"], 1e-9), 2
        )
        return result
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def _start_server(
    release: Path,
    code: Path,
    state: Path,
    extra: list[str],
    device: str = "cpu",
    one_thread: bool = True,
):
    """A model server for `release` running the server code in `code` (PYTHONPATH), by
    default on the CPU with one OpenMP thread as on a stand-in host; (process, port) once
    ready."""
    env = dict(os.environ, PYTHONPATH=str(code))
    if one_thread:
        env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moola_core.runtime", "serve", "--release", str(release)]
        + ["--port", "0", "--device", device, "--state-file", str(state), *extra],
        cwd=release,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    record: dict = {}
    while time.monotonic() < deadline:
        record = json.loads(state.read_text()) if state.exists() else {}
        if record.get("ready") or record.get("failed") or proc.poll() is not None:
            break
        time.sleep(0.05)
    if not record.get("ready"):
        proc.kill()
        raise SystemExit(f"a server did not get ready: {record}")
    return proc, record["port"]


def lone_latency(ports: dict[str, int], rounds: int = 10, block: int = 30) -> dict[str, float]:
    """p50 ms of one window, one client, alternating blocks over the servers in `ports`."""
    body = json.dumps({"windows": [window(11)]}).encode()
    clients = {name: Client(port) for name, port in ports.items()}
    times: dict[str, list[float]] = {name: [] for name in ports}
    for client in clients.values():
        for _ in range(block):
            client.post(body)
    for _ in range(rounds):
        for name, client in clients.items():
            for _ in range(block):
                began = time.perf_counter()
                client.post(body)
                times[name].append((time.perf_counter() - began) * 1e3)
                time.sleep(0.001)
    for client in clients.values():
        client.close()
    return {name: round(percentile(values, 50), 3) for name, values in times.items()}


# the model server's own code (under moola_core/); the rest of the runtime (features, model) is
# the same on both sides. A file missing at the ref (serve_http.py before the one-thread front,
# or after the host agent took it as agent/http.py) is removed.
SERVER_FILES = ("runtime/serve.py", "runtime/serve_http.py", "agent/http.py")


def _source_at(ref: str, path: str) -> str | None:
    shown = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:{path}"], capture_output=True, text=True
    )
    return shown.stdout if shown.returncode == 0 else None


def run_server_ab(args) -> dict:
    """This checkout's server against `args.server_ab`'s (its SERVER_FILES), same release,
    same machine, alternating: one-window latency straight to each server, and windows/s at
    `args.clients` clients with batching on and off (captures off, or on with
    `args.ab_captures`). Both run the
    same release; only the server code on PYTHONPATH differs."""
    from moola_core.bundle import safe_extract
    from tests.integration.conftest import make_bundle

    ref = args.server_ab
    old = {name: _source_at(ref, f"moola_core/{name}") for name in SERVER_FILES}
    if old["runtime/serve.py"] is None:
        raise SystemExit(f"cannot read moola_core/runtime/serve.py at {ref}")
    work = Path(tempfile.mkdtemp(prefix="moola-bench-ab-"))
    procs = []
    try:
        release = safe_extract(make_bundle(work, "v1.0", model_config=MODEL), work / "rel" / "v1.0")
        codes = {"head": release / "code", "base": work / "base-code"}
        shutil.copytree(release / "code", codes["base"])
        for name, text in old.items():  # the ref's server files; one it lacks is removed
            path = codes["base"] / "moola_core" / name
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(text)
        ports: dict[str, dict[str, int]] = {"batched": {}, "unbatched": {}}
        for mode, extra in (("batched", []), ("unbatched", ["--max-batch", "1"])):
            for name, code in codes.items():
                # captures off unless asked: a ref without the unwritten-captures gauge would
                # leave its backlog to slow the next run (the clock waits on the gauge)
                capture = ["--capture-dir", str(work / f"captures-{mode}-{name}")]
                args_of = [*extra, *(capture if args.ab_captures else ["--no-capture"])]
                proc, port = _start_server(release, code, work / f"{mode}-{name}.json", args_of)
                procs.append(proc)
                ports[mode][name] = port
        result: dict = {"ref": ref, "clients": args.clients, "seconds": args.seconds}
        result["captures"] = bool(args.ab_captures)
        result["lone_p50_ms"] = lone_latency(ports["batched"])
        rates: dict = {mode: {"base": [], "head": []} for mode in ports}
        for order in (("base", "head"), ("head", "base")):
            for mode in ports:
                for name in order:
                    run = throughput(ports[mode][name], args.clients, args.seconds)
                    rates[mode][name].append(run["windows_per_s"])
        result["windows_per_s"] = rates
        mean = {m: {n: sum(v) / len(v) for n, v in by.items()} for m, by in rates.items()}
        result["batched_vs_unbatched"] = {
            n: round(mean["batched"][n] / max(mean["unbatched"][n], 1e-9), 2) for n in codes
        }
        return result
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


def _cpu_row(r: dict, kind: str) -> str:
    cpu = r["binary"]["windows_1"][kind].get("cpu_ms_per_window") or {}
    return ", ".join(f"{cpu.get(name)}" for name in ("server", "proxy", "client"))


def write_markdown(path: Path, result: dict, meta: dict) -> None:
    r = result
    lines = [
        "# Serving benchmark (stand-in host)",
        "",
        f"`python benchmarks/serving.py` — commit {meta['commit']}, {meta['utc']}, Python "
        f"{meta['python']}, torch {meta['torch']}, {meta['machine']}, load average "
        f"{meta['load_avg']} at the start and {meta.get('load_avg_end')} at the end (the machine "
        "is shared: timings are noisy). The "
        "default JadeModel (random weights); the stand-in host's server runs one OpenMP thread.",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| p50 one window in process (`Predictor.predict_ohlc`, features + model) | {r['inprocess_p50_ms']} ms | |",
        f"| p50 / p99 one window through the public port (proxy -> server, keep-alive; a lean client: one socket, request bytes built once) | {r['http_p50_ms']} / {r['http_p99_ms']} ms | |",
        f"| p50 straight to the server's private port (same client) | {r['http_direct_p50_ms']} ms | |",
        f"| **http_over_inprocess_p50** | **{r['http_over_inprocess_p50']}** | <= 1.5 |",
        f"| same path with Python's `http.client` as the client: p50, over in process | {r['http_stdlib_client_p50_ms']} ms, {r['http_stdlib_client_over_inprocess_p50']} | |",
        f"| windows/s at {r['batched']['clients']} clients, dynamic batching (captures on) | {r['batched']['windows_per_s']} (p99 {r['batched']['p99_ms']} ms) | |",
        f"| windows/s, captures off: batching / no batching | {r['batched_without_captures']['windows_per_s']} / {r['unbatched_without_captures']['windows_per_s']} | |",
        f"| windows/s, batching off (`--max-batch 1`, captures on) | {r['unbatched']['windows_per_s']} (p99 {r['unbatched']['p99_ms']} ms) | |",
        f"| **batched_vs_unbatched_throughput** | **{r['batched_vs_unbatched_throughput']}** | >= 3 |",
        f"| windows/s at {r['batched']['clients']} clients through the public port, JSON / binary bodies, 1 window per request | {r['binary']['windows_1']['json']['windows_per_s']} / {r['binary']['windows_1']['binary']['windows_per_s']} | |",
        f"| **binary_vs_json_throughput** (1 window per request) | **{r['binary_vs_json_throughput']}** | >= 3 |",
        f"| same, 16 windows per request: JSON / binary windows/s, ratio | {r['binary']['windows_16']['json']['windows_per_s']} / {r['binary']['windows_16']['binary']['windows_per_s']}, {r['binary']['ratio_16']} | |",
        f"| CPU ms per window at 1 window per request, JSON / binary: server, proxy, clients | {_cpu_row(r, 'json')} / {_cpu_row(r, 'binary')} | |",
        f"| CPU ms per window of the model alone in process (features, forward, decode), batch 1 / 16 / 32 | {' / '.join(str(v) for v in r['model_ms_per_window'].values())} | |",
        f"| parsing and checking a body in process, ms per window, JSON / binary: 1 window, 16 windows | {r['parse_ms_per_window']['json_1']} / {r['parse_ms_per_window']['binary_1']}, {r['parse_ms_per_window']['json_16']} / {r['parse_ms_per_window']['binary_16']} | |",
        f"| **failed_during_kill** (kill -9 of the live server, 4 steady clients) | **{r['failed_during_kill']}** | 0 |",
        f"| **served_again_after_kill_s** (kill -> first answer after the outage, slowest client; served again by {r['kill_by']}) | **{r['served_again_after_kill_s']}** | <= 3 |",
        f"| baseline: the same with the spare killed too (served again by the supervisor's cold start), failed requests | {r['served_again_after_kill_with_spare_s']} s, {r['failed_during_kill_with_spare']} | |",
        f"| memory only the spare holds / only the live server holds (private pages) | {r['spare_private_mib']} / {r['live_private_mib']} MiB | |",
        f"| **failed_during_deploy** (longest gap between answers) | **{r['failed_during_deploy']}** ({r['deploy_longest_gap_ms']} ms) | 0 |",
        f"| **failed_during_rollback** (longest gap) | **{r['failed_during_rollback']}** ({r['rollback_longest_gap_ms']} ms) | 0 |",
        f"| **rollback_to_served_s**: `invoke rollback` started -> first answer by the previous release (warm standby); median of three (all three); the client pauses {r['rollback_stream_pause_ms']:g} ms after each answer | **{r['rollback_to_served_s']}** ({', '.join(str(x) for x in r['rollback_to_served_runs_s'])} s) | <= 1.0 |",
        f"| same, `engine.rollback` in process (no CLI start-up) | {r['rollback_inprocess_to_served_s']} s | |",
        f"| baseline: rollback to a release without a standby (start + readiness + HTTP check) | {r['rollback_cold_s']} s | |",
        f"| failed requests during those two rollbacks | {r['failed_during_inprocess_rollbacks']} | 0 |",
        f"| memory of the warm standby (RSS) / of the live server | {r['standby_rss_mib']} / {r['live_rss_mib']} MiB | |",
        f"| SO_REUSEPORT hand-over: queued connections reset when the old listener closed | {r['reuseport']['reset']}/{r['reuseport']['connections']} | (why a proxy) |",
        "",
        f"Deploy under the stream took {r['deploy_s']} s end to end; the first answer by the "
        f"new release came {r['deploy_first_v12_answer_s']} s after it started. Steps logged: "
        f"{', '.join(r['logged_serve_steps'])}.",
        "",
        "Where `invoke rollback`'s time to the first answer went (each logged step: seconds "
        "from the command's start to the step's end, and its own duration): "
        + ", ".join(f"{name} {end} s ({dur} s)" for name, end, dur in r["rollback_steps"])
        + ". Before the first step: the CLI's start-up (Python, Invoke, the inventory).",
        "",
        "Local mode for a GPU box (no sshd, server on 127.0.0.1 of that machine, 64 clients;",
        "windows/s and p99 for JSON and binary bodies):",
        "`python benchmarks/serving.py --local --clients 64 --seconds 10 --device cuda`.",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--local", action="store_true", help="no sshd: a server on this machine")
    parser.add_argument("--clients", type=int, default=None, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=None, help="per throughput run")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "serving.md"))
    parser.add_argument(
        "--server-ab",
        metavar="GITREF",
        help="no sshd: this checkout's server against GITREF's, same release, same run",
    )
    parser.add_argument(
        "--gil",
        action="store_true",
        help="no sshd: how a pass of the model slows beside a thread parsing JSON (the lock)",
    )
    parser.add_argument(
        "--ab-captures",
        action="store_true",
        help="with --server-ab: captures on (GITREF must have the unwritten-captures gauge)",
    )
    args = parser.parse_args()
    meta = versions()
    meta["utc"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if args.gil:
        result = gil_handback(args.seconds or 2.0)
    elif args.server_ab:
        args.clients = args.clients or 32
        args.seconds = args.seconds or 6.0
        result = run_server_ab(args)
    elif args.local:
        args.clients = args.clients or 64
        args.seconds = args.seconds or 10.0
        result = run_local(args)
    else:
        args.clients = args.clients or 32
        args.seconds = args.seconds or 6.0
        result = run_standin(args)
        meta["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        write_markdown(Path(args.out), result, meta)
        print(f"wrote {args.out}")
    print(json.dumps({**result, **meta}, default=str))


if __name__ == "__main__":
    main()

"""The public proxy's own cost per request, this checkout's against GITREF's, in one run.

    python benchmarks/proxy.py [--ref main] [--requests 300] [--rounds 10] [--auth]
    python benchmarks/proxy.py --clients 32 [--seconds 2] [--rounds 6] [--ref main]

An upstream that answers at once (a fixed 200 with a small JSON body, one thread per
connection) stands in for the model server, so what is timed is the proxy: a lean client (one
kept-alive socket, the request's bytes built once, the answer read by its Content-Length) sends
one request after another through each proxy, the two proxies alternating in blocks of
`--requests` for `--rounds` rounds so the load of a shared machine falls on both alike. With
`--auth` this checkout's proxy runs with `--auth always` and the client sends the token (the
GITREF side runs as it can). Reported: p50 / p99 in microseconds per side, and head/base
ratios.

With `--clients N` (N > 1) it measures throughput instead: a load process keeps N kept-alive
connections busy (closed loop: each sends its next request when its answer arrived) for
`--seconds` per block, against an upstream process that answers at once; both are one thread
over a selector, so the proxy is what saturates. Reported: requests/s and p50 / p99 per side,
and head/base ratios. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "moola_core" / "agent" / "__main__.py"
TOKEN = "bench-token-" + "0" * 32
BODY = json.dumps({"windows": [[[100.0, 100.5, 99.5, 100.2]] * 105]}).encode()
ANSWER = b'{"release":"stub","predictions":[]}'


def upstream() -> int:
    """A server answering every request at once over keep-alive; returns its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    reply = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(ANSWER)).encode()
        + b"\r\n\r\n"
        + ANSWER
    )

    def serve(conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                head, sep, rest = buf.partition(b"\r\n\r\n")
                if not sep:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                    continue
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(rest) < length:
                    rest += conn.recv(65536)
                buf = rest[length:]
                conn.sendall(reply)

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def _answers(buf: bytes) -> tuple[int, bytes]:
    """Whole answers at the front of `buf`: (how many, the bytes after them)."""
    count = 0
    while True:
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if not sep:
            return count, buf
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        if len(rest) < length:
            return count, buf
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"the proxy answered {head[:60]!r}")
        count, buf = count + 1, rest[length:]


def evented_upstream() -> None:
    """`--upstream`: answer every request at once, one thread over a selector (prints its port)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    reply = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(ANSWER)).encode()
        + b"\r\n\r\n"
        + ANSWER
    )
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    print(listener.getsockname()[1], flush=True)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                conn, _ = listener.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(conn, selectors.EVENT_READ, [b""])
                continue
            conn, state = key.fileobj, key.data
            chunk = conn.recv(65536)
            if not chunk:
                sel.unregister(conn)
                conn.close()
                continue
            buf = state[0] + chunk
            while True:
                head, sep, rest = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if not sep or len(rest) < length:
                    break
                buf = rest[length:]
                conn.sendall(reply)
            state[0] = buf


def load(port: int, clients: int, seconds: float, token: str | None) -> None:
    """`--load`: keep `clients` connections busy for `seconds`; print one JSON line."""
    request = Client.request_bytes(token)
    sel = selectors.DefaultSelector()
    for _ in range(clients):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        sel.register(sock, selectors.EVENT_READ, [b"", time.perf_counter()])
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for key, _ in sel.select(0.1):
            state = key.data
            chunk = key.fileobj.recv(65536)
            if not chunk:
                raise SystemExit("the proxy closed a connection")
            done, state[0] = _answers(state[0] + chunk)
            if done:
                now = time.perf_counter()
                times.append(now - state[1])
                state[1] = now
                key.fileobj.sendall(request)
    times.sort()
    p50, p99 = (times[int(q * (len(times) - 1))] * 1e6 if times else 0.0 for q in (0.5, 0.99))
    print(json.dumps({"done": len(times), "p50_us": round(p50, 1), "p99_us": round(p99, 1)}))


def proxy_argv(code: Path) -> list[str]:
    """How to run the proxy of a checkout: the agent's `proxy` action, or (a ref from before
    the host agent) the lone serve_proxy.py file."""
    if code.name == "__main__.py":
        return [sys.executable, "-S", str(code), "proxy"]
    return [sys.executable, str(code)]


def base_proxy(ref: str, work: Path) -> Path:
    """The proxy of `ref`, extracted under `work`: its agent package, or its lone file."""
    listed = subprocess.run(
        ["git", "ls-tree", "--name-only", ref, "moola_core/agent/__main__.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if listed:
        tree = work / "base"
        tree.mkdir()
        archive = subprocess.run(
            ["git", "archive", ref, "moola_core/__init__.py", "moola_core/agent"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        return tree / "moola_core" / "agent" / "__main__.py"
    code = work / "base_proxy.py"
    code.write_text(
        subprocess.run(
            ["git", "show", f"{ref}:moola_core/runtime/serve_proxy.py"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    return code


def start_proxy(code: Path, ws: Path, extra: list[str]) -> tuple[subprocess.Popen, int]:
    record = ws / "serve" / "proxy.json"
    proc = subprocess.Popen(
        [*proxy_argv(code), "--workspace", str(ws), "--port", "0", *extra],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not record.is_file():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"the proxy {code} did not start")
        time.sleep(0.02)
    return proc, json.loads(record.read_text())["port"]


class Client:
    def __init__(self, port: int, token: str | None):
        self.port, self.token = port, token
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = self.request_bytes(token)

    @staticmethod
    def request_bytes(token: str | None) -> bytes:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        return (
            f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}"
            f"Content-Length: {len(BODY)}\r\n\r\n"
        ).encode() + BODY

    def one(self) -> float:
        started = time.perf_counter()
        self.sock.sendall(self.request)
        buf = b""
        while True:
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(rest) < length:
                    rest += self.sock.recv(65536)
                break
            buf += self.sock.recv(65536)
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"the proxy answered {head[:60]!r}")
        return time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ref", default="main")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--auth", action="store_true")
    parser.add_argument("--clients", type=int, default=1, help="> 1: throughput at N clients")
    parser.add_argument("--seconds", type=float, default=2.0, help="one block, with --clients")
    parser.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--load", nargs=3, help=argparse.SUPPRESS)  # PORT CLIENTS SECONDS
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        return evented_upstream()
    if args.load:
        return load(int(args.load[0]), int(args.load[1]), float(args.load[2]), args.token)
    work = Path(tempfile.mkdtemp(prefix="moola-bench-proxy-"))
    base_code = base_proxy(args.ref, work)
    procs, clients = [], {}
    if args.clients > 1:
        up = subprocess.Popen(
            [sys.executable, __file__, "--upstream"], stdout=subprocess.PIPE, text=True
        )
        procs.append(up)
        port = int(up.stdout.readline())
    else:
        port = upstream()
    try:
        for side, code in (("head", AGENT), ("base", base_code)):
            ws = work / side
            (ws / "serve").mkdir(parents=True)
            live = {"release": "stub", "port": port, "pid": None}
            (ws / "serve" / "state.json").write_text(json.dumps({"v": 1, "live": live}))
            (ws / "serve" / "token").write_text(TOKEN)
            extra = ["--auth", "always"] if args.auth and side == "head" else []
            proc, proxy_port = start_proxy(code, ws, extra)
            procs.append(proc)
            clients[side] = Client(proxy_port, TOKEN if extra else None)
        if args.clients > 1:
            return throughput(args, clients, procs)
        times: dict[str, list[float]] = {side: [] for side in clients}
        for side in clients:  # warm-up
            for _ in range(50):
                clients[side].one()
        for r in range(args.rounds):
            order = list(clients) if r % 2 == 0 else list(reversed(clients))
            for side in order:
                times[side] += [clients[side].one() for _ in range(args.requests)]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
    result: dict = {"ref": args.ref, "auth": args.auth, "requests": len(times["head"])}
    for side, values in times.items():
        result[f"{side}_p50_us"] = round(percentile(values, 50) * 1e6, 1)
        result[f"{side}_p99_us"] = round(percentile(values, 99) * 1e6, 1)
    result["p50_head_over_base"] = round(result["head_p50_us"] / result["base_p50_us"], 3)
    result["p99_head_over_base"] = round(result["head_p99_us"] / result["base_p99_us"], 3)
    report(result)


def throughput(args, clients: dict, procs: list) -> None:
    """Requests/s at `args.clients` connections, the sides alternating block by block (p50 and
    p99: the median block's)."""
    for client in clients.values():  # the latency clients' sockets stay idle
        client.one()
    blocks: dict[str, list[dict]] = {side: [] for side in clients}
    for r in range(args.rounds):
        order = list(clients) if r % 2 == 0 else list(reversed(clients))
        for side in order:
            token = clients[side].token
            out = subprocess.run(
                [sys.executable, __file__, "--load", str(clients[side].port)]
                + [str(args.clients), str(args.seconds)]
                + (["--token", token] if token else []),
                check=True,
                capture_output=True,
                text=True,
            )
            blocks[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for proc in procs:  # before the figures are reported: nothing left running
        proc.terminate()
        proc.wait(timeout=30)
    result: dict = {"ref": args.ref, "auth": args.auth, "clients": args.clients}
    for side, got in blocks.items():
        result[f"{side}_rps"] = round(sum(b["done"] for b in got) / (args.seconds * len(got)), 1)
        result[f"{side}_p50_us"] = sorted(b["p50_us"] for b in got)[len(got) // 2]
        result[f"{side}_p99_us"] = sorted(b["p99_us"] for b in got)[len(got) // 2]
    result["rps_head_over_base"] = round(result["head_rps"] / result["base_rps"], 3)
    result["p50_head_over_base"] = round(result["head_p50_us"] / result["base_p50_us"], 3)
    result["p99_head_over_base"] = round(result["head_p99_us"] / result["base_p99_us"], 3)
    report(result)


def report(result: dict) -> None:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    result.update(
        commit=head.stdout.strip(),
        python=platform.python_version(),
        machine=f"{platform.machine()} {platform.node()}",
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""The demo's steady request stream through each host's public port (invoke demo counts what
failed during its deploy and rollback)."""

from __future__ import annotations

import time
from typing import Any

from moola_ops.hosts.inventory import Host
from moola_ops.serving.control import ServeError, bearer, client_token, status


class TrafficStream:
    """One client per host sending real requests one after another through the host's public
    port (stand-in hosts: their ports are on this machine), with the host's token when it has
    one, counting what failed."""

    def __init__(self, ports: dict[str, int], tokens: dict[str, str] | None = None):
        import threading

        self.ports = ports
        self.headers = {name: bearer((tokens or {}).get(name)) for name in ports}
        self.stopping = threading.Event()
        self.answered: dict[str, dict[str, int]] = {name: {} for name in ports}
        self.failed: dict[str, list[str]] = {name: [] for name in ports}
        self.gaps: dict[str, float] = {name: 0.0 for name in ports}
        self.threads = [
            threading.Thread(target=self._run, args=(name, port), daemon=True)
            for name, port in ports.items()
        ]

    def _run(self, name: str, port: int) -> None:
        import http.client
        import json

        from moola_core.agent.control import synthetic_window

        body = json.dumps({"windows": [synthetic_window(7)]}).encode()
        conn, last = http.client.HTTPConnection("127.0.0.1", port, timeout=30), time.monotonic()
        while not self.stopping.is_set():
            try:
                conn.request("POST", "/v1/predict", body=body, headers=self.headers[name])
                response = conn.getresponse()
                answer = json.loads(response.read())
                if response.status == 200:
                    counts = self.answered[name]
                    counts[answer["release"]] = counts.get(answer["release"], 0) + 1
                else:
                    self.failed[name].append(f"{response.status}: {answer.get('error')}")
            except (OSError, ValueError, http.client.HTTPException) as exc:
                self.failed[name].append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            now = time.monotonic()
            self.gaps[name], last = max(self.gaps[name], now - last), now
        conn.close()

    def start(self) -> TrafficStream:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Stop the clients; {requests, failed, failures (a few), longest_gap_ms, answered}."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)
        answered = sum(sum(c.values()) for c in self.answered.values())
        failed = sum(len(f) for f in self.failed.values())
        return {
            "requests": answered + failed,
            "failed": failed,
            "failures": [f for fs in self.failed.values() for f in fs][:3],
            "longest_gap_ms": round(max(self.gaps.values(), default=0.0) * 1e3, 1),
            "answered": self.answered,
        }


def demo_traffic(hosts: list[Host]) -> TrafficStream:
    """Start real requests to every (stand-in) host's public port; `.stop()` says how many
    failed. `invoke demo` runs it through its deploy and rollback (zero is the bar)."""
    from moola_ops.transport import HostSession

    ports, tokens = {}, {}
    for host in hosts:
        with HostSession(host) as session:
            now = status(session, host)
            if now.proxy_port:
                tokens[host.name] = client_token(session, host)["token"]
        if not now.proxy_port:
            raise ServeError(f"{host.name} does not serve: {now.problem()}")
        ports[host.name] = int(now.proxy_port)
    return TrafficStream(ports, tokens).start()

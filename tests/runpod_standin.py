"""A local stand-in of RunPod's GraphQL API: the test double for everything that asks RunPod.

RunPod's API cannot be reached from tests, so this small HTTP server on 127.0.0.1 speaks its
documented wire format (docs.runpod.io, GraphQL "Manage Pods"): `POST /graphql` with a JSON
body `{"query": ...}`, the key as `Authorization: Bearer KEY` (or the documented `?api_key=`),
answers `{"data": ...}` or `{"errors": [{"message": ...}]}`. It parses the query's selection
set and answers exactly the fields asked for, from pod records shaped like RunPod's schema
(`runtime.ports[]` with `ip`, `isIpPublic`, `privatePort`, `publicPort`, `type`); a field it
does not know is an error, as on the real API, so the client cannot ask for a field RunPod lacks
without a test noticing.

Operations: `myself { pods }`, `pod(input: {podId})`, `podStop`, `podResume`, `podTerminate`.
Scenario hooks: `set_ssh(pod, port=...)` (a restart on a new port), `stop()`, `drop_tcp22()`,
`fail(status, times, retry_after)` (429 / 5xx), `hang(times)` (no answer until the client gives
up; released at teardown, so nothing depends on timing), `trickle(part, times)` (the status line
or the body one byte at a time, for as long as the client listens), `answer(status, message)`
(an error of the test's own wording, e.g. one that quotes the key).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# --- a minimal GraphQL reader: operation, root field, inline arguments, selection sets ----------

_TOKEN = re.compile(
    r'\s*(?:(\.\.\.)|([{}():,!$\[\]=@])|("(?:[^"\\]|\\.)*")|([A-Za-z_][\w]*)|(-?\d+(?:\.\d+)?))'
)


def _tokens(text: str) -> list[str]:
    text = re.sub(r"#[^\n]*", "", text)
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"Syntax Error: Unexpected character {text[pos]!r}")
        out.append(next(g for g in m.groups() if g is not None))
        pos = m.end()
    return out


@dataclass
class Field:
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    selection: list[Field] | None = None


class _Parser:
    def __init__(self, text: str):
        self.toks, self.i = _tokens(text), 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise ValueError(f"Syntax Error: Expected {expected or 'a token'}, found {tok}")
        self.i += 1
        return tok

    def document(self) -> tuple[str, list[Field]]:
        kind = "query"
        if self.peek() in ("query", "mutation"):
            kind = self.take()
            if self.peek() not in ("{", "("):
                self.take()  # operation name
            if self.peek() == "(":  # variable definitions: skipped (Moola inlines literals)
                depth = 0
                while True:
                    tok = self.take()
                    depth += tok == "("
                    depth -= tok == ")"
                    if depth == 0:
                        break
        return kind, self.selection()

    def selection(self) -> list[Field]:
        self.take("{")
        fields = []
        while self.peek() != "}":
            name = self.take()
            args = self.arguments() if self.peek() == "(" else {}
            sub = self.selection() if self.peek() == "{" else None
            fields.append(Field(name, args, sub))
        self.take("}")
        return fields

    def arguments(self) -> dict[str, Any]:
        self.take("(")
        out = {}
        while self.peek() != ")":
            key = self.take()
            self.take(":")
            out[key] = self.value()
            if self.peek() == ",":
                self.take()
        self.take(")")
        return out

    def value(self) -> Any:
        tok = self.take()
        if tok == "{":
            out = {}
            while self.peek() != "}":
                key = self.take()
                self.take(":")
                out[key] = self.value()
                if self.peek() == ",":
                    self.take()
            self.take("}")
            return out
        if tok == "[":
            items = []
            while self.peek() != "]":
                items.append(self.value())
                if self.peek() == ",":
                    self.take()
            self.take("]")
            return items
        if tok.startswith('"'):
            return json.loads(tok)
        if re.fullmatch(r"-?\d+", tok):
            return int(tok)
        if re.fullmatch(r"-?\d+\.\d+", tok):
            return float(tok)
        return {"true": True, "false": False, "null": None}.get(tok, tok)


class GraphQLError(Exception):
    pass


def project(value: Any, selection: list[Field] | None, type_name: str) -> Any:
    """`value` cut to the selection set; an unknown field is RunPod's validation error."""
    if selection is None or value is None:
        return value
    if isinstance(value, list):
        return [project(v, selection, type_name) for v in value]
    out = {}
    for f in selection:
        if f.name not in value:
            raise GraphQLError(f'Cannot query field "{f.name}" on type "{type_name}".')
        out[f.name] = project(value[f.name], f.selection, _TYPES.get(f.name, f.name))
    return out


_TYPES = {
    "runtime": "PodRuntime",
    "ports": "PodRuntimePorts",
    "machine": "PodMachineInfo",
    "gpus": "PodRuntimeGpus",
    "container": "PodRuntimeContainer",
}


# --- pods ---------------------------------------------------------------------------------------


def pod_record(
    pod_id: str,
    name: str,
    *,
    ip: str = "127.0.0.1",
    ssh_port: int | None = 22022,
    status: str = "RUNNING",
    public: bool = True,
    tcp22: bool = True,
    gpu: str = "H100 80GB HBM3",
    gpu_count: int = 1,
    cost: float = 2.99,
    uptime: int = 3931,
) -> dict[str, Any]:
    """One pod as RunPod's GraphQL schema shapes it (the fields of the SDK's pod query)."""
    ports = [
        {
            "ip": "100.65.0.101",
            "isIpPublic": False,
            "privatePort": 8888,
            "publicPort": 60141,
            "type": "http",
        },
    ]
    if ssh_port is not None:
        ports.append(
            {
                "ip": ip if public else "100.65.0.101",
                "isIpPublic": public,
                "privatePort": 22,
                "publicPort": ssh_port,
                "type": "tcp" if tcp22 else "http",
            }
        )
    running = status == "RUNNING"
    return {
        "id": pod_id,
        "name": name,
        "desiredStatus": status,
        "lastStatusChange": "Rented by User: Fri Nov 27 2026 10:00:00 GMT+0000",
        "imageName": "runpod/pytorch:2.8.0-py3.11-cuda12.8.1",
        "costPerHr": cost,
        "gpuCount": gpu_count,
        "containerDiskInGb": 50,
        "volumeInGb": 100,
        "volumeMountPath": "/workspace",
        "memoryInGb": 125,
        "vcpuCount": 16,
        "podType": "RESERVED",
        "machineId": "hpvdausak8xb",
        "uptimeSeconds": uptime if running else 0,
        "machine": {"gpuDisplayName": gpu, "podHostId": f"{pod_id}-64410065"},
        "runtime": (
            {
                "uptimeInSeconds": uptime,
                "ports": ports,
                "gpus": [{"id": "GPU-e0488b7e", "gpuUtilPercent": 0, "memoryUtilPercent": 0}],
                "container": {"cpuPercent": 0, "memoryPercent": 1},
            }
            if running
            else None
        ),
    }


class StandInRunPod:
    """The stand-in API server; `url` is what RUNPOD_API_BASE_URL points at."""

    def __init__(self, key: str):
        self.key = key
        self.pods: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []  # every request: query, auth header, path
        self._faults: list[tuple[str, Any, float | None]] = []
        self.trickling = threading.Event()  # a trickled answer has begun
        self._release = threading.Event()
        self._lock = threading.Lock()
        self.resume_port: dict[str, int] = {}  # port a resumed pod gets (a resume moves it)
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    # -- scenario hooks --------------------------------------------------------------------

    def add(self, pod_id: str, name: str = "", **kw) -> dict[str, Any]:
        self.pods[pod_id] = pod_record(pod_id, name or f"pod-{pod_id}", **kw)
        return self.pods[pod_id]

    def set_ssh(self, pod_id: str, port: int, ip: str = "127.0.0.1") -> None:
        """The pod came back (a restart) with port 22 mapped to `port`."""
        record = self.pods[pod_id]
        self.pods[pod_id] = pod_record(
            pod_id,
            record["name"],
            ip=ip,
            ssh_port=port,
            gpu=record["machine"]["gpuDisplayName"],
            gpu_count=record["gpuCount"],
            cost=record["costPerHr"],
            uptime=12,
        )

    def stop(self, pod_id: str) -> None:
        self.pods[pod_id]["desiredStatus"] = "EXITED"
        self.pods[pod_id]["runtime"] = None

    def drop_tcp22(self, pod_id: str) -> None:
        ports = self.pods[pod_id]["runtime"]["ports"]
        self.pods[pod_id]["runtime"]["ports"] = [p for p in ports if p["privatePort"] != 22]

    def fail(self, status: int, times: int = 1, retry_after: float | None = None) -> None:
        """The next `times` requests answer HTTP `status` (429, 500, 502, 503, ...)."""
        self._faults += [("status", status, retry_after)] * times

    def hang(self, times: int = 1) -> None:
        """The next `times` requests get no answer (until the client gives up or teardown)."""
        self._faults += [("hang", 0, None)] * times

    def trickle(self, part: str = "body", times: int = 1) -> None:
        """The next `times` requests are answered one byte every 0.1 s, for as long as the
        client listens (until teardown): `part` "head" dribbles the status line, "body" sends
        the headers and then dribbles a body that never ends."""
        assert part in ("head", "body")
        self._faults += [("trickle", part, None)] * times

    def answer(self, status: int, message: str, times: int = 1) -> None:
        """The next `times` requests get HTTP `status` with `{"errors": [{"message": ...}]}`."""
        self._faults += [("answer", (status, message), None)] * times

    def garbage(self, times: int = 1) -> None:
        """The next `times` requests answer 502 with an HTML page (a proxy in front failing)."""
        self._faults += [("html", 502, None)] * times

    # -- the server ------------------------------------------------------------------------

    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, payload: Any, headers: dict | None = None):
                body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                ctype = "text/html" if isinstance(payload, bytes) else "application/json"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _trickle(self, part: str) -> None:
                head = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100000
                if part == "body":
                    self.wfile.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100000\r\n\r\n"
                    )
                    head = b'{"data": {"myself": {"pods": [' + b" " * 100000
                api.trickling.set()
                try:
                    for byte in head:
                        if api._release.is_set():
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.1)
                except OSError:  # the client gave up and closed: what the test wants
                    return

            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                url = urlsplit(self.path)
                auth = self.headers.get("Authorization", "")
                try:
                    query = json.loads(raw).get("query", "")
                except ValueError:
                    query = None
                with api._lock:
                    api.requests.append(
                        {"path": url.path, "query": query, "auth": auth, "url_query": url.query}
                    )
                    fault = api._faults.pop(0) if api._faults else None
                if fault and fault[0] == "hang":
                    api._release.wait(60)
                    return
                if fault and fault[0] == "trickle":
                    return self._trickle(fault[1])
                if fault and fault[0] == "answer":
                    status, message = fault[1]
                    return self._send(status, {"errors": [{"message": message}]})
                if fault and fault[0] == "html":
                    return self._send(502, b"<html><body>502 Bad Gateway</body></html>")
                if fault:
                    extra = {"Retry-After": f"{fault[2]:g}"} if fault[2] is not None else {}
                    return self._send(fault[1], {"errors": [{"message": "slow down"}]}, extra)
                if url.path != "/graphql":
                    return self._send(404, {"errors": [{"message": "Not Found"}]})
                key = auth[7:] if auth.startswith("Bearer ") else ""
                key = key or (parse_qs(url.query).get("api_key") or [""])[0]
                if key != api.key:
                    return self._send(401, {"errors": [{"message": "Unauthorized"}]})
                if query is None:
                    return self._send(400, {"errors": [{"message": "Must provide query string."}]})
                try:
                    data = api.execute(query)
                except (GraphQLError, ValueError) as exc:
                    return self._send(400, {"errors": [{"message": str(exc)}]})
                return self._send(200, {"data": data})

        return Handler

    def execute(self, query: str) -> dict[str, Any]:
        kind, fields = _Parser(query).document()
        out: dict[str, Any] = {}
        with self._lock:
            for f in fields:
                out[f.name] = self._root(kind, f)
        return out

    def _root(self, kind: str, f: Field) -> Any:
        # validated against the schema (a full pod record) before anything runs, as GraphQL does
        if kind == "query" and f.name == "myself":
            project({"id": "u", "pods": [pod_record("t", "t")]}, f.selection, "User")
        elif f.name in ("pod", "podStop", "podResume"):
            project(pod_record("t", "t"), f.selection, "Pod")
        pod_id = (f.args.get("input") or {}).get("podId")
        if kind == "query" and f.name == "myself":
            me = {"id": "user_1", "pods": list(self.pods.values())}
            return project(me, f.selection, "User")
        if kind == "query" and f.name == "pod":
            return project(self.pods.get(pod_id), f.selection, "Pod")
        if kind == "mutation" and f.name in ("podStop", "podResume", "podTerminate"):
            if pod_id not in self.pods:
                raise GraphQLError("Pod not found")
            if f.name == "podTerminate":
                del self.pods[pod_id]
                return None
            if f.name == "podStop":
                self.stop(pod_id)
            else:
                record = self.pods[pod_id]
                if not isinstance(f.args["input"].get("gpuCount"), int):
                    raise GraphQLError('Field "gpuCount" of required type "Int!" was not provided.')
                port = self.resume_port.get(pod_id) or 22022
                self.set_ssh(pod_id, port)
                self.pods[pod_id]["name"] = record["name"]
            return project(self.pods[pod_id], f.selection, "Pod")
        raise GraphQLError(f'Cannot query field "{f.name}" on type "{kind.title()}".')

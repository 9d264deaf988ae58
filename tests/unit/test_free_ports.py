"""Tests and benchmarks take free ports, never a fixed one (issue #24).

Two suites, two clones' sandboxes and the lead's demo share 127.0.0.1 on one machine: a fixed
port works alone and fails under company (`Address already in use`). tests/conftest.py stops
any host without `serve_port` from reaching the default 8080 at run time; this reads the
sources for the other ways a fixed port comes in: a socket bound to a literal port, a server
started on one, an inventory giving `serve_port` a literal other than 0.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    p for folder in ("tests", "benchmarks") for p in (ROOT / folder).rglob("*.py") if p.is_file()
)
# calls whose first argument is an (address, port) pair that gets bound
BINDS = {"bind", "create_server", "HTTPServer", "ThreadingHTTPServer", "TCPServer"}
PORT_FLAGS = {"--port", "--serve-port"}
# files whose ports are only text: command builders compared as strings, nothing runs
TEXT_ONLY = {"tests/unit/test_serve_commands.py"}


def _fixed(node: ast.AST | None) -> int | None:
    """The literal port a node holds, when it is a whole number other than 0."""
    if isinstance(node, ast.Constant) and type(node.value) is int and node.value != 0:
        return node.value
    return None


def fixed_ports(source: str) -> list[tuple[int, str]]:
    """(line, what) for every fixed port bound or configured in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if name in BINDS and node.args and isinstance(node.args[0], ast.Tuple):
                pair = node.args[0].elts
                if len(pair) == 2 and _fixed(pair[1]) is not None:
                    found.append((node.lineno, f"{name}(..., {pair[1].value})"))
            for kw in node.keywords:
                if kw.arg == "serve_port" and _fixed(kw.value) is not None:
                    found.append((node.lineno, f"serve_port={kw.value.value}"))
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                named = isinstance(key, ast.Constant) and key.value == "serve_port"
                if named and _fixed(value) is not None:
                    found.append((node.lineno, f'"serve_port": {value.value}'))
        elif isinstance(node, ast.List | ast.Tuple):  # argv lists: [..., "--port", "8080"]
            items = node.elts
            for flag, value in zip(items, items[1:], strict=False):
                is_flag = isinstance(flag, ast.Constant) and flag.value in PORT_FLAGS
                text = str(value.value) if isinstance(value, ast.Constant) else ""
                if is_flag and text.isdigit() and int(text) != 0:
                    found.append((node.lineno, f"{flag.value} {value.value}"))
    return found


@pytest.mark.parametrize(
    "source, expected",
    [
        ('s.bind(("127.0.0.1", 8080))', [(1, "bind(..., 8080)")]),
        ('ThreadingHTTPServer(("127.0.0.1", 0), H)', []),
        ("write_inventory(p, hosts, serve_port=9000)", [(1, "serve_port=9000")]),
        ('{"serve_port": 0, "port": sshd.port}', []),
        ('{"serve_port": 8080}', [(1, '"serve_port": 8080')]),
        ('argv = ["serve", "--port", "8080"]', [(1, "--port 8080")]),
        ('argv = ["serve", "--port", "0"]', []),
    ],
)
def test_the_scan_sees_a_fixed_port(source, expected):
    assert fixed_ports(source) == expected


def test_no_test_or_benchmark_binds_or_configures_a_fixed_port():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in SOURCES
        if str(path.relative_to(ROOT)) not in TEXT_ONLY
        for line, what in fixed_ports(path.read_text())
    ]
    assert not offenders, "take a free port (bind port 0, serve_port: 0):\n" + "\n".join(offenders)

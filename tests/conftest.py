"""Shared fixtures: real OpenSSH stand-in hosts on 127.0.0.1 (moola_ops.hosts.standin).

The hosts are the same ones `invoke sandbox up` starts: own host key, own workspace, one
authorized client key, a generated known_hosts that the client checks strictly.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from moola_core.errors import MoolaError
from moola_ops.hosts.standin import Sandbox, start_sandbox


@pytest.fixture(autouse=True)
def no_fixed_serving_port(request, monkeypatch):
    """Every host a test serves from shares 127.0.0.1 with every other test, sandbox and clone
    on the machine: a host without `serve_port` would bind the fixed default 8080 (issue #24:
    `Address already in use` under a second suite). Such a host fails the test at once; give
    it `serve_port: 0` (a free port, picked once). Only a test marked `default_port`, which
    binds nothing, may see the default."""
    if request.node.get_closest_marker("default_port"):
        return
    from moola_ops.serving import commands as serve_cmd

    real = serve_cmd.public_port

    def public_port(host) -> int:
        if host.serve_port is None:
            pytest.fail(
                f"host {host.name} has no serve_port and would serve on the fixed port "
                f"{serve_cmd.DEFAULT_PORT}: give it serve_port: 0 in the test's inventory"
            )
        return real(host)

    monkeypatch.setattr(serve_cmd, "public_port", public_port)


@pytest.fixture
def sandbox_factory() -> Iterator:
    """Call `sandbox_factory(names, **options)` to start stand-in hosts; all stop at teardown.

    The root lives outside pytest's tmp_path because that is private (0700) and the sandbox
    login user must be able to reach its workspace.
    """
    started: list[Sandbox] = []
    roots: list[str] = []

    def factory(names: list[str] | None = None, **options) -> Sandbox:
        root = tempfile.mkdtemp(prefix="moola-sbx-")
        os.chmod(root, 0o755)
        roots.append(root)
        sandbox = start_sandbox(root, names or ["local-1"], **options)
        started.append(sandbox)
        return sandbox

    try:
        yield factory
    finally:
        failures = []
        for sandbox in started:  # each one, even when another's servers failed to stop
            try:
                sandbox.stop()
            except MoolaError as exc:
                failures.append(exc)
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
        if failures:  # loud: servers left running outlive the test run
            raise MoolaError("\n".join(str(exc) for exc in failures))


@pytest.fixture
def sandbox2(sandbox_factory) -> Sandbox:
    """Two running stand-in hosts, local-1 and local-2."""
    return sandbox_factory(["local-1", "local-2"])


@pytest.fixture
def runpod_api(tmp_path, monkeypatch):
    """A local stand-in of RunPod's GraphQL API (tests/runpod_standin.py), with the process
    pointed at it: RUNPOD_API_KEY (a fresh random key), RUNPOD_API_BASE_URL and a private
    pod cache (MOOLA_RUNPOD_CACHE)."""
    from moola_ops.hosts.runpod import cache as runpod_cache
    from tests.runpod_standin import StandInRunPod

    key = "rpa_" + secrets.token_hex(20).upper()
    api = StandInRunPod(key)
    monkeypatch.setenv("RUNPOD_API_KEY", key)
    monkeypatch.setenv("RUNPOD_API_BASE_URL", api.url)
    monkeypatch.setenv("MOOLA_RUNPOD_CACHE", str(tmp_path / "runpod-pods.json"))
    monkeypatch.setattr(runpod_cache, "_fresh_after", 0.0)
    try:
        yield api
    finally:
        api.close()

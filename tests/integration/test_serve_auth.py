"""Token authentication on the public port, end to end on a real stand-in host whose inventory
says `serve_auth: always` (the rule of every host bound beyond loopback): the deploy's own
checks, the health check, the shadow's counters and the demo's traffic all keep working with
the host's token, a client without it gets 401, `invoke serve token` prints it and
`invoke serve rotate-token` replaces it, and neither token reaches the deployment log or the
serving logs."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moola_ops import deploy as engine
from moola_ops.hosts.inventory import Inventory
from moola_ops.hosts.layout import Layout
from moola_ops.serving import commands as serve_cmd
from moola_ops.serving import control as serving
from moola_ops.serving.traffic import demo_traffic
from moola_ops.shadow import control as shadow
from moola_ops.transport import HostSession
from moola_ops.watch import health_run
from tests.integration.conftest import running_hosts
from tests.integration.helpers import wait_for, window, write_inventory
from tests.integration.test_serving import FAST

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


@pytest.fixture(scope="module")
def guarded(bundles, tmp_path_factory):
    """One stand-in host serving v1.0 behind a proxy that requires the host's token."""
    log = tmp_path_factory.mktemp("auth-log") / "deployments.jsonl"
    with running_hosts(["auth-1"]) as (sandbox, _root):
        (host,) = Inventory.from_sandbox(sandbox, serve_auth="always").resolve("auth-1")
        opts = engine.Options(**{**FAST.__dict__, "journal_path": str(log)})
        result = engine.deploy([host], engine.resolve_bundle(str(bundles["v1.0"])), opts)
        assert result.ok, result.outcomes  # its serve-check and post-check went through
        yield host, Path(sandbox.hosts["auth-1"].workspace), log


def post(port: int, token: str | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request("POST", "/v1/predict", json.dumps({"windows": [window(1)]}), headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_moolas_own_clients_work_and_a_stranger_gets_401(guarded, tmp_path):
    host, workspace, _log = guarded
    token = (workspace / "serve" / "token").read_text().strip()
    with HostSession(host) as session:
        now = serving.status(session, host)
        assert now.serving and serving.probe(session, host, requests=3).answered_by("v1.0")
    status, answer = post(now.proxy_port)
    assert status == 401 and "invoke serve --host H token" in answer["error"]
    assert post(now.proxy_port, "not-the-token")[0] == 401
    assert post(now.proxy_port, token)[0] == 200
    run = health_run.run_healthcheck(
        host.name, inventory=Inventory(hosts={host.name: host}), timeout_s=120, record=False
    )
    (checked,) = run.hosts
    service = [c for c in checked.checks if c.name == "service"]
    assert service and service[0].state == 0, service  # its real request carried the token
    with HostSession(host) as session:  # what `invoke shadow status` asks the proxy
        asked = session.run(serve_cmd.proxy_state(Layout(host.workspace), host.python))
    proxy_state = serve_cmd.parse(asked.stdout)
    assert proxy_state["ok"] and proxy_state["proxy"]["auth_required"] is True, proxy_state
    assert shadow.status(host).release is None
    traffic = demo_traffic([host])  # the demo's stream, with the host's token
    try:
        wait_for(lambda: sum(traffic.answered[host.name].values()) >= 5, "5 demo requests")
    finally:
        stopped = traffic.stop()
    assert stopped["failed"] == 0, stopped["failures"]


def test_token_and_rotate_token_from_the_front_door_never_reach_a_log(guarded, tmp_path):
    host, workspace, log = guarded
    inventory = write_inventory(
        tmp_path / "hosts.yaml", {host.name: host}, with_python=True, serve_auth="always"
    )
    invoke = str(Path(sys.executable).parent / "invoke")
    env = dict(os.environ, MOOLA_LOG=str(log))

    def front(*args: str, dry: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        return subprocess.run(
            [invoke, *dry, "serve", *args, "--host", host.name, "--inventory", str(inventory)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    shown = front("token")
    old = (workspace / "serve" / "token").read_text().strip()
    assert shown.returncode == 0 and shown.stdout.strip() == old, shown
    assert "required by the proxy" in shown.stderr and old not in shown.stderr
    dry = front("rotate-token", dry=("--dry",))
    assert dry.returncode == 0 and "would replace" in dry.stdout, dry
    assert (workspace / "serve" / "token").read_text().strip() == old
    rotated = front("rotate-token")
    new = rotated.stdout.strip()
    assert rotated.returncode == 0 and new != old, rotated
    assert (workspace / "serve" / "token").read_text().strip() == new
    port = json.loads((workspace / "serve" / "proxy.json").read_text())["port"]
    assert post(port, old)[0] == 401 and post(port, new)[0] == 200  # no restart needed
    logs = [log, *(workspace / "serve" / "logs").iterdir()]
    for token in (old, new):
        assert not any(token in path.read_text(errors="replace") for path in logs)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    (rotation,) = [e for e in events if e.get("step") == "rotate-token"]
    assert rotation["status"] == "ok" and rotation["detail"]["fingerprint"] == new_fp(new)


def new_fp(token: str) -> str:
    from moola_core.agent.control import token_fingerprint

    return token_fingerprint(token)


def test_a_proxy_running_without_the_token_rule_the_inventory_asks_for_is_named(guarded):
    from dataclasses import replace

    from moola_ops.serving.control import ServeError

    host, _workspace, _log = guarded
    relaxed = replace(host, serve_auth="auto")  # loopback + auto: this proxy should not ask
    with HostSession(relaxed) as session, pytest.raises(ServeError, match="restart it"):
        serving.ensure_proxy(session, relaxed)

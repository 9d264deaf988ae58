"""The host agent reaches a real host (OpenSSH stand-in) once, by content hash, through the
session that first needs it; nothing of a command runs before the agent is there."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from moola_ops.hosts.inventory import Inventory
from moola_ops.hosts.layout import Layout
from moola_ops.transport import HostSession, TransportError, agent

pytestmark = pytest.mark.ssh


@pytest.fixture
def host(sandbox_factory):
    sandbox = sandbox_factory(["ag-1"])
    (resolved,) = Inventory.from_sandbox(sandbox, connect_timeout_s=5).resolve("ag-1")
    yield resolved, Path(sandbox.hosts["ag-1"].workspace)


def test_the_first_command_installs_the_agent_once_and_runs_once(host):
    resolved, workspace = host
    layout = Layout(str(workspace))
    marker = workspace / "ran.log"
    probe = f"echo ran >> {marker}; {agent.command(layout, resolved.python, 'facts', 'python')}"
    folder = workspace / ".moola" / "agent" / agent.HASH
    assert not folder.exists()
    with HostSession(resolved) as ssh:
        first = ssh.run(probe)
        again = ssh.run(probe)
        assert ssh.agent_installs == 1
    assert first.ok and json.loads(first.stdout.splitlines()[-1])["python"]
    assert again.ok and (folder / "agent.py").is_file()
    # the guarded attempt ran nothing: each command appended exactly one line
    assert marker.read_text().splitlines() == ["ran", "ran"]
    inode = (folder / "agent.py").stat().st_ino
    with HostSession(resolved) as ssh:  # a later session finds it: nothing sent again
        assert ssh.run(probe).ok and ssh.agent_installs == 0
    assert (folder / "agent.py").stat().st_ino == inode


def test_an_install_that_cannot_write_says_so_in_one_sentence(host):
    resolved, workspace = host
    blocked = workspace / "blocked"
    blocked.write_text("a file where the workspace should be a folder")
    odd = replace(resolved, workspace=str(blocked))
    with HostSession(odd) as ssh, pytest.raises(TransportError) as caught:
        ssh.run(agent.command(Layout(str(blocked)), odd.python, "facts", "python"))
    assert f"could not install the Moola agent on {odd.name}" in str(caught.value)

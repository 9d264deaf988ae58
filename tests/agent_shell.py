"""Running a built command in a local shell the way a host session would: when the command
names the host agent, its folder is installed first (HostSession.run does it on a real host)."""

from __future__ import annotations

import sys

from moola_ops.transport import agent


def with_agent(command: str, python: str = sys.executable) -> str:
    """`command` preceded by the agent's install when it runs the agent."""
    workspace = agent.named_workspace(command)
    if workspace is None:
        return command
    return f"{{ {agent.install_command(workspace, python)}; }} >/dev/null && {command}"

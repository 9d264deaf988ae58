"""The host agent as the workstation ships it: one folder per content hash, uploaded once.

The agent (moola_core/agent/, standard library only) is every program Moola runs on a host.
Its files are packed here into one deterministic tar.gz whose content hash names the folder
it lives in on the host:

    WORKSPACE/.moola/agent/<hash>/agent.py                 the launcher (agent/__main__.py)
    WORKSPACE/.moola/agent/<hash>/moola_core/__init__.py
    WORKSPACE/.moola/agent/<hash>/moola_core/agent/*.py

Command builders call `command(layout, python, ACTION, ...)`; nothing else about the agent
concerns them. `HostSession.run` makes sure the folder is there: the first command of a session
that names it is sent behind a guard (`test -f .../agent.py || exit MISSING_RC`), so nothing of
it runs when the folder is missing; then it is sent again behind the folder's install, in one
round trip (the packed tar travels base64 inside that command; extracted to a temporary folder
and renamed into place, so two sessions at once cannot leave half a folder). Once a
session saw the folder, its commands go unguarded. A new hash prunes the folders of older ones
that no process runs from any more (`agent.py prune`).
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import re
import shlex
import tarfile
from pathlib import Path

from moola_ops.hosts.layout import Layout

_PACKAGE = Path(__file__).resolve().parents[2] / "moola_core"
MISSING_RC = 86  # the guard's exit code when the agent folder is not on the host
MISSING = "moola-agent-missing"  # and what it prints on stderr (both must match)
INSTALL_FAILED_RC = 87  # the install could not put the folder in place
INSTALL_FAILED = "moola-agent-install-failed"
HASH_CHARS = 16  # hex characters of the content hash in the folder name (64 bits)


def _files() -> list[tuple[str, bytes]]:
    """(name in the uploaded folder, bytes) of every agent file, in a fixed order."""
    agent = _PACKAGE / "agent"
    files = [
        ("agent.py", (agent / "__main__.py").read_bytes()),
        ("moola_core/__init__.py", (_PACKAGE / "__init__.py").read_bytes()),
    ]
    for path in sorted(agent.glob("*.py")):
        files.append((f"moola_core/agent/{path.name}", path.read_bytes()))
    return files


def _digest(files: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, data in files:
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:HASH_CHARS]


def _pack(files: list[tuple[str, bytes]]) -> bytes:
    """A reproducible tar.gz of `files` (fixed mtimes, owners and modes)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


_FILES = _files()
HASH = _digest(_FILES)


@functools.cache
def packed() -> bytes:
    """The agent's tar.gz (made when first needed: `invoke --list` never pays for it)."""
    return _pack(_FILES)


# a command that names this agent: the workspace as the builders wrote it, then the folder
_NAMED = re.compile(r"(\S+)/\.moola/agent/" + HASH + r"/agent\.py(?=\s|$|;)")


def command(layout: Layout, python: str, action: str, *args: str, site: bool = False) -> str:
    """`PYTHON -S WORKSPACE/.moola/agent/<hash>/agent.py ACTION ARGS` (ARGS already quoted).
    -S: the agent is standard library only, so the interpreter skips `site` and every .pth
    file of its site-packages (~12 ms less per round trip on a stand-in host). `site=True`
    keeps them for an action that reports what the interpreter can import (torch's version)."""
    launcher = layout.path(".moola", "agent", HASH, "agent.py")
    flags = [] if site else ["-S"]
    return " ".join([shlex.quote(python or "python3"), *flags, launcher, action, *args])


def named_workspace(command_text: str) -> str | None:
    """The workspace (as shell text) whose agent `command_text` runs, or None."""
    found = _NAMED.search(command_text)
    return found.group(1) if found else None


def _agents(workspace: str) -> str:
    """WORKSPACE/.moola/agent as shell text (`workspace` as named_workspace found it)."""
    return f"{workspace}/.moola/agent"


def guarded(workspace: str, command_text: str) -> str:
    """`command_text` behind the check that the agent folder exists (nothing runs without it)."""
    launcher = f"{_agents(workspace)}/{HASH}/agent.py"
    return (
        f"{{ test -f {launcher} || {{ echo {MISSING} >&2; exit {MISSING_RC}; }}; }}; {command_text}"
    )


def install_command(workspace: str, python: str = "python3") -> str:
    """A command that puts the agent folder in place and prunes older ones (only when there
    are any: no interpreter starts otherwise); prints the folder on success. Safe to run twice
    at once: each extracts into its own temporary folder and only the first rename wins."""
    agents = _agents(workspace)
    final = f"{agents}/{HASH}"
    archive = base64.b64encode(packed()).decode()
    prune = f"{shlex.quote(python or 'python3')} -S {final}/agent.py prune {agents}"
    return (
        f"mkdir -p {agents} && t=$(mktemp -d {agents}/.install.XXXXXX) && "
        f'{{ printf %s {archive} | base64 -d | tar -xzf - -C "$t" || {{ rm -rf "$t"; false; }}; }} && '
        f'{{ mv -T "$t" {final} 2>/dev/null || rm -rf "$t"; }} && test -f {final}/agent.py && '
        f"{{ if ls -A {agents} | grep -qvx {HASH}; then {prune} >/dev/null 2>&1; fi; true; }} && "
        f"echo {final}"
    )


def installed_then(workspace: str, command_text: str, python: str = "python3") -> str:
    """The agent's install, then `command_text`, in one round trip; a failed install runs
    nothing of the command and says so on stderr (INSTALL_FAILED, exit INSTALL_FAILED_RC)."""
    return (
        f"{{ {install_command(workspace, python)}; }} >/dev/null || "
        f"{{ echo {INSTALL_FAILED} >&2; exit {INSTALL_FAILED_RC}; }}; {command_text}"
    )

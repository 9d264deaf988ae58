"""Local stand-in hosts: real OpenSSH `sshd` processes on 127.0.0.1, one per host.

Each host gets its own host key, workspace directory and port; one client key is authorized on
all of them and a generated known_hosts file pins every host key, so host keys are checked here
exactly as they are against a RunPod pod. `invoke sandbox up` and the pytest fixtures both use
this module, so the tests exercise the same hosts a user demos against.

As root, logins go to a dedicated system user with a plain `/bin/sh` (root's interactive shell
start-up costs ~100 ms per remote command); otherwise to the current user. The remote `python3`
is this project's virtual environment (sshd's `SetEnv PATH=...`), standing in for the pod's
Python with torch.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import moola_core
from moola_core.errors import MoolaError
from moola_ops.hosts.standin_sshd import SandboxHost, find_sshd, keygen, start_host, terminate

SANDBOX_USER = "moola-sbx"
STATE_FILE = "state.json"
DEFAULT_ROOT = Path(".sandbox")
STOP_STDERR_LINES = 10  # of a failed `serve stop`, carried in its error


@dataclass
class Sandbox:
    """A set of running stand-in hosts sharing one client key and one known_hosts file."""

    root: str
    hosts: dict[str, SandboxHost] = field(default_factory=dict)

    @property
    def ssh_config_path(self) -> Path:
        """An ssh_config with one `Host` block per stand-in host (`ssh -F FILE local-1`)."""
        return Path(self.root) / "ssh_config"

    def stop(self) -> None:
        """Stop every sshd of this sandbox and forget it (idempotent). A host whose servers
        fail to stop does not keep the others running: every host is stopped first, then the
        failures are raised (MoolaError) and the record is kept, so `sandbox down` can retry."""
        failures = []
        for host in self.hosts.values():
            # model servers run in their own sessions (they outlive SSH, as on a pod)
            try:
                stop_local_workspace(host.workspace)
            except MoolaError as exc:
                failures.append(f"stand-in host {host.name}: {exc}")
            terminate(host.pid, host.host_dir)
        if failures:
            raise MoolaError("\n".join(failures))
        state = Path(self.root) / STATE_FILE
        state.unlink(missing_ok=True)


def start_sandbox(
    root: str | os.PathLike = DEFAULT_ROOT,
    names: list[str] | None = None,
    *,
    fsize_limit_kb: int | None = None,
    python_bin_dir: str | None = None,
) -> Sandbox:
    """Start one sshd per name under `root` and return the running sandbox.

    Hosts already running under `root` are kept (a second `sandbox up` is a no-op for them).
    `fsize_limit_kb` caps the size of any file the host's processes write (a full disk).
    """
    names = list(names or ["local-1", "local-2"])
    for name in names:
        _check_name(name)
    root_path = Path(root).absolute()
    root_path.mkdir(parents=True, exist_ok=True)
    os.chmod(root_path, 0o755)  # the sandbox user must traverse it
    sshd = find_sshd()
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    user = _login_user(root_path)
    identity, authorized = _client_key(root_path)
    bin_dir = python_bin_dir or remote_python_bin_dir(root_path, user)

    sandbox = load_state(root_path) or Sandbox(root=str(root_path))
    for name in names:
        existing = sandbox.hosts.get(name)
        if existing and existing.alive():
            continue
        sandbox.hosts[name] = start_host(
            sshd, root_path, name, user, identity, authorized, bin_dir, fsize_limit_kb
        )
        _save(sandbox)  # saved after each host so a failure later still lets `down` clean up
    _write_client_files(sandbox)
    _save(sandbox)
    return sandbox


def load_state(root: str | os.PathLike = DEFAULT_ROOT) -> Sandbox | None:
    """The sandbox recorded under `root`, or None when none was started there."""
    state = Path(root).absolute() / STATE_FILE
    if not state.exists():
        return None
    data = json.loads(state.read_text())
    hosts = {name: SandboxHost(**h) for name, h in data["hosts"].items()}
    return Sandbox(root=data["root"], hosts=hosts)


def stop_sandbox(root: str | os.PathLike = DEFAULT_ROOT) -> list[str]:
    """Stop the sandbox recorded under `root`; return the names of the hosts stopped."""
    sandbox = load_state(root)
    if sandbox is None:
        return []
    sandbox.stop()
    return sorted(sandbox.hosts)


def remote_python_bin_dir(root: str | os.PathLike, login_user: str | None = None) -> str:
    """A bin dir whose `python3` the stand-in hosts run: this venv's packages, one thread.

    As root, the hosts log in as an unprivileged user; when this venv's interpreter lives where
    that user cannot go (a pyenv Python under /root), the wrapper runs the system Python of the
    same minor version with this venv's site-packages on its path, so the hosts have torch as a
    pod does. Every stand-in host shares this machine's cores, so each gets one OpenMP thread:
    with torch's default (one per core) concurrent runtime checks spin-wait on each other's
    cores; a real host has its own cores.
    """
    python, site = sys.executable, ""
    base = Path(sys.base_prefix, "bin", "python3").resolve()
    system = Path("/usr/bin/python3")
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    if (
        os.geteuid() == 0
        and login_user != "root"
        and not _others_can_reach(base)
        and system.exists()
        and minor in os.path.realpath(system)
    ):
        python = str(system)
        site = _site_packages()
    bin_dir = Path(root).absolute() / "remote-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "python3"
    path = f'PYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{site}" ' if site else ""
    wrapper.write_text(f'#!/bin/sh\nOMP_NUM_THREADS=1 {path}exec {python} "$@"\n')
    wrapper.chmod(0o755)
    bin_dir.chmod(0o755)
    return str(bin_dir)


# --- internals -------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "-_" for c in name) or len(name) > 40:
        raise MoolaError(f"invalid sandbox host name {name!r}: use letters, digits, '-' and '_'")


def _others_can_reach(path: str | os.PathLike) -> bool:
    """True when a user who is neither owner nor group can traverse every folder down to path."""
    target = Path(path).resolve()
    return all(p.stat().st_mode & stat.S_IXOTH for p in [*target.parents, target])


def _site_packages() -> str:
    return next(p for p in sys.path if p.endswith("site-packages"))


def _login_user(root: Path) -> str:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    if not (_others_can_reach(root) and _others_can_reach(_site_packages())):
        # A checkout under a private folder (/root/...): an unprivileged login could reach
        # neither the workspace nor torch, so log in as root (slower shell start, same checks).
        return "root"
    try:
        pwd.getpwnam(SANDBOX_USER)
    except KeyError:
        home = f"/var/lib/{SANDBOX_USER}"
        subprocess.run(
            ["useradd", "--system", "--shell", "/bin/sh", "--home-dir", home, "--create-home"]
            # '*' instead of useradd's default '!': without PAM, sshd refuses locked accounts
            + ["--password", "*", SANDBOX_USER],
            check=True,
            capture_output=True,
        )
    return SANDBOX_USER


def _client_key(root: Path) -> tuple[Path, Path]:
    keys = root / "keys"
    keys.mkdir(exist_ok=True)
    identity = keys / "client_ed25519"
    if not identity.exists():
        keygen(identity, "moola-sandbox-client")
    authorized = keys / "authorized_keys"
    authorized.write_text(identity.with_suffix(".pub").read_text())
    os.chmod(keys, 0o755)
    os.chmod(authorized, 0o644)
    return identity, authorized


def _host_key_line(host: SandboxHost) -> str:
    pub = Path(host.host_dir, "ssh_host_ed25519_key.pub").read_text().split()
    return f"[{host.hostname}]:{host.port} {pub[0]} {pub[1]}"


def _write_client_files(sandbox: Sandbox) -> None:
    root = Path(sandbox.root)
    hosts = sorted(sandbox.hosts.values(), key=lambda h: h.name)
    (root / "known_hosts").write_text("".join(_host_key_line(h) + "\n" for h in hosts))
    blocks = [
        f"Host {h.name}\n"
        f"  HostName {h.hostname}\n"
        f"  Port {h.port}\n"
        f"  User {h.user}\n"
        f"  IdentityFile {h.identity_file}\n"
        f"  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {h.known_hosts}\n"
        f"  StrictHostKeyChecking yes\n"
        for h in hosts
    ]
    sandbox.ssh_config_path.write_text("\n".join(blocks))


def _save(sandbox: Sandbox) -> None:
    state = Path(sandbox.root) / STATE_FILE
    tmp = state.with_suffix(".tmp")
    payload = {"root": sandbox.root, "hosts": {n: asdict(h) for n, h in sandbox.hosts.items()}}
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    tmp.replace(state)


def stop_local_workspace(workspace: str, wait_s: float = 5.0) -> None:
    """Stop what serves from a stand-in host's workspace on THIS machine: the servers and the
    proxy run in their own sessions (they outlive SSH, as on a pod), so stopping sshd does not
    reach them. The host agent's own `serve stop` does it; when it fails or answers nothing
    readable, MoolaError names the workspace and carries the stop's last stderr lines (its
    servers may still run, and nothing else would notice)."""
    if not (Path(workspace) / "serve").is_dir():
        return
    timeout_s = wait_s * 10 + 30
    agent = Path(moola_core.__file__).parent / "agent" / "__main__.py"
    try:
        done = subprocess.run(
            [sys.executable, "-S", str(agent), "serve", "stop"]
            + ["--workspace", workspace, "--wait", str(wait_s)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise _stop_failed(workspace, f"it ran over {timeout_s:g}s", exc.stderr) from None
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        answer = None
    if done.returncode == 0 and isinstance(answer, dict) and answer.get("ok") is True:
        return
    if isinstance(answer, dict) and answer.get("error"):
        why = f"exit {done.returncode}: {answer['error']}"
    else:
        why = (
            f"exit {done.returncode}, and its output is not its JSON answer: {done.stdout[-200:]!r}"
        )
    raise _stop_failed(workspace, why, done.stderr)


def _stop_failed(workspace: str, why: str, stderr) -> MoolaError:
    if isinstance(stderr, bytes):  # TimeoutExpired carries bytes even with text=True
        stderr = stderr.decode(errors="replace")
    lines = (stderr or "").strip().splitlines()[-STOP_STDERR_LINES:]
    sentence = (
        f"the agent's `serve stop` failed for the stand-in workspace {workspace} ({why}); its "
        f"model servers and proxy may still run: `ps -eo pid,args | grep -F -- {workspace}` "
        "lists them"
    )
    if lines:
        sentence += "\nlast lines of its stderr:\n" + "\n".join(f"  {line}" for line in lines)
    return MoolaError(sentence)

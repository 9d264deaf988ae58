"""One stand-in host: an OpenSSH `sshd` on 127.0.0.1 with its own host key, workspace and
port, started in its own session (so it outlives the task that started it) and stopped only
when the process is still the sshd we started (pid reuse). `moola_ops.hosts.standin` manages a set."""

from __future__ import annotations

import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from moola_core.errors import MoolaError
from moola_ops.localproc import end_group


@dataclass
class SandboxHost:
    """One stand-in host: where it listens, how to log in, where its workspace lives."""

    name: str
    hostname: str
    port: int
    user: str
    identity_file: str
    known_hosts: str
    workspace: str
    pid: int
    host_dir: str
    # absolute, so a login shell's start-up files (pyenv in root's .bashrc) cannot swap it
    python: str = "python3"

    def alive(self) -> bool:
        """True when this host's sshd process is still running."""
        return is_our_sshd(self.pid, self.host_dir)


def find_sshd() -> str:
    """Path of the OpenSSH server binary, or a MoolaError saying how to install it."""
    path = shutil.which("sshd") or next(
        (p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.path.exists(p)), None
    )
    if not path:
        raise MoolaError(
            "OpenSSH server not found: install it with `apt-get install -y openssh-server` "
            "(scripts/setup.sh does this)"
        )
    return path


def keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_host(
    sshd: str,
    root: Path,
    name: str,
    user: str,
    identity: Path,
    authorized: Path,
    bin_dir: str,
    fsize_limit_kb: int | None,
) -> SandboxHost:
    host_dir = root / "hosts" / name
    host_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(host_dir, 0o755)
    host_key = host_dir / "ssh_host_ed25519_key"
    if not host_key.exists():
        keygen(host_key, f"moola-sandbox-{name}")
    workspace = host_dir / "workspace"
    workspace.mkdir(exist_ok=True)
    pw = pwd.getpwnam(user)
    os.chown(workspace, pw.pw_uid, pw.pw_gid)

    def limits() -> None:  # runs in the child before exec: sshd and its sessions inherit
        if fsize_limit_kb is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit_kb * 1024,) * 2)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG, no kill

    last_error = ""
    for _attempt in range(5):  # a free port can be taken between probe and bind: retry
        port = free_port()
        config = host_dir / "sshd_config"
        config.write_text(sshd_config(port, host_key, authorized, user, bin_dir, name, workspace))
        log = open(host_dir / "sshd.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # outlives `invoke sandbox up`; no Ctrl-C from our TTY
            preexec_fn=limits,
        )
        log.close()
        if wait_banner(port, proc):
            return SandboxHost(
                name=name,
                hostname="127.0.0.1",
                port=port,
                user=user,
                identity_file=str(identity),
                known_hosts=str(root / "known_hosts"),
                workspace=str(workspace),
                pid=proc.pid,
                host_dir=str(host_dir),
                python=str(Path(bin_dir) / "python3"),
            )
        proc.kill()
        proc.wait()
        last_error = (host_dir / "sshd.log").read_text(errors="replace")[-400:]
    raise MoolaError(f"sshd for sandbox host {name} did not start; its log ends: {last_error}")


def sshd_config(
    port: int,
    host_key: Path,
    authorized: Path,
    user: str,
    bin_dir: str,
    name: str,
    workspace: Path,
) -> str:
    path = f"{bin_dir}:/usr/local/bin:/usr/bin:/bin"
    return "\n".join(
        [
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {host_key}",
            "PidFile none",
            f"AuthorizedKeysFile {authorized}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            f"AllowUsers {user}",
            f"SetEnv PATH={path} MOOLA_SANDBOX_HOST={name} MOOLA_SANDBOX_WORKSPACE={workspace}",
            "Subsystem sftp internal-sftp",
            "MaxStartups 100:30:200",
            "MaxSessions 100",
            "LogLevel ERROR",
            "",
        ]
    )


def wait_banner(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(1)
                if s.recv(16).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.01)
    return False


def is_our_sshd(pid: int, host_dir: str) -> bool:
    """Guard against pid reuse: the process must be an sshd started with this host's config."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # sshd rewrites its title ("sshd: /usr/sbin/sshd -D -f CFG [listener] ..."): match a substring
    return str(Path(host_dir) / "sshd_config").encode() in cmdline


def terminate(pid: int, host_dir: str, timeout: float = 5.0) -> None:
    # the whole session: the listener and any connection children it forked
    end_group(pid, lambda: is_our_sshd(pid, host_dir), timeout_s=timeout, poll_s=0.02)

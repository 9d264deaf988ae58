"""A pod's SSH host key: scan it, compare it with the pinned one, pin it under the pod's alias.

A pod's address changes on every restart, so its key is pinned in known_hosts under a stable
name, `runpod-<pod id>` (what OpenSSH calls a HostKeyAlias: `ssh -o HostKeyAlias=runpod-<id>
-p PORT root@IP` checks the same line). The transport looks the key up under that name.
Scanning uses OpenSSH's `ssh-keyscan`; fingerprints are SHA256 as `ssh-keygen -l` prints them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from moola_core.errors import MoolaError


@dataclass(frozen=True)
class ScannedKey:
    type: str
    blob: str  # base64, as in known_hosts

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)


def fingerprint(blob_b64: str) -> str:
    """`SHA256:...` of a base64 public key blob (the form `ssh-keygen -l` prints)."""
    digest = hashlib.sha256(base64.b64decode(blob_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_files(hosts) -> list[Path]:
    """~/.ssh/known_hosts, then the `known_hosts:` files of the inventory hosts given (the last
    one is where a pin is written)."""
    files = [Path("~/.ssh/known_hosts").expanduser()]
    files += [Path(h.known_hosts).expanduser() for h in hosts if h.known_hosts]
    return list(dict.fromkeys(files))


def scan(ip: str, port: int, timeout_s: int = 5) -> list[ScannedKey]:
    """The host keys `ip:port` offers, via ssh-keyscan; MoolaError when none came back."""
    tool = shutil.which("ssh-keyscan")
    if not tool:
        raise MoolaError("ssh-keyscan not found: install OpenSSH's client (openssh-client)")
    try:
        out = subprocess.run(
            [tool, "-T", str(timeout_s), "-p", str(port), ip],
            capture_output=True,
            text=True,
            timeout=timeout_s * 4 + 5,
            stdin=subprocess.DEVNULL,
        ).stdout
    except subprocess.TimeoutExpired:
        out = ""
    keys = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and not line.startswith("#"):
            keys.append(ScannedKey(parts[1], parts[2]))
    if not keys:
        raise MoolaError(
            f"no SSH host key came back from {ip}:{port} within {timeout_s} s: check that the "
            "pod runs sshd on port 22 (`invoke pods` shows its state)"
        )
    return sorted(set(keys), key=lambda k: k.type)


@dataclass
class Comparison:
    state: str  # "match", "differs" or "unpinned"
    pinned: list[dict] = field(default_factory=list)  # {"type", "fingerprint", "file", "as"}
    scanned: list[ScannedKey] = field(default_factory=list)

    def sentence(self, pod_id: str) -> str:
        if self.state == "match":
            where = self.pinned[0]["file"]
            return f"matches the key pinned in {where}: nothing to do"
        if self.state == "unpinned":
            return (
                "not pinned yet: compare the fingerprint with the pod's own (`ssh-keygen -lf "
                "/etc/ssh/ssh_host_ed25519_key.pub` in RunPod's web terminal), then run this "
                "again with --pin"
            )
        old = ", ".join(f"{p['type']} {p['fingerprint']} ({p['file']})" for p in self.pinned)
        return (
            f"DIFFERS from the pinned key {old}: the pod was re-created or made new host keys "
            f"(a restart of a template that keeps no keys on /workspace); if the pod's own "
            f"`ssh-keygen -lf` shows the new fingerprint, pin it: invoke pods.known-host --pod "
            f"{pod_id} --pin"
        )

    def to_dict(self) -> dict:
        return {
            "state": self.state,
            "pinned": self.pinned,
            "scanned": [{"type": k.type, "fingerprint": k.fingerprint} for k in self.scanned],
        }


def compare(alias: str, ip: str, port: int, scanned: list[ScannedKey], files: list[Path]):
    """Whether a scanned key matches what is pinned under `alias` (else under `[ip]:port`)."""
    import paramiko

    address = ip if port == 22 else f"[{ip}]:{port}"
    pinned: list[dict] = []
    for name in (alias, address):
        for path in files:
            if not path.exists():
                continue
            keys = paramiko.HostKeys()
            keys.load(str(path))
            for key_type, key in (keys.lookup(name) or {}).items():
                pinned.append(
                    {
                        "type": key_type,
                        "fingerprint": fingerprint(key.get_base64()),
                        "file": str(path),
                        "as": name,
                    }
                )
        if pinned:
            break  # the alias wins; an address pin counts only when the alias has none
    if not pinned:
        return Comparison("unpinned", [], scanned)
    got = {k.fingerprint for k in scanned}
    state = "match" if any(p["fingerprint"] in got for p in pinned) else "differs"
    return Comparison(state, pinned, scanned)


def pin(alias: str, scanned: list[ScannedKey], path: Path) -> Path:
    """Write `alias KEYTYPE BLOB` lines to `path`, replacing the alias's older lines there."""
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = []
    if path.exists():
        for line in path.read_text().splitlines():
            names = line.split()[0].split(",") if line.strip() else []
            if alias not in names:
                kept.append(line)
    kept += [f"{alias} {k.type} {k.blob}" for k in scanned]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(kept) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path

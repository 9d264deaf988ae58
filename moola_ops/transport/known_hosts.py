"""Host-key checking: which known_hosts files count, a pod's key under its alias, the
policies for an unknown key (refuse, or pin when asked), and the changed-key sentence."""

from __future__ import annotations

from pathlib import Path

from moola_ops.hosts.inventory import Host
from moola_ops.transport.errors import HostKeyError


def key_fingerprint_line(key) -> str:
    """A key as `ssh-keygen -lf` prints it: `256 SHA256:... (ED25519)`."""
    kind = key.get_name().removeprefix("ssh-").split("-")[0].upper()
    if kind.startswith("ECDSA"):
        kind = "ECDSA"
    return f"{key.get_bits()} SHA256:{_fingerprint(key)} ({kind})"


def changed_key_message(host: Host, hostname: str, port: int, new_key, old_key, files) -> str:
    """The sentence for a changed host key: both fingerprints and the known_hosts line to fix."""
    entry = hostname if port in (None, 22) else f"[{hostname}]:{port}"
    pod = host.runpod_pod_id
    names = [entry]
    if pod:  # a pod's key is pinned under its alias (moola_ops/hosts/runpod/)
        from moola_ops.hosts.runpod import key_alias

        names.insert(0, key_alias(pod))
    where = known_hosts_line(files, names, old_key)
    fix = f"edit {where[0]} line {where[1]}" if where else "edit the known_hosts file that holds it"
    remove = f"ssh-keygen -R '{where[2] if where else entry}'" + (
        f" -f {where[0]}" if where else ""
    )
    if pod:
        then = (
            f"compare `invoke pods.known-host --pod {pod}` with the pod's own "
            f"`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` and pin it with `--pin` (or {fix})"
        )
    else:
        then = (
            "check the new fingerprint out of band (on the host: ssh-keygen -lf "
            f"/etc/ssh/ssh_host_*_key.pub), then {fix} (or run `{remove}`) and connect again"
        )
    rebuilt = "the pod was re-created" if pod else "the host was rebuilt"
    return (
        f"host key of {host.name} ({entry}) CHANGED: the host now offers "
        f"{key_fingerprint_line(new_key)} but known_hosts has {key_fingerprint_line(old_key)}; "
        f"refusing to connect. If {rebuilt}, {then}"
    )


def known_hosts_line(files, names: list[str], key) -> tuple[str, int, str] | None:
    """(file, 1-based line, name) of the known_hosts entry for one of `names` with `key`,
    hashed or not."""
    from paramiko.hostkeys import HostKeyEntry, HostKeys

    for path in files:
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for number, line in enumerate(lines, 1):
            try:
                parsed = HostKeyEntry.from_line(line, number)
            except Exception:
                continue
            if parsed is None or parsed.key is None or parsed.key != key:
                continue
            for name in parsed.hostnames:
                for wanted in names:
                    hashed = name.startswith("|1|") and HostKeys.hash_host(wanted, name) == name
                    if name == wanted or hashed:
                        return str(path), number, wanted
    return None


def load_pod_keys(client, files: list[Path], pod_id: str, hostname: str, port: int) -> None:
    """Give paramiko the key pinned for the pod under its alias (`runpod-<id>`, as OpenSSH's
    HostKeyAlias) as the key of its current address; a pin under `[ip]:port` counts only when
    the alias has none (that address may have belonged to another pod before).
    """
    import paramiko

    from moola_ops.hosts.runpod import key_alias

    keys = paramiko.HostKeys()
    for path in files:
        if path.exists():
            keys.load(str(path))
    name = hostname if port in (None, 22) else f"[{hostname}]:{port}"
    pinned = keys.lookup(key_alias(pod_id)) or keys.lookup(name) or {}
    for key_type in list(pinned):
        client.get_host_keys().add(name, key_type, pinned[key_type])


class RefuseUnknown:
    """Missing-host-key policy: refuse with one sentence that says how to pin the key."""

    def __init__(self, pod_id: str | None = None):
        self.pod_id = pod_id

    def missing_host_key(self, client, hostname, key):
        if self.pod_id:
            raise HostKeyError(
                f"host key of pod {self.pod_id} ({hostname}) is not pinned ({key.get_name()} "
                f"SHA256:{_fingerprint(key)}): check it with `invoke pods.known-host --pod "
                f"{self.pod_id}` and pin it with `--pin` (or deploy with `--accept-new-host-key`; "
                "that choice is logged)"
            )
        raise HostKeyError(
            f"host key of {hostname} is not in known_hosts ({key.get_name()} "
            f"SHA256:{_fingerprint(key)}): verify it and add it (ssh-keyscan, or "
            "`--accept-new-host-key` to pin it now; that choice is logged)"
        )


class PinNewKey:
    """Missing-host-key policy for an explicit, logged trust-on-first-use."""

    def __init__(self, session, known_hosts: Path, pod_id: str | None = None):
        self.session = session
        self.known_hosts = known_hosts
        self.pod_id = pod_id

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        if self.pod_id:  # under the pod's alias, so the pin survives the next restart
            from moola_ops.hosts.runpod import key_alias

            hostname = key_alias(self.pod_id)
        with open(self.known_hosts, "a") as fh:
            fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        self.session.accepted_key = f"{key.get_name()} SHA256:{_fingerprint(key)}"


def _fingerprint(key) -> str:
    import base64
    import hashlib

    digest = hashlib.sha256(key.asbytes()).digest()
    return base64.b64encode(digest).decode().rstrip("=")

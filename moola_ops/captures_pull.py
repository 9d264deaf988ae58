"""Pulling a host's captures into the local cache: incremental and checksummed.

Only the bytes a file grew by since the last pull travel (over SFTP); afterwards the local
copy's sha256 must equal the host's hash of the same prefix, else (a file replaced on the host)
the whole prefix is fetched again and checked once more. New bytes are indexed into columns
(moola_ops/captures.py) as they land. moola_ops.captures re-exports these names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from moola_core.errors import MoolaError
from moola_ops.captures import (
    CAPTURE_NAME,
    DEFAULT_CACHE,
    _read_state,
    _write_state,
    host_cache,
    index_file,
)

# Runs on the host with python3 only: lists capture files with size and the sha256 of their
# first `size` bytes. Files whose size the operator already holds (argv JSON) are listed without
# a hash (nothing to fetch). One round trip for the listing.
_LIST_SCRIPT = r"""
import hashlib, json, os, sys
root, known = os.path.abspath(os.path.expanduser(sys.argv[1])), json.loads(sys.argv[2])
out = []
if os.path.isdir(root):
    for rel in sorted(os.listdir(root)):
        d = os.path.join(root, rel)
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            if not name.endswith(".jsonl"):
                continue
            p = os.path.join(d, name)
            try:
                with open(p, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    key = rel + "/" + name
                    digest = None
                    if known.get(key) != size:
                        h = hashlib.sha256()
                        left = size
                        while left > 0:
                            block = fh.read(min(left, 1 << 20))
                            if not block:
                                break
                            h.update(block)
                            left -= len(block)
                        size = size - left
                        digest = h.hexdigest()
            except OSError:
                continue
            out.append({"key": key, "size": size, "sha256": digest})
print(json.dumps({"root": root, "files": out}))
"""


@dataclass
class PullResult:
    """What one pull copied."""

    host: str
    files: int = 0  # capture files on the host
    fetched_files: int = 0  # files that had new bytes
    fetched_bytes: int = 0
    refetched: list[str] = field(default_factory=list)  # checksum mismatch: fetched again
    rows: int = 0  # rows indexed from the new bytes
    seconds: float = 0.0

    def summary(self) -> str:
        again = (
            f", {len(self.refetched)} fetched again after a checksum mismatch"
            if (self.refetched)
            else ""
        )
        return (
            f"{self.host}: {self.fetched_bytes / 1e6:.2f} MB new in {self.fetched_files} of "
            f"{self.files} capture files{again} ({self.seconds:.1f} s)"
        )


def pull_captures(session, host, cache: str | os.PathLike = DEFAULT_CACHE) -> PullResult:
    """Copy the host's new capture bytes into the local cache, checksummed, and index them.

    `session` is an open transport.HostSession. Each file is fetched from where the local copy
    ends; afterwards the local copy's sha256 must equal the host's hash of the same prefix, else
    (a file replaced on the host) the whole prefix is fetched again and checked once more.
    """
    from moola_ops.commands.layout import check_workspace

    started = time.monotonic()
    folder = host_cache(cache, host.name)
    state = _read_state(folder)
    known = {k: v["size"] for k, v in state["files"].items()}
    root = check_workspace(host.workspace).rstrip("/") + "/captures"
    python = host.python or "python3"
    cmd = (
        f"{shlex.quote(python)} -c {shlex.quote(_LIST_SCRIPT)} {shlex.quote(root)} "
        f"{shlex.quote(json.dumps(known))}"
    )
    res = session.run(cmd, timeout_s=120)
    if res.exit_code != 0:
        raise MoolaError(f"listing the captures on {host.name} failed: {res.tail()}")
    try:
        answer = json.loads(res.stdout.strip().splitlines()[-1])
        root, listing = answer["root"], answer["files"]
    except (ValueError, IndexError, KeyError, TypeError):
        raise MoolaError(f"{host.name} answered the capture listing with {res.tail()!r}") from None
    result = PullResult(host.name, files=len(listing))
    for entry in listing:
        key, size, digest = entry["key"], int(entry["size"]), entry["sha256"]
        if digest is None:
            continue  # unchanged since the last pull
        release, name = key.split("/", 1)
        if not CAPTURE_NAME.match(name) or "/" in name or release in ("", ".", ".."):
            continue
        raw = folder / "raw" / release / name
        raw.parent.mkdir(parents=True, exist_ok=True)
        have = raw.stat().st_size if raw.exists() else 0
        if have > size:  # the host's file is shorter than ours: it was replaced
            have = 0
        fetched = _fetch(session, f"{root}/{key}", raw, have, size)
        if _sha256(raw) != digest:
            result.refetched.append(key)
            fetched = _fetch(session, f"{root}/{key}", raw, 0, size)
            if _sha256(raw) != digest:
                raise MoolaError(
                    f"capture {key} from {host.name} does not match the host's checksum twice; "
                    "the disk or the connection is damaging data: check the host"
                )
        result.fetched_files += 1
        result.fetched_bytes += fetched
        result.rows += index_file(raw, folder / "index" / release)
        state["files"][key] = {"size": size, "sha256": digest, "indexed": size}
        _write_state(folder, state)  # after every file: an interrupted pull loses nothing
    result.seconds = time.monotonic() - started
    return result


def _fetch(session, remote: str, local: Path, offset: int, size: int) -> int:
    """Bytes [offset, size) of `remote` written at `offset` of `local` (truncated there)."""
    data = session.read_bytes(remote, offset=offset, length=size - offset)
    mode = "r+b" if local.exists() else "wb"
    with open(local, mode) as fh:
        fh.seek(offset)
        fh.truncate(offset)
        fh.write(data)
    return len(data)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pull_host(host, cache: str | os.PathLike = DEFAULT_CACHE, session=None) -> PullResult:
    """Open an SSH session to `host` (unless given) and pull its captures into the cache."""
    from moola_ops.transport import HostSession

    if session is not None:
        return pull_captures(session, host, cache)
    with HostSession(host) as opened:
        return pull_captures(opened, host, cache)

"""Pulling a host's captures into the local cache: incremental and checksummed.

Only the bytes a file grew by since the last pull travel (over SFTP); afterwards the local
copy's sha256 must equal the host's hash of the same prefix, else (a file replaced on the host)
the whole prefix is fetched again and checked once more. New bytes are indexed into columns
(moola_ops/serving/captures.py) as they land. moola_ops.serving.captures re-exports these names.

What the host says is not trusted: a listing entry that is not a file name, a size and a
sha256 is skipped (counted), a file larger than MAX_CAPTURE_FILE_BYTES is not fetched (said),
bytes travel and are hashed in FETCH_CHUNK pieces (never a whole file in memory), and a file
whose bytes could not be fetched, checked and indexed is cut back to what was there before, so
the cache never holds a half-done pull. Lines that fail their checks are counted per pull.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from moola_core.errors import MoolaError
from moola_ops.hosts.layout import Layout
from moola_ops.serving.captures import (
    CAPTURE_NAME,
    DEFAULT_CACHE,
    _read_state,
    _write_state,
    file_sha256,
    host_cache,
    index_file,
)
from moola_ops.transport import agent

PULL_MAX_BYTES = 64 << 20  # one pull copies at most this much (oldest files first); the rest
# waits for the next pull, which starts where this one stopped
MAX_CAPTURE_FILE_BYTES = 1 << 30  # the server closes a file at --capture-max-mb (16 MB)
FETCH_CHUNK = 8 << 20  # bytes per SFTP read
MAX_LISTED_FILES = 100_000
SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class PullResult:
    """What one pull copied."""

    host: str
    files: int = 0  # capture files on the host
    fetched_files: int = 0  # files that had new bytes
    fetched_bytes: int = 0
    refetched: list[str] = field(default_factory=list)  # checksum mismatch: fetched again
    rows: int = 0  # rows indexed from the new bytes
    skipped_lines: int = 0  # lines of the fetched files that failed their checks
    skipped_files: list[str] = field(default_factory=list)  # why each was not fetched
    left_files: int = 0  # files with new bytes left for the next pull (over the bound)
    left_bytes: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        again = (
            f", {len(self.refetched)} fetched again after a checksum mismatch"
            if (self.refetched)
            else ""
        )
        bad = ""
        if self.skipped_lines:
            bad += (
                f"; {self.skipped_lines} damaged or out-of-range lines skipped in the files fetched"
            )
        if self.skipped_files:
            bad += f"; {len(self.skipped_files)} files not fetched ({self.skipped_files[0]})"
        if self.left_files:
            bad += (
                f"; {self.left_bytes / 1e6:.2f} MB in {self.left_files} files left for the next "
                f"pull (at most {PULL_MAX_BYTES / 1e6:.0f} MB per pull, oldest first)"
            )
        return (
            f"{self.host}: {self.fetched_bytes / 1e6:.2f} MB new in {self.fetched_files} of "
            f"{self.files} capture files{again} ({self.seconds:.1f} s){bad}"
        )


def pull_captures(
    session, host, cache: str | os.PathLike = DEFAULT_CACHE, max_bytes: int = PULL_MAX_BYTES
) -> PullResult:
    """Copy the host's new capture bytes into the local cache, checksummed, and index them:
    oldest files first, at most `max_bytes` per pull (a file that would pass it waits for the
    next pull, unless nothing was fetched yet), so a pull after a long pause is bounded.

    `session` is an open transport.HostSession. Each file is fetched from where the local copy
    ends; afterwards the local copy's sha256 must equal the host's hash of the same prefix, else
    (a file replaced on the host) the whole prefix is fetched again and checked once more.
    """
    started = time.monotonic()
    folder = host_cache(cache, host.name)
    state = _read_state(folder)
    known = {k: v["size"] for k, v in state["files"].items()}
    layout = Layout(host.workspace)
    cmd = agent.command(
        layout,
        host.python,
        "captures",
        "list",
        layout.path("captures"),
        shlex.quote(json.dumps(known)),
    )
    res = session.run(cmd, timeout_s=120)
    if res.exit_code != 0:
        raise MoolaError(f"listing the captures on {host.name} failed: {res.tail()}")
    try:
        answer = json.loads(res.stdout.strip().splitlines()[-1])
        root, listing = answer["root"], answer["files"]
        if not isinstance(root, str) or not isinstance(listing, list):
            raise TypeError("root or files")
    except (ValueError, IndexError, KeyError, TypeError):
        raise MoolaError(
            f"{host.name} answered the capture listing with {res.tail()[:300]!r}"
        ) from None
    result = PullResult(host.name, files=len(listing))
    wanted = []
    for entry in listing[:MAX_LISTED_FILES]:
        listed = _listed(entry)
        if isinstance(listed, str):
            result.skipped_files.append(listed)
        elif listed[2] is not None:  # None: unchanged since the last pull
            wanted.append(listed)
    wanted.sort(key=lambda x: (x[0].rsplit("/", 1)[-1], x[0]))  # file names start with the UTC time
    for key, size, digest in wanted:
        release = key.split("/", 1)[0]
        raw = folder / "raw" / key
        raw.parent.mkdir(parents=True, exist_ok=True)
        before = raw.stat().st_size if raw.exists() else 0
        new_bytes = max(0, size - before)
        if result.fetched_bytes and result.fetched_bytes + new_bytes > max_bytes:
            result.left_files += 1
            result.left_bytes += new_bytes
            continue
        try:
            fetched = _pull_file(session, f"{root}/{key}", raw, before, size, digest, result)
            rows, skipped = index_file(raw, folder / "index" / release)
        except BaseException:
            _cut_back(raw, before, state["files"].get(key))  # never a half-done file cached
            raise
        result.fetched_files += 1
        result.fetched_bytes += fetched
        result.rows += rows
        result.skipped_lines += skipped
        state["files"][key] = {"size": size, "sha256": digest, "indexed": size}
        _write_state(folder, state)  # after every file: an interrupted pull loses nothing
    if len(listing) > MAX_LISTED_FILES:
        result.skipped_files.append(
            f"{len(listing) - MAX_LISTED_FILES} files past the first {MAX_LISTED_FILES:,}"
        )
    result.seconds = time.monotonic() - started
    return result


def _listed(entry) -> tuple[str, int, str | None] | str:
    """(key, size, sha256 or None) of one listing entry, or why it is not fetched."""
    if not isinstance(entry, dict):
        return "a listing entry that is not a file"
    key, size, digest = entry.get("key"), entry.get("size"), entry.get("sha256")
    if not isinstance(key, str) or key.count("/") != 1:
        return f"{str(key)[:60]!r} is not release/file"
    release, name = key.split("/", 1)
    if not CAPTURE_NAME.match(name) or not _release_name(release):
        return f"{key[:60]!r} is not a capture file name"
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return f"{key}: its size is not a whole number"
    if size > MAX_CAPTURE_FILE_BYTES:
        return (
            f"{key} is {size / 1e9:.1f} GB, over the {MAX_CAPTURE_FILE_BYTES / 2**30:g} GiB "
            "Moola reads (the server closes files at --capture-max-mb)"
        )
    if digest is not None and not (isinstance(digest, str) and SHA256.match(digest)):
        return f"{key}: its sha256 is not 64 hex digits"
    return key, size, digest


def _release_name(release: str) -> bool:
    from moola_ops.hosts.layout import check_name

    try:
        check_name(release, "release")
    except MoolaError:
        return False
    return True


def _pull_file(session, remote: str, raw: Path, have: int, size: int, digest: str, result) -> int:
    """Fetch `remote`'s new bytes into `raw` and check the whole against the host's sha256 (a
    mismatch fetches it all once more); -> bytes fetched."""
    if have > size:  # the host's file is shorter than ours: it was replaced
        have = 0
    fetched = _fetch(session, remote, raw, have, size)
    if file_sha256(raw) != digest:
        result.refetched.append(raw.parent.name + "/" + raw.name)
        fetched = _fetch(session, remote, raw, 0, size)
        if file_sha256(raw) != digest:
            raise MoolaError(
                f"capture {raw.parent.name}/{raw.name} from {result.host} does not match the "
                "host's checksum twice; the disk or the connection is damaging data: check the host"
            )
    return fetched


def _cut_back(raw: Path, before: int, known: dict | None) -> None:
    """After a failed fetch or index: the raw file back to the prefix the cache had checked
    (its recorded size and sha256), or gone when that prefix is not intact any more."""
    try:
        if not raw.exists():
            return
        with open(raw, "r+b") as fh:
            fh.truncate(before)
        intact = bool(known) and known.get("size") == before
        if not intact or file_sha256(raw) != known.get("sha256"):
            raw.unlink()
    except OSError:
        pass


def _fetch(session, remote: str, local: Path, offset: int, size: int) -> int:
    """Bytes [offset, size) of `remote` written at `offset` of `local` (truncated there), read
    FETCH_CHUNK at a time. A host that sends fewer bytes than it listed ends the fetch there
    (the checksum then decides)."""
    mode = "r+b" if local.exists() else "wb"
    fetched = 0
    with open(local, mode) as fh:
        fh.seek(offset)
        fh.truncate(offset)
        while offset + fetched < size:
            want = min(FETCH_CHUNK, size - offset - fetched)
            data = session.read_bytes(remote, offset=offset + fetched, length=want)
            fh.write(data)
            fetched += len(data)
            if len(data) < want:
                break
    return fetched


def pull_host(
    host, cache: str | os.PathLike = DEFAULT_CACHE, session=None, max_bytes: int = PULL_MAX_BYTES
) -> PullResult:
    """Open an SSH session to `host` (unless given) and pull its captures into the cache."""
    from moola_ops.transport import HostSession

    if session is not None:
        return pull_captures(session, host, cache, max_bytes)
    with HostSession(host) as opened:
        return pull_captures(opened, host, cache, max_bytes)

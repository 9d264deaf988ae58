"""The deployment log as a file: appends of whole lines under flock (fsynced, taken back out
when they do not fit), rotation by size (deployments.jsonl.1 newest), and reading every line
across the rotated files without reading one twice. `moola_ops.log.journal` is its only writer."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from moola_core.errors import MoolaError, os_error_sentence


class JournalWriteError(MoolaError):
    """The deployment log could not be written; nothing partial was left in it.

    `.path` is the log, `.strerror` the operating system's reason ("No space left on device"),
    as on the OSError it replaces.
    """

    def __init__(self, message: str, path: Path, strerror: str = ""):
        super().__init__(message)
        self.path = path
        self.strerror = strerror


def append_line(target: Path, line: bytes) -> None:
    """Append `line` (one JSON line, newline-terminated) to the log at `target` under an
    exclusive flock, whole or not at all, fsynced; rotate the log when it is full.

    Raises JournalWriteError (one sentence) when the line cannot be written whole; a partly
    written line is truncated away again, so the log only ever holds whole lines.
    """
    # O_APPEND + one write per line; the flock also serialises writers on filesystems where
    # O_APPEND alone is not atomic for larger lines (NFS), and makes readers see whole lines.
    fd = open_log(target, fcntl.LOCK_EX)
    try:
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a torn last line must not swallow this event
            _write_whole(fd, line, size, target)
            rotate_if_full(target, fd)  # still under the exclusive lock
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def open_log(target: Path, lock: int = fcntl.LOCK_SH) -> int:
    """The log opened for appending (created with its folder) and flocked with `lock`;
    JournalWriteError when that is impossible."""
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # exist_ok covers folders only: a file holds the folder's name
            reason = f"{os.strerror(errno.ENOTDIR)}: {target.parent} is a file"
            raise NotADirectoryError(errno.ENOTDIR, reason, str(target)) from None
        while True:
            # read as well: the last byte says whether the file ends on a whole line
            fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            fcntl.flock(fd, lock)
            if _still_current(fd, target):
                return fd
            # a rotation renamed the file between open and lock: open the new one
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    except OSError as exc:
        raise _write_error(target, exc) from None


def _still_current(fd: int, target: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(target).st_ino
    except FileNotFoundError:
        return False


def _write_whole(fd: int, data: bytes, size_before: int, target: Path) -> None:
    """Write all of `data` (looping over short writes) and fsync, or take it back out."""
    written = 0
    try:
        while written < len(data):
            count = os.write(fd, data[written:])
            if count <= 0:  # no progress and no error: treat as a full disk
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
            written += count
        os.fsync(fd)
    except OSError as exc:
        note = ""
        if written:
            try:
                os.ftruncate(fd, size_before)
                note = f"; only {written} of {len(data)} bytes fit and were taken back out"
            except OSError:  # left torn: the next event starts on a fresh line (append)
                note = f"; only {written} of {len(data)} bytes fit"
        raise _write_error(target, exc, note) from None


def _write_error(target: Path, exc: OSError, note: str = "") -> JournalWriteError:
    if exc.filename is None:
        exc.filename = str(target)
    sentence = os_error_sentence(exc, "write the deployment log")
    return JournalWriteError(
        f"{sentence}, or set MOOLA_LOG to a writable file{note}", target, exc.strerror or str(exc)
    )


# --- rotation by size: deployments.jsonl.1 is the newest rotated file, .N the oldest ------------

DEFAULT_MAX_MB = 16.0  # env MOOLA_LOG_MAX_MB; invoke.yaml moola.log_max_mb
DEFAULT_KEEP = 5  # rotated files kept; env MOOLA_LOG_KEEP; invoke.yaml moola.log_keep


def _limits() -> tuple[int, int]:
    """(bytes at which the log rotates, rotated files kept); a bad setting falls back."""
    try:
        max_mb = float(os.environ.get("MOOLA_LOG_MAX_MB") or DEFAULT_MAX_MB)
    except ValueError:
        max_mb = DEFAULT_MAX_MB
    try:
        keep = int(os.environ.get("MOOLA_LOG_KEEP") or DEFAULT_KEEP)
    except ValueError:
        keep = DEFAULT_KEEP
    return max(1, int(max_mb * 1024 * 1024)), max(1, keep)


def rotated_files(target: Path) -> list[Path]:
    """The rotated files of the log at `target` that exist, oldest first (.N ... .1)."""
    found = []
    for candidate in target.parent.glob(target.name + ".*"):
        suffix = candidate.name[len(target.name) + 1 :]
        if suffix.isdigit():
            found.append((int(suffix), candidate))
    return [p for _, p in sorted(found, reverse=True)]


def _open_current(target: Path, flags: int, lock: int) -> int:
    """Open and flock the file that is `target` now: a rotation between open and lock renamed
    the file we opened, so open again (the rotated file is never written or locked again)."""
    while True:
        fd = os.open(target, flags, 0o644)
        fcntl.flock(fd, lock)
        if _still_current(fd, target):
            return fd
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def rotate_if_full(target: Path, fd: int) -> bool:
    """With the exclusive lock held on `fd` (the current log): when it has reached the size
    limit, shift .1 -> .2 ... (dropping beyond the kept count) and rename it to .1."""
    max_bytes, keep = _limits()
    if os.fstat(fd).st_size < max_bytes:
        return False
    for old in rotated_files(target):
        n = int(old.name.rsplit(".", 1)[1])
        if n >= keep:
            old.unlink(missing_ok=True)
        else:
            os.replace(old, old.with_name(f"{target.name}.{n + 1}"))
    os.replace(target, target.with_name(target.name + ".1"))
    return True


def read_lines(target: Path) -> list[str]:
    """Every line of the log, rotated files first, read while the current file is share-locked
    (no rotation can happen meanwhile, so no line is read twice or missed)."""
    try:
        fd = _open_current(target, os.O_RDONLY, fcntl.LOCK_SH)
    except FileNotFoundError:  # rotated and not written since (or never written)
        return [line for f in rotated_files(target) for line in _lines(f)]
    try:
        lines = [line for f in rotated_files(target) for line in _lines(f)]
        with os.fdopen(os.dup(fd), encoding="utf-8", errors="replace") as fh:
            lines += fh.readlines()
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return lines


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:  # dropped by a rotation since it was listed
        return []

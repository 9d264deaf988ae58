"""Errors a person can cause and fix. Standard library only.

Raise `MoolaError` (or a subclass) with one sentence that says what is wrong and how to fix it;
the Invoke front door turns it into that sentence and a non-zero exit, never a traceback.
"""

from __future__ import annotations  # ships to hosts whose Python may predate `int | None`


class MoolaError(Exception):
    """A user-facing failure: the message is shown as-is; `exit_code` becomes the exit status."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ValidationError(MoolaError):
    """Input data, a config or a file failed validation; `problems` lists every finding."""

    def __init__(self, message: str, problems: list | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


# What a person can do about the OSErrors that reach a task (by errno name).
_OS_ADVICE = {
    "ENOSPC": "free disk space",
    "EDQUOT": "free disk space (quota exceeded)",
    "EFBIG": "the file hit a size limit: free space or raise the limit",
    "EACCES": "check its permissions",
    "EPERM": "check its permissions (or an immutable flag: lsattr)",
    "EROFS": "the filesystem is read-only: use a writable location",
    "ENOENT": "check the path",
    "EISDIR": "it is a folder: give a file instead",
    "ENOTDIR": "a file is in the way of a folder on that path",
    "EEXIST": "remove it or choose another name",
    "ECONNREFUSED": "check the address and that the service is up",
    "ECONNRESET": "the other side hung up: try again",
    "ETIMEDOUT": "check the network and that the other side is up",
    "EHOSTUNREACH": "check the network and the address",
    "EPIPE": "the other side went away: try again",
}


def os_error_sentence(exc: OSError, action: str = "") -> str:
    """One sentence for an OSError: what failed, on which path, and what to do.

    `action` says what Moola was doing ("write the deployment log"); without it the sentence
    names the path ("cannot use PATH (Is a directory): ...").
    """
    import errno as _errno

    name = _errno.errorcode.get(exc.errno or 0, "")
    reason = exc.strerror or str(exc) or type(exc).__name__
    # an int is a file descriptor (os.fdopen), which names nothing a person can fix
    path = "" if exc.filename is None or isinstance(exc.filename, int) else str(exc.filename)
    if exc.filename2 is not None:
        path = f"{path} -> {exc.filename2}"
    if action:
        what = f"could not {action}" + (f" {path}" if path else "")
    else:
        what = f"cannot use {path}" if path else "a system call failed"
    advice = _OS_ADVICE.get(name, "check the path and try again" if path else "try again")
    return f"{what} ({reason}): {advice}"

"""What the transport raises: one sentence each (MoolaError), and Aborted for a cancel."""

from __future__ import annotations

import socket

from moola_core.errors import MoolaError


class TransportError(MoolaError):
    """The host could not be reached, refused us, or the connection broke."""


class HostKeyError(TransportError):
    """The host's key is unknown or changed: never connect silently."""


class CommandTimeout(TransportError):
    """A remote command outlived its deadline; its process group was killed on the host."""

    def __init__(self, message: str, timeout_s: float, killed: bool):
        super().__init__(message)
        self.timeout_s = timeout_s
        self.killed = killed  # False: the kill could not be confirmed (host-side timeout remains)


class Aborted(Exception):  # noqa: N818 - it is an event (Ctrl-C), not an error condition
    """Raised inside an upload callback to stop a transfer (Ctrl-C, cancelled fleet); also
    what a `run` or `upload` raises after `HostSession.cancel()`."""


def short_reason(exc: BaseException) -> str:
    """A low-level failure in a few words, for the end of a sentence."""
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, EOFError):
        return "the connection was closed"
    text = str(exc).strip()
    return text or type(exc).__name__

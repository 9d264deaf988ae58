"""Keepalives and deadlines for one SSH connection (a daemon thread per HostSession)."""

from __future__ import annotations

import contextlib
import threading
import time

KEEPALIVE_MAX_MISSED = 3  # silent keepalive intervals before the peer counts as dead
# After Ctrl-C a host gets one keepalive at once and this long to answer anything; silence
# means its link is cut (a live host answers in one round trip, even a busy one), so the run's
# cleanup does not wait 15-20 s of keepalives, then connection attempts, for a dead host.
PROBE_SILENCE_S = 3.0


class Watchdog(threading.Thread):
    """Keepalives and deadlines for one connection, on a daemon thread.

    Every `interval` seconds without a packet from the peer it sends an OpenSSH keepalive that
    asks for an answer; when nothing at all arrived for KEEPALIVE_MAX_MISSED intervals, or an
    operation's deadline passed, it closes the transport so that the waiting call fails.
    """

    def __init__(self, session, transport, interval: float):
        super().__init__(name=f"moola-keepalive-{session.host.name}", daemon=True)
        self.session = session
        self.transport = transport
        self.interval = interval
        self.heard = time.monotonic()
        self.dropped: str | None = None
        self._deadline: tuple[float, str] | None = None
        self._stopped = threading.Event()
        self._sender: threading.Thread | None = None
        self._probed = 0.0
        self._urgent: tuple[float, float] | None = None  # (probe sent, silence allowed)
        if interval > 0:
            self._listen()

    def _listen(self) -> None:
        # Any packet from the peer proves it alive: during an upload the acknowledgements
        # arrive while our own keepalive may still sit behind megabytes of data.
        packetizer = self.transport.packetizer
        read_message = packetizer.read_message

        def read_and_note():
            message = read_message()
            self.heard = time.monotonic()
            return message

        packetizer.read_message = read_and_note

    def set_deadline(self, when: float | None, reason: str) -> None:
        self._deadline = None if when is None else (when, reason)

    def stop(self) -> None:
        self._stopped.set()

    def probe_now(self, silence_s: float = PROBE_SILENCE_S) -> None:
        """Send a keepalive at once; a peer that sends nothing at all for `silence_s` after it
        is dead (the connection is closed). Only with keepalives on (a listening watchdog)."""
        if self.interval <= 0 or self._urgent is not None:
            return
        self._urgent = (time.monotonic(), silence_s)
        self._probe()

    @property
    def probing(self) -> bool:
        """True once `probe_now` sent its keepalive."""
        return self._urgent is not None

    def verdict(self) -> bool | None:
        """After `probe_now`: True once the peer answered, False once it was found dead, None
        while it is still unknown (or no probe was sent)."""
        if self.dropped:
            return False
        urgent = self._urgent
        if urgent is None:
            return None
        return True if self.heard >= urgent[0] else None

    def run(self) -> None:
        tick = 0.25 if self.interval <= 0 else min(0.25, self.interval / 4)
        while not self._stopped.wait(tick):
            if not self.transport.is_active():
                return
            if self.session.ctrl_c and self.session.cut_on_ctrl_c:
                self._drop("interrupted (Ctrl-C)")
                return
            now = time.monotonic()
            deadline = self._deadline
            if deadline is not None and now > deadline[0]:
                self._drop(deadline[1])
                return
            if self.interval <= 0:
                continue
            urgent = self._urgent
            if urgent is not None and self.heard < urgent[0] and now - urgent[0] > urgent[1]:
                self._drop(
                    f"{self.session.host.name} stopped answering: no reply within "
                    f"{urgent[1]:g}s (the network to it is down, or its sshd is stopped)"
                )
                return
            silent = now - self.heard
            if silent > self.interval * KEEPALIVE_MAX_MISSED:
                self._drop(
                    f"{self.session.host.name} stopped answering: no reply to keepalives for "
                    f"{silent:.0f}s (sshd stopped or the network is down)"
                )
                return
            if silent >= self.interval and now - self._probed >= self.interval:
                self._probe()
                self._probed = now

    def _probe(self) -> None:
        if self._sender is not None and self._sender.is_alive():
            return  # the previous keepalive is still stuck in a full send buffer
        self._sender = threading.Thread(target=self._send_keepalive, daemon=True)
        self._sender.start()

    def _send_keepalive(self) -> None:
        from paramiko.common import cMSG_GLOBAL_REQUEST
        from paramiko.message import Message

        message = Message()
        message.add_byte(cMSG_GLOBAL_REQUEST)
        message.add_string("keepalive@openssh.com")
        message.add_boolean(True)  # want a reply: OpenSSH answers with REQUEST_FAILURE
        with contextlib.suppress(Exception):
            self.transport._send_user_message(message)

    def _drop(self, reason: str) -> None:
        self.dropped = reason
        self.session._drop(reason)

"""One host during one run: its session, layout, journal, facts, lock, and what the guard
(moola_ops/deploy/guard.py) must undo if the run ends early."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from moola_ops.deploy.commands import compose
from moola_ops.deploy.commands import facts as facts_cmd
from moola_ops.deploy.commands import lock as lock_cmd
from moola_ops.deploy.hooks import Hooks
from moola_ops.deploy.results import HostOutcome, LogFailed, Options, Refused, StepFailed
from moola_ops.deploy.undo import UndoStack
from moola_ops.hosts.inventory import Host
from moola_ops.hosts.layout import Layout
from moola_ops.log import steps
from moola_ops.log.journal import Journal
from moola_ops.transport import Aborted, HostSession, Result, TransportError

Stage = tuple[str, Callable[["HostContext"], "HostOutcome | None"]]
RECONNECT_AFTER_CTRL_C_S = 5.0  # one connection attempt, this long, to clean up after Ctrl-C


class HostGone(TransportError):
    """The host stopped answering during this run: nothing more is tried on it (no retries,
    no reconnects); the guard reports what it left there instead."""


class HostContext:
    """A host during one run; stages read and write its fields (facts, target, previous)."""

    def __init__(self, host: Host, journal: Journal, opts: Options, cancel: threading.Event):
        self.host = host
        self.journal = journal
        self.opts = opts
        self.cancel = cancel
        self.layout = Layout(host.workspace)
        self.ssh = HostSession(host, accept_new_host_key=opts.accept_new_host_key)
        self.steps: dict[str, float] = {}
        self.deadline: float | None = None
        # what the flow found and decided
        self.facts: facts_cmd.HostFacts | None = None
        self.previous: str | None = None  # the valid release `current` held when we came
        self.target: str | None = None
        self.bundle = None
        self.on_host: str = "absent"
        self.notes: list[str] = []  # sentences added to the host's outcome
        self.hooks = Hooks()  # what runs at the flow's named points (deploy/flows.hooks_for)
        # what the guard must undo or finish: each stage pushes its own undo (deploy/undo.py)
        self.undo = UndoStack()
        self.locked = False
        self.in_switch = False  # inside the switch stage: Ctrl-C waits for its end
        self.switched = False  # `current` moved to the target and its check passed
        self.cleaning = False
        self.log_problem: str | None = None
        self.gone: str | None = None  # why the host counts as dead in this run (HostGone)

    # -- plumbing ---------------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Stop here if Ctrl-C was pressed (between stages, never inside the switch)."""
        if self.cancel.is_set():
            raise Aborted()

    def interrupt(self) -> None:
        """Called from the waiting thread on Ctrl-C: cut the connection unless a switch is
        under way, so a long remote command (upload, check) ends now; the guard cleans up.
        The cancel also probes the host: one that does not answer at once is dead
        (HostSession.cancel), and the guard then reports what it left instead of waiting."""
        if not self.in_switch:
            with contextlib.suppress(Exception):
                # a transport that can cancel kills the running remote command's process group
                getattr(self.ssh, "cancel", self.ssh.close)()

    def timeout(self, seconds: float) -> float:
        """`seconds`, but never past this host's deadline (at least one second)."""
        if self.deadline is None:
            return seconds
        return max(1.0, min(seconds, self.deadline - time.monotonic()))

    def run(
        self, command: str, *, timeout_s: float | None = None, planned: str = "", **_plan: Any
    ) -> Result:
        """Run `command` on the host. `planned` is what success prints (the plan's answer,
        moola_ops/deploy/plan.py); `read_only=True` lets a plan run it for real."""
        if self.cancel.is_set() and not (self.in_switch or self.cleaning):
            raise Aborted()
        return self.ssh.run(
            command, timeout_s=self.timeout(timeout_s or self.opts.command_timeout_s)
        )

    @contextlib.contextmanager
    def step(self, name: str, **detail: Any) -> Iterator[dict[str, Any]]:
        """One named step: journal line (ok / failed / aborted) and its duration.

        A failure to write the local log becomes LogFailed (one sentence) after the step's own
        work; during cleanup it is remembered instead, so cleanup always runs to its end.
        """
        self.pause_point(name)
        started = time.monotonic()
        body_error: list[BaseException] = []
        try:
            with self.journal.step(self.host.name, name, **detail) as info:
                try:
                    yield info
                except Aborted:
                    info["status"] = "aborted"
                    body_error.append(Aborted())
                    raise
                except BaseException as exc:
                    body_error.append(exc)
                    raise
        except BaseException as exc:
            self.steps[name] = round(time.monotonic() - started, 3)
            if body_error and exc is body_error[0] or isinstance(exc, Aborted):
                if isinstance(exc, TransportError) and "(during " not in str(exc):
                    raise TransportError(f"{exc} (during {name})") from None
                raise
            self._log_failed(exc)
            if body_error:
                raise body_error[0] from None
            if not self.cleaning:
                raise LogFailed(self.log_problem) from None
            return
        self.steps[name] = round(time.monotonic() - started, 3)

    def pause_point(self, name: str) -> None:
        """Tests and rehearsals: with env MOOLA_PAUSE_AT=<step> and MOOLA_PAUSE_FILE=<path>,
        wait at the entry of that step (after writing <path>.waiting) until <path> exists or
        Ctrl-C; a test can then interrupt at exactly the point it names."""
        if os.environ.get("MOOLA_PAUSE_AT") != name or not os.environ.get("MOOLA_PAUSE_FILE"):
            return
        gate = os.environ["MOOLA_PAUSE_FILE"]
        with open(f"{gate}.waiting", "w") as fh:
            fh.write(f"{self.host.name} {name}\n")
        while not os.path.exists(gate) and not self.cancel.is_set():
            time.sleep(0.05)
        if self.cancel.is_set() and not (self.in_switch or self.cleaning):
            raise Aborted()

    def record(self, name: str, status: str, **detail: Any) -> None:
        """One log line outside a step; a log failure is remembered, never raised."""
        try:
            self.journal.record(self.host.name, name, status, **detail)
        except Exception as exc:
            self._log_failed(exc)

    def _log_failed(self, exc: BaseException) -> None:
        if self.log_problem is None:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            self.log_problem = (
                f"the deployment log {self.journal.path} could not be written ({reason}); "
                f"{self.host.name}'s own revisions.log still records every switch"
            )

    # -- connection, facts, lock ----------------------------------------------------------

    def connect(self) -> None:
        with self.step(steps.CONNECT, address=self.host.address) as info:
            self.ssh.open()
            if self.ssh.accepted_key:
                info["accepted_new_host_key"] = self.ssh.accepted_key

    def reconnect(self) -> None:
        """A fresh connection (host key checked again) after the old one broke. After Ctrl-C
        it is one attempt of at most RECONNECT_AFTER_CTRL_C_S: the run is ending."""
        with contextlib.suppress(Exception):
            self.ssh.close()
        host = self.host
        if self.cancel.is_set():
            limit = min(host.connect_timeout_s, RECONNECT_AFTER_CTRL_C_S)
            host = replace(host, connect_timeout_s=limit, connect_retries=0)
        self.ssh = HostSession(host)
        self.ssh.open()

    def read_facts(self, names=facts_cmd.DEPLOY_FACTS) -> facts_cmd.HostFacts:
        """The named facts in one round trip, read-only."""
        out = self.run(facts_cmd.gather(self.layout, self.host.python, names))
        return facts_cmd.parse(out.stdout)

    def holder(self, what: str) -> dict[str, Any]:
        return {
            "deployment": self.journal.deployment,
            "actor": self.journal.actor,
            "what": what,
            "since": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "pid": os.getpid(),
            "client": socket.gethostname(),
        }

    def lock_and_facts(self, what: str) -> facts_cmd.HostFacts:
        """Take the deploy lock and read the host's facts in one round trip."""
        with self.step(steps.LOCK, what=what) as info:
            acquire = lock_cmd.acquire(self.layout, self.holder(what))
            out = self.run(
                compose.combine(acquire, facts_cmd.gather(self.layout, self.host.python))
            )
            try:
                acquired, held_by = lock_cmd.parse_acquire(out.stdout)
                facts = facts_cmd.parse(out.stdout)
            except ValueError:
                raise StepFailed(
                    f"could not take the deploy lock on {self.host.name} in "
                    f"{self.host.workspace}: {out.tail(200) or 'no answer'}; check that the "
                    "workspace is writable (fix `workspace:` in the inventory)"
                ) from None
            info["current"] = facts.current
            if facts.current_problem:
                info["current_problem"] = facts.current_problem
            if not acquired:
                info["status"] = "refused"
                info["holder"] = held_by
                raise Refused(lock_message(self.host.name, held_by, facts, self.opts))
            self.locked = True
        self.facts = facts
        self.previous = facts.current
        return facts

    def unlock(self) -> None:
        """Release our lock; on a broken connection, reconnect once to do it."""
        if not self.locked:
            return
        with self.step(steps.UNLOCK) as info:
            out = self.run_reconnecting(
                lock_cmd.release(self.layout, self.journal.deployment),
                info,
                planned=lock_cmd.RELEASED,
            )
            info["released"] = lock_cmd.parse_release(out.stdout)
            self.locked = False

    def run_here(self, command: str, env: dict[str, str], timeout_s: float) -> tuple[int, str]:
        """Run `command` with /bin/sh on this machine: (exit code, its last words); 124 when it
        ran past `timeout_s`."""
        try:
            done = subprocess.run(
                ["/bin/sh", "-c", command],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=timeout_s,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return 124, ""
        return done.returncode, (done.stderr.strip() or done.stdout.strip())

    def stamp(self) -> str:
        """The UTC time stamp of a snapshot name (a plan shows TIME)."""
        return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")

    def run_reconnecting(self, command: str, info: dict | None = None, **_plan: Any) -> Result:
        """Run a cleanup command within the cleanup deadline: on the same connection when it is
        alive (after our own Ctrl-C too), else over one fresh one. A host found dead (no answer
        to keepalives or to the Ctrl-C probe, or no new connection) raises HostGone, now and
        for every later command of this run."""
        if self.gone:
            raise HostGone(self.gone)
        limit = self.opts.cleanup_timeout_s
        try:
            return self.ssh.run(command, timeout_s=limit)
        except Aborted:  # cancelled by our own Ctrl-C: go on here if the host is alive
            if not self.ssh.resume():
                self._reconnect_or_gone(info)
        except TransportError:  # broken, or this cleanup command hung
            self._reconnect_or_gone(info)
        try:
            return self.ssh.run(command, timeout_s=limit)
        except (TransportError, Aborted) as exc:
            raise self._found_gone(str(exc) or "no answer") from None

    def _reconnect_or_gone(self, info: dict | None) -> None:
        if self.ssh.dead:
            raise self._found_gone(self.ssh.dead)
        try:
            self.reconnect()
        except (TransportError, Aborted) as exc:
            raise self._found_gone(str(exc) or "no new connection") from None
        if info is not None:
            info["reconnected"] = True

    def _found_gone(self, reason: str) -> HostGone:
        self.gone = reason
        return HostGone(reason)

    def left_behind(self) -> list[str]:
        """What this run's guard could not undo on the host (it stopped answering)."""
        left = []
        if self.locked:
            left.append(f"its deploy lock (deployment {self.journal.deployment})")
        return left + self.undo.left()

    def left_sentence(self) -> str:
        """`left on H: ...; once H answers again: <the commands that clear it>`."""
        name, left = self.host.name, self.left_behind()
        if not left:
            return ""
        fixes = [lock_cmd.break_hint(name)] if self.locked else []
        fixes += self.undo.fixes()
        then = f"; once {name} answers again: {', then '.join(fixes)}" if fixes else ""
        return f"left on {name}: {'; '.join(left)}{then}"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ssh.close()


def lock_message(name: str, holder: dict | None, facts: facts_cmd.HostFacts, opts: Options) -> str:
    """`H is locked by ...`, calling a stale lock stale, always with the --break command."""
    age = facts.lock.age_s if facts.lock is not None else None
    stale = lock_cmd.stale_reason(holder, age, max_age_s=lock_cmd.MAX_AGE_S)
    hint = lock_cmd.break_hint(name)
    if stale:
        return f"{name} is locked by {lock_cmd.describe_holder(holder)}, a STALE lock ({stale}): {hint}"
    return f"{name} is locked by {lock_cmd.describe_holder(holder)}; wait for that run, or if it is dead: {hint}"

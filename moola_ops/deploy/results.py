"""What a run reports (outcomes per host, the fleet's result) and the knobs it takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moola_core.errors import MoolaError


def disk_need(archive_bytes: int, unpacked_bytes: int) -> int:
    """Free disk a deploy needs on the host: the uploaded archive, the release it unpacks to,
    and a snapshot of the release being left (about as large). The unpacked size, not the
    compressed one, is what fills a volume."""
    return archive_bytes + 2 * unpacked_bytes


STATUSES = ("ok", "noop", "planned", "failed", "refused", "aborted", "skipped")


@dataclass
class HostOutcome:
    """How one host ended: status ok | noop | planned | failed | refused | aborted | skipped."""

    host: str
    status: str
    message: str = ""
    current: str | None = None  # version `current` points at when we left the host
    previous: str | None = None  # version it pointed at before
    duration_s: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds
    plan: dict[str, Any] | None = None  # --plan: what would happen (see engine.plan)

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "noop", "planned")


@dataclass
class FleetResult:
    """The outcome of one run over one or more hosts (one deployment id)."""

    deployment: str
    phase: str
    bundle: str
    outcomes: list[HostOutcome]
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return bool(self.outcomes) and all(o.ok for o in self.outcomes) and not self.interrupted

    @property
    def exit_code(self) -> int:
        """0 when every host is fine, 130 after Ctrl-C (even when the new release is live
        and checked: the person asked to stop), 1 when any host failed."""
        if self.interrupted or any(o.status == "aborted" for o in self.outcomes):
            return 130
        return 0 if self.ok else 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "phase": self.phase,
            "bundle": self.bundle,
            "ok": self.ok,
            "interrupted": self.interrupted,
            "hosts": [o.__dict__ for o in self.outcomes],
        }


class StepFailed(MoolaError):
    """A step failed on one host; the message is that host's one-line outcome."""


class Refused(MoolaError):
    """The host declined before anything changed (lock held by someone else)."""


class LogFailed(MoolaError):
    """The local deployment log could not be written (the host was still settled safely)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) ended a run; `result` holds what each host ended on."""

    def __init__(self, result: FleetResult):
        super().__init__("interrupted")
        self.result = result


@dataclass
class Options:
    """Knobs shared by deploy, rollback, drill, restore and repair. Every remote operation has
    a deadline (seconds); see docs/runbook.md "Deadlines"."""

    keep_releases: int = 5  # newest releases kept on the host (plus current and previous)
    keep_backups: int = 5  # newest snapshots kept (plus the newest of current and previous)
    full_post_check: bool = False  # also run the runtime check through `current` after a switch
    accept_new_host_key: bool = False  # pin an unknown host key (logged) instead of refusing
    check_timeout_s: float = 600.0  # runtime check limit (--check-timeout), enforced on the host
    command_timeout_s: float = 300.0  # any other remote command (facts, promote, switch, ...)
    upload_timeout_s: float = 1800.0  # the whole upload of one bundle
    cleanup_timeout_s: float = 30.0  # each command of the cleanup after a failure or Ctrl-C
    # after Ctrl-C, a host not inside its switch gets this long to clean up; then the run ends
    # and names what that host still holds (a host that does not answer at all is found dead
    # within transport.watchdog.PROBE_SILENCE_S and not waited for)
    abort_grace_s: float = 8.0
    check_runs: int | None = None  # timed runs of the runtime check (None: the runtime's default)
    check_warmup: int | None = None
    check_backend: str | None = None  # None: the runtime picks the fastest that matches golden
    parallel: int = 4  # hosts at once
    canary: int = 0  # hosts deployed first; the rest stop if one fails
    batch: int = 0  # after the canary, hosts per wave (0: all at once, within `parallel`)
    plan: bool = False  # read facts and say what would happen; change nothing, lock nothing
    deadline_s: float | None = None  # one host's whole run (None: host_deadline_s's sum)
    progress: Callable[[str, int], Callable[[int, int], None] | None] | None = None
    journal_path: str | None = None  # None: env MOOLA_LOG or logs/deployments.jsonl
    serve: bool = True  # start the target's server, move live traffic with `current`
    keep_standby: bool = True  # the previous release's server stays warm (fast rollback)
    # a person's reason to ship a bundle whose run failed or never went through the quality
    # gate (`invoke deploy --override-gate`); logged as "overridden", never as a pass
    gate_override: str | None = None

    @property
    def host_deadline_s(self) -> float:
        """The longest one host's run may take: every step at its own deadline, plus cleanup.
        A lock older than this is stale."""
        if self.deadline_s:
            return self.deadline_s
        return (
            self.upload_timeout_s
            + 3 * self.check_timeout_s
            + 8 * self.command_timeout_s
            + 6 * self.cleanup_timeout_s
        )

"""The deploy engine: deploy, rollback, drill, backups, restore and the lock, host by host.

A deploy reads as named stages (Capistrano); each stage is one step in the deployment log:

    connect -> lock (+ facts, one round trip) -> preflight -> upload -> promote -> check
    -> switch (snapshot of the release being left + atomic switch, one round trip)
    -> post-check (through `current`; on failure switch back at once) -> prune -> unlock

Commands come from `moola_ops.commands` (pure builders); `moola_ops.transport` runs them.
Fleets run hosts in parallel with a bound, optionally a canary first and then batches.
Ctrl-C stops every host at its next step boundary: the lock is released, `current` stays on a
verified release, and an "aborted" line lands in the log.

Public API for other rooms (the checklist and health checks use these):
    resolve_bundle(spec) -> LocalBundle
    deploy(hosts, bundle, ...) / rollback(hosts, ...) / drill(hosts, ...) -> FleetResult
    list_backups(host) / restore(host, snapshot) / lock_status(host) / release_lock / break_lock
    host_facts(host) -> HostFacts
    verify_current(host, deep=False) -> CurrentCheck   (checksums through `current`, + runtime)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moola_core.bundle import archive as bundle_archive
from moola_core.errors import MoolaError
from moola_ops.commands import facts as facts_cmd
from moola_ops.commands import lock as lock_cmd
from moola_ops.commands import release as release_cmd
from moola_ops.commands.layout import Layout, check_name
from moola_ops.inventory import Host
from moola_ops.journal import Journal
from moola_ops.transport import Aborted, HostSession, Result, TransportError

DEFAULT_BUNDLES = Path("bundles")
DISK_FACTOR = 3  # free disk needed: archive + extracted release + a snapshot


# --- results ----------------------------------------------------------------------------------


@dataclass
class HostOutcome:
    """How one host ended: status ok | noop | failed | refused | aborted | skipped."""

    host: str
    status: str
    message: str = ""
    current: str | None = None  # version `current` points at when we left the host
    previous: str | None = None  # version it pointed at before
    duration_s: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "noop")


@dataclass
class FleetResult:
    """The outcome of one run over one or more hosts (one deployment id)."""

    deployment: str
    phase: str
    bundle: str
    outcomes: list[HostOutcome]

    @property
    def ok(self) -> bool:
        return bool(self.outcomes) and all(o.ok for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        """0 when every host is fine, 130 after Ctrl-C, 1 when any host failed."""
        if any(o.status == "aborted" for o in self.outcomes):
            return 130
        return 0 if self.ok else 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "phase": self.phase,
            "bundle": self.bundle,
            "ok": self.ok,
            "hosts": [o.__dict__ for o in self.outcomes],
        }


class StepFailed(MoolaError):
    """A step failed on one host; the message is that host's one-line outcome."""


class Refused(MoolaError):
    """The host declined before anything changed (lock held by someone else)."""


# --- the bundle on this machine --------------------------------------------------------------


@dataclass(frozen=True)
class LocalBundle:
    """A bundle archive ready to ship: where it is, its version, sha256 and size."""

    path: Path
    version: str
    sha256: str
    size: int


def resolve_bundle(spec: str, *, bundles_dir: str | os.PathLike = DEFAULT_BUNDLES) -> LocalBundle:
    """`v0.3` -> bundles/moola-v0.3.tar.gz, or a path to an archive; reads its manifest version.

    Names are validated before anything else, so a version carrying shell characters never
    reaches a remote command.
    """
    is_path = Path(spec).is_file()
    if is_path:
        path = Path(spec)
    else:
        path = Path(bundles_dir) / f"moola-{check_name(spec, 'bundle version')}.tar.gz"
    if not path.is_file():
        raise MoolaError(
            f"bundle {path} not found: build it with `invoke bundle --version {spec}` "
            "or pass --bundle PATH/TO/moola-VERSION.tar.gz"
        )
    version = _archive_version(path)
    check_name(version, "bundle version (from its manifest)")
    if not is_path and version != spec:
        raise MoolaError(f"bundle {path} says version {version!r}, not {spec!r}: rebuild it")
    return LocalBundle(
        path=path,
        version=version,
        sha256=bundle_archive.sha256_file(path),
        size=path.stat().st_size,
    )


def _archive_version(path: Path) -> str:
    """The version a bundle archive's manifest says, after archive.py's checks of its entries
    (the same the host repeats before extracting: no links, '..', stray folders)."""
    version, members, tar = bundle_archive.read_members(path)
    with tar:
        data = tar.extractfile(members[bundle_archive.MANIFEST_NAME]).read()
    said = bundle_archive.load_manifest_bytes(data, f"{path.name}:manifest.json").get("version")
    if said != version:
        raise MoolaError(
            f"bundle {path} is in folder moola-{version}/ but its manifest says {said!r}: "
            "rebuild it with `invoke bundle`"
        )
    return version


# --- options ----------------------------------------------------------------------------------


@dataclass
class Options:
    """Knobs shared by deploy, rollback and drill."""

    keep_releases: int = 5  # newest releases kept on the host (plus current and previous)
    keep_backups: int = 5  # newest snapshots kept (plus the newest of current and previous)
    full_post_check: bool = False  # also run the runtime check through `current` after a switch
    accept_new_host_key: bool = False  # pin an unknown host key (logged) instead of refusing
    check_timeout_s: float = 600.0  # runtime check limit
    check_runs: int | None = None  # timed runs of the runtime check (None: the runtime's default)
    check_warmup: int | None = None
    check_backend: str | None = None  # None: the runtime picks the fastest that matches golden
    parallel: int = 4  # hosts at once
    canary: int = 0  # hosts deployed first; the rest stop if one fails
    batch: int = 0  # after the canary, hosts per wave (0: all at once, within `parallel`)
    progress: Callable[[str, int], Callable[[int, int], None] | None] | None = None
    journal_path: str | None = None  # None: env MOOLA_LOG or logs/deployments.jsonl


# --- fleet runner -----------------------------------------------------------------------------


def _run_fleet(
    hosts: list[Host],
    journal: Journal,
    opts: Options,
    work: Callable[[Host, threading.Event], HostOutcome],
) -> list[HostOutcome]:
    """Run `work` on every host: canary first, then batches, `parallel` at a time.

    Ctrl-C sets the cancel event; each host stops at its next step boundary and cleans up;
    then the KeyboardInterrupt continues to the caller.
    """
    cancel = threading.Event()
    waves: list[list[Host]] = []
    rest = list(hosts)
    if opts.canary > 0 and len(rest) > 1:
        waves.append(rest[: opts.canary])
        rest = rest[opts.canary :]
    size = opts.batch if opts.batch > 0 else len(rest)
    waves += [rest[i : i + size] for i in range(0, len(rest), size)] if rest else []

    outcomes: dict[str, HostOutcome] = {}
    interrupted = False
    with ThreadPoolExecutor(max_workers=max(1, opts.parallel), thread_name_prefix="moola") as pool:
        for number, wave in enumerate(waves):
            if interrupted or any(not o.ok for o in outcomes.values()):
                reason = "aborted" if interrupted else "an earlier host failed"
                what = "canary" if opts.canary > 0 and number == 1 else "batch"
                for host in wave:
                    msg = f"not attempted: {reason} ({what} stopped the rollout)"
                    outcomes[host.name] = HostOutcome(host.name, "skipped", msg)
                    journal.record(host.name, "skipped", "skipped", reason=reason)
                continue
            futures = {pool.submit(_guarded, work, host, cancel, journal): host for host in wave}
            pending = set(futures)
            while pending:
                try:
                    _done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                except KeyboardInterrupt:
                    interrupted = True
                    cancel.set()  # workers notice at their next step; keep waiting for cleanup
            for future, host in futures.items():
                outcomes[host.name] = future.result()
    if interrupted:
        raise _Interrupted([outcomes[h.name] for h in hosts if h.name in outcomes])
    return [outcomes[h.name] for h in hosts]


class _Interrupted(KeyboardInterrupt):
    def __init__(self, outcomes: list[HostOutcome]):
        super().__init__("interrupted")
        self.outcomes = outcomes


def _guarded(work, host: Host, cancel: threading.Event, journal: Journal) -> HostOutcome:
    started = time.monotonic()
    try:
        outcome = work(host, cancel)
    except Aborted:
        outcome = HostOutcome(host.name, "aborted", "stopped by Ctrl-C; lock released")
        journal.record(host.name, "aborted", "aborted", reason="Ctrl-C")
    except Refused as exc:
        outcome = HostOutcome(host.name, "refused", str(exc))
    except MoolaError as exc:
        outcome = HostOutcome(host.name, "failed", str(exc))
    except Exception as exc:  # a bug must still end as a failed host and a log line, not a hang
        outcome = HostOutcome(host.name, "failed", f"internal error: {type(exc).__name__}: {exc}")
        journal.record(host.name, "internal-error", "failed", error=repr(exc))
    outcome.duration_s = round(time.monotonic() - started, 3)
    return outcome


def _run_phase(
    phase: str,
    hosts: list[Host],
    opts: Options,
    work: Callable[[Host, threading.Event, Journal], HostOutcome],
    *,
    bundle: str = "",
    **detail: Any,
) -> FleetResult:
    journal = Journal(phase, bundle=bundle, path=opts.journal_path)
    journal.record("", "open", "started", hosts=[h.name for h in hosts], **detail)
    started = time.monotonic()
    try:
        outcomes = _run_fleet(hosts, journal, opts, lambda h, c: work(h, c, journal))
    except _Interrupted as stop:
        journal.record(
            "",
            "close",
            "aborted",
            duration_s=time.monotonic() - started,
            hosts={o.host: o.status for o in stop.outcomes},
        )
        raise KeyboardInterrupt from None
    result = FleetResult(journal.deployment, phase, bundle, outcomes)
    journal.record(
        "",
        "close",
        "ok" if result.ok else "failed",
        duration_s=time.monotonic() - started,
        hosts={o.host: o.status for o in outcomes},
    )
    return result


# --- per-host plumbing ------------------------------------------------------------------------


class _Host:
    """One host during one run: its session, layout, journal and step bookkeeping."""

    def __init__(self, host: Host, journal: Journal, opts: Options, cancel: threading.Event):
        self.host = host
        self.journal = journal
        self.opts = opts
        self.cancel = cancel
        self.layout = Layout(host.workspace)
        self.ssh = HostSession(host, accept_new_host_key=opts.accept_new_host_key)
        self.steps: dict[str, float] = {}
        self.locked = False

    def checkpoint(self) -> None:
        """Stop here if Ctrl-C was pressed (called between steps, never mid-switch)."""
        if self.cancel.is_set():
            raise Aborted()

    def step(self, name: str, **detail: Any):
        """Journal context for one named step; also records its duration for the summary."""
        return _TimedStep(self, name, detail)

    def run(self, command: str, *, timeout_s: float | None = None) -> Result:
        return self.ssh.run(command, timeout_s=timeout_s)

    def connect(self) -> None:
        with self.step("connect", address=self.host.address) as info:
            self.ssh.open()
            if self.ssh.accepted_key:
                info["accepted_new_host_key"] = self.ssh.accepted_key

    def lock_and_facts(self, what: str) -> facts_cmd.HostFacts:
        """Take the deploy lock and read the host's facts in one round trip."""
        holder = {
            "deployment": self.journal.deployment,
            "actor": self.journal.actor,
            "what": what,
            "since": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "pid": os.getpid(),
            "client": socket.gethostname(),
        }
        with self.step("lock", what=what) as info:
            out = self.run(
                lock_cmd.acquire(self.layout, holder)
                + "; "
                + facts_cmd.gather(self.layout, self.host.python)
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
            if not acquired:
                info["status"] = "refused"
                info["holder"] = held_by
                raise Refused(
                    f"{self.host.name} is locked by {lock_cmd.describe_holder(held_by)}; wait for "
                    f"that run, or if it is dead: invoke lock --host {self.host.name} --break"
                )
            self.locked = True
        return facts

    def unlock(self) -> None:
        """Release our lock; on a broken connection, reconnect once to do it."""
        if not self.locked:
            return
        with self.step("unlock") as info:
            command = lock_cmd.release(self.layout, self.journal.deployment)
            try:
                out = self.run(command, timeout_s=30)
            except TransportError:
                self.ssh.close()
                self.ssh = HostSession(self.host)
                self.ssh.open()
                out = self.run(command, timeout_s=30)
                info["reconnected"] = True
            info["released"] = lock_cmd.parse_release(out.stdout)
            self.locked = False

    def close(self) -> None:
        self.ssh.close()


class _TimedStep:
    def __init__(self, ctx: _Host, name: str, detail: dict[str, Any]):
        self.ctx, self.name = ctx, name
        self.inner = ctx.journal.step(ctx.host.name, name, **detail)

    def __enter__(self) -> dict[str, Any]:
        self.started = time.monotonic()
        return self.inner.__enter__()

    def __exit__(self, *exc) -> bool | None:
        self.ctx.steps[self.name] = round(time.monotonic() - self.started, 3)
        if exc[0] is Aborted:  # the journal records KeyboardInterrupt as aborted; map ours too
            try:
                return self.inner.__exit__(KeyboardInterrupt, KeyboardInterrupt(), exc[2])
            except KeyboardInterrupt:
                raise Aborted() from None
        result = self.inner.__exit__(*exc)
        if isinstance(exc[1], TransportError) and "(during " not in str(exc[1]):
            raise TransportError(f"{exc[1]} (during {self.name})") from None
        return result


def _with_host(
    host: Host,
    journal: Journal,
    opts: Options,
    cancel: threading.Event,
    body: Callable[[_Host], HostOutcome],
) -> HostOutcome:
    """Connect, run `body`, always release the lock and close; the outcome carries step times."""
    ctx = _Host(host, journal, opts, cancel)
    try:
        ctx.connect()
        outcome = body(ctx)
    except (Aborted, MoolaError):
        try:
            ctx.unlock()
        except MoolaError as unlock_error:
            raise StepFailed(
                f"{_last_error(journal, host)}; the lock could not be released "
                f"({unlock_error}): check the host, then invoke lock --host {host.name} --break"
            ) from None
        raise
    else:
        ctx.unlock()
    finally:
        ctx.close()
    outcome.steps = ctx.steps
    return outcome


def _last_error(journal: Journal, host: Host) -> str:
    from moola_ops.journal import read_events

    for event in reversed(read_events(journal.path, deployment=journal.deployment, host=host.name)):
        if event["status"] in ("failed", "aborted"):
            return f"{event['step']} {event['status']}: {event['detail'].get('error', '')}"
    return "the run failed"


# --- steps shared by deploy, rollback, drill --------------------------------------------------


def _preflight(ctx: _Host, facts: facts_cmd.HostFacts, need_bytes: int) -> None:
    with ctx.step("preflight") as info:
        info.update(
            python=facts.python, torch=facts.torch, free=facts.disk_free_bytes, gpus=facts.gpus
        )
        name = ctx.host.name
        if facts.python is None:
            raise StepFailed(
                f"{ctx.host.python} not found on {name}: install Python 3 there or set "
                f"`python:` for {name} in the inventory"
            )
        if facts.torch is None:
            raise StepFailed(
                f"torch is not installed for {ctx.host.python} on {name}: install it there or "
                f"point `python:` at an interpreter that has it"
            )
        if facts.disk_free_bytes is not None and facts.disk_free_bytes < need_bytes:
            raise StepFailed(
                f"{name} has {facts.disk_free_bytes / 1e6:.1f} MB free in {ctx.host.workspace}, "
                f"needs {need_bytes / 1e6:.1f} MB ({DISK_FACTOR} x the bundle): free space "
                "or lower keep_releases / keep_backups"
            )
        if ctx.host.gpu:
            names = [g["name"] for g in facts.gpus]
            if not any(ctx.host.gpu.lower() in n.lower() for n in names):
                raise StepFailed(
                    f"{name} should have a {ctx.host.gpu} GPU but nvidia-smi shows "
                    f"{', '.join(names) or 'none'}: check the pod, or fix `gpu:` in the inventory"
                )


def _runtime_check(ctx: _Host, version: str, *, step: str, through_current: bool = False) -> None:
    """The bundle's runtime check (model, golden outputs, latency); raise StepFailed on failure."""
    with ctx.step(step, version=version, through_current=through_current) as info:
        o = ctx.opts
        command = release_cmd.runtime_check(
            ctx.layout,
            ctx.host.python,
            version,
            through_current=through_current,
            runs=o.check_runs,
            warmup=o.check_warmup,
            backend=o.check_backend,
            sla_p99_ms=ctx.host.latency_sla_ms,
        )
        out = ctx.run(command, timeout_s=ctx.opts.check_timeout_s)
        report = _json_or_none(out.stdout)
        info["exit_code"] = out.exit_code
        info["report"] = _summarise(report)
        if not out.ok:
            reason = _check_reason(report) or out.tail(300) or f"exit code {out.exit_code}"
            raise StepFailed(f"runtime check of {version} on {ctx.host.name} failed: {reason}")


def _light_check(ctx: _Host, version: str, *, step: str) -> None:
    """Through `current`: it resolves to releases/<version>, every checksum matches, smoke passes."""
    with ctx.step(step, version=version) as info:
        command = release_cmd.verify(ctx.layout, ctx.host.python, version, through_current=True)
        if ctx.host.smoke:
            # the operator's own smoke command (inventory `smoke:`), run inside `current`
            command += f" && cd {ctx.layout.current} && {{ {ctx.host.smoke}; }}"
        out = ctx.run(command, timeout_s=ctx.opts.check_timeout_s)
        report = release_cmd.parse_hostside(out.stdout)
        info["resolved"] = report.get("resolved")
        expected_tail = f"/releases/{version}"
        problems = list(report.get("problems") or [])
        if report.get("resolved") and not str(report["resolved"]).endswith(expected_tail):
            problems.append(f"current resolves to {report['resolved']}, not releases/{version}")
        if report.get("ok") and not out.ok:
            said = out.stderr.strip()[-200:] or "no output on stderr"
            problems.append(f"smoke command failed (exit {out.exit_code}): {said}")
        if problems or not out.ok:
            info["problems"] = problems
            raise StepFailed(
                f"check through current of {version} on {ctx.host.name} failed: "
                f"{'; '.join(problems[:3]) or out.tail(200)}"
            )


def _switch(ctx: _Host, version: str, previous: str | None, action: str, *, snapshot: bool) -> None:
    """Snapshot the release being left (when asked), switch `current`, log the revision."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    snap = release_cmd.snapshot_name(stamp, previous) if (snapshot and previous) else None
    revision = {
        "time": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "action": action,
        "version": version,
        "previous": previous,
        "deployment": ctx.journal.deployment,
        "actor": ctx.journal.actor,
    }
    with ctx.step(
        "switch", version=version, previous=previous, snapshot=snap, action=action
    ) as info:
        command = release_cmd.snapshot_and_switch(
            ctx.layout,
            version,
            ctx.journal.deployment,
            revision,
            snapshot_of=previous if snap else None,
            snapshot_as=snap,
        )
        out = ctx.run(command, timeout_s=300)
        if not out.ok:  # ask where `current` points rather than assume it did not move
            out_now = ctx.run(f"readlink {ctx.layout.current} || true", timeout_s=60)
            info["error"] = out.tail(200)
        else:
            out_now = out
        lines = out_now.stdout.strip().splitlines()
        info["current"] = lines[-1] if lines else None
        if out.stderr.strip():
            info["stderr"] = out.stderr.strip()[-200:]
        if info["current"] != f"releases/{version}":
            raise StepFailed(
                f"switch to {version} on {ctx.host.name} failed and `current` still points to "
                f"{info['current'] or 'nothing'}: {out.tail(200)}"
            )


def _verify_release(ctx: _Host, version: str, *, step: str) -> list[str]:
    """Problems of releases/<version> on the host ([] when every checksum matches)."""
    with ctx.step(step, version=version) as info:
        out = ctx.run(release_cmd.verify(ctx.layout, ctx.host.python, version))
        report = release_cmd.parse_hostside(out.stdout)
        problems = list(report.get("problems") or ([] if out.ok else [out.tail(200)]))
        info["problems"] = problems[:5]
        if problems:
            info["status"] = "failed"
        return problems


def _restore_release(ctx: _Host, facts: facts_cmd.HostFacts, version: str) -> str:
    """Restore releases/<version> from its newest snapshot; the snapshot's name is returned."""
    snapshot = facts_cmd.newest_snapshot(facts, version)
    if snapshot is None:
        raise StepFailed(
            f"release {version} on {ctx.host.name} is missing or damaged and no snapshot of it "
            f"exists in backups/: deploy it again with invoke deploy --bundle {version}"
        )
    with ctx.step("restore", version=version, snapshot=snapshot) as info:
        out = ctx.run(
            release_cmd.restore(
                ctx.layout, ctx.host.python, ctx.journal.deployment, snapshot, version
            ),
            timeout_s=600,
        )
        report = release_cmd.parse_hostside(out.stdout)
        info["report"] = report
        if not out.ok or not report.get("ok"):
            raise StepFailed(
                f"restoring {version} on {ctx.host.name} from {snapshot} failed: "
                f"{'; '.join(report.get('problems', [])[:3]) or out.tail(200)}"
            )
    return snapshot


def _prune(ctx: _Host, protect: tuple[str, ...]) -> None:
    with ctx.step("prune") as info:
        out = ctx.run(facts_cmd.gather(ctx.layout, ctx.host.python))
        facts = facts_cmd.parse(out.stdout)
        releases, backups = facts_cmd.plan_prune(
            facts,
            keep_releases=ctx.opts.keep_releases,
            keep_backups=ctx.opts.keep_backups,
            protect=protect,
        )
        info.update(releases=releases, backups=backups)
        out = ctx.run(release_cmd.prune(ctx.layout, releases, backups), timeout_s=300)
        if not out.ok:
            info["status"] = "failed"  # pruning is housekeeping: report it, do not fail the run
            info["error"] = out.tail(200)


# --- deploy -----------------------------------------------------------------------------------


def deploy(hosts: list[Host], bundle: LocalBundle, opts: Options | None = None) -> FleetResult:
    """Deploy `bundle` to every host (see the module docstring for the stages)."""
    opts = opts or Options()
    return _run_phase(
        "deploy",
        hosts,
        opts,
        lambda h, cancel, journal: _with_host(
            h, journal, opts, cancel, lambda c: _deploy_one(c, bundle)
        ),
        bundle=bundle.version,
        sha256=bundle.sha256,
        size=bundle.size,
    )


def _check_signature(bundle: LocalBundle, host: Host) -> str | None:
    """The signer of `bundle` per the host's allowed_signers; StepFailed before the host is
    touched when the bundle is unsigned, tampered with or signed by someone else."""
    from moola_core.bundle import verify_bundle

    try:
        return verify_bundle(bundle.path, allowed_signers=host.allowed_signers).signer
    except MoolaError as exc:
        raise StepFailed(
            f"{bundle.version} refused for {host.name}, nothing changed: {exc}"
        ) from None


def _deploy_one(ctx: _Host, bundle: LocalBundle) -> HostOutcome:
    name, version = ctx.host.name, bundle.version
    if ctx.host.allowed_signers:
        with ctx.step("signature", allowed_signers=ctx.host.allowed_signers) as info:
            info["signer"] = _check_signature(bundle, ctx.host)
    facts = ctx.lock_and_facts(f"deploy {version}")
    previous = facts.current
    on_host = facts.releases.get(version, "absent") if version in facts.releases else "absent"

    if previous == version and on_host == bundle.sha256:
        with ctx.step("noop", version=version):
            pass
        return HostOutcome(
            name,
            "noop",
            f"{version} is already current on {name}; nothing to do",
            current=version,
            previous=previous,
        )
    if on_host not in ("absent", bundle.sha256):
        raise StepFailed(
            f"{name} already has a release {version} built from different bytes "
            f"(sha256 {str(on_host)[:12]}...): bump the bundle version instead of reusing it"
        )
    ctx.checkpoint()
    _preflight(ctx, facts, bundle.size * DISK_FACTOR if on_host == "absent" else 0)

    if on_host == "absent":
        ctx.checkpoint()
        remote = release_cmd.staged_archive(ctx.layout, ctx.journal.deployment)
        with ctx.step("upload", bytes=bundle.size) as info:
            ctx.run(release_cmd.stage(ctx.layout, ctx.journal.deployment))
            callback = ctx.opts.progress(name, bundle.size) if ctx.opts.progress else None

            def progress(sent: int, total: int) -> None:
                if ctx.cancel.is_set():
                    raise Aborted()
                if callback:
                    callback(sent, total)

            sent_at = time.monotonic()
            try:
                ctx.ssh.upload(bundle.path, remote, progress=progress)
            except (TransportError, Aborted):
                _discard_staging(ctx)
                raise
            info["mb_per_s"] = round(bundle.size / 1e6 / max(time.monotonic() - sent_at, 1e-6), 1)
        ctx.checkpoint()
        with ctx.step("promote", sha256=bundle.sha256) as info:
            out = ctx.run(
                release_cmd.promote(
                    ctx.layout, ctx.host.python, ctx.journal.deployment, version, bundle.sha256
                ),
                timeout_s=600,
            )
            report = release_cmd.parse_hostside(out.stdout)
            info["report"] = report
            if not out.ok or not report.get("ok"):
                ctx.run(f"rm -rf -- {ctx.layout.staging(ctx.journal.deployment)}")
                raise StepFailed(
                    f"bundle {version} failed verification on {name}, nothing switched: "
                    f"{'; '.join(report.get('problems', [])[:3]) or out.tail(200)}"
                )
    else:
        with ctx.step("upload", skipped=True) as info:
            info["status"] = "skipped"
            info["reason"] = "releases/ already holds this sha256"
        problems = _verify_release(ctx, version, step="promote")
        if problems:
            raise StepFailed(
                f"release {version} already on {name} fails its checksums ({problems[0]}); "
                "nothing switched: remove it with a new version or restore it"
            )

    ctx.checkpoint()
    try:
        _runtime_check(ctx, version, step="check")
    except StepFailed:
        if previous != version:  # a release that failed its check must not linger as a target
            ctx.run(f"rm -rf -- {ctx.layout.release(version)}")
        raise
    ctx.checkpoint()

    # From here on `current` moves: finish the switch and its check even if Ctrl-C arrives.
    _switch(ctx, version, previous, "deploy", snapshot=True)
    try:
        _light_check(ctx, version, step="post-check")
        if ctx.opts.full_post_check:
            _runtime_check(ctx, version, step="post-check-runtime", through_current=True)
    except (StepFailed, TransportError) as failure:
        back = _switch_back(ctx, previous, version)
        raise StepFailed(f"{failure}; {back}") from None
    _prune(ctx, protect=(version,) + ((previous,) if previous else ()))
    ctx.checkpoint()
    return HostOutcome(
        name,
        "ok",
        f"{version} is live on {name} (was {previous or 'nothing'})",
        current=version,
        previous=previous,
    )


def _discard_staging(ctx: _Host) -> None:
    """Best effort: remove a partial upload (a dead connection leaves it to the next prune)."""
    with contextlib.suppress(TransportError):
        ctx.run(f"rm -rf -- {ctx.layout.staging(ctx.journal.deployment)}", timeout_s=30)


def _switch_back(ctx: _Host, previous: str | None, failed: str) -> str:
    """After a failed post-switch check: back to `previous` at once; say what happened."""
    if previous is None:
        with ctx.step("auto-rollback", version=None) as info:
            ctx.run(f"rm -f -- {ctx.layout.current}")
            info["removed_current"] = True
        return f"no previous release to return to, so `current` was removed ({failed} stays in releases/)"
    _switch(ctx, previous, failed, "auto-rollback", snapshot=False)
    try:
        _light_check(ctx, previous, step="auto-rollback-check")
    except StepFailed as again:
        return f"switched back to {previous} at once, but its own check failed too: {again}"
    return f"switched back to {previous} at once (verified)"


# --- rollback ---------------------------------------------------------------------------------


def rollback(hosts: list[Host], to: str | None = None, opts: Options | None = None) -> FleetResult:
    """Switch each host back to its previous release (from revisions.log) or to `to`."""
    opts = opts or Options()
    if to is not None:
        check_name(to, "version")
    return _run_phase(
        "rollback",
        hosts,
        opts,
        lambda h, cancel, journal: _with_host(
            h, journal, opts, cancel, lambda c: _rollback_one(c, to)
        ),
        bundle=to or "",
    )


def _rollback_one(ctx: _Host, to: str | None) -> HostOutcome:
    name = ctx.host.name
    facts = ctx.lock_and_facts(f"rollback to {to or 'previous'}")
    current = facts.current
    target = to or facts_cmd.rollback_target(facts)
    if target is None:
        raise StepFailed(
            f"{name} has no previous release in its revisions.log: pass --to VERSION "
            f"(releases there: {', '.join(sorted(facts.releases)) or 'none'})"
        )
    if target == current:
        return HostOutcome(name, "noop", f"{target} is already current on {name}", current, current)
    _switch_to_verified(ctx, facts, target, current, action="rollback", step_prefix="")
    return HostOutcome(
        name,
        "ok",
        f"rolled back {name} from {current or 'nothing'} to {target}",
        current=target,
        previous=current,
    )


def _switch_to_verified(
    ctx: _Host,
    facts: facts_cmd.HostFacts,
    target: str,
    current: str | None,
    *,
    action: str,
    step_prefix: str,
) -> None:
    """Verify (restore if damaged) `target`, switch to it, runtime-check it through current.

    If the check after the switch fails, `current` goes straight back to where it was.
    """
    ctx.checkpoint()
    problems = (
        _verify_release(ctx, target, step=f"{step_prefix}verify")
        if target in facts.releases
        else ["missing"]
    )
    if problems:
        _restore_release(ctx, facts, target)
    ctx.checkpoint()
    _switch(ctx, target, current, action, snapshot=False)
    try:
        _light_check(ctx, target, step=f"{step_prefix}post-check")
        _runtime_check(ctx, target, step=f"{step_prefix}post-check-runtime", through_current=True)
    except (StepFailed, TransportError) as failure:
        if current is None:
            raise
        _switch(ctx, current, target, "auto-rollback", snapshot=False)
        raise StepFailed(f"{failure}; switched back to {current}") from None


# --- drill ------------------------------------------------------------------------------------


def drill(hosts: list[Host], opts: Options | None = None) -> FleetResult:
    """Rehearse a rollback on live hosts: back to the previous release, check, forward, check."""
    opts = opts or Options()
    return _run_phase(
        "drill",
        hosts,
        opts,
        lambda h, cancel, journal: _with_host(h, journal, opts, cancel, _drill_one),
    )


def _drill_one(ctx: _Host) -> HostOutcome:
    name = ctx.host.name
    facts = ctx.lock_and_facts("rollback drill")
    current = facts.current
    target = facts_cmd.rollback_target(facts)
    if current is None or target is None:
        raise StepFailed(
            f"{name} needs a current and a previous release for a drill (current: "
            f"{current or 'none'}); deploy two versions first"
        )
    started = time.monotonic()
    _switch_to_verified(ctx, facts, target, current, action="drill-back", step_prefix="back-")
    back_s = time.monotonic() - started
    facts = facts_cmd.parse(ctx.run(facts_cmd.gather(ctx.layout, ctx.host.python)).stdout)
    _switch_to_verified(ctx, facts, current, target, action="drill-forward", step_prefix="forward-")
    with ctx.step("drill", back_to=target, forward_to=current) as info:
        info["rollback_s"] = round(back_s, 3)
    return HostOutcome(
        name,
        "ok",
        f"drill passed on {name}: rolled back to {target} in {back_s:.1f}s (checked), "
        f"then forward to {current} (checked)",
        current=current,
        previous=target,
    )


# --- backups, restore, lock, facts, verify ----------------------------------------------------


def host_facts(host: Host, *, accept_new_host_key: bool = False) -> facts_cmd.HostFacts:
    """Read one host's facts (current, releases, snapshots, lock, disk, python, GPUs)."""
    layout = Layout(host.workspace)
    with HostSession(host, accept_new_host_key=accept_new_host_key) as ssh:
        return facts_cmd.parse(ssh.run(facts_cmd.gather(layout, host.python), timeout_s=60).stdout)


def list_backups(host: Host) -> list[dict[str, str]]:
    """Snapshots on the host, newest first: [{name, time, version}]."""
    rows = []
    for name in sorted(host_facts(host).backups, reverse=True):
        parsed = release_cmd.parse_snapshot_name(name)
        if parsed:
            rows.append({"name": name, "time": parsed[0], "version": parsed[1]})
    return rows


def restore(hosts: list[Host], snapshot: str, opts: Options | None = None) -> FleetResult:
    """Restore releases/<v> from backups/<snapshot> (verified); re-check it if it is current."""
    opts = opts or Options()
    check_name(snapshot, "snapshot name")
    parsed = release_cmd.parse_snapshot_name(snapshot)
    if parsed is None:
        raise MoolaError(
            f"{snapshot!r} is not a snapshot name: list them with invoke backups --host H"
        )

    def one(ctx: _Host) -> HostOutcome:
        facts = ctx.lock_and_facts(f"restore {snapshot}")
        if snapshot not in facts.backups:
            raise StepFailed(
                f"{ctx.host.name} has no snapshot {snapshot}: list them with "
                f"invoke backups --host {ctx.host.name}"
            )
        version = parsed[1]
        facts.backups = [snapshot]  # restore exactly this one, not the newest of its version
        _restore_release(ctx, facts, version)
        if facts.current == version:
            _light_check(ctx, version, step="post-check")
        return HostOutcome(
            ctx.host.name,
            "ok",
            f"restored {version} from {snapshot}",
            current=facts.current,
            previous=facts.current,
        )

    return _run_phase(
        "restore",
        hosts,
        opts,
        lambda h, cancel, journal: _with_host(h, journal, opts, cancel, one),
        bundle=parsed[1],
    )


def lock_status(host: Host) -> dict[str, Any] | None:
    """The holder of the host's deploy lock, or None when it is free."""
    return host_facts(host).lock_holder


def release_lock(host: Host, *, journal_path: str | None = None) -> bool:
    """Release the lock if the current actor holds it; MoolaError naming the holder otherwise."""
    journal = Journal("lock", path=journal_path)
    holder = lock_status(host)
    if holder is None:
        journal.record(host.name, "release", "skipped", reason="not locked")
        return False
    if holder.get("actor") != journal.actor or "deployment" not in holder:
        journal.record(host.name, "release", "refused", holder=holder)
        raise MoolaError(
            f"the lock on {host.name} belongs to {lock_cmd.describe_holder(holder)}, not to "
            f"{journal.actor}: if that run is dead, use --break"
        )
    with HostSession(host) as ssh:
        out = ssh.run(lock_cmd.release(Layout(host.workspace), holder["deployment"]), timeout_s=30)
    released = lock_cmd.parse_release(out.stdout)
    journal.record(host.name, "release", "ok" if released else "failed", holder=holder)
    return released


def break_lock(host: Host, *, journal_path: str | None = None) -> dict[str, Any] | None:
    """Break the lock whoever holds it (a stale lock); logged with the holder it had."""
    journal = Journal("lock", path=journal_path)
    with HostSession(host) as ssh:
        out = ssh.run(lock_cmd.break_lock(Layout(host.workspace), journal.deployment), timeout_s=30)
    broken, holder = lock_cmd.parse_break(out.stdout)
    journal.record(host.name, "break", "ok" if broken else "skipped", holder=holder, broken=broken)
    return holder if broken else None


@dataclass
class CurrentCheck:
    """What `verify_current` found on one host."""

    host: str
    ok: bool
    version: str | None
    problems: list[str]
    runtime: dict[str, Any] | None = None  # the runtime check's JSON report when deep
    duration_s: float = 0.0


def verify_current(
    host: Host, *, deep: bool = False, session: HostSession | None = None
) -> CurrentCheck:
    """Check the release behind `current`: checksums (light, no torch) or + runtime check (deep).

    Reuses `session` when given (the health checks batch hosts); never raises for a failing
    check, only for an unreachable host (TransportError).
    """
    started = time.monotonic()
    layout = Layout(host.workspace)
    own = session is None
    ssh = session or HostSession(host).open()
    try:
        out = ssh.run(
            f"readlink {layout.current} 2>/dev/null || echo MOOLA-NO-CURRENT", timeout_s=60
        )
        target = out.stdout.strip()
        if not target or target == "MOOLA-NO-CURRENT":
            return CurrentCheck(
                host.name,
                False,
                None,
                ["no `current` release on the host"],
                duration_s=time.monotonic() - started,
            )
        version = target.rstrip("/").rsplit("/", 1)[-1]
        report = release_cmd.parse_hostside(
            ssh.run(release_cmd.verify(layout, host.python, version, through_current=True)).stdout
        )
        problems = list(report.get("problems") or [])
        runtime = None
        if deep and not problems:
            res = ssh.run(
                release_cmd.runtime_check(layout, host.python, version, through_current=True)
            )
            runtime = _json_or_none(res.stdout)
            if not res.ok:
                problems.append(f"runtime check failed: {_check_reason(runtime) or res.tail(200)}")
        return CurrentCheck(
            host.name,
            not problems,
            version,
            problems,
            runtime,
            duration_s=time.monotonic() - started,
        )
    finally:
        if own:
            ssh.close()


# --- report helpers ---------------------------------------------------------------------------


def _json_or_none(text: str) -> dict[str, Any] | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        start = text.find("{")  # tolerate noise printed before the document
        try:
            value = json.loads(text[start:]) if start >= 0 else None
        except json.JSONDecodeError:
            return None
    return value if isinstance(value, dict) else None


def _summarise(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The scalar fields of a runtime report (and its latency), small enough for a log line."""
    if report is None:
        return None
    summary = {
        k: v for k, v in report.items() if isinstance(v, str | int | float | bool) or v is None
    }
    for key in ("latency", "latency_ms", "checks", "failures", "errors"):
        if key in report:
            text = json.dumps(report[key], default=str)
            summary[key] = report[key] if len(text) < 1500 else text[:1500]
    return summary


def _check_reason(report: dict[str, Any] | None) -> str:
    if not report:
        return ""
    for key in ("error", "reason", "message"):
        if isinstance(report.get(key), str) and report[key]:
            return report[key]
    for key in ("failures", "errors", "problems"):
        if report.get(key):
            return "; ".join(str(x) for x in report[key][:3])
    checks = report.get("checks")
    if isinstance(checks, list):
        failed = [
            c for c in checks if isinstance(c, dict) and not c.get("ok", c.get("passed", True))
        ]
        return "; ".join(
            f"{c.get('name', '?')}: {c.get('detail', c.get('message', 'failed'))}"
            for c in failed[:3]
        )
    if isinstance(checks, dict):
        failed = [k for k, v in checks.items() if isinstance(v, dict) and not v.get("ok", True)]
        return "failed checks: " + ", ".join(failed) if failed else ""
    return ""

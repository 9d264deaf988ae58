"""Builders for what a deploy, rollback or restore does to a host's releases.

Each function returns one shell command string with every argument quoted; the executor in
`moola_ops.transport` runs them, several joined into one round trip where they belong together.
Read top to bottom, this file is exactly what Moola does to a host.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from moola_ops.hosts.layout import BUNDLE_MARKER, CHECK_MARKER, Layout, check_name
from moola_ops.transport import agent
from moola_ops.transport.process import stop_group

ARCHIVE_NAME = "bundle.tar.gz"
LOCK_NOT_OURS = "MOOLA-SWITCH-LOCK-NOT-OURS"  # the switch found the lock held by another run


def on_host(layout: Layout, python: str, action: str, *args: str) -> str:
    """The host agent's `release ACTION ARGS` (ARGS already quoted): moola_core/agent/release.py
    extracts and verifies with the very code (agent/archive.py) the workstation uses."""
    return agent.command(layout, python, "release", action, *args)


def stage(layout: Layout, deployment: str) -> str:
    """Make the staging directory incoming/<deployment>/ for an upload."""
    return f"mkdir -p {layout.staging(deployment)}"


def staged_archive(layout: Layout, deployment: str) -> str:
    """Unquoted remote path of the uploaded archive (for SFTP, which takes no shell)."""
    return f"{layout.workspace}/incoming/{check_name(deployment, 'deployment id')}/{ARCHIVE_NAME}"


def promote(layout: Layout, python: str, deployment: str, version: str, sha256: str) -> str:
    """Check the archive's sha256, safe-extract it, verify every file, rename into releases/."""
    _check_sha(sha256)
    staging = layout.staging(deployment)
    archive = layout.path("incoming", deployment, ARCHIVE_NAME)
    return on_host(
        layout,
        python,
        "promote",
        archive,
        sha256,
        shlex.quote(version),
        staging,
        layout.release(version),
    )


def verify(layout: Layout, python: str, version: str, *, through_current: bool = False) -> str:
    """Verify releases/<version> (or `current`) file by file against its manifest."""
    target = layout.current if through_current else layout.release(version)
    return on_host(layout, python, "verify", target, shlex.quote(check_name(version, "version")))


def runtime_check(
    layout: Layout,
    python: str,
    version: str,
    *,
    through_current: bool = False,
    runs: int | None = None,
    warmup: int | None = None,
    backend: str | None = None,
    sla_p99_ms: float | None = None,
) -> str:
    """The bundle's own runtime check (model, golden outputs, latency) on a release.

    Runs the release's own code (PYTHONPATH=release/code), so code and model are checked
    together; `sla_p99_ms` is the host's latency SLA override from the inventory.
    """
    release = layout.current if through_current else layout.release(version)
    extra = ""
    if runs is not None:
        extra += f" --runs {int(runs)}"
    if warmup is not None:
        extra += f" --warmup {int(warmup)}"
    if backend is not None:
        extra += f" --backend {shlex.quote(check_name(backend, 'backend'))}"
    if sla_p99_ms is not None:
        extra += f" --sla-p99-ms {float(sla_p99_ms)!r}"
    return (
        f"cd {release} && PYTHONPATH={release}/code "
        f"{shlex.quote(python)} -m moola_core.runtime check --release {release} --json{extra}"
    )


def bounded(command: str, layout: Layout, deployment: str, deadline_s: float) -> str:
    """Run `command` under the host's own `timeout` (TERM, then KILL 5 s later), recording its
    process id in incoming/<deployment>.pid so `kill_bounded` can stop it from a new connection.

    `timeout` runs the command in a process group of its own (its pid is the group's id) and
    ends when its direct child does; a grandchild that ignores TERM (a model check's worker)
    would outlive it, so whatever is left of that group is KILLed once `timeout` returns. The
    bound holds on the host even when the connection that started it is gone.
    """
    pidfile = layout.path("incoming", f"{check_name(deployment, 'deployment id')}.pid")
    seconds = max(1, int(round(float(deadline_s))))
    inner = f"echo $$ > {pidfile}; exec timeout -k 5 {seconds} sh -c {shlex.quote(command)}"
    return (
        f'sh -c {shlex.quote(inner)}; rc=$?; {_pid_from(pidfile)} && kill -KILL -"$p" '
        f"2>/dev/null; rm -f {pidfile}; exit $rc"
    )


def kill_bounded(layout: Layout, deployment: str) -> str:
    """Stop a command started by `bounded`: its whole process group gets TERM, and KILL after
    3 s (a check that ignores TERM ends too)."""
    pidfile = layout.path("incoming", f"{check_name(deployment, 'deployment id')}.pid")
    group = '"-$p"'
    return f"if {_pid_from(pidfile)}; then {stop_group(group)}; fi; rm -f {pidfile}; true"


def _pid_from(pidfile: str) -> str:
    """Shell test: read a pid file into $p; true only when it holds a plain number above 1."""
    return f'p=$(cat {pidfile} 2>/dev/null); case "$p" in ""|*[!0-9]*|0|1) false;; *) true;; esac'


def mark_checked(layout: Layout, version: str, deployment: str) -> str:
    """Record on the host that releases/<version> passed its runtime check (releases/<v>.checked:
    the deployment and the host's time). Exit 0 even when it cannot be written: the check did
    pass; the release then counts as unchecked until it serves (docs/runbook.md)."""
    marker = layout.release(version) + CHECK_MARKER
    record = shlex.quote(
        f'{{"deployment":"{check_name(deployment, "deployment id")}","time":"%s"}}\\n'
    )
    return (
        f'{{ printf {record} "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > {marker}; }} 2>/dev/null '
        "|| echo 'moola: check marker not written' >&2"
    )


def checked(check: str, layout: Layout, version: str, deployment: str) -> str:
    """`check` (a bounded runtime check of releases/<version>), then its marker only if it
    passed; the exit status stays the check's."""
    return f"{check} && {{ {mark_checked(layout, version, deployment)}; }}"


def snapshot(layout: Layout, version: str, name: str) -> str:
    """Archive releases/<version> into backups/<name> (written to a temp name, then renamed)."""
    check_name(version, "version")
    tmp = layout.path("backups", f".partial-{check_name(name, 'snapshot name')}")
    return (
        f"tar -cf {tmp} -C {layout.releases} {shlex.quote(version)} && "
        f"mv -f {tmp} {layout.backup(name)} || {{ rm -f {tmp}; false; }}"
    )


def snapshot_name(timestamp: str, version: str) -> str:
    """backups/<UTC timestamp>-<version>.tar: sorts by time, names the version it holds."""
    return f"{check_name(timestamp, 'timestamp')}-{check_name(version, 'version')}.tar"


def parse_snapshot_name(name: str) -> tuple[str, str] | None:
    """(timestamp, version) from a snapshot file name, or None for anything else."""
    if not name.endswith(".tar") or "-" not in name or name.startswith("."):
        return None
    stamp, _, version = name[: -len(".tar")].partition("-")
    return (stamp, version) if stamp and version else None


def smoke(layout: Layout, command: str) -> str:
    """The operator's own smoke command (inventory `smoke:`), run inside `current`."""
    return f"cd {layout.current} && {{ {command}; }}"


def checked_with_smoke(verify_command: str, layout: Layout, smoke_command: str | None) -> str:
    """The light check through `current`: verify, then the smoke command if there is one."""
    if not smoke_command:
        return verify_command
    return f"{verify_command} && {smoke(layout, smoke_command)}"


def current_target(layout: Layout) -> str:
    """Where `current` points now (nothing printed when there is no link)."""
    return f"readlink {layout.current} || true"


def set_aside(layout: Layout, version: str, deployment: str) -> str:
    """Move a damaged releases/<version> into incoming/<deployment>/ (removed with it) so the
    same bytes can be promoted again (`deploy --repair`)."""
    staging = layout.staging(deployment)
    rel = layout.release(version)
    return (
        f"mkdir -p {staging} && mv -T {rel} {staging}/damaged && "
        f"rm -f -- {rel}{BUNDLE_MARKER} {rel}{CHECK_MARKER}"
    )


def remove_current(layout: Layout) -> str:
    """Remove the `current` link (a first deploy whose check failed has nothing to go back to)."""
    return f"rm -f -- {layout.current}"


def remove_staging(layout: Layout, deployment: str) -> str:
    """Remove incoming/<deployment>/ (a partial or failed upload)."""
    return f"rm -rf -- {layout.staging(deployment)}"


def remove_release(layout: Layout, version: str, *, unless_current: bool = True) -> str:
    """Remove releases/<version> and its markers (a release that failed its check).

    Refuses (prints KEPT) when `current` resolves to it, so a retry can never delete what serves.
    """
    rel = layout.release(version)
    remove = f"rm -rf -- {rel} {rel}{BUNDLE_MARKER} {rel}{CHECK_MARKER}"
    if not unless_current:
        return remove
    return (
        f'if [ "$(readlink -f {layout.current} 2>/dev/null)" = "$(readlink -f {rel} 2>/dev/null)" ]'
        f" && [ -e {rel} ]; then echo KEPT; else {remove}; fi"
    )


def revision_line(**fields: Any) -> str:
    """One line of the host's revisions.log (JSON: time, action, version, previous, ...)."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def switch(layout: Layout, version: str, deployment: str, revision: dict[str, Any]) -> str:
    """Point `current` at releases/<version> atomically and record it in revisions.log.

    Only while `deployment` still holds the lock: the ownership test and the switch run under
    `flock` on the lock's holder file, which `invoke lock --release/--break` take too, so a lock
    broken meanwhile stops the switch (it prints NOT_OURS and exits 3). `ln -s` makes a new link
    under a temp name; `mv -T` renames it over `current` in one rename(2), so a reader sees the
    old release or the new one, never neither. Prints where `current` points afterwards.
    """
    check_name(version, "version")
    tmp = layout.path(f".current-{check_name(deployment, 'deployment id')}")
    target = shlex.quote(f"releases/{version}")
    holder = layout.path("deploy.lock", "holder.json")
    needle = shlex.quote(f'"deployment":"{deployment}"')
    return (
        f"( [ -f {holder} ] || exit 3; exec 9<{holder}; flock -w 10 9 2>/dev/null; "
        f"grep -qF {needle} {holder} || exit 3; "
        f"ln -sfn {target} {tmp} && mv -T {tmp} {layout.current} || exit 1; "
        # once `current` moved, a full disk must not make the switch look failed: the
        # revisions.log line is best effort and says so on stderr
        f"printf '%s\\n' {shlex.quote(revision_line(**revision))} >> {layout.revisions} "
        f"|| echo 'moola: revisions.log line not written' >&2 ); rc=$?; "
        f"[ $rc = 3 ] && echo {LOCK_NOT_OURS}; readlink {layout.current}; exit $rc"
    )


def snapshot_and_switch(
    layout: Layout,
    version: str,
    deployment: str,
    revision: dict[str, Any],
    *,
    snapshot_of: str | None,
    snapshot_as: str | None,
) -> str:
    """Snapshot the release being left (if any), then switch: one round trip, stops on error."""
    parts = []
    if snapshot_of and snapshot_as:
        parts.append(snapshot(layout, snapshot_of, snapshot_as))
    parts.append(switch(layout, version, deployment, revision))
    return " && ".join(f"{{ {p}; }}" for p in parts)


def prune(layout: Layout, releases: list[str], backups: list[str]) -> str:
    """Remove the given releases and snapshots, and any staging (and still running runtime
    check) left by interrupted runs.

    Which ones go is decided by `moola_ops.facts.plan_prune` (never current or previous);
    run only under the lock, since incoming/ of a live deploy would go too.
    """
    paths = [layout.release(v) + end for v in releases for end in ("", BUNDLE_MARKER, CHECK_MARKER)]
    paths += [layout.backup(b) for b in backups]
    # an interrupted run's runtime check may still run (its pid file is in incoming/): under
    # the lock no other run's check can, so stop each one's process group before its pid file
    # goes with incoming/
    each = '"$f"'
    checks = (
        f"for f in {layout.incoming}/*.pid; do {_pid_from(each)} && "
        'kill -KILL -"$p" 2>/dev/null; done; '
    )
    leftovers = f"{checks}rm -rf -- {layout.incoming}/* {layout.root}/.current-*"
    if not paths:
        return leftovers
    # both run; the exit status says whether everything asked for is gone
    return f"rm -rf -- {' '.join(paths)}; gone=$?; {leftovers} && [ $gone -eq 0 ]"


def restore(layout: Layout, python: str, deployment: str, snapshot_file: str, version: str):
    """Extract backups/<snapshot>, verify it, and put it in place of releases/<version>."""
    return on_host(
        layout,
        python,
        "restore",
        layout.backup(snapshot_file),
        layout.staging(deployment),
        layout.releases,
        shlex.quote(check_name(version, "version")),
    )


# What success prints, for the plan (moola_ops/deploy/plan.py): a PlanContext answers each
# command with these, so the stages run unchanged and take their success path.
PLANNED_OK = json.dumps({"ok": True, "problems": []})


def planned_resolved(layout: Layout, version: str) -> str:
    """The host-side report of a check through `current` that resolves to releases/<v>."""
    return json.dumps(
        {"ok": True, "problems": [], "resolved": f"{layout.workspace}/releases/{version}"}
    )


def planned_report(version: str) -> str:
    """A passing runtime report of releases/<version> (moola_core.runtime.report)."""
    from moola_core.runtime.report import SCHEMA_VERSION

    return json.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "status": "pass",
            "exit_code": 0,
            "summary": f"{version}: the runtime check would run here",
            "release": version,
        }
    )


def parse_report(stdout: str) -> dict[str, Any]:
    """The JSON report of an agent `release` action (last JSON line of stdout), or a problem
    report."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    return {"ok": False, "problems": [f"no report from the host: {stdout.strip()[-300:]!r}"]}


def _check_sha(sha256: str) -> None:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")

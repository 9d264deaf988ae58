"""Pure decisions over a host's facts: which release `current` really is, the release history
replayed from revisions.log, the rollback target, and what to prune. No I/O; unit-tested."""

from __future__ import annotations

from typing import Any

from moola_core.errors import MoolaError
from moola_ops.deploy.commands import release
from moola_ops.deploy.commands.hostfacts import HostFacts
from moola_ops.hosts.layout import check_name
from moola_ops.log import steps


def resolve_current(facts: HostFacts) -> tuple[str | None, str | None]:
    """(version, None) when `current` is a release Moola deployed, else (None, why not).

    `current` counts only when it resolves to releases/<version> inside the workspace, for a
    version on disk that revisions.log names, whose archive sha256 matches the one deployed.
    No link at all is (None, None): a host that has no release yet.
    """
    link = facts.link
    if link.link is None:
        return None, None
    if not link.resolves:
        return None, f"current -> {link.link} does not resolve (its release is gone)"
    name = link.link.rstrip("/").rsplit("/", 1)[-1]
    inside = link.root and link.resolved == f"{link.root.rstrip('/')}/releases/{name}"
    try:
        check_name(name, "release")
    except MoolaError:
        inside = False
    if not inside:
        return None, (
            f"current -> {link.link} is not a release in this workspace's releases/ "
            f"(it resolves to {link.resolved or 'an unknown place'})"
        )
    if "releases" in facts.asked and name not in facts.releases:
        return None, f"current -> {link.link} names no release on disk"
    if "revisions" in facts.asked:
        lines = [r for r in facts.revisions if r.get("version") == name]
        if not lines:
            return None, f"current -> releases/{name}, which revisions.log never deployed"
        deployed = next((r["sha256"] for r in reversed(lines) if r.get("sha256")), None)
        on_disk = facts.releases.get(name) if "releases" in facts.asked else deployed
        if deployed and on_disk != deployed:
            return None, (
                f"current -> releases/{name}, whose archive sha256 ({str(on_disk)[:12]}) is not "
                f"the one deployed ({deployed[:12]})"
            )
    return name, None


def release_history(revisions: list[dict[str, Any]]) -> list[str]:
    """The stack of versions that served, oldest first, replayed from revisions.log.

    A deploy pushes its version; a rollback to X pops back to X (so a second rollback goes
    further back instead of flip-flopping); a rollback to a version not on the stack pushes it.
    """
    stack: list[str] = []
    for line in revisions:
        version, action = line.get("version"), line.get("action")
        if not version:
            continue
        if action in steps.BACK_ACTIONS and version in stack:
            while stack[-1] != version:
                stack.pop()
        elif action in steps.BACK_ACTIONS + steps.FORWARD_ACTIONS and (
            not stack or stack[-1] != version
        ):
            stack.append(version)
    return stack


def rollback_target(facts: HostFacts) -> str | None:
    """The version that served before the current one, from the host's own history."""
    stack = release_history(facts.revisions)
    if stack and stack[-1] == facts.current:
        stack = stack[:-1]
    for version in reversed(stack):
        if version != facts.current:
            return version
    return None


def plan_prune(
    facts: HostFacts,
    *,
    keep_releases: int,
    keep_backups: int,
    protect: tuple[str, ...] = (),
) -> tuple[list[str], list[str]]:
    """(releases, snapshots) to delete: keep the newest N and M, never current, previous or a
    release a server runs from (serve/state.json: live, standby, shadow), never an odd entry
    (`odd_releases`); a release that never passed its check (`unchecked_releases`) goes
    whatever N says.

    Releases are ordered by when they last served (revisions.log), not by mtime; releases the
    history never mentions count as oldest. The newest snapshot of current and of previous is
    always kept too, so a damaged rollback target can be restored.
    """
    previous = rollback_target(facts)
    keep = {v for v in (facts.current, previous, *protect, *serving_releases(facts)) if v}
    served = release_history(facts.revisions)
    odd = set(odd_releases(facts))  # left alone, and never counted as a kept release
    unchecked = set(unchecked_releases(facts, protect))  # removed whatever N says
    named = [v for v in facts.releases if v not in odd and v not in unchecked]
    order = sorted(named, key=lambda v: (_last_index(served, v), v), reverse=True)
    keep.update(order[: max(keep_releases, 0)])
    releases = sorted({v for v in named if v not in keep} | unchecked)

    snapshots = sorted(facts.backups, reverse=True)  # timestamp-first names: newest first
    keep_snap = set(snapshots[: max(keep_backups, 0)])
    for version in (facts.current, previous):
        newest = next((b for b in snapshots if _snapshot_version(b) == version), None)
        if newest:
            keep_snap.add(newest)
    backups = sorted(b for b in facts.backups if b not in keep_snap)
    return releases, backups


def unchecked_releases(facts: HostFacts, protect: tuple[str, ...] = ()) -> list[str]:
    """Releases on disk that never passed their runtime check (the `unchecked` fact: no
    releases/<v>.checked marker and never named in revisions.log), left by a run that was cut
    off between upload and check. Never current, previous, a release a server runs from, one
    in `protect` (the run's own target) or an odd entry."""
    spared = {facts.current, rollback_target(facts), *protect, *serving_releases(facts)}
    return sorted(v for v in facts.unchecked if v not in spared and _is_name(v))


def serving_releases(facts: HostFacts) -> list[str]:
    """Releases a server runs from, from serve/state.json (live, standby, shadow)."""
    state = facts.server if isinstance(facts.server, dict) else {}
    return sorted(
        {e["release"] for e in state.values() if isinstance(e, dict) and e.get("release")}
    )


def odd_releases(facts: HostFacts) -> list[str]:
    """Entries under releases/ whose names Moola never gives a release (`-rf`, a name with a
    space): a prune leaves them alone and names them, and prunes the rest."""
    return sorted(v for v in facts.releases if not _is_name(v))


def _is_name(value: str) -> bool:
    try:
        check_name(value, "release")
    except MoolaError:
        return False
    return True


def _last_index(items: list[str], value: str) -> int:
    return max((i for i, v in enumerate(items) if v == value), default=-1)


def _snapshot_version(name: str) -> str | None:
    parsed = release.parse_snapshot_name(name)
    return parsed[1] if parsed else None


def newest_snapshot(facts: HostFacts, version: str) -> str | None:
    """The newest snapshot file holding `version`, or None."""
    return next(
        (b for b in sorted(facts.backups, reverse=True) if _snapshot_version(b) == version), None
    )

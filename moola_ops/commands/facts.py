"""Remote facts (pyinfra's shape): one command that asks, one parser that reads its answer.

`gather(layout, python)` asks a host, in one round trip, for everything a deploy, rollback,
lock display or health check needs to decide: where `current` points, which releases and
snapshots exist, who holds the lock, free disk, Python + torch, GPUs, recent revisions.
`parse(output)` turns the answer into `HostFacts`; tests feed it recorded outputs.
The planning functions below (`release_history`, `rollback_target`, `plan_prune`) are pure
decisions over those facts.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from moola_core.runtime.devices import NVIDIA_SMI_COMMAND, parse_nvidia_smi
from moola_ops.commands.layout import Layout

SECTION = "### "
_PYTHON_PROBE = (
    "import sys, json\n"
    "try:\n"
    "    from importlib import metadata\n"
    "    torch = metadata.version('torch')\n"
    "except Exception:\n"
    "    torch = None\n"
    "print(json.dumps({'python': sys.version.split()[0], 'torch': torch}))\n"
)


@dataclass
class HostFacts:
    """What one host told us about itself (see `gather`)."""

    workspace_exists: bool = True
    current: str | None = None  # version `current` points at, None when there is no current
    current_target: str | None = None  # raw link target, e.g. "releases/v0.3"
    releases: dict[str, str | None] = field(default_factory=dict)  # version -> archive sha256
    backups: list[str] = field(default_factory=list)  # snapshot file names, oldest first
    lock_holder: dict[str, Any] | None = None  # None when unlocked
    disk_free_bytes: int | None = None
    python: str | None = None  # remote Python version, None when the interpreter is missing
    torch: str | None = None  # torch version installed there, None when missing
    gpus: list[dict[str, Any]] = field(default_factory=list)
    revisions: list[dict[str, Any]] = field(default_factory=list)  # last lines, oldest first

    @property
    def locked(self) -> bool:
        return self.lock_holder is not None


def gather(layout: Layout, python: str, *, revisions: int = 50) -> str:
    """One shell command printing every fact in `### name` sections (always exits 0)."""
    ws = layout.root
    return "; ".join(
        [
            f"echo '{SECTION}workspace'; if [ -d {ws} ]; then echo present; else echo missing; fi",
            f"echo '{SECTION}current'; readlink {layout.current} 2>/dev/null",
            f"echo '{SECTION}releases'; for d in {layout.releases}/*/; do "
            '[ -d "$d" ] || continue; '
            'v=$(basename "$d"); '
            'printf \'%s %s\\n\' "$v" "$(cat "${d%/}.sha256" 2>/dev/null || echo -)"; '
            "done",
            f"echo '{SECTION}backups'; ls -1 {layout.backups} 2>/dev/null",
            f"echo '{SECTION}lock'; if [ -d {layout.lock} ]; then "
            f"cat {layout.path('deploy.lock', 'holder.json')} 2>/dev/null || echo '{{}}'; fi",
            f"echo '{SECTION}disk'; (df -Pk {ws} 2>/dev/null || df -Pk /) | tail -n 1",
            f"echo '{SECTION}python'; {shlex.quote(python)} -c {shlex.quote(_PYTHON_PROBE)} "
            "2>/dev/null || echo missing",
            f"echo '{SECTION}gpu'; {NVIDIA_SMI_COMMAND} 2>/dev/null",
            f"echo '{SECTION}revisions'; tail -n {int(revisions)} {layout.revisions} 2>/dev/null",
            f"echo '{SECTION}end'",
        ]
    )


def split_sections(output: str) -> dict[str, list[str]]:
    """{section name: its non-empty lines} from `### name` delimited output."""
    sections: dict[str, list[str]] = {}
    name = None
    for line in output.splitlines():
        if line.startswith(SECTION):
            name = line[len(SECTION) :].strip()
            sections[name] = []
        elif name is not None and line.strip():
            sections[name].append(line.rstrip())
    return sections


def parse(output: str) -> HostFacts:
    """HostFacts from the output of `gather`; raises ValueError on a truncated answer."""
    s = split_sections(output)
    if "end" not in s:
        raise ValueError("the host's answer to the facts command was cut short")
    facts = HostFacts(workspace_exists=s.get("workspace", ["missing"])[:1] == ["present"])
    target = (s.get("current") or [None])[0]
    facts.current_target = target
    facts.current = target.rstrip("/").rsplit("/", 1)[-1] if target else None
    for line in s.get("releases", []):
        version, _, sha = line.partition(" ")
        facts.releases[version] = None if sha in ("", "-") else sha
    facts.backups = sorted(b for b in s.get("backups", []) if not b.startswith("."))
    if "lock" in s and s["lock"]:
        try:
            holder = json.loads(s["lock"][0])
        except json.JSONDecodeError:
            holder = {"unreadable": s["lock"][0][:200]}
        facts.lock_holder = holder if isinstance(holder, dict) else {}
    facts.disk_free_bytes = parse_df((s.get("disk") or [""])[0])
    probe = (s.get("python") or ["missing"])[0]
    if probe != "missing":
        try:
            info = json.loads(probe)
            facts.python, facts.torch = info.get("python"), info.get("torch")
        except json.JSONDecodeError:
            facts.python = None
    facts.gpus = parse_gpus(s.get("gpu", []))
    for line in s.get("revisions", []):
        try:
            facts.revisions.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a hand-edited or torn line must not stop a rollback
    return facts


def parse_df(line: str) -> int | None:
    """Free bytes from one POSIX `df -Pk` data line (4th column is available KiB)."""
    cols = line.split()
    if len(cols) < 4 or not cols[3].isdigit():
        return None
    return int(cols[3]) * 1024


def parse_gpus(lines: list[str]) -> list[dict[str, Any]]:
    """GPUs from the runtime's nvidia-smi query, as dicts; [] when its answer is not a GPU list
    (no nvidia-smi, or its "has failed" message)."""
    try:
        return [asdict(gpu) for gpu in parse_nvidia_smi("\n".join(lines))]
    except ValueError:
        return []


# --- decisions over facts ---------------------------------------------------------------------

BACK_ACTIONS = ("rollback", "auto-rollback", "drill-back")
FORWARD_ACTIONS = ("deploy", "drill-forward")


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
        if action in BACK_ACTIONS and version in stack:
            while stack[-1] != version:
                stack.pop()
        elif action in BACK_ACTIONS + FORWARD_ACTIONS and (not stack or stack[-1] != version):
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
    """(releases, snapshots) to delete: keep the newest N and M, never current or previous.

    Releases are ordered by when they last served (revisions.log), not by mtime; releases the
    history never mentions count as oldest. The newest snapshot of current and of previous is
    always kept too, so a damaged rollback target can be restored.
    """
    previous = rollback_target(facts)
    keep = {v for v in (facts.current, previous, *protect) if v}
    served = release_history(facts.revisions)
    order = sorted(facts.releases, key=lambda v: (_last_index(served, v), v), reverse=True)
    keep.update(order[: max(keep_releases, 0)])
    releases = sorted(v for v in facts.releases if v not in keep)

    snapshots = sorted(facts.backups, reverse=True)  # timestamp-first names: newest first
    keep_snap = set(snapshots[: max(keep_backups, 0)])
    for version in (facts.current, previous):
        newest = next((b for b in snapshots if _snapshot_version(b) == version), None)
        if newest:
            keep_snap.add(newest)
    backups = sorted(b for b in facts.backups if b not in keep_snap)
    return releases, backups


def _last_index(items: list[str], value: str) -> int:
    return max((i for i, v in enumerate(items) if v == value), default=-1)


def _snapshot_version(name: str) -> str | None:
    from moola_ops.commands.release import parse_snapshot_name

    parsed = parse_snapshot_name(name)
    return parsed[1] if parsed else None


def newest_snapshot(facts: HostFacts, version: str) -> str | None:
    """The newest snapshot file holding `version`, or None."""
    return next(
        (b for b in sorted(facts.backups, reverse=True) if _snapshot_version(b) == version), None
    )

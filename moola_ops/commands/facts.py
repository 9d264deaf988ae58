"""Remote facts, one registry (pyinfra's shape): a fact is a shell fragment plus its parser.

Every thing a host can tell Moola is one `Fact` in `FACTS`: `workspace`, `current`,
`releases`, `backups`, `lock`, `disk`, `python`, `gpus`, `revisions`, `checksums` (and `server`
once the serving room registers it with `register`). `gather(layout, python, names)` combines any
subset into ONE shell command (one SSH round trip) whose answer is split into `### name`
sections; `parse(output)` hands each section to its fact's parser and returns `HostFacts`.
Parsers are tested from recorded `{command, output, fact}` files under tests/data/facts/.

Decisions over facts live here too, pure and testable: which release `current` really is
(`resolve_current`), the rollback target, what to prune.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from moola_core.runtime.devices import NVIDIA_SMI_COMMAND, parse_nvidia_smi
from moola_core.runtime.report import GpuFact
from moola_ops import steps
from moola_ops.commands import release
from moola_ops.commands.layout import BUNDLE_MARKER, Layout, check_name

SECTION = "### "
END = "end"
GPU_TIMEOUT_S = 10  # nvidia-smi can hang on a wedged GPU; `timeout` bounds it
REVISIONS_READ = 50  # last lines of revisions.log a decision needs

_PYTHON_PROBE = (
    "import sys, json\n"
    "try:\n"
    "    from importlib import metadata\n"
    "    torch = metadata.version('torch')\n"
    "except Exception:\n"
    "    torch = None\n"
    "print(json.dumps({'python': sys.version.split()[0], 'torch': torch}))\n"
)


@dataclass(frozen=True)
class Fact:
    """One thing a host can tell: `command(layout, python)` asks, `parse(lines)` reads."""

    name: str
    command: Callable[[Layout, str], str]
    parse: Callable[[list[str]], Any]
    description: str = ""


# --- parsed shapes ------------------------------------------------------------------------------


@dataclass
class CurrentLink:
    """What `current` is on disk: the link text, where it resolves, the workspace's real path."""

    link: str | None = None  # None: there is no `current` link
    resolved: str | None = None  # `readlink -f current`
    root: str | None = None  # the workspace's physical path (`pwd -P`)
    resolves: bool = False  # the link leads to a directory


@dataclass
class LockFact:
    """A deploy lock that is present: its holder record and its age on the host's clock."""

    holder: dict[str, Any]
    age_s: float = 0.0


@dataclass
class DiskFact:
    """Space on the workspace's filesystem, in bytes."""

    total_bytes: int
    free_bytes: int


@dataclass
class PythonFact:
    """The host interpreter named in the inventory: its version and torch's (None = missing)."""

    python: str | None = None
    torch: str | None = None


@dataclass
class GpuReport:
    """nvidia-smi's answer: present or not, the GPUs it listed, or the error it gave."""

    present: bool = False
    gpus: list[GpuFact] = field(default_factory=list)
    error: str | None = None


@dataclass
class ChecksumFact:
    """The release behind `current` verified against its manifest (size + sha256 per file)."""

    problems: list[str] = field(default_factory=list)
    version: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


# --- fragments and parsers ----------------------------------------------------------------------


def _workspace_cmd(layout: Layout, python: str) -> str:
    return f"if [ -d {layout.root} ]; then echo present; else echo missing; fi"


def parse_workspace(lines: list[str]) -> bool:
    """True when the workspace folder exists."""
    return lines[:1] == ["present"]


def _current_cmd(layout: Layout, python: str) -> str:
    cur = layout.current
    return (
        f"if [ -L {cur} ]; then readlink {cur}; readlink -f {cur} || echo; "
        f"(cd {layout.root} && pwd -P); [ -d {cur} ] && echo resolves || echo dangling; fi"
    )


def parse_current(lines: list[str]) -> CurrentLink:
    """Link text, resolved path, workspace path, resolves|dangling (nothing: no link)."""
    if not lines:
        return CurrentLink()
    padded = lines + [""] * (4 - len(lines))
    return CurrentLink(
        link=padded[0].strip() or None,
        resolved=padded[1].strip() or None if len(lines) >= 3 else None,
        root=padded[2].strip() or None if len(lines) >= 3 else None,
        resolves=lines[-1].strip() == "resolves",
    )


def _releases_cmd(layout: Layout, python: str) -> str:
    return (
        f"for d in {layout.releases}/*/; do "
        '[ -d "$d" ] || continue; '
        'v=$(basename "$d"); '
        f'printf \'%s %s\\n\' "$v" "$(cat "${{d%/}}{BUNDLE_MARKER}" 2>/dev/null || echo -)"; '
        "done"
    )


def parse_releases(lines: list[str]) -> dict[str, str | None]:
    """{version: sha256 of the archive it came from, or None when its marker is missing}."""
    out: dict[str, str | None] = {}
    for line in lines:
        version, _, sha = line.partition(" ")
        out[version] = None if sha in ("", "-") else sha
    return out


def _backups_cmd(layout: Layout, python: str) -> str:
    return f"ls -1 {layout.backups} 2>/dev/null"


def parse_backups(lines: list[str]) -> list[str]:
    """Snapshot file names, oldest first (partial ones, dot-named, left out)."""
    return sorted(b for b in lines if not b.startswith("."))


def _lock_cmd(layout: Layout, python: str) -> str:
    holder = layout.path("deploy.lock", "holder.json")
    return (
        f'if [ -d {layout.lock} ]; then echo "$(date +%s) $(stat -c %Y {layout.lock})"; '
        f"head -c 4000 {holder} 2>/dev/null; echo; fi"
    )


def parse_lock(lines: list[str]) -> LockFact | None:
    """None when unlocked; else the holder record and the lock's age (host clock)."""
    if not lines:
        return None
    age = 0.0
    first = lines[0].split()
    rest = lines
    if len(first) == 2 and all(x.isdigit() for x in first):
        age = max(0.0, float(int(first[0]) - int(first[1])))
        rest = lines[1:]
    raw = "\n".join(rest).strip()
    try:
        holder = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        holder = {"unreadable": raw[:200]}
    return LockFact(holder if isinstance(holder, dict) else {"unreadable": raw[:200]}, age)


def _disk_cmd(layout: Layout, python: str) -> str:
    return f"(df -Pk {layout.root} 2>/dev/null || df -Pk /) | tail -n 1"


def parse_disk(lines: list[str]) -> DiskFact | None:
    """From the last `df -Pk` line: 1K-blocks (2nd column) and available (4th)."""
    cols = lines[-1].split() if lines else []
    if len(cols) < 4 or not cols[1].isdigit() or not cols[3].isdigit():
        return None
    return DiskFact(total_bytes=int(cols[1]) * 1024, free_bytes=int(cols[3]) * 1024)


def _python_cmd(layout: Layout, python: str) -> str:
    return f"{shlex.quote(python)} -c {shlex.quote(_PYTHON_PROBE)} 2>/dev/null || echo missing"


def parse_python(lines: list[str]) -> PythonFact:
    """The probe's JSON line, or `missing` when the interpreter is not there."""
    try:
        info = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        info = None
    if not isinstance(info, dict):
        return PythonFact()
    return PythonFact(python=info.get("python"), torch=info.get("torch"))


def _gpus_cmd(layout: Layout, python: str) -> str:
    return (
        "if command -v nvidia-smi >/dev/null 2>&1; then "
        f"timeout {GPU_TIMEOUT_S} {NVIDIA_SMI_COMMAND} 2>&1 || echo 'nvidia-smi failed'; "
        "else echo absent; fi"
    )


def parse_gpus(lines: list[str]) -> GpuReport:
    """nvidia-smi --query-gpu=... --format=csv,noheader,nounits; `absent` without nvidia-smi."""
    text = "\n".join(lines).strip()
    if text == "absent":
        return GpuReport(present=False)
    try:
        gpus = parse_nvidia_smi(text)
    except ValueError:
        return GpuReport(present=True, error=text[-200:] or "no answer")
    if not gpus:
        return GpuReport(present=True, error="nvidia-smi listed no GPU")
    return GpuReport(present=True, gpus=gpus)


def _revisions_cmd(layout: Layout, python: str) -> str:
    return f"tail -n {REVISIONS_READ} {layout.revisions} 2>/dev/null"


def parse_revisions(lines: list[str]) -> list[dict[str, Any]]:
    """revisions.log lines, oldest first; a torn or hand-edited line is skipped."""
    out = []
    for line in lines:
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def _checksums_cmd(layout: Layout, python: str) -> str:
    cur = layout.current
    return (
        f"if [ -f {cur}/manifest.json ]; then "
        f"{release.hostside(python, 'verify', cur, shlex.quote(''))} 2>&1; fi"
    )


def parse_checksums(lines: list[str]) -> ChecksumFact | None:
    """The host-side verifier's JSON report on `current`; None when it has no manifest."""
    text = "\n".join(lines).strip()
    if not text:
        return None
    report = release.parse_hostside(text)
    problems = list(report.get("problems") or [])
    if problems[:1] and problems[0].startswith("no report from the host"):
        return ChecksumFact(problems=[f"checksum verifier failed: {text[-200:]}"])
    return ChecksumFact(problems=problems, version=report.get("version"))


FACTS: dict[str, Fact] = {}


def register(fact: Fact) -> Fact:
    """Add a fact to the registry (the serving room registers `server` this way)."""
    FACTS[fact.name] = fact
    return fact


for _fact in (
    Fact("workspace", _workspace_cmd, parse_workspace, "the workspace folder exists"),
    Fact("current", _current_cmd, parse_current, "where `current` points and resolves"),
    Fact("releases", _releases_cmd, parse_releases, "releases on disk and their archive sha256"),
    Fact("backups", _backups_cmd, parse_backups, "snapshot files in backups/"),
    Fact("lock", _lock_cmd, parse_lock, "the deploy lock's holder and age"),
    Fact("disk", _disk_cmd, parse_disk, "free and total bytes of the workspace's filesystem"),
    Fact("python", _python_cmd, parse_python, "the inventory's python and its torch"),
    Fact("gpus", _gpus_cmd, parse_gpus, "GPUs from nvidia-smi"),
    Fact("revisions", _revisions_cmd, parse_revisions, "the last lines of revisions.log"),
    Fact("checksums", _checksums_cmd, parse_checksums, "current's files against its manifest"),
):
    register(_fact)

DEPLOY_FACTS = (
    "workspace",
    "current",
    "releases",
    "backups",
    "lock",
    "disk",
    "python",
    "gpus",
    "revisions",
)
HEALTH_FACTS = (
    "workspace",
    "current",
    "releases",
    "revisions",
    "checksums",
    "gpus",
    "disk",
    "lock",
)


# --- the gatherer -------------------------------------------------------------------------------


def gather(layout: Layout, python: str, names: Iterable[str] = DEPLOY_FACTS) -> str:
    """ONE shell command printing each named fact in a `### name` section (always exits 0)."""
    parts = []
    for name in names:
        fact = FACTS[name]
        parts.append(f"echo '{SECTION}{name}'; {{ {fact.command(layout, python)}; }}")
    parts.append(f"echo '{SECTION}{END}'")
    return "; ".join(parts)


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


@dataclass
class HostFacts:
    """What one host told us; a fact not asked for stays at its default (see `asked`)."""

    workspace_exists: bool = True
    link: CurrentLink = field(default_factory=CurrentLink)
    releases: dict[str, str | None] = field(default_factory=dict)  # version -> archive sha256
    backups: list[str] = field(default_factory=list)  # snapshot file names, oldest first
    lock: LockFact | None = None
    disk: DiskFact | None = None
    interpreter: PythonFact = field(default_factory=PythonFact)
    gpu: GpuReport = field(default_factory=GpuReport)
    revisions: list[dict[str, Any]] = field(default_factory=list)  # last lines, oldest first
    checksums: ChecksumFact | None = None
    server: Any = None  # the serving room's fact (registered by it)
    asked: tuple[str, ...] = ()
    complete: bool = True  # the answer ran to its end marker
    current: str | None = None  # the VALID release behind `current` (see resolve_current)
    current_problem: str | None = None  # why `current` does not count, one sentence

    @property
    def locked(self) -> bool:
        return self.lock is not None

    @property
    def lock_holder(self) -> dict[str, Any] | None:
        return self.lock.holder if self.lock is not None else None

    @property
    def disk_free_bytes(self) -> int | None:
        return self.disk.free_bytes if self.disk is not None else None

    @property
    def python(self) -> str | None:
        return self.interpreter.python

    @property
    def torch(self) -> str | None:
        return self.interpreter.torch

    @property
    def gpus(self) -> list[dict[str, Any]]:
        return [asdict(g) for g in self.gpu.gpus]


_ATTRIBUTE = {
    "workspace": "workspace_exists",
    "current": "link",
    "python": "interpreter",
    "gpus": "gpu",
}


def parse(output: str, *, strict: bool = True) -> HostFacts:
    """HostFacts from the output of `gather`: each section read by its fact's own parser.

    A cut answer (no end marker) raises ValueError when `strict`, else is marked incomplete.
    """
    sections = split_sections(output)
    if END not in sections and strict:
        raise ValueError("the host's answer to the facts command was cut short")
    facts = HostFacts(complete=END in sections)
    asked = []
    for name, lines in sections.items():
        fact = FACTS.get(name)
        if fact is None:
            continue
        asked.append(name)
        setattr(facts, _ATTRIBUTE.get(name, name), fact.parse(lines))
    facts.asked = tuple(asked)
    facts.current, facts.current_problem = resolve_current(facts)
    return facts


# --- decisions over facts -----------------------------------------------------------------------


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
    except Exception:
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
    parsed = release.parse_snapshot_name(name)
    return parsed[1] if parsed else None


def newest_snapshot(facts: HostFacts, version: str) -> str | None:
    """The newest snapshot file holding `version`, or None."""
    return next(
        (b for b in sorted(facts.backups, reverse=True) if _snapshot_version(b) == version), None
    )

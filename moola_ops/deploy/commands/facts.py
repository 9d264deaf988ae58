"""Remote facts, one registry (pyinfra's shape): a fact is a shell fragment plus its parser.

Every thing a host can tell Moola is one `Fact` in `FACTS`: `workspace`, `current`,
`releases`, `backups`, `lock`, `disk`, `python`, `gpus`, `revisions`, `checksums`, `server`
(serve/state.json). `gather(layout, python, names)` combines any subset into ONE shell
command (one SSH round trip) whose answer is split into `### name` sections; `parse(output)`
hands each section to its fact's parser and returns `HostFacts`.
Parsers are tested from recorded `{command, output, fact}` files under tests/data/facts/.

Decisions over facts live here too, pure and testable: which release `current` really is
(`resolve_current`), the rollback target, what to prune.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from moola_core.runtime.devices import NVIDIA_SMI_COMMAND, parse_nvidia_smi
from moola_core.runtime.report import GpuFact
from moola_ops.deploy.commands import release
from moola_ops.deploy.commands.decisions import resolve_current
from moola_ops.deploy.commands.hostfacts import (
    ATTRIBUTE,
    ChecksumFact,
    CurrentLink,
    DiskFact,
    GpuReport,
    HostFacts,
    LockFact,
    PythonFact,
)
from moola_ops.hosts.layout import BUNDLE_MARKER, CHECK_MARKER, Layout
from moola_ops.transport import agent

SECTION = "### "
END = "end"
GPU_TIMEOUT_S = 10  # nvidia-smi can hang on a wedged GPU; `timeout` bounds it
REVISIONS_READ = 50  # last lines of revisions.log a decision needs


@dataclass(frozen=True)
class Fact:
    """One thing a host can tell: `command(layout, python)` asks, `parse(lines)` reads."""

    name: str
    command: Callable[[Layout, str], str]
    parse: Callable[[list[str]], Any]
    description: str = ""


# --- fragments and parsers ----------------------------------------------------------------------


def _workspace_cmd(layout: Layout, python: str) -> str:
    # a folder holding nothing but the host agent (.moola, installed by the first command
    # that needed it, a health check's included) is no workspace: nothing was deployed there
    return (
        f'if [ -d {layout.root} ] && [ "$(ls -A {layout.root})" != .moola ]; '
        "then echo present; else echo missing; fi"
    )


def parse_workspace(lines: list[str]) -> bool:
    """True when the workspace folder exists."""
    return lines[:1] == ["present"]


def _current_cmd(layout: Layout, python: str) -> str:
    cur = layout.current
    return (
        f'if [ -L {cur} ]; then echo "link $(readlink {cur})"; '
        f'echo "resolved $(readlink -f {cur})"; echo "root $(cd {layout.root} && pwd -P)"; '
        f"if [ -d {cur} ]; then echo 'state resolves'; else echo 'state dangling'; fi; fi"
    )


def parse_current(lines: list[str]) -> CurrentLink:
    """`link`, `resolved`, `root` and `state` lines (nothing at all: there is no link)."""
    if not lines:
        return CurrentLink()
    values = {}
    for line in lines:
        key, _, value = line.partition(" ")
        values[key] = value.strip() or None
    return CurrentLink(
        link=values.get("link") or "",
        resolved=values.get("resolved"),
        root=values.get("root"),
        resolves=values.get("state") == "resolves",
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
        # the sha256 (or "-") is the last field: a folder name with spaces stays whole, so a
        # prune never acts on the first word of an odd name
        version, _, sha = line.rpartition(" ")
        out[version] = None if sha in ("", "-") else sha
    return out


def _unchecked_cmd(layout: Layout, python: str) -> str:
    # a release counts as checked with its marker, or when revisions.log names it (it served:
    # only a checked release is ever switched to; hosts from before the marker rely on this)
    return (
        f"for d in {layout.releases}/*/; do "
        '[ -d "$d" ] || continue; v=$(basename "$d"); '
        f'[ -e "${{d%/}}{CHECK_MARKER}" ] && continue; '
        f'grep -qF -e "\\"version\\":\\"$v\\"" -e "\\"version\\": \\"$v\\"" '
        f"{layout.revisions} 2>/dev/null && continue; "
        "printf '%s\\n' \"$v\"; done"
    )


def parse_unchecked(lines: list[str]) -> list[str]:
    """Releases on disk that never passed their runtime check (no marker, never served)."""
    return sorted(line for line in lines if line.strip())


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
    """None when unlocked; else the holder record and the lock's age on the host's clock.

    The age counts from the start time the holder recorded (`since`), not from the lock
    folder's mtime, which anything touching the folder renews; the mtime serves only when the
    holder recorded no readable time, or one more than SINCE_SKEW_S ahead of the host's clock.
    """
    if not lines:
        return None
    now = mtime = None
    first = lines[0].split()
    rest = lines
    if len(first) == 2 and all(x.isdigit() for x in first):
        now, mtime = int(first[0]), int(first[1])
        rest = lines[1:]
    raw = "\n".join(rest).strip()
    try:
        holder = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        holder = {"unreadable": raw[:200]}
    if not isinstance(holder, dict):
        holder = {"unreadable": raw[:200]}
    if now is None:
        return LockFact(holder, 0.0)
    since = _epoch(holder.get("since"))
    if since is not None and since - now <= SINCE_SKEW_S:
        return LockFact(holder, max(0.0, now - since), "since")
    return LockFact(holder, max(0.0, float(now - mtime)), "mtime")


SINCE_SKEW_S = 300.0  # a recorded start this far ahead of the host's clock is not believed


def _epoch(value: Any) -> float | None:
    """An ISO-8601 time (`2026-11-27T16:33:00Z`) as epoch seconds; None if it is not one."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _disk_cmd(layout: Layout, python: str) -> str:
    return f"(df -Pk {layout.root} 2>/dev/null || df -Pk /) | tail -n 1"


def parse_disk(lines: list[str]) -> DiskFact | None:
    """From the last `df -Pk` line: 1K-blocks (2nd column) and available (4th)."""
    cols = lines[-1].split() if lines else []
    if len(cols) < 4 or not cols[1].isdigit() or not cols[3].isdigit():
        return None
    return DiskFact(total_bytes=int(cols[1]) * 1024, free_bytes=int(cols[3]) * 1024)


def _python_cmd(layout: Layout, python: str) -> str:
    # with `site`: torch lives in the interpreter's site-packages (a venv's included)
    probe = agent.command(layout, python, "facts", "python", site=True)
    return f"{probe} 2>/dev/null || echo missing"


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
        f"{release.on_host(layout, python, 'verify', cur, shlex.quote(''))} 2>&1; fi"
    )


def parse_checksums(lines: list[str]) -> ChecksumFact | None:
    """The host-side verifier's JSON report on `current`; None when it has no manifest."""
    text = "\n".join(lines).strip()
    if not text:
        return None
    report = release.parse_report(text)
    problems = list(report.get("problems") or [])
    if problems[:1] and problems[0].startswith("no report from the host"):
        return ChecksumFact(problems=[f"checksum verifier failed: {text[-200:]}"])
    return ChecksumFact(problems=problems, version=report.get("version"))


def _server_cmd(layout: Layout, python: str) -> str:
    # serve/state.json as it is (no python started): the lock's round trip already tells
    # rollback which release has a warm standby (moola_ops/serving/control.py)
    return f"cat {layout.path('serve', 'state.json')} 2>/dev/null; echo"


def parse_server(lines: list[str]) -> dict[str, Any] | None:
    """The serving state {live, standby, shadow, ...}; None when the host never served or the
    file is unreadable (serving then asks the host itself)."""
    try:
        value = json.loads("\n".join(lines)) if lines else None
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


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
    Fact("server", _server_cmd, parse_server, "serve/state.json: live and standby servers"),
    Fact("unchecked", _unchecked_cmd, parse_unchecked, "releases that never passed their check"),
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
    "server",
    "unchecked",
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
    "server",
    "unchecked",
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
        setattr(facts, ATTRIBUTE.get(name, name), fact.parse(lines))
    facts.asked = tuple(asked)
    facts.current, facts.current_problem = resolve_current(facts)
    return facts


__all__ = [
    "FACTS",
    "Fact",
    "HostFacts",
    "gather",
    "parse",
    "register",
    "split_sections",
    "CurrentLink",
    "LockFact",
    "DiskFact",
    "PythonFact",
    "GpuReport",
    "ChecksumFact",
    "GpuFact",
]

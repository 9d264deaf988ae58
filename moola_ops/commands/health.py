"""Health facts of a host: the commands that ask for them and the parsers of their answers.

pyinfra's shape: a fact is a command plus a parser, so every parser is tested from recorded
output without a host. The light facts (release behind `current`, checksums, GPUs, free disk,
deploy lock) come back in ONE round trip: one `sh` script printing `@@section` markers. It needs
only POSIX tools and the host's `python3` standard library (no torch), so it suits a check that
cron runs every few minutes. The deep fact is the runtime model check, run through `current`.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from moola_core.runtime.devices import NVIDIA_SMI_COMMAND, parse_nvidia_smi
from moola_core.runtime.report import GpuFact
from moola_ops.commands import release
from moola_ops.commands.layout import Layout
from moola_ops.commands.lock import describe_holder

MARKER = "@@"
# nvidia-smi can hang on a wedged GPU; `timeout` bounds it so one sick GPU cannot stall the run.
GPU_QUERY = NVIDIA_SMI_COMMAND
GPU_TIMEOUT_S = 10


def light_facts_command(workspace: str, python: str = "python3") -> str:
    """One shell script that prints every light health fact of the host, section by section."""
    ws = Layout(workspace).root  # validated; a leading ~/ stays expandable
    py = shlex.quote(python)
    verifier = shlex.quote(release.HOSTSIDE_SOURCE)
    lines = [
        f"cd {ws} 2>/dev/null || {{ echo '{MARKER}workspace'; echo missing; exit 0; }}",
        f"echo '{MARKER}now'; date +%s",
        # the link text names the release; `test -d` proves it resolves to a directory
        f"echo '{MARKER}current'; if [ -L current ]; then readlink current;"
        " [ -d current ] && echo resolves || echo dangling; fi",
        # the engine's host-side verifier (one home for "does a release match its manifest")
        f"echo '{MARKER}checksums'; if [ -f current/manifest.json ];"
        f" then {py} -c {verifier} verify current '' 2>&1; fi",
        f"echo '{MARKER}gpu'; if command -v nvidia-smi >/dev/null 2>&1;"
        f" then timeout {GPU_TIMEOUT_S} {GPU_QUERY} 2>&1 || echo 'nvidia-smi failed';"
        " else echo absent; fi",
        f"echo '{MARKER}disk'; df -Pk . | tail -n 1",
        f"echo '{MARKER}lock'; if [ -d deploy.lock ]; then stat -c %Y deploy.lock;"
        " cat deploy.lock/* 2>/dev/null | head -c 2000; fi",
        f"echo '{MARKER}end'",
    ]
    return "\n".join(lines)


def runtime_check_command(
    workspace: str, python: str = "python3", sla_p99_ms: float | None = None
) -> str:
    """The deep check: the bundle's own runtime checks the release that `current` serves,
    against the host's latency SLA (inventory `latency_sla_ms`) when it has one."""
    return release.runtime_check(
        Layout(workspace), python, "current", through_current=True, sla_p99_ms=sla_p99_ms
    )


# --- parsers ----------------------------------------------------------------------------------


def split_sections(output: str) -> dict[str, str]:
    """`@@name` marker lines split the script's output into {name: text}."""
    sections: dict[str, list[str]] = {}
    name = None
    for line in output.splitlines():
        if line.startswith(MARKER) and " " not in line:
            name = line[len(MARKER) :]
            sections[name] = []
        elif name is not None:
            sections[name].append(line)
    return {k: "\n".join(v).strip() for k, v in sections.items()}


@dataclass
class CurrentFact:
    """What `current` points at: the link text, the release it names, whether it resolves."""

    link: str | None
    release: str | None
    resolves: bool


def parse_current(text: str) -> CurrentFact:
    """Parse the `current` section: empty when there is no link, else target + resolves flag."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return CurrentFact(link=None, release=None, resolves=False)
    link = lines[0].strip()
    release = link.rstrip("/").rsplit("/", 1)[-1] or None
    return CurrentFact(link=link, release=release, resolves=lines[-1].strip() == "resolves")


@dataclass
class ChecksumFact:
    """Result of verifying the current release's files against its manifest (size + sha256)."""

    problems: list[str] = field(default_factory=list)
    version: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def parse_checksums(text: str) -> ChecksumFact | None:
    """Parse the checksum section (hostside `verify` JSON); None when there was no manifest."""
    text = text.strip()
    if not text:
        return None
    try:
        data = json.loads(text.splitlines()[-1])
    except json.JSONDecodeError:
        return ChecksumFact(problems=[f"checksum verifier failed: {text[-200:]}"])
    return ChecksumFact(problems=list(data.get("problems", [])), version=data.get("version"))


@dataclass
class GpuReport:
    """nvidia-smi's answer: present or not, the GPUs it listed, or the error it gave."""

    present: bool
    gpus: list[GpuFact] = field(default_factory=list)
    error: str | None = None


def parse_gpus(text: str) -> GpuReport:
    """Parse `nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu,
    temperature.gpu --format=csv,noheader,nounits`, or `absent` when there is no nvidia-smi."""
    text = text.strip()
    if text == "absent":
        return GpuReport(present=False)
    try:
        gpus = parse_nvidia_smi(text)
    except ValueError:
        return GpuReport(present=True, error=text[-200:])
    if not gpus:
        return GpuReport(present=True, error="nvidia-smi listed no GPU")
    return GpuReport(present=True, gpus=gpus)


@dataclass
class DiskFact:
    """Space on the workspace's filesystem, in bytes."""

    total_bytes: int
    free_bytes: int


def parse_free_disk(text: str) -> DiskFact | None:
    """Parse the last line of `df -Pk .` (filesystem, 1K-blocks, used, available, ...)."""
    lines = text.strip().splitlines()
    if not lines:
        return None
    parts = lines[-1].split()
    try:
        return DiskFact(total_bytes=int(parts[1]) * 1024, free_bytes=int(parts[3]) * 1024)
    except (IndexError, ValueError):
        return None


@dataclass
class LockFact:
    """A deploy lock that is present: how old it is and what its holder wrote into it."""

    age_s: float
    holder: str


def parse_lock(text: str, now: float) -> LockFact | None:
    """Parse the lock section (mtime of deploy.lock, then its files); None when unlocked."""
    lines = text.strip().splitlines()
    if not lines:
        return None
    try:
        mtime = float(lines[0])
    except ValueError:
        return LockFact(age_s=0.0, holder=text.strip()[:200])
    raw = "\n".join(lines[1:]).strip()
    try:
        holder = describe_holder(json.loads(raw))  # the engine's holder.json
    except (json.JSONDecodeError, AttributeError):
        holder = " ".join(raw.split())[:300]
    return LockFact(age_s=max(0.0, now - mtime), holder=holder or "unknown holder")


@dataclass
class LightFacts:
    """Every light fact of one host, parsed."""

    workspace_exists: bool
    now: float | None
    current: CurrentFact
    checksums: ChecksumFact | None
    gpu: GpuReport
    disk: DiskFact | None
    lock: LockFact | None
    complete: bool  # the script ran to its end marker


def parse_light_facts(output: str) -> LightFacts:
    """Parse the whole output of `light_facts_command`."""
    sections = split_sections(output)
    if sections.get("workspace") == "missing":
        return LightFacts(False, None, CurrentFact(None, None, False), None, GpuReport(False),
                          None, None, complete=True)  # fmt: skip
    try:
        now = float(sections.get("now", ""))
    except ValueError:
        now = None
    return LightFacts(
        workspace_exists=True,
        now=now,
        current=parse_current(sections.get("current", "")),
        checksums=parse_checksums(sections.get("checksums", "")),
        gpu=parse_gpus(sections.get("gpu", "absent")),
        disk=parse_free_disk(sections.get("disk", "")),
        lock=parse_lock(sections.get("lock", ""), now or 0.0),
        complete="end" in sections,
    )

"""The runtime check's JSON report: one schema shared by the host and moola_ops.

Standard-library dataclasses, because hosts have no pydantic; moola_ops validates the same
classes with `pydantic.TypeAdapter(RuntimeReport)` or uses `parse_report` here. The field
meanings are documented in docs/runtime.md; bump SCHEMA_VERSION on any incompatible change.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field

SCHEMA_VERSION = 1

# exit codes of `python -m moola_core.runtime check` (and RuntimeReport.exit_code)
EXIT_PASS = 0  # every check passed
EXIT_FAIL = 1  # the check ran and at least one check failed
EXIT_ERROR = 2  # the check could not run (no release, unreadable manifest, no torch, crash)

STATUS_BY_EXIT = {EXIT_PASS: "pass", EXIT_FAIL: "fail", EXIT_ERROR: "error"}


@dataclass
class Check:
    """One named check: checksums, device, load, golden_parity, finite, latency_sla."""

    name: str
    ok: bool
    detail: str


@dataclass
class GpuFact:
    """One GPU as nvidia-smi reports it; None where it says [N/A] or [Not Supported]."""

    index: int
    name: str
    memory_used_mib: float | None
    memory_total_mib: float | None
    utilization_pct: float | None
    temperature_c: float | None


@dataclass
class DeviceFacts:
    """Where the model ran: torch's device and its name, versions, threads, nvidia-smi's GPUs."""

    device: str  # "cuda:0" or "cpu"
    device_name: str
    torch_version: str
    cuda_version: str | None
    python_version: str
    cpu_threads: int
    nvidia_smi: str  # "ok", "absent" or "failed: <reason>"
    gpus: list[GpuFact] = field(default_factory=list)


@dataclass
class BackendResult:
    """One inference backend tried on this host: did it build, match golden, how fast."""

    name: str
    available: bool
    parity_ok: bool
    max_abs_diff: float | None  # max |class_probs - golden| over the golden windows
    trial_p50_ms: float | None  # short timing used to choose; the chosen one is then measured
    chosen: bool
    detail: str
    threads: int | None = None  # torch CPU threads of its best trial (CPU: 1 or the default)


@dataclass
class GoldenResult:
    """How the chosen backend's outputs compare with the outputs recorded at build time."""

    backend: str
    n_windows: int
    class_probs_atol: float
    max_abs_diff: float
    label_mismatches: int
    span_mismatches: int


@dataclass
class Latency:
    """Single-window latency of the chosen backend, input on CPU to result on CPU."""

    backend: str
    runs: int
    warmup: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    sla_p99_ms: float
    threads: int | None = None  # torch CPU threads it was served with


@dataclass
class RuntimeReport:
    """The one JSON document the runtime check prints (see docs/runtime.md)."""

    status: str  # "pass", "fail" or "error"
    exit_code: int  # 0, 1 or 2, as the process exits
    summary: str  # one sentence: what passed, or the first thing that failed and what to do
    release: str
    schema_version: int = SCHEMA_VERSION
    version: str | None = None  # the bundle version from manifest.json
    checked_at: str = ""  # UTC, ISO 8601
    duration_s: float = 0.0
    code_path: str | None = None  # the folder moola_core was imported from (release/code)
    checks: list[Check] = field(default_factory=list)
    device: DeviceFacts | None = None
    backends: list[BackendResult] = field(default_factory=list)
    golden: GoldenResult | None = None
    latency: Latency | None = None
    error: str | None = None  # why the check could not run (status "error")

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return self.exit_code == EXIT_PASS

    def to_dict(self) -> dict:
        """Plain dict (JSON-able)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The report as one JSON document (sorted keys, indented)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def parse_report(text: str | bytes) -> RuntimeReport:
    """Parse the check's JSON output back into a RuntimeReport; ValueError says what is wrong.

    Strict: unknown or missing fields and wrong types are errors, so a host running an older
    or newer runtime is noticed instead of half-read.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"runtime report is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("runtime report is not a JSON object")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"runtime report schema_version {data.get('schema_version')!r} is not "
            f"{SCHEMA_VERSION}: deploy a bundle built by this version of moola"
        )
    return _build(RuntimeReport, data, "report")


def _build(kind, value, where: str):
    """Convert JSON `value` into type `kind` (dataclass, list[...], X | None, scalar)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        (inner,) = [t for t in options if t is not type(None)]
        return _build(inner, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where} should be a list")
        (inner,) = typing.get_args(kind)
        return [_build(inner, item, f"{where}[{i}]") for i, item in enumerate(value)]
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ValueError(f"{where} should be an object")
        hints = typing.get_type_hints(kind)
        names = {f.name for f in dataclasses.fields(kind)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f"{where} has unknown field(s) {unknown}")
        required = {
            f.name
            for f in dataclasses.fields(kind)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - set(value))
        if missing:
            raise ValueError(f"{where} is missing field(s) {missing}")
        return kind(**{k: _build(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (str, bool) and type(value) is kind:
        return value
    raise ValueError(f"{where} should be {getattr(kind, '__name__', kind)}, got {value!r}")

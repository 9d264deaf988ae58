"""The runtime check of one release on a host: checksums, load, golden parity, finiteness,
backend choice, latency and device facts -> one RuntimeReport.

Standard library and torch only (hosts have nothing else); torch is imported inside
`run_check`, so a host without torch still gets a JSON report that says so (exit 2).
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from pathlib import Path

from moola_core.agent.archive import MANIFEST_NAME, BundleError, verify_directory
from moola_core.runtime import devices, loads
from moola_core.runtime.backends import BACKEND_NAMES, BackendUnavailable, make_backend
from moola_core.runtime.report import (
    EXIT_ERROR,
    EXIT_FAIL,
    EXIT_PASS,
    STATUS_BY_EXIT,
    BackendResult,
    Check,
    DeviceFacts,
    GoldenResult,
    Latency,
    RuntimeReport,
)

DEFAULT_RUNS = 200
DEFAULT_WARMUP = 20
# the short timing that ranks backends before the chosen one is measured with `runs`
TRIAL_RUNS, TRIAL_WARMUP = 30, 5


class CouldNotRun(Exception):
    """The check cannot start (no release, unreadable manifest, no torch): exit 2."""


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list: a value that was observed."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = math.ceil(q / 100.0 * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def time_backend(predict, x, valid, device, runs: int, warmup: int) -> list[float]:
    """Milliseconds per single-window call, sorted: CPU input -> device -> predict -> CPU output.

    Copying the result back to the CPU is part of the call, which also waits for the GPU.
    """
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        out = predict(x.to(device), valid.to(device))
        {key: value.cpu() for key, value in out.items()}
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)


def compare_golden(outputs: dict, golden: dict, atol: float) -> tuple[bool, float, int, int, str]:
    """Compare outputs with the golden ones -> (ok, max |dprob|, label mismatches, span
    mismatches, one-line detail). Probabilities within `atol`; labels and spans exactly."""
    diff = float((outputs["class_probs"].float() - golden["class_probs"].float()).abs().max())
    labels = int((outputs["label"] != golden["label"]).sum())
    spans = int(((outputs["start"] != golden["start"]) | (outputs["end"] != golden["end"])).sum())
    ok = bool(diff <= atol) and labels == 0 and spans == 0 and not math.isnan(diff)
    n = len(golden["label"])
    detail = (
        f"max |class_probs - golden| {diff:.2e} (tolerance {atol:.0e}); "
        f"labels {n - labels}/{n} and spans {n - spans}/{n} equal"
    )
    return ok, diff, labels, spans, detail


def finite_problem(outputs: dict, window_len: int) -> str | None:
    """None when every output is finite and spans lie inside the window with start <= end."""
    import torch

    for key, value in outputs.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return f"{key} holds NaN or inf"
    start, end = outputs["start"], outputs["end"]
    if bool((start < 0).any() | (end >= window_len).any() | (start > end).any()):
        return f"a span lies outside 0..{window_len - 1} or has start > end"
    return None


def run_golden(predict, golden: dict, device) -> dict:
    """Run the golden windows one at a time (as hosts serve) -> outputs on the CPU, stacked."""
    import torch

    rows = []
    for i in range(len(golden["x"])):
        x = golden["x"][i : i + 1].to(device)
        valid = golden["valid"][i : i + 1].to(device)
        rows.append({k: v.cpu() for k, v in predict(x, valid).items()})
    return {key: torch.cat([row[key] for row in rows]) for key in rows[0]}


def _load_manifest(release: Path) -> dict:
    if not release.is_dir():
        raise CouldNotRun(f"release folder {release} does not exist: check --release.")
    try:
        manifest = json.loads((release / MANIFEST_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise CouldNotRun(
            f"{release / MANIFEST_NAME} cannot be read ({exc}): re-deploy the bundle."
        ) from None
    for key in ("version", "model", "golden", "latency_sla_p99_ms", "files"):
        if key not in manifest:
            raise CouldNotRun(f"{release / MANIFEST_NAME} has no {key!r}: re-deploy the bundle.")
    return manifest


def _device_facts(torch, device) -> DeviceFacts:
    gpus, smi = devices.query_gpus()
    return DeviceFacts(
        device=str(device),
        device_name=devices.device_name(device),
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda,
        python_version=platform.python_version(),
        cpu_threads=torch.get_num_threads(),
        nvidia_smi=smi,
        gpus=gpus,
    )


def run_check(
    release: str | Path,
    *,
    device: str = "auto",
    backend: str = "auto",
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    sla_p99_ms: float | None = None,
) -> RuntimeReport:
    """Check a release folder and return the report (never raises for a bad release).

    `backend` "auto" tries every backend and serves the fastest that matches golden; a name
    checks only that one. `sla_p99_ms` overrides the manifest's latency SLA.
    """
    started = time.perf_counter()
    release = Path(release)
    report = RuntimeReport(
        status="error",
        exit_code=EXIT_ERROR,
        summary="",
        release=str(release),
        checked_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        code_path=str(Path(sys.modules["moola_core"].__file__).resolve().parent.parent),
    )
    try:
        _run(report, release, device, backend, runs, warmup, sla_p99_ms)
    except CouldNotRun as exc:
        report.exit_code, report.error = EXIT_ERROR, str(exc)
    except Exception as exc:  # a crash is reported, never a traceback in place of the JSON
        report.exit_code = EXIT_ERROR
        report.error = f"the check crashed: {type(exc).__name__}: {exc}"
    report.status = STATUS_BY_EXIT[report.exit_code]
    report.duration_s = round(time.perf_counter() - started, 3)
    report.summary = _summary(report)
    return report


def _run(report, release, device_name, backend, runs, warmup, sla_p99_ms) -> None:
    if runs < 1 or warmup < 0:
        raise CouldNotRun(f"runs={runs} and warmup={warmup} must be >= 1 and >= 0.")
    if backend != "auto" and backend not in BACKEND_NAMES:
        raise CouldNotRun(f"backend {backend!r} is not auto or one of {', '.join(BACKEND_NAMES)}.")
    manifest = _load_manifest(release)
    report.version = str(manifest["version"])
    checks = report.checks
    report.exit_code = EXIT_FAIL  # from here on, anything short of the end is a failed check

    try:
        verify_directory(release)
        checks.append(Check("checksums", True, f"{len(manifest['files'])} files match manifest"))
    except BundleError as exc:
        checks.append(Check("checksums", False, str(exc)))
        return  # never load code or weights that are not what was built

    try:
        import torch
    except ImportError as exc:
        raise CouldNotRun(f"torch is not importable on this host ({exc}): install torch.") from None
    from moola_core.models import build_model

    try:
        device = devices.pick_device(device_name)
    except RuntimeError as exc:
        raise CouldNotRun(str(exc)) from None
    # float32 everywhere: TF32 would move probabilities by ~1e-3, past the golden tolerance
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    report.device = facts = _device_facts(torch, device)
    # a host whose GPUs torch cannot use (CPU-only torch wheel, driver older than the CUDA
    # build) would otherwise serve on the CPU without anyone noticing
    unused = devices.unused_gpus(device, facts.gpus, device_name, facts.torch_version)
    if unused:
        checks.append(Check("device", False, unused))
    else:
        checks.append(Check("device", True, f"{device} ({facts.device_name})"))

    try:
        model = build_model(manifest["model"]["config"])
        weights = release / manifest["model"].get("weights", "weights.pt")
        state = torch.load(weights, map_location=device, weights_only=True)
        model.load_state_dict(state, strict=True)
        loads.record(release, "check", str(device))  # the host's ledger of model loads
        model.to(device).eval()
        golden = torch.load(release / manifest["golden"]["path"], weights_only=True)
    except Exception as exc:
        checks.append(Check("load", False, f"model or golden file did not load: {exc}"))
        return
    n_params = sum(p.numel() for p in model.parameters())
    checks.append(Check("load", True, f"{n_params} parameters on {device} (weights_only)"))

    atol = float(manifest["golden"]["class_probs_atol"])
    window_len = int(golden["x"].shape[1])
    example_x = golden["x"][:1].to(device)
    example_valid = golden["valid"][:1].to(device)
    candidates = BACKEND_NAMES if backend == "auto" else (backend,)
    # One window is small work: on a CPU, one thread often beats several (no fork/join per op,
    # and no stalls when other processes hold the cores), so the thread count is chosen too.
    default_threads = torch.get_num_threads()
    thread_options = sorted({1, default_threads}) if device.type == "cpu" else [default_threads]
    predictors, parity = {}, {}
    for name in candidates:
        result = BackendResult(name, False, False, None, None, False, "")
        report.backends.append(result)
        try:
            predict = make_backend(name, model, device, example_x, example_valid)
            outputs = run_golden(predict, golden, device)
        except (BackendUnavailable, RuntimeError, ValueError) as exc:
            result.detail = f"unavailable: {exc}"
            continue
        result.available = True
        ok, diff, labels, spans, detail = compare_golden(outputs, golden, atol)
        problem = finite_problem(outputs, window_len)
        result.parity_ok = ok and problem is None
        result.max_abs_diff = None if math.isnan(diff) else diff
        result.detail = detail if problem is None else f"{detail}; {problem}"
        parity[name] = (ok, diff, labels, spans, detail, problem)
        if result.parity_ok:
            predictors[name] = predict
            for threads in thread_options:
                torch.set_num_threads(threads)
                times = time_backend(
                    predict, golden["x"][:1], golden["valid"][:1], device, TRIAL_RUNS, TRIAL_WARMUP
                )
                p50 = round(percentile(times, 50), 4)
                if result.trial_p50_ms is None or p50 < result.trial_p50_ms:
                    result.trial_p50_ms, result.threads = p50, threads
            torch.set_num_threads(default_threads)

    # golden parity and finiteness are judged on the served backend; when none passes, on the
    # reference (eager) so the report says what is wrong with the model itself
    if predictors:
        chosen = min(predictors, key=lambda n: _by_name(report.backends, n).trial_p50_ms)
    else:
        chosen = "eager" if "eager" in parity else next(iter(parity), None)
    if chosen is None:
        reasons = "; ".join(f"{b.name}: {b.detail}" for b in report.backends)
        checks.append(Check("golden_parity", False, f"no backend could run ({reasons})"))
        return
    ok, diff, labels, spans, detail, problem = parity[chosen]
    _by_name(report.backends, chosen).chosen = chosen in predictors
    report.golden = GoldenResult(chosen, len(golden["label"]), atol, diff, labels, spans)
    checks.append(Check("golden_parity", ok, f"{chosen}: {detail}"))
    checks.append(
        Check("finite", problem is None, problem or "outputs finite, spans inside the window")
    )
    if chosen not in predictors:
        return

    sla = float(sla_p99_ms if sla_p99_ms is not None else manifest["latency_sla_p99_ms"])
    threads = _by_name(report.backends, chosen).threads or default_threads
    torch.set_num_threads(threads)
    try:
        times = time_backend(
            predictors[chosen], golden["x"][:1], golden["valid"][:1], device, runs, warmup
        )
    finally:
        torch.set_num_threads(default_threads)
    report.latency = Latency(
        backend=chosen,
        runs=runs,
        warmup=warmup,
        p50_ms=round(percentile(times, 50), 4),
        p99_ms=round(percentile(times, 99), 4),
        mean_ms=round(sum(times) / len(times), 4),
        max_ms=round(times[-1], 4),
        sla_p99_ms=sla,
        threads=threads,
    )
    within = report.latency.p99_ms <= sla
    checks.append(
        Check(
            "latency_sla",
            within,
            f"p99 {report.latency.p99_ms:.3f} ms {'<=' if within else '>'} SLA {sla:g} ms "
            f"({chosen}, {threads} thread(s), {runs} runs after {warmup} warm-up)",
        )
    )
    if all(check.ok for check in checks):
        report.exit_code = EXIT_PASS


def _by_name(results: list[BackendResult], name: str) -> BackendResult:
    return next(r for r in results if r.name == name)


def _summary(report: RuntimeReport) -> str:
    where = f"{report.version or '?'} at {report.release}"
    if report.exit_code == EXIT_ERROR:
        return f"could not check {where}: {report.error}"
    failed = [c for c in report.checks if not c.ok]
    if failed:
        return f"{failed[0].name} failed for {where}: {failed[0].detail}"
    device = report.device.device_name if report.device else "?"
    lat = report.latency
    return (
        f"all checks passed for {where} on {device}: {lat.backend} ({lat.threads} thread(s)) "
        f"p50 {lat.p50_ms:.3f} ms, "
        f"p99 {lat.p99_ms:.3f} ms"
    )

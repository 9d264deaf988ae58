"""Runtime backends on this machine: single-window latency p50/p99 per backend, and whether the
runtime check's own choice is within 1.1x of the best.

    python benchmarks/runtime.py [--runs 600] [--rounds 6] [--out docs/benchmarks/runtime.md]

Models: the default JadeModel (moola_core.models.DEFAULT_CONFIG) and the same model with
hidden=128 (a ~540K-parameter BiLSTM, the size of the issue's ONNX Runtime measurement).
Random weights: latency does not depend on what the weights are. Each backend is measured on
one thread and on torch's default thread count, in interleaved rounds so that load from other
processes falls on every backend alike. Then a real bundle of the default model is built and
`run_check` picks its backend as it would on a host; that choice is compared with the best
p50 measured here (the baseline, same run, same machine). The last line is JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moola_core.bundle import safe_extract
from moola_core.bundle.build import build_bundle
from moola_core.models import build_model  # noqa: E402
from moola_core.runtime import devices  # noqa: E402
from moola_core.runtime.backends import BACKEND_NAMES, BackendUnavailable, make_backend  # noqa: E402
from moola_core.runtime.check import percentile, run_check, time_backend  # noqa: E402
from moola_core.spec import N_FEATURES, WINDOW_LEN  # noqa: E402
from tests.unit.tiny_runs import make_tiny_run  # noqa: E402 - the same run the runtime tests bundle

MODELS = {"default JadeModel": {}, "JadeModel hidden=128": {"hidden": 128}}


def measure(model, device, threads: int, runs: int, rounds: int) -> dict[str, dict]:
    """{backend: {p50_ms, p99_ms}} for one model on one device and thread count."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, WINDOW_LEN, N_FEATURES, generator=gen)
    valid = torch.ones(1, WINDOW_LEN, dtype=torch.bool)
    predictors, results = {}, {}
    for name in BACKEND_NAMES:
        try:
            predictors[name] = make_backend(name, model, device, x.to(device), valid.to(device))
        except BackendUnavailable as exc:
            results[name] = {"unavailable": str(exc)}
    times = {name: [] for name in predictors}
    for _ in range(rounds):  # interleaved: background load hits every backend alike
        for name, predict in predictors.items():
            times[name] += time_backend(predict, x, valid, device, runs // rounds, 10)
    for name, values in times.items():
        values.sort()
        results[name] = {
            "p50_ms": round(percentile(values, 50), 4),
            "p99_ms": round(percentile(values, 99), 4),
        }
    return results


def runtime_choice(device_name: str, runs: int) -> tuple[str, dict]:
    """Build a bundle of the default model and let run_check choose, as on a host."""
    with tempfile.TemporaryDirectory(prefix="moola-bench-") as tmp:
        root = Path(tmp)
        make_tiny_run(root / "runs", "bench", model_config={})  # {}: the default model
        # the SLA is not what is measured here; a loaded machine must not abort the benchmark
        built = build_bundle(
            "v0.0-bench", "bench", runs_dir=root / "runs", out_dir=root / "b", sla_p99_ms=1e9
        )
        release = safe_extract(built.path, root / "release")
        report = run_check(release, device=device_name, runs=runs, warmup=20)
    if report.exit_code != 0:
        raise SystemExit(f"runtime check failed: {report.summary}")
    return report.latency.backend, report.to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=600, help="timed calls per backend")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    parser.add_argument("--out", default="docs/benchmarks/runtime.md")
    args = parser.parse_args()

    default_threads = torch.get_num_threads()
    load_before = round(os.getloadavg()[0], 2)  # other processes share these cores
    device = devices.pick_device("auto")
    name = devices.device_name(device)
    cpu = torch.device("cpu")
    table = []  # (model, params, device, threads, backend, p50, p99 | reason)
    for label, overrides in MODELS.items():
        torch.manual_seed(0)
        model = build_model(overrides).eval()
        params = sum(p.numel() for p in model.parameters())
        settings = [(cpu, 1), (cpu, default_threads)]
        if device.type == "cuda":
            settings.append((device, default_threads))
        for dev, threads in settings:
            model.to(dev)
            for backend, result in measure(model, dev, threads, args.runs, args.rounds).items():
                table.append((label, params, str(dev), threads, backend, result))
            print(f"measured {label} on {dev}, {threads} thread(s)", file=sys.stderr)
    torch.set_num_threads(default_threads)

    # the runtime's own choice (backend and CPU threads), on the device a host would use,
    # against the best (backend, threads) measured above on that device
    chosen_backend, report = runtime_choice("auto", 200)
    chosen = (chosen_backend, report["latency"]["threads"])
    best_device = str(device)
    candidates = {
        (backend, threads): result["p50_ms"]
        for label, _, dev, threads, backend, result in table
        if label == "default JadeModel" and dev == best_device and "p50_ms" in result
    }
    best = min(candidates, key=candidates.get)
    summary = {
        "benchmark": "runtime",
        "device": best_device,
        "device_name": name,
        "default_threads": default_threads,
        "chosen_backend": chosen[0],
        "chosen_threads": chosen[1],
        "chosen_p50_ms": candidates[chosen],
        "best_backend": best[0],
        "best_threads": best[1],
        "best_p50_ms": candidates[best],
        "chosen_over_best": round(candidates[chosen] / candidates[best], 3),
        "check_p50_ms": report["latency"]["p50_ms"],
        "check_p99_ms": report["latency"]["p99_ms"],
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "load_avg_1m": [load_before, round(os.getloadavg()[0], 2)],  # at start, at end
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(render(table, summary, args))
    print(json.dumps(summary))


def render(table, summary, args) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Runtime benchmark",
        "",
        f"Written by `python benchmarks/runtime.py --runs {args.runs} --rounds {args.rounds}` "
        f"on {now}: {summary['device_name']} ({platform.machine()}), torch {torch.__version__}, "
        f"default {summary['default_threads']} thread(s). Single-window latency (1 x 105 x 11), input on "
        "the CPU to outputs on the CPU, random weights; backends measured in interleaved rounds. "
        f"The machine has {summary['cpu_cores']} cores; its 1-minute load average was "
        f"{summary['load_avg_1m'][0]} at the start and {summary['load_avg_1m'][1]} at the end, "
        "so absolute figures include waiting for the CPU (compare rows of one run, not runs).",
        "",
        "| model | parameters | device | threads | backend | p50 ms | p99 ms |",
        "|---|---:|---|---:|---|---:|---:|",
    ]
    for label, params, dev, threads, backend, result in table:
        if "p50_ms" in result:
            cells = f"{result['p50_ms']:.3f} | {result['p99_ms']:.3f}"
        else:
            cells = f"unavailable: {result['unavailable']} | -"
        lines.append(f"| {label} | {params:,} | {dev} | {threads} | {backend} | {cells} |")
    lines += [
        "",
        "## The runtime's choice",
        "",
        f"`run_check` on a bundle of the default JadeModel chose **{summary['chosen_backend']} "
        f"on {summary['chosen_threads']} thread(s)** (its own latency measurement: p50 "
        f"{summary['check_p50_ms']:.3f} ms, p99 {summary['check_p99_ms']:.3f} ms). Measured "
        f"above on {summary['device']}, that setting runs at p50 {summary['chosen_p50_ms']:.3f} ms "
        f"against the best ({summary['best_backend']} on {summary['best_threads']} thread(s)) at "
        f"{summary['best_p50_ms']:.3f} ms: **{summary['chosen_over_best']:.2f}x** of the best "
        "(target <= 1.1x).",
        "",
        "```json",
        json.dumps(summary, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

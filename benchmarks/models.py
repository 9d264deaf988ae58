"""Every model variant x the four seeds on the synthetic labeled set, next to the baselines.

    python benchmarks/models.py                  # full: 4 variants x 4 seeds -> docs/benchmarks/models.md
    python benchmarks/models.py --seeds 17 --variants jade,jade_crf --out /tmp/models.md   # reduced

Data: moola_core.data.synthetic.make_labeled_set(174 windows, default difficulty), split by
time (60/20/20, embargo) exactly as `invoke train` does; every run is scored on the same test
windows. The best variant is chosen on *validation* (mean over seeds), never on test; its test
figure is then compared with the range-expansion heuristic's, both with 95% bootstrap CIs over
test windows, plus a paired bootstrap of the difference.

Timing: the default config (configs/jade.yaml, seed 17) trains against the 120 s budget; the
ratio to a reference workload timed in the same run (a fixed LSTM forward/backward loop) says
how loaded the machine was; 10 epochs on one thread vs torch's default thread count show why
`cpu_threads` defaults to 1. One torch thread otherwise. The last line of stdout is JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from moola_core import metrics as M  # noqa: E402
from moola_core.train import compare_runs, load_config, train_run  # noqa: E402
from moola_core.train.data import prepare_data  # noqa: E402

SEEDS = (17, 13, 23, 29)
VARIANTS = ("jade", "jade_posenc", "jade_crf", "jade_center")
BUDGET_S = 120.0
TABLE_METRICS = ("span_iou", "iou_ge_50", "iou_ge_70", "start_hit3", "end_hit3",
                 "boundary_mae", "inspan_f1", "accuracy", "macro_f1")  # fmt: skip


def reference_seconds(repeats: int = 20) -> float:
    """A fixed CPU workload (BiLSTM forward + backward on one batch), timed now: the baseline."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(11, 48, num_layers=2, batch_first=True, bidirectional=True)
    x = torch.randn(32, 105, 11)
    started = time.perf_counter()
    for _ in range(repeats):
        lstm(x)[0].sum().backward()
    return time.perf_counter() - started


def load_predictions(run_path: Path) -> dict:
    return json.loads((run_path / "predictions.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=0, help="override max_epochs (reduced run)")
    parser.add_argument("--runs-dir", default="", help="keep the runs here (default: temporary)")
    parser.add_argument("--out", default=str(REPO / "docs/benchmarks/models.md"))
    args = parser.parse_args()
    default_threads = torch.get_num_threads()  # before pinning to one thread
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    runs_dir = Path(args.runs_dir or tempfile.mkdtemp(prefix="moola-bench-"))
    started = dt.datetime.now(dt.UTC)

    configs = {}
    for variant in variants:
        overrides = {"optim.max_epochs": args.epochs} if args.epochs else {}
        configs[variant] = load_config(REPO / "configs" / f"{variant}.yaml", overrides)
    data = prepare_data(configs[variants[0]])
    sizes = {s: len(getattr(data, s)) for s in ("train", "val", "test")}
    print(f"data: 174 synthetic windows, split {sizes}; runs in {runs_dir}", file=sys.stderr)

    reference_before = reference_seconds()
    timings: dict[str, list[float]] = {}
    epochs: dict[str, list[int]] = {}
    for variant in variants:
        for seed in seeds:
            config = configs[variant].model_copy(update={"seed": seed})
            t0 = time.perf_counter()
            result = train_run(config, runs_dir, progress="none", data=data)
            seconds = time.perf_counter() - t0
            timings.setdefault(variant, []).append(seconds)
            epochs.setdefault(variant, []).append(result.metrics["epochs_run"])
            print(f"{variant} seed {seed}: test span IoU "
                  f"{result.metrics['test']['span_iou']['value']:.3f}, {seconds:.1f}s, "
                  f"{result.metrics['epochs_run']} epochs", file=sys.stderr, flush=True)  # fmt: skip
    reference_after = reference_seconds()
    reference = (reference_before + reference_after) / 2

    # Why cpu_threads defaults to 1: 10 epochs of the default config on one thread and on
    # torch's default thread count, back to back (same data, same seed).
    thread_seconds = {}
    for threads in (1, default_threads):
        config = configs[variants[0]].model_copy(
            update={
                "cpu_threads": threads,
                "optim": configs[variants[0]].optim.model_copy(
                    update={"max_epochs": 10, "patience": 10}
                ),
            }
        )
        with tempfile.TemporaryDirectory() as scratch:
            result = train_run(config, scratch, progress="none", data=data, n_boot=10)
        thread_seconds[str(threads)] = result.metrics["train_seconds"]

    test = compare_runs(runs_dir, split="test")
    val = compare_runs(runs_dir, split="val")
    models_val = sorted(val.models(), key=lambda r: -r["metrics"]["span_iou"]["value"])
    best_variant = models_val[0]["variant"]
    best = next(r for r in test.models() if r["variant"] == best_variant)
    heuristic = next(r for r in test.rows if r["variant"] == "heuristic")
    majority = next(r for r in test.rows if r["variant"] == "majority")

    # paired bootstrap: best variant (seeds pooled) minus the heuristic, same test windows
    preds = [load_predictions(runs_dir / run_id) for run_id in best["run_ids"]]
    truth = preds[0]["test"]["truth"]
    diff = M.paired_difference(
        [p["test"] for p in preds], [preds[0]["baselines"]["heuristic"]["test"]], truth,
        "span_iou",
    )  # fmt: skip

    b_iou, h_iou = best["metrics"]["span_iou"], heuristic["metrics"]["span_iou"]
    above = b_iou["ci_low"] > h_iou["ci_high"]
    default_seconds = timings.get("jade", [float("nan")])[0]

    lines = [
        "# Model benchmark: variants x seeds on the synthetic labeled set",
        "",
        f"Written by `python benchmarks/models.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` "
        f"on {started:%Y-%m-%d %H:%M} UTC ({platform.machine()}, {platform.python_version()}, "
        f"torch {torch.__version__}, 1 thread, CPU shared with other work).",
        "",
        f"Data: `make_labeled_set(174, seed=0, difficulty='default')`, split by time with an "
        f"embargo: train {sizes['train']}, validation {sizes['val']}, test {sizes['test']} "
        f"windows. Seeds {', '.join(map(str, seeds))}"
        + (f"; max_epochs overridden to {args.epochs} (reduced run)" if args.epochs else "")
        + ". Baselines are fitted on the training split.",
        "",
        "Each cell is the mean over seeds on the **test** split with its 95% bootstrap CI over "
        "test windows (every seed scored on the same resampled windows). `boundary_mae` is in "
        "bars (lower is better); every other metric is higher-is-better.",
        "",
        test.markdown(TABLE_METRICS),
        "",
        "## Which variant is best, and does it beat the heuristic?",
        "",
        f"Chosen on validation (mean span IoU over seeds, never on test): **{best_variant}** "
        f"({M.format_metric(models_val[0]['metrics']['span_iou'])} on validation).",
        "",
        f"- test span IoU, {best_variant}: {M.format_metric(b_iou)}",
        f"- test span IoU, heuristic: {M.format_metric(h_iou)}",
        f"- test span IoU, majority + mean span: {M.format_metric(majority['metrics']['span_iou'])}",
        f"- paired difference {best_variant} - heuristic: {M.format_metric(diff)}",
        "",
        (
            f"**The bar is met**: the best variant's CI lies above the heuristic's "
            f"({b_iou['ci_low']:.3f} > {h_iou['ci_high']:.3f})."
            if above
            else f"**The bar is not met**: {best_variant}'s CI does not lie above the "
            f"heuristic's (its lower end {b_iou['ci_low']:.3f} <= the heuristic's upper end "
            f"{h_iou['ci_high']:.3f})."
        ),
        "",
        "## Span IoU per seed (test)",
        "",
        "| variant | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for row in test.models():
        by_seed = dict(zip(row["seeds"], row["metrics"]["span_iou"]["per_set"], strict=True))
        cells = " | ".join(f"{by_seed[s]:.3f}" if s in by_seed else "-" for s in seeds)
        lines.append(f"| {row['variant']} | {cells} |")
    lines += [
        "",
        "## Training time",
        "",
        f"Reference workload (20 BiLSTM forward+backward passes) timed in this run: "
        f"{reference:.2f} s (before {reference_before:.2f} s, after {reference_after:.2f} s).",
        "",
        "| variant | mean seconds per run | ratio to reference | epochs run (per seed) |",
        "|---|---|---|---|",
    ]
    for variant in variants:
        mean_s = float(np.mean(timings[variant]))
        lines.append(f"| {variant} | {mean_s:.1f} | {mean_s / reference:.1f} | "
                     f"{', '.join(map(str, epochs[variant]))} |")  # fmt: skip
    one, other = thread_seconds.values()
    lines += [
        "",
        f"Default config (`configs/jade.yaml`, seed {seeds[0]}): {default_seconds:.1f} s, "
        f"{default_seconds / BUDGET_S:.2f} of the {BUDGET_S:.0f} s budget.",
        "",
        "Threads (10 epochs of the default config, training loop only): "
        + ", ".join(f"{k} thread(s) {v:.1f} s" for k, v in thread_seconds.items())
        + f" (torch's default here is {default_threads}); ratio {other / one:.1f}. "
        "This is why `cpu_threads` defaults to 1.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines), file=sys.stderr)

    summary = {
        "best_variant": best_variant,
        "best_span_iou": round(b_iou["value"], 4),
        "best_span_iou_ci_low": round(b_iou["ci_low"], 4),
        "best_span_iou_ci_high": round(b_iou["ci_high"], 4),
        "heuristic_span_iou": round(h_iou["value"], 4),
        "heuristic_span_iou_ci_low": round(h_iou["ci_low"], 4),
        "heuristic_span_iou_ci_high": round(h_iou["ci_high"], 4),
        "majority_span_iou": round(majority["metrics"]["span_iou"]["value"], 4),
        "ci_above_heuristic": bool(above),
        "paired_diff_span_iou": round(diff["value"], 4),
        "paired_diff_ci": [round(diff["ci_low"], 4), round(diff["ci_high"], 4)],
        "variants": {
            r["variant"]: round(r["metrics"]["span_iou"]["value"], 4) for r in test.models()
        },  # fmt: skip
        "seeds": seeds,
        "n_test": sizes["test"],
        "default_train_seconds": round(default_seconds, 2),
        "default_train_budget_ratio": round(default_seconds / BUDGET_S, 3),
        "reference_seconds": round(reference, 3),
        "default_train_to_reference_ratio": round(default_seconds / reference, 2),
        "thread_seconds_10_epochs": thread_seconds,
        "reduced": bool(args.epochs) or seeds != list(SEEDS) or variants != list(VARIANTS),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

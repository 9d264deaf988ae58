"""Every model variant x the four seeds on the synthetic labeled set, next to the baselines.

    python benchmarks/models.py                  # full: 4 variants x 4 seeds -> docs/benchmarks/models.md
    python benchmarks/models.py --seeds 17 --variants jade,jade_crf --out /tmp/models.md   # reduced

Data: moola_core.data.synthetic.make_labeled_set(174 windows, default difficulty), split by
time (60/20/20, embargo) exactly as `invoke train` does; every run is scored on the same test
windows. The best variant is chosen on *validation* (mean over seeds), never on test; its test
figure is then compared with the heuristic's and the linear baseline's, with 95% bootstrap CIs
that resample overlap groups and seeds, plus paired bootstraps of the differences.

Beside that 174-window protocol (34 test windows):
- a large fresh test set (600 windows from data seed 9001, never used in development), scored
  once by every trained run and by the baselines fitted on the protocol's training split;
- a detection set (600 windows, seed 9002, 35% without any expansion): does the model abstain
  on them and answer on real patterns (abstain precision / recall)?
- the as-of curve (seed 9003): each episode cut as a live system sees it, d bars after the
  expansion began (d < 0: before), for the best variant and the causal one.

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
VARIANTS = ("jade", "jade_posenc", "jade_crf", "jade_center", "jade_causal")
FRESH_SEED, DETECTION_SEED, ASOF_SEED = 9001, 9002, 9003  # never used in development
FRESH_WINDOWS, DETECTION_WINDOWS, ASOF_WINDOWS = 600, 600, 200
DELAYS = (-10, -5, -1, 0, 2, 5, 10, 20)
BUDGET_S = 120.0
TABLE_METRICS = (
    "span_iou",
    "iou_ge_50",
    "iou_ge_70",
    "start_hit3",
    "end_hit3",
    "boundary_mae",
    "inspan_f1",
    "accuracy",
    "macro_f1",
    "ece",
    "brier",
)
FRESH_METRICS = (
    "span_iou",
    "span_iou_consolidation",
    "span_iou_retracement",
    "iou_ge_50",
    "boundary_mae",
    "accuracy",
    "macro_f1",
    "ece",
    "brier",
)


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


def predict(model, x: np.ndarray, valid: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
    """A trained model's predictions on arrays, in batches -> numpy arrays."""
    parts = []
    for i in range(0, len(x), batch):
        out = model.predict(
            torch.from_numpy(x[i : i + batch]), torch.from_numpy(valid[i : i + batch])
        )
        parts.append({k: v.numpy() for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def fresh_labeled(n: int, seed: int):
    """A fresh labeled set as model arrays plus truth with overlap groups."""
    from moola_core.data import labeled, splits, synthetic

    frame = synthetic.make_labeled_set(n_windows=n, seed=seed).reset_index(drop=True)
    arrays = labeled.to_model_arrays(frame)
    row_group = splits.overlap_groups(len(frame), labeled.sharing_pairs(frame).keys())
    by_id = dict(zip((str(w) for w in frame["window_id"]), row_group, strict=True))
    truth = {
        "label": arrays.label,
        "start": arrays.start,
        "end": arrays.end,
        "group": np.array([by_id[w] for w in arrays.window_id]),
    }
    return arrays, truth


def detection(pred: dict, has_pattern: np.ndarray) -> dict[str, float]:
    """Abstention as detection: answered = not abstained. precision = share of answered
    windows that hold a pattern; recall = share of pattern windows answered."""
    answered = ~pred["abstain"].astype(bool)
    tp = float((answered & has_pattern).sum())
    precision = tp / max(float(answered.sum()), 1.0)
    recall = tp / max(float(has_pattern.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "answered": float(answered.mean())}


def delay_curve(models: list, negatives_pred: list[dict], asof: dict) -> list[dict]:
    """Per delay d: the share of as-of windows answered, detection F1 against the detection
    set's pattern-free windows (d >= 0), and span IoU against the visible span (d >= 0);
    means over the given models (seeds)."""
    curve = []
    for d, windows in asof.items():
        rates, f1s, ious = [], [], []
        for model, neg in zip(models, negatives_pred, strict=True):
            pred = predict(model, windows.x, windows.valid)
            answered = ~pred["abstain"].astype(bool)
            rates.append(float(answered.mean()))
            if d >= 0:
                tp = float(answered.sum())
                fp = float((~neg["abstain"].astype(bool)).sum())
                fn = float((~answered).sum())
                f1s.append(2 * tp / max(2 * tp + fp + fn, 1.0))
                ious.append(
                    float(M.span_iou(pred["start"], pred["end"], windows.start, windows.end).mean())
                )
        curve.append(
            {
                "d": d,
                "windows": int(len(windows.x)),
                "detection_rate": round(float(np.mean(rates)), 4),
                "detection_f1": round(float(np.mean(f1s)), 4) if f1s else None,
                "span_iou": round(float(np.mean(ious)), 4) if ious else None,
            }
        )
    return curve


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
    from moola_core.train.provenance import provenance

    prov = provenance("cpu")

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
            print(
                f"{variant} seed {seed}: test span IoU "
                f"{result.metrics['test']['span_iou']['value']:.3f}, {seconds:.1f}s, "
                f"{result.metrics['epochs_run']} epochs",
                file=sys.stderr,
                flush=True,
            )
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
        [p["test"] for p in preds],
        [preds[0]["baselines"]["heuristic"]["test"]],
        truth,
        "span_iou",
    )

    linear = next(r for r in test.rows if r["variant"] == "linear")
    diff_linear = M.paired_difference(
        [p["test"] for p in preds], [preds[0]["baselines"]["linear"]["test"]], truth, "span_iou"
    )

    # -- the fresh set, detection and as-of: every run's model and the protocol's baselines --
    from moola_core.data import synthetic
    from moola_core.train.runs import load_model

    print("fresh set, detection set and as-of cuts ...", file=sys.stderr, flush=True)
    fresh, fresh_truth = fresh_labeled(FRESH_WINDOWS, FRESH_SEED)
    det = synthetic.make_detection_set(DETECTION_WINDOWS, seed=DETECTION_SEED)
    asof = {d: synthetic.make_asof_set(ASOF_WINDOWS, seed=ASOF_SEED, delay=d) for d in DELAYS}
    fitted = data.fit_baselines()
    fresh_rows, fresh_preds, models_by_variant = [], {}, {}
    for row in test.models():
        models = [load_model(run_id, runs_dir) for run_id in row["run_ids"]]
        models_by_variant[row["variant"]] = models
        fresh_preds[row["variant"]] = [predict(m, fresh.x, fresh.valid) for m in models]
        report = M.evaluate_mean(fresh_preds[row["variant"]], fresh_truth)
        fresh_rows.append((row["variant"], ",".join(map(str, row["seeds"])), report))
    for name, baseline in fitted.items():
        fresh_preds[name] = [baseline.predict(fresh.x, fresh.valid)]
        fresh_rows.append((name, "-", M.evaluate_mean(fresh_preds[name], fresh_truth)))
    fresh_rows.sort(key=lambda r: -r[2]["span_iou"]["value"])
    fresh_by = {name: report for name, _, report in fresh_rows}
    fresh_diff_linear = M.paired_difference(
        fresh_preds[best_variant], fresh_preds["linear"], fresh_truth, "span_iou"
    )
    fresh_diff_heuristic = M.paired_difference(
        fresh_preds[best_variant], fresh_preds["heuristic"], fresh_truth, "span_iou"
    )

    detections, negatives = {}, {}
    for variant, models in models_by_variant.items():
        per_seed = [predict(m, det.x, det.valid) for m in models]
        negatives[variant] = [{k: v[~det.has_pattern] for k, v in p.items()} for p in per_seed]
        found = [detection(p, det.has_pattern) for p in per_seed]
        detections[variant] = {k: float(np.mean([f[k] for f in found])) for k in found[0]}
    base_rate = float(det.has_pattern.mean())
    causal_variant = next((v for v in models_by_variant if "causal" in v), None)
    curves = {
        best_variant: delay_curve(models_by_variant[best_variant], negatives[best_variant], asof)
    }
    if causal_variant and causal_variant != best_variant:
        curves[causal_variant] = delay_curve(
            models_by_variant[causal_variant], negatives[causal_variant], asof
        )

    b_iou, h_iou = best["metrics"]["span_iou"], heuristic["metrics"]["span_iou"]
    above = b_iou["ci_low"] > h_iou["ci_high"]
    default_seconds = timings.get("jade", [float("nan")])[0]

    lines = [
        "# Model benchmark: variants x seeds on the synthetic labeled set",
        "",
        f"Written by `python benchmarks/models.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` "
        f"on {started:%Y-%m-%d %H:%M} UTC ({platform.machine()}, {platform.python_version()}, "
        f"torch {torch.__version__}, 1 thread, CPU shared with other work), commit "
        f"{prov['commit'] or 'unknown'}{' (dirty tree)' if prov['dirty'] else ''}, "
        f"machine {prov['machine']['node']} ({prov['machine']['cpu_count']} CPUs).",
        "",
        "Machine-dependent figures: every timing (seconds, ratios, thread counts). The model "
        "figures are deterministic for a given torch build and CPU kind on one thread; another "
        "CPU or torch build can move per-seed figures slightly (float order), which the seed "
        "resampling in the CIs is meant to cover.",
        "",
        f"Data: `make_labeled_set(174, seed=0, difficulty='default')`, split by time with an "
        f"embargo: train {sizes['train']}, validation {sizes['val']}, test {sizes['test']} "
        f"windows. Seeds {', '.join(map(str, seeds))}"
        + (f"; max_epochs overridden to {args.epochs} (reduced run)" if args.epochs else "")
        + ". Baselines are fitted on the training split.",
        "",
        "Each cell is the mean over seeds on the **test** split with its 95% bootstrap CI: each "
        "resample draws the overlap groups (a window and its shifted copies move together) and "
        "the seeds. `boundary_mae` is in bars, `ece` (expected calibration error of the "
        "temperature-calibrated class probability) and `brier` are lower-is-better; every other "
        "metric is higher-is-better. `linear` is a 288-parameter Conv1d pointer plus a logistic "
        "classifier (moola_core/baselines.py); `heuristic` a tuned range-expansion rule.",
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
        f"- test span IoU, linear baseline: {M.format_metric(linear['metrics']['span_iou'])}",
        f"- test span IoU, majority + mean span: {M.format_metric(majority['metrics']['span_iou'])}",
        f"- paired difference {best_variant} - heuristic: {M.format_metric(diff)}",
        f"- paired difference {best_variant} - linear: {M.format_metric(diff_linear)}",
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
        f"## The fresh test set ({FRESH_WINDOWS} windows, data seed {FRESH_SEED})",
        "",
        "Scored once by every trained run (mean over seeds, CIs over groups and seeds) and by the "
        "baselines fitted on the protocol's training split. Per-class span IoU is over the "
        "windows whose true class is that class.",
        "",
        "| variant | seeds | " + " | ".join(FRESH_METRICS) + " |",
        "|---|---|" + "---|" * len(FRESH_METRICS),
        *[
            f"| {name} | {seeds} | "
            + " | ".join(M.format_metric(rep[c]) if c in rep else "-" for c in FRESH_METRICS)
            + " |"
            for name, seeds, rep in fresh_rows
        ],
        "",
        f"- paired difference {best_variant} - linear on the fresh set: "
        f"{M.format_metric(fresh_diff_linear)} (target: CI above 0)",
        f"- paired difference {best_variant} - heuristic on the fresh set: "
        f"{M.format_metric(fresh_diff_heuristic)}",
        "",
        f'## Saying "no pattern": abstention on the detection set ({DETECTION_WINDOWS} windows, '
        f"{1 - base_rate:.0%} without an expansion, seed {DETECTION_SEED})",
        "",
        "A model answers (does not abstain) when its calibrated confidence reaches the threshold "
        "fitted on validation (kept 90% of validation patterns answered). Precision: share of "
        "answered windows that hold a pattern (always answering scores "
        f"{base_rate:.3f}); recall: share of pattern windows answered. Means over seeds.",
        "",
        "| variant | abstain precision | abstain recall | F1 | share answered |",
        "|---|---|---|---|---|",
        *[
            f"| {v} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
            f"{r['answered']:.3f} |"
            for v, r in detections.items()
        ],
        "",
        f"## Live use: the as-of curve (seed {ASOF_SEED}, {ASOF_WINDOWS} episodes per delay)",
        "",
        "Each episode cut as a live system sees it: the 105 bars ending d bars after the "
        "expansion's first bar (d < 0: before it began, nothing to find). `answered` is the "
        "share of windows the model does not abstain on (for d < 0: false alarms); detection F1 "
        "counts answered pattern-free windows of the detection set as false positives; span IoU "
        "is against the part of the expansion visible so far.",
        "",
        "| d | "
        + " | ".join(f"{v} answered | {v} detection F1 | {v} span IoU" for v in curves)
        + " |",
        "|---|" + "---|---|---|" * len(curves),
        *[
            f"| {DELAYS[i]} | "
            + " | ".join(
                f"{c[i]['detection_rate']:.3f} | "
                + (f"{c[i]['detection_f1']:.3f}" if c[i]["detection_f1"] is not None else "-")
                + " | "
                + (f"{c[i]['span_iou']:.3f}" if c[i]["span_iou"] is not None else "-")
                for c in curves.values()
            )
            + " |"
            for i in range(len(DELAYS))
        ],
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
        lines.append(
            f"| {variant} | {mean_s:.1f} | {mean_s / reference:.1f} | "
            f"{', '.join(map(str, epochs[variant]))} |"
        )
    # torch's default may itself be one thread (OMP_NUM_THREADS=1): then there is no ratio
    seconds = list(thread_seconds.values())
    ratio = (
        f"ratio {seconds[1] / seconds[0]:.1f}. This is why `cpu_threads` defaults to 1."
        if len(seconds) == 2
        else "no comparison (only one thread here)."
    )
    lines += [
        "",
        f"Default config (`configs/jade.yaml`, seed {seeds[0]}): {default_seconds:.1f} s, "
        f"{default_seconds / BUDGET_S:.2f} of the {BUDGET_S:.0f} s budget.",
        "",
        "Threads (10 epochs of the default config, training loop only): "
        + ", ".join(f"{k} thread(s) {v:.1f} s" for k, v in thread_seconds.items())
        + f" (torch's default here is {default_threads}); {ratio}",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines), file=sys.stderr)

    best_test = best["metrics"]
    summary = {
        "best_variant": best_variant,
        "linear_span_iou": round(linear["metrics"]["span_iou"]["value"], 4),
        "best_minus_linear": round(fresh_diff_linear["value"], 4),
        "best_minus_linear_ci_low": round(fresh_diff_linear["ci_low"], 4),
        "best_minus_linear_ci_high": round(fresh_diff_linear["ci_high"], 4),
        "protocol_best_minus_linear_ci": [
            round(diff_linear["ci_low"], 4),
            round(diff_linear["ci_high"], 4),
        ],
        "best_ece": round(best_test["ece"]["value"], 4) if "ece" in best_test else None,
        "best_brier": round(best_test["brier"]["value"], 4) if "brier" in best_test else None,
        "abstain_precision": round(detections[best_variant]["precision"], 4),
        "abstain_recall": round(detections[best_variant]["recall"], 4),
        "always_answer_precision": round(base_rate, 4),
        "fresh_best_span_iou": round(fresh_by[best_variant]["span_iou"]["value"], 4),
        "fresh_best_span_iou_ci": [
            round(fresh_by[best_variant]["span_iou"]["ci_low"], 4),
            round(fresh_by[best_variant]["span_iou"]["ci_high"], 4),
        ],
        "fresh_heuristic_span_iou": round(fresh_by["heuristic"]["span_iou"]["value"], 4),
        "fresh_linear_span_iou": round(fresh_by["linear"]["span_iou"]["value"], 4),
        "fresh_n": FRESH_WINDOWS,
        "delay_curve": curves[best_variant],
        "delay_curve_causal": curves.get(causal_variant) if causal_variant else None,
        "causal_variant": causal_variant,
        "provenance": prov,
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
        },
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

"""Does masked pre-training help? Fine-tune JadeModel from the pre-trained encoder and from
scratch with 50 and with 174 labeled windows, 4 seeds each, and score span IoU on one held-out
test set. Also measures pre-training throughput (windows/s) on this machine.

    python benchmarks/pretraining.py              # the effect table -> docs/benchmarks/pretraining.md
    python benchmarks/pretraining.py --ablation   # masking strategy/ratio -> ..._ablation.md

Sizes are chosen so the effect run finishes in about ten minutes on one shared CPU core; they
are printed and written into the page. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SEEDS = (17, 13, 23, 29)
TRAIN_SIZES = (50, 174)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365}

# The supervised model as shipped (moola_core.models defaults); pre-training uses its encoder shape.
FINE_TUNE_MODEL = {"hidden": 48, "layers": 2, "dropout": 0.2}
LABELED = {"n_windows": 340, "seed": 0, "fractions": (0.6, 0.12, 0.28)}
PRETRAIN = {  # the effect run's pre-training (the market seed differs from the labeled set's)
    "data": {"n_bars": 390 * 120, "market_seed": 7, "stride": 5, "max_windows": 4000},
    "train": {"epochs": 12, "batch_size": 64, "lr": 0.002},
}
THROUGHPUT_128 = {"windows": 512, "batch_size": 64}  # the default 128 x 2 encoder


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval across seeds."""
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return mean, float("nan")
    return mean, T_975.get(n - 1, 1.96) * float(np.std(values, ddof=1)) / math.sqrt(n)


def labeled_data():
    """One labeled set split by time; the 174/50-window train sets are nested random subsets of
    the train part, and every arm is scored on the same val and test windows."""
    from moola_core.data import labeled, splits, synthetic
    from moola_core.train.data import RunData, fingerprint

    frame = synthetic.make_labeled_set(n_windows=LABELED["n_windows"], seed=LABELED["seed"])
    arrays = labeled.to_model_arrays(frame)
    split = splits.split_labeled(frame, fractions=LABELED["fractions"])
    position = {w: i for i, w in enumerate(arrays.window_id)}
    index = {
        name: np.array(sorted(position[w] for w in getattr(split, name)), dtype=np.int64)
        for name in ("train", "val", "test")
    }
    if len(index["train"]) < max(TRAIN_SIZES):
        raise SystemExit(f"only {len(index['train'])} train windows; raise LABELED n_windows")
    pool = np.random.default_rng(0).permutation(index["train"])
    data = {}
    for size in TRAIN_SIZES:
        train = np.sort(pool[:size])
        data[size] = RunData(arrays, train, index["val"], index["test"], fingerprint(arrays))
    return data, {k: len(v) for k, v in index.items()}


def pretrain_encoder(out: Path, masking: dict | None = None, overrides: dict | None = None):
    from moola_core.pretrain.config import config_from_dict
    from moola_core.pretrain.trainer import pretrain

    raw = {
        "model": dict(FINE_TUNE_MODEL),
        "data": dict(PRETRAIN["data"]),
        "train": dict(PRETRAIN["train"]),
    }
    if masking:
        raw["masking"] = masking
    for section, values in (overrides or {}).items():
        raw[section].update(values)
    config = config_from_dict(raw)
    return config, pretrain(config, out)


def throughput_default_encoder(out: Path) -> float:
    """Pre-training windows/s of the issue's default encoder (128 hidden x 2 layers)."""
    from moola_core.pretrain.config import config_from_dict
    from moola_core.pretrain.data import PretrainWindows
    from moola_core.pretrain.trainer import pretrain

    n = THROUGHPUT_128["windows"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 105, 11, generator=g)  # throughput does not depend on the values
    valid = torch.ones(n, 105, dtype=torch.bool)
    windows = PretrainWindows(x, valid, x[:64], valid[:64], "n/a")
    config = config_from_dict({"train": {"epochs": 1, "batch_size": THROUGHPUT_128["batch_size"]}})
    return pretrain(config, out, windows=windows).windows_per_s


def fine_tune(data, seed: int, encoder_dir: Path | None, runs_dir: Path, freeze=False) -> dict:
    from moola_core.train import train_run

    config = {
        "name": "pretrained" if encoder_dir else "scratch",
        "seed": seed,
        "model": dict(FINE_TUNE_MODEL),
        "pretrained_encoder": str(encoder_dir) if encoder_dir else None,
        "freeze_encoder": freeze,
    }
    result = train_run(config, runs_dir=runs_dir, progress="none", data=data, n_boot=200)
    test = result.metrics["test"]
    return {
        "span_iou": test["span_iou"]["value"],
        "accuracy": test["accuracy"]["value"],
        "epochs": result.metrics["epochs_run"],
    }


def effect(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="moola-pretrain-bench-"))
    data, split_sizes = labeled_data()
    print(f"labeled windows: {split_sizes} (train subsets {TRAIN_SIZES})", flush=True)

    t0 = time.perf_counter()
    pre_config, pre = pretrain_encoder(work / "pretrain")
    pretrain_seconds = time.perf_counter() - t0
    print(
        f"pre-trained {pre.epochs} epochs x {pre.train_windows} windows in {pretrain_seconds:.0f}s: "
        f"{pre.windows_per_s} windows/s, val loss {pre.val_loss:.4f}",
        flush=True,
    )
    wps_128 = throughput_default_encoder(work / "throughput128")
    print(f"default 128x2 encoder: {wps_128} windows/s", flush=True)

    rows = {}
    for size in TRAIN_SIZES:
        for arm, encoder in (("scratch", None), ("pretrained", work / "pretrain")):
            scores = []
            for seed in SEEDS:
                score = fine_tune(data[size], seed, encoder, work / "runs")
                scores.append(score)
                print(f"{size:>4} {arm:<10} seed {seed}: span IoU {score['span_iou']:.3f} "
                      f"acc {score['accuracy']:.3f} ({score['epochs']} epochs)", flush=True)  # fmt: skip
            rows[(size, arm)] = scores
    total = time.perf_counter() - t0
    page = effect_page(rows, split_sizes, pre_config, pre, pretrain_seconds, wps_128, total)
    if not args.quick:
        (REPO / "docs" / "benchmarks" / "pretraining.md").write_text(page)

    summary = {
        "windows_per_s": pre.windows_per_s,
        "windows_per_s_encoder_128x2": wps_128,
        "device": "cpu (1 thread, shared)",
        "seconds": round(total, 1),
    }
    for (size, arm), scores in rows.items():
        summary[f"span_iou_{arm}_{size}"] = round(mean_ci([s["span_iou"] for s in scores])[0], 4)
    for size in TRAIN_SIZES:
        diffs = [
            p["span_iou"] - s["span_iou"]
            for p, s in zip(rows[(size, "pretrained")], rows[(size, "scratch")], strict=True)
        ]
        summary[f"span_iou_gain_{size}"] = round(float(np.mean(diffs)), 4)
    return summary


def effect_page(rows, split_sizes, pre_config, pre, pretrain_seconds, wps_128, total) -> str:
    lines = [
        "# Pre-training: effect on fine-tuning, and throughput",
        "",
        "Written by `python benchmarks/pretraining.py` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.machine()}, torch {torch.__version__}, 1 CPU thread on a machine shared "
        "with other jobs; no GPU). Guide: [../pretraining.md](../pretraining.md).",
        "",
        "## Setup (sized to finish in about ten minutes on one shared CPU core)",
        "",
        f"- Labeled set: synthetic, {LABELED['n_windows']} windows (seed {LABELED['seed']}), "
        f"split by time: train pool {split_sizes['train']}, val {split_sizes['val']}, "
        f"test {split_sizes['test']}. The 50- and 174-window train sets are nested random "
        "subsets of the train pool; every arm and seed is scored on the same test windows.",
        f"- Pre-training: a different synthetic market (seed {pre_config.data.market_seed}, "
        f"{pre_config.data.n_bars} bars), {pre.train_windows} windows (stride "
        f"{pre_config.data.stride}, capped at {pre_config.data.max_windows}), "
        f"{pre.epochs} epochs, batch {pre_config.train.batch_size}, masking "
        f"`{pre_config.masking.strategy}` ratio {pre_config.masking.ratio}; encoder "
        f"{pre_config.model.hidden} hidden x {pre_config.model.layers} layers (the shape of the "
        f"shipped JadeModel). Final val reconstruction loss {pre.val_loss:.4f}; "
        f"took {pretrain_seconds:.0f}s.",
        f"- Fine-tuning: `moola_core.train.train_run` with its defaults (AdamW, early stopping "
        f"on val span IoU), whole model trainable, seeds {', '.join(map(str, SEEDS))}.",
        "",
        "## Span IoU on the test set (mean over 4 seeds, 95% t-interval across seeds)",
        "",
        "| labeled windows | scratch | pre-trained | gain (paired) | accuracy scratch | accuracy pre-trained |",  # noqa: E501
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for size in TRAIN_SIZES:
        scratch, pretrained = rows[(size, "scratch")], rows[(size, "pretrained")]
        cells = []
        for scores in (scratch, pretrained):
            m, h = mean_ci([s["span_iou"] for s in scores])
            cells.append(f"{m:.3f} ± {h:.3f}")
        gain = [p["span_iou"] - s["span_iou"] for p, s in zip(pretrained, scratch, strict=True)]
        m, h = mean_ci(gain)
        cells.append(f"{m:+.3f} ± {h:.3f}")
        for scores in (scratch, pretrained):
            m, h = mean_ci([s["accuracy"] for s in scores])
            cells.append(f"{m:.3f} ± {h:.3f}")
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The intervals cover seed-to-seed variation only (the test set is fixed); with "
        f"{split_sizes['test']} test windows the sampling error of each number is larger still.",
        "",
        "## Pre-training throughput (this CPU)",
        "",
        "| encoder | windows/s (training, incl. masking and backward) |",
        "|---|---:|",
        f"| {pre_config.model.hidden} x {pre_config.model.layers} (effect run) | {pre.windows_per_s} |",  # noqa: E501
        f"| 128 x 2 (the issue's default) | {wps_128} |",
        "",
        "The H100 target (50 epochs over 34K windows in <= 3 minutes, i.e. about 9,400 "
        "windows/s) was **not measured**: no GPU was available to this run.",
        "",
        f"Total benchmark time: {total:.0f}s.",
        "",
    ]
    return "\n".join(lines)


ABLATION = [
    {"strategy": "random", "ratio": 0.15},
    {"strategy": "random", "ratio": 0.4},
    {"strategy": "block", "ratio": 0.25, "block_len": 8},
    {"strategy": "block", "ratio": 0.5, "block_len": 8},
    {"strategy": "patch", "ratio": 0.25, "patch_len": 7},
    {"strategy": "patch", "ratio": 0.5, "patch_len": 7},
]
ABLATION_PRETRAIN = {"data": {"max_windows": 1500}, "train": {"epochs": 5}}
ABLATION_SEEDS = (17, 13)


def ablation(args) -> dict:
    """Each masking setting pre-trains a small encoder; a frozen-encoder fine-tune on the 174-window
    set (2 seeds) scores it, since reconstruction losses of different masks are not comparable."""
    work = Path(tempfile.mkdtemp(prefix="moola-pretrain-ablation-"))
    data, split_sizes = labeled_data()
    results = []
    t0 = time.perf_counter()
    for i, masking in enumerate(ABLATION):
        _, pre = pretrain_encoder(work / f"pre{i}", masking, ABLATION_PRETRAIN)
        probes = [
            fine_tune(data[174], s, work / f"pre{i}", work / "runs", freeze=True)
            for s in ABLATION_SEEDS
        ]  # noqa: E501
        iou = float(np.mean([p["span_iou"] for p in probes]))
        acc = float(np.mean([p["accuracy"] for p in probes]))
        results.append(
            {**masking, "val_loss": pre.val_loss, "probe_span_iou": iou, "probe_acc": acc}
        )
        print(f"{masking}: val loss {pre.val_loss:.4f}, frozen probe span IoU {iou:.3f} acc {acc:.3f}", flush=True)  # fmt: skip
    probes = [fine_tune(data[174], s, None, work / "runs") for s in ABLATION_SEEDS]
    scratch = float(np.mean([p["span_iou"] for p in probes]))
    best = max(results, key=lambda r: r["probe_span_iou"])
    total = time.perf_counter() - t0
    lines = [
        "# Pre-training ablation: masking strategy and ratio",
        "",
        "Written by `python benchmarks/pretraining.py --ablation` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, 1 shared CPU thread, {total:.0f}s).",  # noqa: E501
        "",
        f"Each setting pre-trains a {FINE_TUNE_MODEL['hidden']} x {FINE_TUNE_MODEL['layers']} "
        f"encoder on {ABLATION_PRETRAIN['data']['max_windows']} synthetic windows for "
        f"{ABLATION_PRETRAIN['train']['epochs']} epochs; it is then scored by fine-tuning "
        "JadeModel's heads on top of the *frozen* encoder (174 labeled windows, seeds "
        f"{', '.join(map(str, ABLATION_SEEDS))}) and reading the test span IoU "
        f"({split_sizes['test']} windows). The validation reconstruction loss is listed but not "
        "used to choose: hiding long blocks makes reconstruction harder without making the "
        "encoder worse, so losses of different masks are not comparable.",
        "",
        "| strategy | ratio | val reconstruction loss | frozen-probe span IoU | frozen-probe accuracy |",  # noqa: E501
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['strategy']} | {r['ratio']} | {r['val_loss']:.4f} | "
            f"{r['probe_span_iou']:.3f} | {r['probe_acc']:.3f} |"
        )
    lines += [
        "",
        f"Reference: the same model trained from scratch (all weights trainable) reaches span "
        f"IoU {scratch:.3f}.",
        "",
        f"Best setting by frozen-probe span IoU: `{best['strategy']}` at ratio {best['ratio']}. "
        "With two seeds and a small test set, differences of a few hundredths are within noise.",
        "",
    ]
    if not args.quick:
        (REPO / "docs" / "benchmarks" / "pretraining_ablation.md").write_text("\n".join(lines))
    return {
        "best_strategy": best["strategy"],
        "best_ratio": best["ratio"],
        "seconds": round(total, 1),
        "results": results,
    }  # noqa: E501


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ablation", action="store_true", help="masking strategy/ratio ablation")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, no figures")
    args = parser.parse_args()
    if args.quick:  # checks that the script runs end to end; its numbers mean nothing
        global SEEDS, ABLATION_SEEDS
        SEEDS, ABLATION_SEEDS = SEEDS[:2], ABLATION_SEEDS[:1]
        PRETRAIN["data"]["max_windows"] = ABLATION_PRETRAIN["data"]["max_windows"] = 128
        PRETRAIN["train"]["epochs"] = ABLATION_PRETRAIN["train"]["epochs"] = 1
        THROUGHPUT_128["windows"] = 64
        ABLATION[:] = ABLATION[:2]
    torch.set_num_threads(1)  # the machine is shared; also makes the figures comparable
    scratch_dirs = set(Path(tempfile.gettempdir()).glob("moola-pretrain-*"))
    try:
        summary = ablation(args) if args.ablation else effect(args)
    finally:  # the runs and checkpoints were only means to the figures
        for work in set(Path(tempfile.gettempdir()).glob("moola-pretrain-*")) - scratch_dirs:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""Should the model be trained on pattern-free windows? Threshold-only abstention against an
objectness head trained with negatives, chosen on validation, test read once.

    python benchmarks/negatives.py                         # -> docs/benchmarks/negatives.md
    python benchmarks/negatives.py --seeds 2 --difficulty hard --out /tmp/n.md   # reduced
    python benchmarks/negatives.py --quick                 # a smoke run; its numbers mean nothing

Data: three synthetic detection sets (moola_core.data.synthetic.make_detection_set: episode
windows mixed with windows holding no expansion, the difficulty's share of them), one per split,
from market seeds never used in development (train 9101, validation 9102, test 9103).

Arms, each trained per seed with the shipped model config and optimiser defaults (AdamW, early
stopping on validation span IoU over the windows with a pattern):
- `threshold` (what ships): trained on the training set's episode windows only; confidence is
  the calibrated probability of the decoded span; abstain below the confidence that keeps 90%
  of validation patterns answered (`abstain_recall`).
- `threshold_f1`: the same models, threshold chosen to maximise detection F1 on the validation
  set *with* its pattern-free windows (they are used to choose a number, never to train).
- `objectness`: the same model with an objectness head (`objectness: true`), trained on every
  training window (pattern-free ones count only in the objectness loss); confidence is the
  calibrated objectness probability; the 90%-recall rule.
- `objectness_f1`: the same models, threshold maximising validation F1.
- `linear_detector` (the simple baseline): logistic regression on each feature's masked mean
  and max over the window, trained on every training window, threshold maximising validation
  F1; its span figure is the linear pointer baseline's (trained on the episode windows).

The arm is chosen on validation detection F1 (mean over seeds); test is scored once for every
arm and reported with 95% CIs that resample test windows and seeds, and paired differences
to `threshold`. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
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
from moola_core.train.calibration import f1_threshold  # noqa: E402

SEEDS = (17, 13, 23, 29, 31, 37, 41, 43)
DATA_SEEDS = {"train": 9101, "val": 9102, "test": 9103}  # never used in development
WINDOWS = {"train": 600, "val": 300, "test": 600}
ARMS = ("threshold", "threshold_f1", "objectness", "objectness_f1", "linear_detector")
N_BOOT = 1000


def load_sets(difficulty: str) -> dict:
    from moola_core.data import synthetic

    return {
        split: synthetic.make_detection_set(WINDOWS[split], DATA_SEEDS[split], difficulty)
        for split in WINDOWS
    }


def _tensors(ev, keep=None) -> dict[str, torch.Tensor]:
    keep = np.ones(len(ev.has_pattern), dtype=bool) if keep is None else keep
    return {
        "x": torch.from_numpy(np.ascontiguousarray(ev.x[keep])),
        "valid": torch.from_numpy(np.ascontiguousarray(ev.valid[keep])),
        "label": torch.from_numpy(ev.label[keep].clip(min=0)),
        "start": torch.from_numpy(ev.start[keep].clip(min=0)),
        "end": torch.from_numpy(ev.end[keep].clip(min=0)),
        "has": torch.from_numpy(ev.has_pattern[keep].astype(bool)),
    }


def train_model(sets: dict, seed: int, objectness: bool, max_epochs: int) -> tuple:
    """One model trained like `train_run` (same optimiser, batch, patience, stopping metric) ->
    (model with calibration fitted on validation, epochs run)."""
    from moola_core.models import build_model
    from moola_core.train.calibration import calibrate
    from moola_core.train.config import TrainConfig

    defaults = TrainConfig()
    torch.manual_seed(seed)
    model = build_model({**defaults.model_dict(), "objectness": objectness})
    # the threshold-only model never sees a pattern-free window
    train = _tensors(sets["train"], None if objectness else sets["train"].has_pattern)
    val_pos = _tensors(sets["val"], sets["val"].has_pattern)
    val_truth = {k: val_pos[k].numpy() for k in ("label", "start", "end")}
    opt = defaults.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    order = torch.Generator().manual_seed(seed)
    best, best_state, since, ran = -1.0, None, 0, 0
    n = len(train["x"])
    for epoch in range(1, max_epochs + 1):
        ran = epoch
        model.train()
        for idx in torch.randperm(n, generator=order).split(opt.batch_size):
            out = model(train["x"][idx], train["valid"][idx])
            loss, _ = model.loss(
                out,
                train["label"][idx],
                train["start"][idx],
                train["end"][idx],
                detached=True,
                has_pattern=train["has"][idx] if objectness else None,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
            optimizer.step()
        pred = {k: v.numpy() for k, v in model.predict(val_pos["x"], val_pos["valid"]).items()}
        score = M.point_metrics(pred, val_truth)["span_iou"]
        if score > best:
            best, since = score, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            since += 1
            if since >= opt.patience:
                break
    model.load_state_dict(best_state)
    if objectness:
        val = _tensors(sets["val"])
        calibrate(model, val["x"], val["valid"], val["label"], val["start"], val["end"],
                  recall=defaults.abstain_recall, has_pattern=val["has"])  # fmt: skip
    else:
        calibrate(model, val_pos["x"], val_pos["valid"], val_pos["label"], val_pos["start"],
                  val_pos["end"], recall=defaults.abstain_recall)  # fmt: skip
    return model, ran


def predict(model, ev) -> dict[str, np.ndarray]:
    t = _tensors(ev)
    return {k: v.numpy() for k, v in model.predict(t["x"], t["valid"]).items()}


class LinearDetector:
    """Logistic regression on the masked mean and max of each feature -> P(pattern)."""

    def fit(self, ev, val, seed: int = 0) -> LinearDetector:
        from moola_core.baselines import _pooled

        pooled = _pooled(ev.x, ev.valid)
        self.mu, self.sd = pooled.mean(0), pooled.std(0) + 1e-6
        x = torch.from_numpy((pooled - self.mu) / self.sd)
        y = torch.from_numpy(ev.has_pattern.astype(np.float32))
        torch.manual_seed(seed)
        self.layer = torch.nn.Linear(x.shape[1], 1)
        optimizer = torch.optim.LBFGS(self.layer.parameters(), max_iter=200)

        def closure():
            optimizer.zero_grad()
            loss = (
                torch.nn.functional.binary_cross_entropy_with_logits(self.layer(x)[:, 0], y)
                + 1e-3 * self.layer.weight.square().sum()
            )
            loss.backward()
            return loss

        optimizer.step(closure)
        self.threshold = f1_threshold(self.confidence(val), val.has_pattern.astype(bool))
        return self

    @torch.no_grad()
    def confidence(self, ev) -> np.ndarray:
        from moola_core.baselines import _pooled

        x = torch.from_numpy((_pooled(ev.x, ev.valid) - self.mu) / self.sd)
        return torch.sigmoid(self.layer(x)[:, 0]).numpy()


def per_window(answered: np.ndarray, pred: dict, ev) -> dict[str, np.ndarray]:
    """Per-window parts the bootstrap sums: detection counts and span IoU on patterns."""
    has = ev.has_pattern.astype(bool)
    iou = np.zeros(len(has))
    iou[has] = M.span_iou(pred["start"][has], pred["end"][has], ev.start[has], ev.end[has])
    return {
        "tp": (answered & has).astype(float),
        "ans": answered.astype(float),
        "pos": has.astype(float),
        "iou": iou,
        "iou_answered": iou * (answered & has),
    }


def _figures(parts: dict, w: np.ndarray) -> dict[str, np.ndarray]:
    """parts: name -> [S, N]; w: [B, S, N] resample weights -> figures [B] (means over seeds)."""
    s = {k: (w * v[None]).sum(-1) for k, v in parts.items()}  # [B, S]
    precision = s["tp"] / np.maximum(s["ans"], 1e-9)
    recall = s["tp"] / np.maximum(s["pos"], 1e-9)
    f1 = 2 * s["tp"] / np.maximum(s["ans"] + s["pos"], 1e-9)
    span = s["iou"] / np.maximum(s["pos"], 1e-9)
    answered_span = s["iou_answered"] / np.maximum(s["tp"], 1e-9)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "span_iou": span,
        "span_iou_answered": answered_span,
    }


def bootstrap(arms: dict, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """arms: name -> parts (name -> [S, N]). Resample windows (shared by all arms) and seeds;
    -> {arm: {figure: (value, lo, hi)}} plus paired differences to `threshold`."""
    rng = np.random.default_rng(seed)
    n_seeds, n = next(iter(arms.values()))["tp"].shape
    window_w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)  # [B, N]
    seed_w = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot)  # [B, S]
    point = np.ones((1, n_seeds, n))
    boot = window_w[:, None, :] * np.ones((1, n_seeds, 1))
    results, samples = {}, {}
    for name, parts in arms.items():
        k = parts["tp"].shape[0]
        values = {f: v[0] for f, v in _figures(parts, point[:, :k]).items()}  # [S]
        drawn = _figures(parts, boot[:, :k])  # [B, S]
        sw = seed_w if k == n_seeds else np.ones((n_boot, k))
        means = {f: (v * sw).sum(1) / sw.sum(1) for f, v in drawn.items()}  # [B]
        samples[name] = means
        results[name] = {
            f: [
                round(float(np.mean(values[f])), 4),
                round(float(np.quantile(means[f], 0.025)), 4),
                round(float(np.quantile(means[f], 0.975)), 4),
            ]
            for f in values
        }
    for name in arms:
        if name == "threshold":
            continue
        results[name]["minus_threshold"] = {
            f: [
                round(results[name][f][0] - results["threshold"][f][0], 4),
                round(float(np.quantile(samples[name][f] - samples["threshold"][f], 0.025)), 4),
                round(float(np.quantile(samples[name][f] - samples["threshold"][f], 0.975)), 4),
            ]
            for f in ("precision", "recall", "f1", "span_iou")
        }
    return results


def run(args) -> dict:
    from moola_core.baselines import LinearBaseline
    from moola_core.train.provenance import provenance

    t0 = time.perf_counter()
    sets = load_sets(args.difficulty)
    shares = {k: round(1 - float(v.has_pattern.mean()), 3) for k, v in sets.items()}
    print(f"pattern-free shares {shares}", file=sys.stderr, flush=True)
    seeds = SEEDS[: args.seeds]
    parts = {split: {arm: [] for arm in ARMS} for split in ("val", "test")}
    thresholds, epochs = {arm: [] for arm in ARMS}, {"threshold": [], "objectness": []}
    for seed in seeds:
        for kind in ("threshold", "objectness"):
            t1 = time.perf_counter()
            model, ran = train_model(sets, seed, kind == "objectness", args.max_epochs)
            epochs[kind].append(ran)
            preds = {split: predict(model, sets[split]) for split in ("val", "test")}
            has_val = sets["val"].has_pattern.astype(bool)
            tuned = f1_threshold(preds["val"]["confidence"], has_val)
            rules = {kind: model.config["abstain_threshold"], f"{kind}_f1": tuned}
            for arm, threshold in rules.items():
                thresholds[arm].append(float(threshold))
                for split in ("val", "test"):
                    answered = preds[split]["confidence"] >= threshold
                    parts[split][arm].append(per_window(answered, preds[split], sets[split]))
            print(f"seed {seed} {kind}: {ran} epochs, {time.perf_counter() - t1:.0f}s",
                  file=sys.stderr, flush=True)  # fmt: skip
    # the simple baseline: a linear detector + the linear pointer for the span (seedless)
    detector = LinearDetector().fit(sets["train"], sets["val"])
    pos = {s: sets[s].has_pattern.astype(bool) for s in sets}
    pointer = LinearBaseline().fit(
        sets["train"].x[pos["train"]],
        sets["train"].valid[pos["train"]],
        sets["train"].label[pos["train"]],
        sets["train"].start[pos["train"]],
        sets["train"].end[pos["train"]],
        val={
            k: getattr(sets["val"], k)[pos["val"]] for k in ("x", "valid", "label", "start", "end")
        },
    )
    thresholds["linear_detector"].append(detector.threshold)
    for split in ("val", "test"):
        pred = pointer.predict(sets[split].x, sets[split].valid)
        answered = detector.confidence(sets[split]) >= detector.threshold
        parts[split]["linear_detector"].append(per_window(answered, pred, sets[split]))
    stacked = {
        split: {
            arm: {k: np.stack([p[k] for p in rows]) for k in rows[0]}
            for arm, rows in by_arm.items()
        }
        for split, by_arm in parts.items()
    }
    val = bootstrap(stacked["val"])
    test = bootstrap(stacked["test"])  # read once, for every arm, after the choice below
    chosen = max(ARMS, key=lambda arm: val[arm]["f1"][0])
    total = time.perf_counter() - t0
    summary = {
        "difficulty": args.difficulty,
        "pattern_free_share": shares,
        "windows": WINDOWS,
        "data_seeds": DATA_SEEDS,
        "seeds": list(seeds),
        "max_epochs": args.max_epochs,
        "epochs_run": epochs,
        "thresholds": {a: [round(t, 4) for t in v] for a, v in thresholds.items()},
        "chosen_on_validation": chosen,
        "val": val,
        "test": test,
        "seconds": round(total, 1),
        "provenance": provenance("cpu"),
    }
    Path(args.out).write_text(page(summary))
    print(page(summary), file=sys.stderr)
    return summary


def _cell(v) -> str:
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def page(s: dict) -> str:
    prov = s["provenance"]
    argv = " ".join(sys.argv[1:])
    lines = [
        "# Training with pattern-free windows: objectness head vs threshold-only abstention",
        "",
        f"Written by `python benchmarks/negatives.py{' ' + argv if argv else ''}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, torch "
        f"{torch.__version__}, CPU 1 thread, commit {prov['commit'] or 'unknown'}"
        f"{' (dirty tree)' if prov['dirty'] else ''}, machine {prov['machine']['node']}, "
        f"{s['seconds']:.0f}s). Guide: [../models.md](../models.md). Deterministic on one CPU "
        "thread; seconds are machine-dependent.",
        "",
        f"Difficulty `{s['difficulty']}`; detection sets (windows {s['windows']}, market seeds "
        f"{s['data_seeds']}), pattern-free shares {s['pattern_free_share']}. Seeds "
        f"{', '.join(map(str, s['seeds']))}; at most {s['max_epochs']} epochs, early stopping on "
        f"validation span IoU (epochs run: threshold {s['epochs_run']['threshold']}, "
        f"objectness {s['epochs_run']['objectness']}). Arms: see the script's docstring.",
        "",
        "Precision = share of answered windows that hold a pattern; recall = share of patterns "
        "answered; span IoU over all windows with a pattern (answered or not) and over the "
        "answered ones. Mean over seeds, 95% CI resampling windows and seeds.",
        "",
    ]
    for split in ("val", "test"):
        title = "Validation (the choice)" if split == "val" else "Test (read once)"
        lines += [
            f"## {title}",
            "",
            "| arm | precision | recall | detection F1 | span IoU (patterns) | span IoU (answered) |",  # noqa: E501
            "|---|---|---|---|---|---|",
        ]
        for arm, r in s[split].items():
            lines.append(
                f"| {arm} | {_cell(r['precision'])} | {_cell(r['recall'])} | {_cell(r['f1'])} "
                f"| {_cell(r['span_iou'])} | {_cell(r['span_iou_answered'])} |"
            )
        lines += [
            "",
            "Paired difference to `threshold` (same windows and resamples):",
            "",
            "| arm | precision | recall | detection F1 | span IoU (patterns) |",
            "|---|---|---|---|---|",
        ]
        for arm, r in s[split].items():
            if "minus_threshold" in r:
                d = r["minus_threshold"]
                lines.append(
                    f"| {arm} | " + " | ".join(
                        f"{d[f][0]:+.3f} [{d[f][1]:+.3f}, {d[f][2]:+.3f}]"
                        for f in ("precision", "recall", "f1", "span_iou")
                    ) + " |"
                )  # fmt: skip
        lines.append("")
    lines += [f"Chosen on validation detection F1: `{s['chosen_on_validation']}`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4, help=f"1..{len(SEEDS)} (default 4)")
    parser.add_argument("--difficulty", default="default")
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--out", default=str(REPO / "docs/benchmarks/negatives.md"))
    args = parser.parse_args()
    if args.quick:  # checks that the script runs end to end; its numbers mean nothing
        args.seeds, args.max_epochs = 1, 2
        WINDOWS.update(train=60, val=30, test=30)
        args.out = str(Path(tempfile.mkdtemp(prefix="moola-negatives-")) / "n.md")
    if not 1 <= args.seeds <= len(SEEDS):
        parser.error(f"--seeds must be 1..{len(SEEDS)}")
    torch.set_num_threads(1)  # the machine is shared; also makes the figures deterministic
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()

"""One training run: a model per fold for out-of-fold (OOF) predictions, the final model on
every development window, its calibration on the sealed split, and its answers on the gate's
stream; written to runs/<run-id>/ (moola_core.train.runs names the files, docs/models.md
describes them).

    for each fold k:  fit on the other folds, stop on a slice of them, calibrate on that slice,
                      predict fold k (and, live, its as-of cuts)            -> OOF predictions
    final model:      fit on every development window for the folds' median best epoch
    calibration:      temperatures, Platt + prior shift (live) and the conformal abstain
                      threshold on the calibration split                    -> model.json
    stream:           the final model bar by bar over the gate's stream     -> stream figures
    baselines:        fitted on the same training parts, scored on the same windows

The OOF predictions are what `invoke select` chooses and gates on; the calibration split and
the stream are never used to choose.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from moola_core import metrics as M
from moola_core.models import n_parameters
from moola_core.train import runs
from moola_core.train.config import TrainConfig, config_from_dict, dump_yaml, load_config
from moola_core.train.data import RunData, negatives_fingerprint, prepare_data
from moola_core.train.loop import CutExamples, WindowExamples, example_dict, fit, predict_arrays
from moola_core.train.provenance import provenance

N_BOOT = 1000  # bootstrap resamples for the final intervals
FOLD_SEED_STEP = 7919  # fold k's model is seeded seed + (k + 1) * step; the final one seed


@dataclass(frozen=True)
class RunResult:
    """A finished run: its id, folder and the metrics.json it wrote."""

    run_id: str
    path: Path
    metrics: dict


def _as_config(config) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        return config_from_dict(config)
    return load_config(config)


def _listed(pred: dict) -> dict:
    """Predictions as JSON lists (probabilities rounded)."""
    out = {}
    for key, value in pred.items():
        if key == "class_probs":
            out[key] = np.round(value, 5).tolist()
        elif key == "confidence":
            out[key] = np.round(value, 6).tolist()
        else:
            out[key] = np.asarray(value).tolist()
    return out


def _n_negatives(config: TrainConfig, n_windows: int) -> int:
    share = config.data.negative_share
    return int(round(n_windows * share / (1.0 - share))) if share > 0 else 0


def _examples(config: TrainConfig, data: RunData, train, stop):
    """(training examples, early-stopping examples) of the windows `train` and `stop`."""
    if config.model.live:
        from moola_core.train.live import concat, early_stopping_rows

        cuts = data.cuts()
        negatives = data.negatives("train", live=True)
        examples = CutExamples(
            cuts,
            np.asarray(train),
            negatives,
            _n_negatives(config, len(train)),
            config.live.cuts_per_window,
        )
        if stop is None:
            return examples, None
        parts = [cuts.take(early_stopping_rows(cuts, stop))]
        stop_negatives = data.negatives("early_stopping", live=True)
        if stop_negatives is not None:
            parts.append(stop_negatives)
        return examples, concat(parts).tensors()
    negatives = data.negatives("train", live=False) if config.model.objectness else None
    examples = WindowExamples(example_dict(data.part(train), negatives))
    if stop is None:
        return examples, None
    stop_negatives = data.negatives("early_stopping", live=False) if negatives else None
    return examples, example_dict(data.part(stop), stop_negatives)


def _calibrate(config: TrainConfig, data: RunData, model, windows, pool: str) -> dict:
    """Fit temperatures and the abstain threshold of `model` on `windows` (and the pool's
    pattern-free examples) -> what was fitted."""
    if config.model.live:
        from moola_core.train.calibration import calibrate_live
        from moola_core.train.live import concat

        cuts = data.cuts()
        parts = [cuts.take(cuts.rows_of(windows))]
        negatives = data.negatives(pool, live=True)
        if negatives is not None:
            parts.append(negatives)
        return calibrate_live(
            model,
            concat(parts),
            prevalence=config.live.prevalence,
            recall=config.abstain_recall,
            within=config.live.detect_within,
        )
    from moola_core.train.calibration import calibrate

    negatives = data.negatives(pool, live=False)
    ex = example_dict(data.part(windows), negatives)
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ex.items()}
    return calibrate(
        model,
        t["x"],
        t["valid"],
        t["label"],
        t["start"],
        t["end"],
        recall=config.abstain_recall,
        has_pattern=t["has"] if negatives is not None else None,
        rule=config.abstain_rule,
    )


def _cut_predictions(model, data: RunData, windows) -> dict:
    """A live model's confidence on the as-of cuts of `windows` -> lists for predictions.json."""
    cuts = data.cuts()
    rows = cuts.rows_of(windows)
    part = cuts.take(rows)
    pred = predict_arrays(model, part.x, part.valid)
    return {
        "window_id": data.window_ids(part.window),
        "delay": part.delay.tolist(),
        "under_way": part.under_way.tolist(),
        "confidence": np.round(pred["confidence"], 6).tolist(),
        "abstain": pred["abstain"].tolist(),
    }


def train_run(
    config,
    runs_dir: str | Path = "runs",
    *,
    progress: str = "auto",
    data: RunData | None = None,
    n_boot: int = N_BOOT,
) -> RunResult:
    """Train one run from a TrainConfig, a dict or a YAML path; write runs/<run-id>/.

    `progress` is "auto" (rich on a terminal, plain lines otherwise), "rich", "plain" or "none".
    `data` reuses prepared data (several seeds or variants on the same windows share it).
    """
    config = _as_config(config)
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    data = data or prepare_data(config)
    if data.config.model_dump(include={"data", "split", "live", "stream"}) != config.model_dump(
        include={"data", "split", "live", "stream"}
    ):
        from moola_core.errors import MoolaError

        raise MoolaError(
            "the prepared data was made for other data/split settings; prepare it again."
        )
    run_id = runs.new_run_id(config.name, config.seed, runs_dir)
    out = runs_dir / run_id
    out.mkdir()
    (out / runs.CONFIG).write_text(dump_yaml(config))
    threads = torch.get_num_threads()
    if config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    try:
        return _run(config, out, run_id, data, progress, n_boot)
    finally:
        torch.set_num_threads(threads)


def _run(config: TrainConfig, out: Path, run_id: str, data: RunData, progress, n_boot: int):
    live = config.model.live
    k_folds = len(data.folds)
    history_file = (out / runs.HISTORY).open("w")
    fold_info, oof_parts, oof_cuts, seconds = [], [], [], 0.0
    (out / runs.FOLDS).mkdir()
    try:
        for k, fold in enumerate(data.folds):
            examples, stopping = _examples(config, data, fold.train, fold.early_stopping)
            fitted = fit(
                config,
                examples,
                stopping,
                seed=config.seed + (k + 1) * FOLD_SEED_STEP,
                progress=progress,
                title=f"{run_id} fold {k + 1}/{k_folds}",
                on_epoch=lambda row, k=k: history_file.write(
                    json.dumps({"model": f"fold-{k + 1}", **row}) + "\n"
                ),
            )
            history_file.flush()
            seconds += fitted.seconds
            calibration = _calibrate(
                config, data, fitted.model, fold.early_stopping, "early_stopping"
            )
            torch.save(fitted.model.state_dict(), out / runs.FOLDS / f"fold-{k + 1}.pt")
            runs.write_json(out / runs.FOLDS / f"fold-{k + 1}.json", fitted.model.config)
            part = data.part(fold.held)
            pred = predict_arrays(fitted.model, part["x"], part["valid"])
            pred["fold"] = np.full(len(fold.held), k + 1)
            oof_parts.append(pred)
            if live:
                oof_cuts.append(_cut_predictions(fitted.model, data, fold.held))
            fold_info.append(
                {
                    "fold": k + 1,
                    "held": int(len(fold.held)),
                    "train": int(len(fold.train)),
                    "early_stopping": int(len(fold.early_stopping)),
                    "best_epoch": fitted.best_epoch,
                    "epochs_run": fitted.epochs_run,
                    "seconds": round(fitted.seconds, 2),
                    "device": fitted.device,
                    "abstain_threshold": calibration["abstain_threshold"],
                }
            )
        final_epochs = max(1, int(round(statistics.median(f["best_epoch"] for f in fold_info))))
        examples, _ = _examples(config, data, data.dev, None)
        final = fit(
            config,
            examples,
            None,
            epochs=final_epochs,
            seed=config.seed,
            progress=progress,
            title=f"{run_id} final",
            on_epoch=lambda row: history_file.write(json.dumps({"model": "final", **row}) + "\n"),
        )
        seconds += final.seconds
    finally:
        history_file.close()
    model = final.model
    torch.save(model.state_dict(), out / runs.WEIGHTS)
    calibration = _calibrate(config, data, model, data.calibration, "calibration")
    runs.write_json(out / runs.MODEL, model.config)

    # -- out of fold, the calibration split, the baselines beside them ---------------------------
    order = data.oof_order
    oof = {k: np.concatenate([p[k] for p in oof_parts]) for k in oof_parts[0]}
    oof_truth = data.truth(order)
    results = {"oof": M.evaluate(oof, oof_truth, n_boot=n_boot, seed=0)}
    cal_part = data.part(data.calibration)
    cal_pred = predict_arrays(model, cal_part["x"], cal_part["valid"])
    cal_truth = data.truth(data.calibration)
    results["calibration_split"] = M.evaluate(cal_pred, cal_truth, n_boot=n_boot, seed=0)
    predictions: dict = {
        "oof": {
            **_listed(oof),
            "window_id": data.window_ids(order),
            "truth": {k: v.tolist() for k, v in oof_truth.items()},
        },
        "calibration_split": {
            **_listed(cal_pred),
            "window_id": data.window_ids(data.calibration),
            "truth": {k: v.tolist() for k, v in cal_truth.items()},
        },
        "baselines": {},
    }
    baselines = _baseline_figures(data, predictions, n_boot)
    if live:
        predictions["oof_cuts"] = {
            key: sum((part[key] for part in oof_cuts), []) for key in oof_cuts[0]
        }
    stream = _stream(data, model, predictions, n_boot)

    fold_losses = _fold_losses(out / runs.HISTORY)
    summary = {
        "run_id": run_id,
        "variant": config.name,
        "seed": config.seed,
        "span_head": config.model.span_head,
        "position_encoding": config.model.position_encoding,
        "live": live,
        "n_parameters": n_parameters(model),
        "dataset_fingerprint": data.fingerprint,
        "n_windows": {
            "dev": int(len(data.dev)),
            "oof": int(len(order)),
            "calibration_split": int(len(data.calibration)),
            "purged": len(data.purged),
        },
        "early_stopping_metric": config.early_stopping_metric,
        "folds": fold_info,
        "final_epochs": final_epochs,
        "epochs_run": final.epochs_run,
        "train_seconds": round(seconds, 2),
        "pretrained_encoder": final.transfer,
        "device": final.device,
        "bf16": bool(config.bf16 and final.device.startswith("cuda")),
        # did it learn? in every fold the validation loss fell below its first epoch's
        "learning": {
            "first_val_loss": [round(v[0], 5) for v in fold_losses],
            "best_val_loss": [round(min(v), 5) for v in fold_losses],
            "val_loss_fell": all(min(v[1:], default=v[0]) < v[0] for v in fold_losses),
        },
        "calibration": calibration,
        "detection": _detection(config, data, model)
        if config.model.objectness and not live
        else None,
        "negatives": (
            {
                "share": config.data.negative_share,
                "fingerprint": negatives_fingerprint(data),
                "trained_on": bool(config.model.objectness or live),
            }
            if config.data.negative_share > 0
            else None
        ),
        "live_cuts": _live_figures(predictions.get("oof_cuts"), config) if live else None,
        "stream": stream,
        "provenance": provenance(final.device),
        "oof": results["oof"],
        "calibration_split": results["calibration_split"],
        "baselines": baselines,
    }
    runs.write_json(out / runs.PREDICTIONS, predictions)
    runs.write_json(out / runs.METRICS, summary)  # written last: its presence means "finished"
    return RunResult(run_id, out, summary)


def _fold_losses(history: Path) -> list[list[float]]:
    """Each fold's validation losses, epoch by epoch, from history.jsonl."""
    losses: dict[str, list[float]] = {}
    for line in history.read_text().splitlines():
        row = json.loads(line)
        if row.get("val_loss") is not None:
            losses.setdefault(row["model"], []).append(float(row["val_loss"]))
    return list(losses.values())


def _baseline_figures(data: RunData, predictions: dict, n_boot: int) -> dict:
    """Every baseline fitted per fold (OOF) and on the development windows (calibration split),
    scored on the same windows as the model; fills predictions["baselines"]."""
    memo = data._memo.setdefault("baseline_figures", {})
    if n_boot not in memo:
        order = data.oof_order
        oof: dict[str, list] = {}
        for k, fold in enumerate(data.folds):
            part = data.part(fold.held)
            for name, fitted in data.baselines(k).items():
                oof.setdefault(name, []).append(fitted.predict(part["x"], part["valid"]))
        cal = data.part(data.calibration)
        figures, listed = {}, {}
        for name, parts in oof.items():
            pred = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            cal_pred = data.baselines("dev")[name].predict(cal["x"], cal["valid"])
            figures[name] = {
                "oof": M.evaluate(pred, data.truth(order), n_boot=n_boot, seed=0),
                "calibration_split": M.evaluate(
                    cal_pred, data.truth(data.calibration), n_boot=n_boot, seed=0
                ),
            }
            listed[name] = {"oof": _listed(pred), "calibration_split": _listed(cal_pred)}
        memo[n_boot] = (figures, listed)
    figures, listed = memo[n_boot]
    predictions["baselines"] = listed
    return figures


STREAM_BASELINES = ("linear", "heuristic")


def stream_predictions(predictors: dict, batches) -> dict:
    """Run several predictors over one stream's window batches -> {name: {key: array}}.

    `predictors` maps a name to fn(x, valid) -> predict()-like dict of numpy arrays."""
    parts: dict[str, list] = {name: [] for name in predictors}
    for _bars, x, valid in batches:
        for name, fn in predictors.items():
            out = fn(x, valid)
            parts[name].append(
                {k: np.asarray(out[k]) for k in ("end", "abstain", "confidence") if k in out}
            )
    return {
        name: {k: np.concatenate([p[k] for p in chunks]) for k in chunks[0]}
        for name, chunks in parts.items()
        if chunks
    }


def _stream(data: RunData, model, predictions: dict, n_boot: int) -> dict:
    """The final model and the baselines bar by bar over the gate's stream -> the figures
    (and the per-session scores in predictions["stream"]); a reason when there is none."""
    from moola_core import streams

    prepared = data.stream()
    if prepared is None:
        reason = (
            "no stream: a labeled file has no market to run on"
            if data.config.data.source != "synthetic"
            else "stream.sessions is 0"
        )
        return {"skipped": reason}
    stream, batches = prepared
    memo = data._memo.setdefault("stream_baselines", {})
    if not memo:
        dev = data.baselines("dev")
        preds = stream_predictions({name: dev[name].predict for name in STREAM_BASELINES}, batches)
        for name, pred in preds.items():
            memo[name] = streams.score_alarms(stream, streams.alarms(pred, live=False))
    live = bool(model.config["live"])
    pred = stream_predictions({"model": lambda x, v: predict_arrays(model, x, v)}, batches)["model"]
    score = streams.score_alarms(stream, streams.alarms(pred, live=live))
    predictions["stream"] = {
        "model": score.to_dict(),
        "baselines": {name: sc.to_dict() for name, sc in memo.items()},
    }
    figures = {
        "sessions": int(len(score.sessions)),
        "seed": data.config.data.data_seed,
        "difficulty": data.config.data.difficulty,
        "model": streams.summarize([score], n_boot=n_boot),
        "baselines": {name: streams.summarize([sc], n_boot=n_boot) for name, sc in memo.items()},
    }
    if live:
        truth = stream.under_way()[stream.bars]
        figures["reliability"] = M.reliability_bins(pred["confidence"], truth)
    return figures


def _live_figures(cuts: dict | None, config: TrainConfig) -> dict | None:
    """Out-of-fold as-of figures of a live model: share answered by delay, and the share of
    expansions answered within live.detect_within bars of their first bar."""
    if not cuts:
        return None
    delay = np.asarray(cuts["delay"])
    answered = ~np.asarray(cuts["abstain"], dtype=bool)
    windows = np.asarray(cuts["window_id"])
    by_delay = {
        str(int(d)): round(float(answered[delay == d].mean()), 4)
        for d in sorted(set(delay.tolist()))
        if -12 <= d <= 10
    }
    within = config.live.detect_within
    hit = {}
    for w, d, a in zip(windows, delay, answered, strict=True):
        if 0 <= d <= within:
            hit[w] = hit.get(w, False) or bool(a)
    # the served probability is shifted to the stream's prevalence; the cuts hold expansions
    # far more often, so their reliability is read with the shift undone (at their own share)
    truth = np.asarray(cuts["under_way"], dtype=float)
    share = float(np.clip(truth.mean(), 1e-6, 1 - 1e-6))
    prob = np.clip(np.asarray(cuts["confidence"], dtype=float), 1e-9, 1 - 1e-9)
    prevalence = config.live.prevalence
    logit = np.log(prob / (1 - prob)) - np.log(prevalence / (1 - prevalence))
    logit += np.log(share / (1 - share))
    return {
        "answered_by_delay": by_delay,
        "recall_within": round(float(np.mean(list(hit.values()))), 4) if hit else None,
        "within": within,
        "reliability": {
            **M.reliability_bins(1 / (1 + np.exp(-logit)), truth),
            "at_share": round(share, 4),
        },
    }


def _detection(config: TrainConfig, data: RunData, model) -> dict | None:
    """An objectness model's "no pattern" on the calibration split and its pattern-free pool."""
    negatives = data.negatives("calibration", live=False)
    if negatives is None:
        return None
    cal = data.part(data.calibration)
    answered = ~predict_arrays(model, cal["x"], cal["valid"])["abstain"].astype(bool)
    free = ~predict_arrays(model, negatives["x"], negatives["valid"])["abstain"].astype(bool)
    tp, fp, n_pos = int(answered.sum()), int(free.sum()), len(answered)
    return {
        "calibration_split": {
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / n_pos if n_pos else 0.0,
            "f1": 2 * tp / (tp + fp + n_pos) if tp + fp + n_pos else 0.0,
            "n_patterns": n_pos,
            "n_pattern_free": len(free),
        }
    }

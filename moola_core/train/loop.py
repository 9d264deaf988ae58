"""One supervised training run: AdamW, early stopping on a validation metric, best checkpoint
kept, then an honest evaluation on the held-out test split next to the baselines.

Deterministic on CPU for a given config (the seed drives initialisation, dropout and batch
order). Writes runs/<run-id>/ as described in moola_core.train.runs and docs/models.md.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from moola_core import metrics as M
from moola_core.models import build_model, n_parameters
from moola_core.train import runs
from moola_core.train.calibration import calibrate
from moola_core.train.config import TrainConfig, config_from_dict, dump_yaml, load_config
from moola_core.train.data import RunData, negatives_fingerprint, prepare_data
from moola_core.train.provenance import provenance

N_BOOT = 1000  # bootstrap resamples for the final intervals


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


def _tensors(part: dict, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    return {
        "x": torch.from_numpy(np.ascontiguousarray(part["x"], dtype=np.float32)).to(device),
        "valid": torch.from_numpy(np.ascontiguousarray(part["valid"], dtype=bool)).to(device),
        "label": torch.from_numpy(np.asarray(part["label"], dtype=np.int64)).to(device),
        "start": torch.from_numpy(np.asarray(part["start"], dtype=np.int64)).to(device),
        "end": torch.from_numpy(np.asarray(part["end"], dtype=np.int64)).to(device),
    }


def _with_negatives(part: dict, negatives: dict, device) -> dict[str, torch.Tensor]:
    """Labeled tensors followed by pattern-free windows, plus "has" (bool: holds a pattern);
    the pattern-free rows' label, start and end are 0 and never read (see JadeModel.loss)."""
    n_neg = len(negatives["x"])
    zeros = torch.zeros(n_neg, dtype=torch.int64, device=device)
    extra = {
        "x": torch.from_numpy(np.ascontiguousarray(negatives["x"], dtype=np.float32)).to(device),
        "valid": torch.from_numpy(np.ascontiguousarray(negatives["valid"], dtype=bool)).to(device),
        "label": zeros,
        "start": zeros,
        "end": zeros,
    }
    out = {k: torch.cat([part[k], extra[k]]) for k in extra}
    out["has"] = torch.cat(
        [
            torch.ones(len(part["x"]), dtype=torch.bool, device=device),
            torch.zeros(n_neg, dtype=torch.bool, device=device),
        ]
    )
    return out


def _detection(answered_patterns: np.ndarray, answered_free: np.ndarray) -> dict:
    """Abstention as detection over patterns and pattern-free windows (answered = not
    abstained): precision, recall, F1 and the counts."""
    tp = int(answered_patterns.sum())
    fp = int(answered_free.sum())
    n_pos = len(answered_patterns)
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / n_pos if n_pos else 0.0,
        "f1": 2 * tp / (tp + fp + n_pos) if tp + fp + n_pos else 0.0,
        "n_patterns": n_pos,
        "n_pattern_free": len(answered_free),
    }


def pick_device(preference: str) -> torch.device:
    """The training device: cuda when asked (or 'auto' and one is visible), else cpu."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from moola_core.errors import MoolaError

        raise MoolaError("device is 'cuda' but no GPU is visible; use device: auto or cpu.")
    return torch.device("cuda")


def _autocast(device: torch.device, bf16: bool):
    """bf16 autocast on a GPU (the LSTM and linear layers run in bf16, losses in float32);
    a no-op on the CPU, so CPU results are the float32 ones."""
    import contextlib

    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _no_truth(free: dict) -> dict[str, np.ndarray]:
    """Placeholder label/start/end (0) for pattern-free windows, which have none."""
    zeros = np.zeros(len(free["x"]), dtype=np.int64)
    return {"label": zeros, "start": zeros, "end": zeros}


def _truth(part: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(part[k]) for k in ("label", "start", "end")}


class _Progress:
    """Epoch progress: a rich bar on a terminal, one plain line per epoch otherwise, or none."""

    def __init__(self, mode: str, run_id: str, max_epochs: int):
        if mode == "auto":
            mode = "rich" if sys.stderr.isatty() else "plain"
        self.mode, self.run_id, self.max_epochs = mode, run_id, max_epochs
        if mode == "rich":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
                console=Console(stderr=True),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task(run_id, total=max_epochs, status="")

    def epoch(self, row: dict, metric: str, best: float, best_epoch: int) -> None:
        status = (
            f"loss {row['train_loss']:.3f}  val {metric} {row['val'][metric]:.3f}"
            if metric != "loss"
            else f"loss {row['train_loss']:.3f}  val loss {row['val_loss']:.3f}"
        )
        status += f"  best {best:.3f} @{best_epoch}"
        if self.mode == "rich":
            self.bar.update(self.task, completed=row["epoch"], status=status)
        elif self.mode == "plain":
            print(
                f"{self.run_id} epoch {row['epoch']}/{self.max_epochs} {status}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.mode == "rich":
            self.bar.stop()


def _evaluate_split(model, part: dict, truth: dict, n_boot: int) -> tuple[dict, dict]:
    """Predict one split -> (metrics with CIs, predictions as lists)."""
    t = _tensors(part)
    pred = {k: v.numpy() for k, v in model.predict(t["x"], t["valid"]).items()}
    report = M.evaluate(pred, truth, n_boot=n_boot, seed=0)
    listed = {k: pred[k].tolist() for k in ("label", "start", "end", "abstain")}
    listed["class_probs"] = np.round(pred["class_probs"], 5).tolist()
    listed["confidence"] = np.round(pred["confidence"], 6).tolist()
    return report, listed


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
    `data` reuses prepared data (benchmarks train many runs on the same windows).
    """
    config = _as_config(config)
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    data = data or prepare_data(config)
    run_id = runs.new_run_id(config.name, config.seed, runs_dir)
    out = runs_dir / run_id
    out.mkdir()
    (out / runs.CONFIG).write_text(dump_yaml(config))

    threads = torch.get_num_threads()
    if config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    try:
        return _train(config, out, run_id, data, progress, n_boot)
    finally:
        torch.set_num_threads(threads)


def _train(
    config: TrainConfig, out: Path, run_id: str, data: RunData, progress: str, n_boot: int
) -> RunResult:
    torch.manual_seed(config.seed)
    model = build_model(config.model_dict())
    runs.write_json(out / runs.MODEL, model.config)
    device = pick_device(config.device)
    transfer = None
    if config.pretrained_encoder:
        from moola_core.pretrain.transfer import load_pretrained_encoder

        transfer = load_pretrained_encoder(
            model, config.pretrained_encoder, freeze=config.freeze_encoder
        )
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=config.optim.lr, weight_decay=config.optim.weight_decay
    )
    train, val = _tensors(data.part("train"), device), _tensors(data.part("val"), device)
    val_truth = _truth(data.part("val"))
    # pattern-free windows train only an objectness head; without one they are used only to
    # choose the abstain threshold and to score detection
    objectness = bool(config.model.objectness and data.negatives)
    n_val = len(val["x"])
    if objectness:
        train = _with_negatives(train, data.negatives["train"], device)
        val = _with_negatives(val, data.negatives["val"], device)
    order = torch.Generator().manual_seed(config.seed)
    metric = config.early_stopping_metric
    lower_is_better = metric == "loss" or metric in M.LOWER_IS_BETTER
    sign = -1.0 if lower_is_better else 1.0

    best_score, best_epoch, best_state, since_best = -float("inf"), 0, None, 0
    report = _Progress(progress, run_id, config.optim.max_epochs)
    started = time.perf_counter()
    n_train, batch_size = len(train["x"]), config.optim.batch_size
    history_rows: list[dict] = []
    try:
        with (out / runs.HISTORY).open("w") as history:
            for epoch in range(1, config.optim.max_epochs + 1):
                epoch_start = time.perf_counter()
                model.train()
                permutation = torch.randperm(n_train, generator=order).to(device)
                # summed on the device and read once per epoch: no host sync per step
                totals_t = torch.zeros(3, dtype=torch.float64, device=device)
                for i in range(0, n_train, batch_size):
                    idx = permutation[i : i + batch_size]
                    with _autocast(device, config.bf16):
                        output = model(train["x"][idx], train["valid"][idx])
                    output = {k: v.float() for k, v in output.items()}
                    loss, parts = model.loss(
                        output,
                        train["label"][idx],
                        train["start"][idx],
                        train["end"][idx],
                        detached=True,
                        has_pattern=train["has"][idx] if objectness else None,
                    )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(trainable, config.optim.grad_clip)
                    optimizer.step()
                    share = len(idx) / n_train
                    totals_t += torch.stack([loss.detach(), parts["class"], parts["span"]]) * share
                totals = dict(zip(("loss", "class", "span"), totals_t.tolist(), strict=True))

                model.eval()
                with torch.no_grad():
                    with _autocast(device, config.bf16):
                        output = model(val["x"], val["valid"])
                    output = {k: v.float() for k, v in output.items()}
                    val_loss, _ = model.loss(
                        output,
                        val["label"],
                        val["start"],
                        val["end"],
                        has_pattern=val["has"] if objectness else None,
                    )
                    # the labeled metrics read the windows with a pattern (they come first)
                    output = {k: v[:n_val] for k, v in output.items()}
                    decoded = model.decode(output, val["valid"][:n_val])
                    pred = {k: v.cpu().numpy() for k, v in decoded.items()}
                val_metrics = M.point_metrics(pred, val_truth)
                value = float(val_loss) if metric == "loss" else val_metrics[metric]
                score = sign * value
                if score > best_score:
                    best_score, best_epoch, since_best = score, epoch, 0
                    best_state = {
                        k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                    }
                else:
                    since_best += 1
                row = {
                    "epoch": epoch,
                    "train_loss": totals["loss"],
                    "train_class_loss": totals["class"],
                    "train_span_loss": totals["span"],
                    "val_loss": float(val_loss),
                    "val": val_metrics,
                    "best_epoch": best_epoch,
                    "seconds": round(time.perf_counter() - epoch_start, 3),
                }
                history_rows.append(row)
                history.write(json.dumps(row) + "\n")
                history.flush()
                report.epoch(row, metric, sign * best_score, best_epoch)
                if since_best >= config.optim.patience:
                    break
    finally:
        report.close()
    train_seconds = time.perf_counter() - started

    model.to("cpu")
    model.load_state_dict(best_state)
    torch.save(model.state_dict(), out / runs.WEIGHTS)
    # temperatures and the abstain threshold, fitted on validation, travel in model.json
    cal = _tensors(data.part("val"))
    if data.negatives:
        cal = _with_negatives(cal, data.negatives["val"], "cpu")
    calibration = calibrate(
        model,
        cal["x"],
        cal["valid"],
        cal["label"],
        cal["start"],
        cal["end"],
        recall=config.abstain_recall,
        has_pattern=cal.get("has"),
        rule=config.abstain_rule,
    )
    runs.write_json(out / runs.MODEL, model.config)

    results: dict = {}
    predictions: dict = {}
    for split in ("val", "test"):
        truth = data.truth(split)
        results[split], predictions[split] = _evaluate_split(model, data.part(split), truth, n_boot)
        predictions[split]["window_id"] = data.window_ids(split)
        predictions[split]["truth"] = {k: v.tolist() for k, v in truth.items()}
    detection: dict = {}
    if data.negatives:
        predictions["negatives"] = {}
        for split in ("val", "test"):
            free = _tensors({**data.negatives[split], **_no_truth(data.negatives[split])})
            pred = model.predict(free["x"], free["valid"])
            answered_free = ~pred["abstain"].numpy()
            answered = ~np.asarray(predictions[split]["abstain"], dtype=bool)
            detection[split] = _detection(answered, answered_free)
            predictions["negatives"][split] = {
                "confidence": np.round(pred["confidence"].numpy(), 6).tolist(),
                "abstain": pred["abstain"].numpy().tolist(),
            }
    baselines: dict = {}
    fitted = data.fit_baselines()
    predictions["baselines"] = {}
    for name, baseline in fitted.items():
        baselines[name] = {}
        predictions["baselines"][name] = {}
        for split in ("val", "test"):
            part = data.part(split)
            pred = baseline.predict(part["x"], part["valid"])
            baselines[name][split] = M.evaluate(pred, data.truth(split), n_boot=n_boot, seed=0)
            predictions["baselines"][name][split] = {
                k: np.round(v, 5).tolist() if k == "class_probs" else v.tolist()
                for k, v in pred.items()
            }
    val_losses = [row["val_loss"] for row in history_rows]

    summary = {
        "run_id": run_id,
        "variant": config.name,
        "seed": config.seed,
        "span_head": config.model.span_head,
        "position_encoding": config.model.position_encoding,
        "n_parameters": n_parameters(model),
        "dataset_fingerprint": data.fingerprint,
        "n_windows": {s: int(len(getattr(data, s))) for s in ("train", "val", "test")},
        "early_stopping_metric": metric,
        "best_epoch": best_epoch,
        "epochs_run": epoch,
        "stopped_early": epoch < config.optim.max_epochs,
        "train_seconds": round(train_seconds, 2),
        "pretrained_encoder": transfer,
        "device": str(device),
        "bf16": bool(config.bf16 and device.type == "cuda"),
        # did it learn? the validation loss of the first epoch against the best one
        "learning": {
            "first_val_loss": round(val_losses[0], 5),
            "best_val_loss": round(min(val_losses), 5),
            "val_loss_fell": bool(min(val_losses) < val_losses[0]),
        },
        "calibration": calibration,
        # abstention as detection, with the pattern-free windows (data.negative_share > 0)
        "detection": detection or None,
        "negatives": (
            {
                "share": config.data.negative_share,
                "n_windows": {s: len(data.negatives[s]["x"]) for s in ("train", "val", "test")},
                "fingerprint": negatives_fingerprint(data.negatives),
                "trained_on": objectness,
            }
            if data.negatives
            else None
        ),
        "provenance": provenance(str(device)),
        "val": results["val"],
        "test": results["test"],
        "baselines": baselines,
    }
    runs.write_json(out / runs.PREDICTIONS, predictions)
    runs.write_json(out / runs.METRICS, summary)  # written last: its presence means "finished"
    return RunResult(run_id, out, summary)

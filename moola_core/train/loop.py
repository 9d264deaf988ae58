"""Fitting one model: AdamW over epochs, early stopping on a fixed set with the best state
kept (or a fixed number of epochs), one history row per epoch.

A run (moola_core.train.run) fits one model per fold and a final one; benchmarks fit models on
their own splits with the same function. Examples come from a source that gives each epoch's
arrays: the labeled windows as they are (`WindowExamples`), or one as-of cut per window drawn
afresh every epoch (`CutExamples`, live models). Deterministic on CPU for a given seed.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from moola_core import metrics as M
from moola_core.models import build_model
from moola_core.train.config import TrainConfig


@dataclass
class Fitted:
    """A fitted model (on the CPU, eval mode) and how it got there."""

    model: object
    history: list[dict]
    best_epoch: int
    epochs_run: int
    seconds: float
    device: str
    transfer: dict | None = None


def example_dict(part: dict, negatives: dict | None = None) -> dict[str, np.ndarray]:
    """A labeled part {"x","valid","label","start","end"} (+ pattern-free windows {"x",
    "valid"}) -> the loop's example dict with "has" (holds a pattern) and "target" (the
    objectness head's target; here the same)."""
    n = len(part["x"])
    out = {k: np.asarray(part[k]) for k in ("x", "valid", "label", "start", "end")}
    out["has"] = np.ones(n, dtype=bool)
    if negatives is not None and len(negatives["x"]):
        m = len(negatives["x"])
        zeros = np.zeros(m, dtype=np.int64)
        out = {
            "x": np.concatenate([out["x"], negatives["x"]]),
            "valid": np.concatenate([out["valid"], negatives["valid"]]),
            "label": np.concatenate([out["label"], zeros]),
            "start": np.concatenate([out["start"], zeros]),
            "end": np.concatenate([out["end"], zeros]),
            "has": np.concatenate([out["has"], np.zeros(m, dtype=bool)]),
        }
    out["target"] = out["has"]
    return out


@dataclass
class WindowExamples:
    """The same examples every epoch (labeled windows, maybe pattern-free ones after them)."""

    examples: dict

    def epoch(self, rng: np.random.Generator) -> dict:
        return self.examples


@dataclass
class CutExamples:
    """A live model's examples: per epoch `per_window` as-of cuts of each training window
    (kinds drawn evenly: before, under way, after), the window itself (`whole`), and
    `n_negatives` negative cuts per window round drawn from a pool."""

    cuts: object  # moola_core.train.live.AsOfCuts of the labeled windows
    windows: np.ndarray
    negatives: object | None = None  # AsOfCuts of pattern-free markets
    n_negatives: int = 0
    per_window: int = 1  # cuts of each window per epoch
    whole: bool = True  # and each labeled window itself, every epoch (the span it shows whole)
    _index: dict = field(default_factory=dict, repr=False)

    def epoch(self, rng: np.random.Generator) -> dict:
        from moola_core.train.live import kinds_by_window, sample_epoch, whole_window_rows

        if not self._index:
            self._index.update(kinds_by_window(self.cuts))
        rows = [sample_epoch(self._index, self.windows, rng) for _ in range(self.per_window)]
        if self.whole:
            if "whole" not in self._index:
                self._index["whole"] = whole_window_rows(self.cuts, self.windows)
            rows.append(self._index["whole"])
        rows = np.concatenate(rows)
        parts = [self.cuts.take(rows).tensors()]
        wanted = self.n_negatives * self.per_window
        if self.negatives is not None and wanted and len(self.negatives):
            picked = rng.choice(
                len(self.negatives), size=min(wanted, len(self.negatives)), replace=False
            )
            parts.append(self.negatives.take(picked).tensors())
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _tensors(examples: dict, device) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in examples.items():
        dtype = {"x": np.float32, "valid": bool, "has": bool, "target": bool}.get(key, np.int64)
        out[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=dtype)).to(device)
    return out


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


class Progress:
    """Epoch progress: a rich bar on a terminal, one plain line per epoch otherwise, or none."""

    def __init__(self, mode: str, title: str, max_epochs: int):
        if mode == "auto":
            mode = "rich" if sys.stderr.isatty() else "plain"
        self.mode, self.title, self.max_epochs = mode, title, max_epochs
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
            self.task = self.bar.add_task(title, total=max_epochs, status="")

    def epoch(self, row: dict, metric: str | None, best: float, best_epoch: int) -> None:
        status = f"loss {row['train_loss']:.3f}"
        if metric == "loss":
            status += f"  val loss {row['val_loss']:.3f}"
        elif metric:
            status += f"  val {metric} {row['val'][metric]:.3f}"
        if metric:
            status += f"  best {best:.3f} @{best_epoch}"
        if self.mode == "rich":
            self.bar.update(self.task, completed=row["epoch"], status=status)
        elif self.mode == "plain":
            print(
                f"{self.title} epoch {row['epoch']}/{self.max_epochs} {status}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.mode == "rich":
            self.bar.stop()


def _loss(model, output, batch, objectness: bool, detached: bool):
    has = batch["has"]
    return model.loss(
        output,
        batch["label"],
        batch["start"],
        batch["end"],
        detached=detached,
        has_pattern=has if objectness else None,
        object_target=batch["target"] if objectness else None,
    )


def fit(
    config: TrainConfig,
    examples,
    stopping: dict | None = None,
    *,
    epochs: int | None = None,
    seed: int | None = None,
    progress: str = "none",
    title: str = "",
    on_epoch=None,
) -> Fitted:
    """Fit a model of `config` on `examples` (WindowExamples or CutExamples).

    With `stopping` (an example dict), each epoch is scored on it by
    `config.early_stopping_metric` (over its examples that hold a pattern) and the best
    epoch's weights are kept, stopping after `optim.patience` epochs without a better one;
    without it the model trains exactly `epochs` epochs (default optim.max_epochs) and keeps
    the last. `on_epoch(row)` sees every history row."""
    seed = config.seed if seed is None else seed
    torch.manual_seed(seed)
    model = build_model(config.model_dict())
    device = pick_device(config.device)
    transfer = None
    if config.pretrained_encoder:
        from moola_core.pretrain.transfer import load_pretrained_encoder

        transfer = load_pretrained_encoder(
            model, config.pretrained_encoder, freeze=config.freeze_encoder
        )
    model.to(device)
    objectness = bool(model.config["objectness"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=config.optim.lr, weight_decay=config.optim.weight_decay
    )
    max_epochs = epochs or config.optim.max_epochs
    metric = config.early_stopping_metric if stopping is not None else None
    lower_is_better = metric == "loss" or metric in M.LOWER_IS_BETTER
    sign = -1.0 if lower_is_better else 1.0
    stop = _tensors(stopping, device) if stopping is not None else None
    if stop is not None and not objectness:
        stop = {k: v[stop["has"]] for k, v in stop.items()}  # a plain model never sees others
    order = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng([seed, 33])
    batch_size = config.optim.batch_size

    best_score, best_epoch, best_state, since_best = -float("inf"), 0, None, 0
    report = Progress(progress, title, max_epochs)
    started = time.perf_counter()
    history: list[dict] = []
    epoch = 0
    try:
        for epoch in range(1, max_epochs + 1):
            epoch_start = time.perf_counter()
            train = _tensors(examples.epoch(rng), device)
            if not objectness:
                train = {k: v[train["has"]] for k, v in train.items()}
            n_train = len(train["x"])
            model.train()
            permutation = torch.randperm(n_train, generator=order).to(device)
            # summed on the device and read once per epoch: no host sync per step
            totals_t = torch.zeros(4, dtype=torch.float64, device=device)
            for i in range(0, n_train, batch_size):
                idx = permutation[i : i + batch_size]
                batch = {k: v[idx] for k, v in train.items()}
                with _autocast(device, config.bf16):
                    output = model(batch["x"], batch["valid"])
                output = {k: v.float() for k, v in output.items()}
                loss, parts = _loss(model, output, batch, objectness, detached=True)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, config.optim.grad_clip)
                optimizer.step()
                share = len(idx) / n_train
                obj = parts.get("object", parts["class"] * 0.0)
                totals_t += torch.stack([loss.detach(), parts["class"], parts["span"], obj]) * share
            totals = dict(zip(("loss", "class", "span", "object"), totals_t.tolist(), strict=True))
            row = {
                "epoch": epoch,
                "train_loss": totals["loss"],
                "train_class_loss": totals["class"],
                "train_span_loss": totals["span"],
            }
            if objectness:
                row["train_object_loss"] = totals["object"]
            if stop is not None:
                value, val_loss, val_metrics = _score(model, stop, objectness, metric, config)
                score = sign * value
                if score > best_score:
                    best_score, best_epoch, since_best = score, epoch, 0
                    best_state = {
                        k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                    }
                else:
                    since_best += 1
                row.update(val_loss=val_loss, val=val_metrics, best_epoch=best_epoch)
            row["seconds"] = round(time.perf_counter() - epoch_start, 3)
            history.append(row)
            if on_epoch:
                on_epoch(row)
            report.epoch(row, metric, sign * best_score, best_epoch)
            if stop is not None and since_best >= config.optim.patience:
                break
    finally:
        report.close()
    seconds = time.perf_counter() - started
    model.to("cpu")
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = epoch
    model.eval()
    return Fitted(model, history, best_epoch, epoch, seconds, str(device), transfer)


@torch.no_grad()
def _score(model, stop: dict, objectness: bool, metric: str, config) -> tuple:
    """(value of `metric`, loss, point metrics over the examples holding a pattern)."""
    model.eval()
    with _autocast(next(model.parameters()).device, config.bf16):
        output = model(stop["x"], stop["valid"])
    output = {k: v.float() for k, v in output.items()}
    val_loss, _ = _loss(model, output, stop, objectness, detached=False)
    has = stop["has"]
    decoded = model.decode({k: v[has] for k, v in output.items()}, stop["valid"][has])
    pred = {k: v.cpu().numpy() for k, v in decoded.items()}
    truth = {k: stop[k][has].cpu().numpy() for k in ("label", "start", "end")}
    val_metrics = M.point_metrics(pred, truth)
    value = float(val_loss) if metric == "loss" else val_metrics[metric]
    return value, float(val_loss), val_metrics


def predict_arrays(model, x: np.ndarray, valid: np.ndarray, batch: int = 512) -> dict:
    """A model's predict() over numpy arrays, in batches -> numpy arrays."""
    parts = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model.predict(
                torch.from_numpy(np.ascontiguousarray(x[i : i + batch])),
                torch.from_numpy(np.ascontiguousarray(valid[i : i + batch])),
            )
            parts.append({k: v.numpy() for k, v in out.items()})
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

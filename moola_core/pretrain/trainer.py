"""The pre-training loop: epochs over unlabeled windows, checkpoints, resume, DDP.

One function, `pretrain`, serves a laptop, `invoke pretrain` and `torchrun`: when a process
group is initialised (see `run.py`) the model is wrapped in DistributedDataParallel and every
rank trains on its own shard of each epoch; rank 0 writes the files.

Everything random is seeded from (seed, epoch, rank), so a run resumed from the checkpoint of
epoch k ends with the same weights as a run that was never interrupted.

Files in the run directory:
    checkpoint.pt   model + optimiser + epoch + history (the resume point, after every epoch)
    encoder.pt      the encoder's state_dict (loads into JadeModel.encoder; weights_only=True)
    encoder.json    the encoder's shape (n_features, hidden, layers) for `transfer`
    config.yaml     the resolved config
    history.jsonl   one line per epoch
    metrics.json    final figures: losses, windows/s, world size, per-rank weight checksums
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from moola_core.errors import MoolaError
from moola_core.pretrain.config import PretrainConfig
from moola_core.pretrain.data import PretrainWindows, build_windows, jitter
from moola_core.pretrain.masking import make_mask
from moola_core.pretrain.pretrainer import (
    JadePretrainer,
    feature_scale,
    interpolate_masked,
    masked_huber_loss,
)
from moola_core.spec import N_FEATURES

CHECKPOINT = "checkpoint.pt"
ENCODER_WEIGHTS = "encoder.pt"
ENCODER_CONFIG = "encoder.json"
VAL_MASK_SEED = 2_147_483_647  # validation masks are fixed for the whole run


@dataclass
class PretrainResult:
    """What a finished (or resumed-and-finished) run reports; also written to metrics.json."""

    out_dir: str
    epochs: int
    resumed_from_epoch: int
    train_loss: float
    val_loss: float | None
    windows_per_s: float
    world_size: int
    device: str
    train_windows: int
    val_windows: int
    cutoff: str
    weight_checksums: list[str] = field(default_factory=list)
    # the validation masked loss of linear interpolation between visible neighbours, in the same
    # (scaled) units as val_loss: what the encoder must beat to have learned more than smoothing
    interpolation_val_loss: float | None = None
    target_scale: str = "std"
    bf16: bool = False
    legacy_loop: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _dist():
    """torch.distributed when a process group is up, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def pick_device(preference: str) -> torch.device:
    """cuda (this rank's GPU under torchrun) when available and allowed, else cpu."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MoolaError("train.device is 'cuda' but no GPU is visible; use device: auto or cpu.")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def _seed(*parts: int) -> int:
    digest = hashlib.sha256(",".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def weights_checksum(module: nn.Module) -> str:
    """sha256 over every parameter and buffer, in state_dict order (same on identical ranks)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _atomic_save(obj, path: Path) -> None:
    # a crash while writing must leave the previous checkpoint intact
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _check_resumable(saved: dict, config: PretrainConfig, out_dir: Path) -> None:
    current = config.to_dict()
    for section in ("model", "masking", "data"):
        if saved[section] != current[section]:
            raise MoolaError(
                f"{out_dir} was started with a different {section} config; resume with the same "
                f"config (only train.epochs may grow) or use a new --out directory."
            )


def pretrain(
    config: PretrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    windows: PretrainWindows | None = None,
    on_progress: Callable[[dict], None] | None = None,
) -> PretrainResult:
    """Pre-train the encoder with masked reconstruction; returns the final figures.

    `windows` overrides the configured data (tests, benchmarks); `on_progress` receives
    {"event": "start"|"step"|"epoch", ...} dicts on rank 0. Raises MoolaError when `out_dir`
    already holds a checkpoint and `resume` is False, or when the resumed config differs.
    """
    dist = _dist()
    rank = dist.get_rank() if dist else 0
    world = dist.get_world_size() if dist else 1
    device = pick_device(config.train.device)
    out_dir = Path(out_dir)
    checkpoint_path = out_dir / CHECKPOINT
    notify = on_progress if (on_progress and rank == 0) else (lambda event: None)

    if checkpoint_path.exists() and not resume:
        raise MoolaError(
            f"{out_dir} already holds a pre-training checkpoint; pass --resume to continue it "
            "or choose a new --out directory."
        )
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)

    if windows is None:
        windows = build_windows(config.data)
    n_train = windows.train_x.shape[0]
    per_rank = n_train // world
    if per_rank == 0:
        raise MoolaError(f"{n_train} training windows cannot be shared by {world} processes.")

    torch.manual_seed(_seed(config.train.seed, "init"))  # identical initial weights on all ranks
    model = JadePretrainer(
        n_features=windows.train_x.shape[-1],
        hidden=config.model.hidden,
        layers=config.model.layers,
        dropout=config.model.dropout,
    ).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay
    )
    history: list[dict] = []
    start_epoch = 0
    if resume and checkpoint_path.exists():
        saved = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        _check_resumable(saved["config"], config, out_dir)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        history = list(saved["history"])
        start_epoch = int(saved["epoch"])
    trained = model
    if dist:  # gloo on CPU, NCCL on this rank's GPU; gradients are averaged across ranks
        device_ids = [device.index] if device.type == "cuda" else None
        trained = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    # on a GPU the whole set lives on the device (34K windows are ~160 MB): no per-batch copies
    train_x, train_valid = windows.train_x.to(device), windows.train_valid.to(device)
    masking = config.masking
    seq_len = windows.train_x.shape[1]
    val_count = windows.val_x.shape[0]
    val_masks = make_mask(
        val_count,
        seq_len,
        masking.strategy,
        masking.ratio,
        torch.Generator().manual_seed(VAL_MASK_SEED),
        block_len=masking.block_len,
        patch_len=masking.patch_len,
    )
    val_rows = torch.arange(rank, val_count, world)  # this rank's share of validation
    batch_size = config.train.batch_size
    steps_per_epoch = -(-per_rank // batch_size)
    notify(
        {
            "event": "start",
            "epochs": config.train.epochs,
            "start_epoch": start_epoch,
            "steps_per_epoch": steps_per_epoch,
            "world_size": world,
            "device": str(device),
            **windows.describe(),
        }
    )

    scale = None
    if masking.target_scale == "std":
        scale = feature_scale(windows.train_x, windows.train_valid).to(device)
    interpolation = _interpolation_loss(windows, val_masks, scale, batch_size)
    use_bf16 = bool(config.train.bf16 and device.type == "cuda" and not config.train.legacy_loop)
    step_fn = _legacy_epoch if config.train.legacy_loop else _fast_epoch

    train_seconds = 0.0
    trained_windows = 0
    for epoch in range(start_epoch, config.train.epochs):
        trained.train()
        order = torch.randperm(
            n_train, generator=torch.Generator().manual_seed(_seed(config.train.seed, epoch))
        )
        shard = order[: per_rank * world][rank::world]  # [per_rank]
        mask_rng = torch.Generator().manual_seed(_seed(config.train.seed, epoch, rank, "mask"))
        torch.manual_seed(_seed(config.train.seed, epoch, rank, "dropout"))
        epoch_start = time.perf_counter()
        loss_sum, loss_batches = step_fn(
            trained,
            model,
            optimizer,
            config,
            train_x,
            train_valid,
            shard,
            mask_rng,
            scale,
            device,
            use_bf16,
            seq_len,
            epoch,
            notify,
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds += time.perf_counter() - epoch_start
        trained_windows += per_rank * world

        train_loss = _mean_across_ranks(dist, loss_sum, loss_batches, device)
        val_loss = _validate(model, windows, val_rows, val_masks, batch_size, device, dist, scale)
        record = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "interpolation_val_loss": interpolation,
            "seconds": round(time.perf_counter() - epoch_start, 3),
        }
        history.append(record)
        if rank == 0:
            _save_epoch(model, optimizer, config, history, epoch + 1, out_dir, windows)
        if dist:
            dist.barrier()
        notify({"event": "epoch", **record, "epochs": config.train.epochs})

    checksums = [weights_checksum(model)]
    if dist:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, checksums[0])
        checksums = list(gathered)
    last = history[-1] if history else {"train_loss": float("nan"), "val_loss": None}
    result = PretrainResult(
        out_dir=str(out_dir),
        epochs=len(history),
        resumed_from_epoch=start_epoch,
        train_loss=last["train_loss"],
        val_loss=last["val_loss"],
        windows_per_s=round(trained_windows / train_seconds, 1) if train_seconds else 0.0,
        world_size=world,
        device=str(device),
        train_windows=n_train,
        val_windows=val_count,
        cutoff=windows.cutoff,
        weight_checksums=checksums,
        interpolation_val_loss=interpolation,
        target_scale=masking.target_scale,
        bf16=use_bf16,
        legacy_loop=config.train.legacy_loop,
    )
    if rank == 0:
        _atomic_write_text(json.dumps(result.to_dict(), indent=2) + "\n", out_dir / "metrics.json")
    return result


def _legacy_epoch(
    trained,
    model,
    optimizer,
    config,
    train_x,
    train_valid,
    shard,
    mask_rng,
    scale,
    device,
    use_bf16,
    seq_len,
    epoch,
    notify,
):
    """The loop as it was: a mask drawn on the CPU and copied per step, the loss read on the
    host every step (a GPU sync), float32. Kept selectable to measure before and after."""
    masking = config.masking
    batch_size = config.train.batch_size
    loss_sum, loss_batches = 0.0, 0
    for step, first in enumerate(range(0, len(shard), batch_size)):
        rows = shard[first : first + batch_size].to(device)
        x = train_x[rows]  # [B, T, F]
        valid = train_valid[rows]  # [B, T]
        mask = make_mask(
            len(rows),
            seq_len,
            masking.strategy,
            masking.ratio,
            mask_rng,
            block_len=masking.block_len,
            patch_len=masking.patch_len,
        )
        mask = mask.to(device)
        encoder_input = jitter(x, valid, config.data.jitter_std, mask_rng)
        reconstruction = trained(encoder_input, mask)
        loss, _ = masked_huber_loss(reconstruction, x, mask, valid, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        loss_sum += float(loss.detach())
        loss_batches += 1
        notify(
            {"event": "step", "epoch": epoch + 1, "step": step + 1, "loss": float(loss.detach())}
        )
    return loss_sum, loss_batches


def _fast_epoch(
    trained,
    model,
    optimizer,
    config,
    train_x,
    train_valid,
    shard,
    mask_rng,
    scale,
    device,
    use_bf16,
    seq_len,
    epoch,
    notify,
):
    """One epoch without a host sync per step: the epoch's masks are drawn at once (same CPU
    generator, so runs stay reproducible and resumable) and copied once, the order lives on the
    device, the loss is summed on the device and read once; bf16 autocast on a GPU."""
    import contextlib

    masking = config.masking
    batch_size = config.train.batch_size
    masks = make_mask(
        len(shard),
        seq_len,
        masking.strategy,
        masking.ratio,
        mask_rng,
        block_len=masking.block_len,
        patch_len=masking.patch_len,
    )
    pin = device.type == "cuda"
    masks = (masks.pin_memory() if pin else masks).to(device, non_blocking=pin)
    shard = shard.to(device)
    noise_gen = None
    if config.data.jitter_std > 0:
        noise_gen = torch.Generator(device=device).manual_seed(int(mask_rng.initial_seed()) + 1)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    )
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_steps = 0
    for step, first in enumerate(range(0, len(shard), batch_size)):
        rows = shard[first : first + batch_size]
        x = train_x[rows]  # [B, T, F]
        valid = train_valid[rows]  # [B, T]
        mask = masks[first : first + batch_size]
        encoder_input = x
        if noise_gen is not None:
            noise = torch.randn(x.shape, generator=noise_gen, device=device)
            encoder_input = x + noise * config.data.jitter_std * valid.unsqueeze(-1).to(x.dtype)
        with autocast:
            reconstruction = trained(encoder_input, mask)
        loss, _ = masked_huber_loss(reconstruction.float(), x, mask, valid, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        loss_sum += loss.detach()
        n_steps += 1
        notify({"event": "step", "epoch": epoch + 1, "step": step + 1, "loss": None})
    return float(loss_sum), n_steps


@torch.no_grad()
def _interpolation_loss(windows, val_masks, scale, batch_size: int) -> float | None:
    """Masked validation loss of interpolating between visible neighbours (same masks, same
    scaled units as the model's val_loss); None without validation windows."""
    if windows.val_x.shape[0] == 0:
        return None
    cpu_scale = None if scale is None else scale.cpu()
    total = torch.zeros(2, dtype=torch.float64)
    for first in range(0, windows.val_x.shape[0], batch_size):
        x = windows.val_x[first : first + batch_size]
        valid = windows.val_valid[first : first + batch_size]
        mask = val_masks[first : first + batch_size]
        loss, positions = masked_huber_loss(
            interpolate_masked(x, mask, valid), x, mask, valid, cpu_scale
        )
        values = positions * x.shape[-1]
        total += torch.stack([loss.double() * values, values.double()])
    return float(total[0] / total[1].clamp(min=1))


def _mean_across_ranks(dist, total: float, count: int, device: torch.device) -> float:
    if not dist:
        return total / max(count, 1)
    both = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(both)
    return float(both[0] / both[1].clamp(min=1))


@torch.no_grad()
def _validate(model, windows, rows, val_masks, batch_size, device, dist, scale=None):
    """Masked loss on this rank's validation rows, summed over ranks. None without val data."""
    if windows.val_x.shape[0] == 0:
        return None
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # [loss * values, values]
    for first in range(0, len(rows), batch_size):
        chunk = rows[first : first + batch_size]
        x = windows.val_x[chunk].to(device)
        valid = windows.val_valid[chunk].to(device)
        mask = val_masks[chunk].to(device)
        loss, positions = masked_huber_loss(model(x, mask), x, mask, valid, scale)
        values = positions * x.shape[-1]
        total += torch.stack([loss.double() * values, values.double()])
    if dist:
        dist.all_reduce(total)
    return float(total[0] / total[1].clamp(min=1))


def _save_epoch(model, optimizer, config, history, epoch, out_dir: Path, windows) -> None:
    _atomic_save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "config": config.to_dict(),
            "history": history,
        },
        out_dir / CHECKPOINT,
    )
    _atomic_save(model.encoder.state_dict(), out_dir / ENCODER_WEIGHTS)
    encoder_config = {
        "n_features": int(model.encoder.n_features),
        "hidden": int(model.encoder.hidden),
        "layers": int(model.encoder.layers),
        "dropout": float(config.model.dropout),
        "epochs": epoch,
        "cutoff": windows.cutoff,
        "expects_features": N_FEATURES,
    }
    _atomic_write_text(json.dumps(encoder_config, indent=2) + "\n", out_dir / ENCODER_CONFIG)
    import yaml

    _atomic_write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), out_dir / "config.yaml")
    lines = "".join(json.dumps(record) + "\n" for record in history)
    _atomic_write_text(lines, out_dir / "history.jsonl")

"""`invoke pretrain`: masked-autoencoder pre-training of the encoder, with progress and resume.

Heavy imports (torch, pandas) happen inside the task so `invoke --list` stays fast.
"""

from __future__ import annotations

import subprocess
import sys
import time

from invoke.exceptions import Exit

from moola_ops.cli._common import task, user_errors
from moola_ops.terminal import console, is_tty, print_json


def _default_out() -> str:
    return time.strftime("runs/pretrain-%Y%m%d-%H%M%S", time.gmtime())


def _torchrun(nproc: int, config: str, out: str, resume: bool, epochs: int, sets, as_json: bool):
    """Run the same entry point under torchrun (DDP: gloo on CPU, NCCL on GPUs)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "moola_core.pretrain",
        "--config",
        config,
        "--out",
        out,
    ]
    command += ["--resume"] if resume else []
    command += ["--epochs", str(epochs)] if epochs else []
    for pair in sets:
        command += ["--set", pair]
    command += ["--json"] if as_json else []
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise Exit(code=completed.returncode)


@task(
    help={
        "config": "pre-training YAML (default configs/pretrain.yaml)",
        "out": "run directory for checkpoints and encoder.pt (default runs/pretrain-<UTC time>)",
        "resume": "continue the run in --out from its last finished epoch",
        "epochs": "override train.epochs (0, the default: keep the config's; with --resume: "
        "train on up to this many epochs)",
        "set": "override one config key, SECTION.KEY=VALUE (repeatable), e.g. train.lr=3e-4",
        "nproc": "processes under torchrun with DistributedDataParallel (1 = this process)",
        "json": "print the final figures as one JSON document",
    },
    iterable=["set_"],
    dry="pretrain writes checkpoints; `invoke -h pretrain` lists the settings it would use",
)
@user_errors
def pretrain(
    c,
    config="configs/pretrain.yaml",
    out="",
    resume=False,
    epochs=0,
    set_=None,
    nproc=1,
    json_=False,
):
    """Pre-train the BiLSTM encoder by masked reconstruction (docs/pretraining.md)."""
    from moola_core.errors import MoolaError

    if resume and not out:
        raise MoolaError("--resume needs --out DIR, the run directory to continue.")
    out = out or _default_out()
    sets = list(set_ or [])
    if nproc < 1:
        raise MoolaError(f"--nproc {nproc} must be at least 1.")
    if nproc > 1:
        _torchrun(nproc, config, out, resume, epochs, sets, json_)
        return

    from moola_core.pretrain.config import load_config
    from moola_core.pretrain.run import parse_overrides, print_epoch
    from moola_core.pretrain.trainer import pretrain as run_pretraining

    overrides = parse_overrides(sets)
    if epochs:
        overrides["train.epochs"] = epochs
    settings = load_config(config, overrides)
    try:
        if is_tty() and not json_:
            result = _with_progress_bar(run_pretraining, settings, out, resume)
        else:
            stream = sys.stderr if json_ else sys.stdout
            result = run_pretraining(
                settings, out, resume=resume, on_progress=lambda e: print_epoch(e, stream)
            )
    except KeyboardInterrupt:
        raise MoolaError(
            f"interrupted: the last finished epoch is saved in {out}; continue with "
            f"`invoke pretrain --resume --out {out}`.",
            exit_code=130,
        ) from None
    if json_:
        print_json(result.to_dict())
        return
    val = "-" if result.val_loss is None else f"{result.val_loss:.4f}"
    console().print(
        f"pre-trained {result.epochs} epochs: train loss {result.train_loss:.4f}, val loss {val}, "
        f"{result.windows_per_s:.0f} windows/s on {result.device} x{result.world_size}; "
        f"encoder in {result.out_dir}/encoder.pt"
    )


def _with_progress_bar(run_pretraining, settings, out, resume):
    """Run with a rich progress bar: one bar over all steps, loss in the description."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), console=console()
    )
    bar = None

    def on_progress(event: dict) -> None:
        nonlocal bar
        if event["event"] == "start":
            remaining = (event["epochs"] - event["start_epoch"]) * event["steps_per_epoch"]
            bar = progress.add_task("pre-training", total=remaining)
            progress.console.print(
                f"{event['train_windows']} train / {event['val_windows']} val windows, "
                f"split at {event['cutoff']}, on {event['device']}"
            )
        elif event["event"] == "step":
            # the GPU-friendly loop reads the loss once per epoch, so a step may carry none
            loss = "" if event.get("loss") is None else f" loss {event['loss']:.4f}"
            progress.update(bar, advance=1, description=f"epoch {event['epoch']}{loss}")
        elif event["event"] == "epoch":
            val = "-" if event["val_loss"] is None else f"{event['val_loss']:.4f}"
            interp = event.get("interpolation_val_loss")
            interp = "" if interp is None else f" (interpolation {interp:.4f})"
            progress.console.print(
                f"epoch {event['epoch']}/{event['epochs']}: train {event['train_loss']:.4f}, "
                f"val {val}{interp}"
            )

    with progress:
        return run_pretraining(settings, out, resume=resume, on_progress=on_progress)


EXPORTS = [pretrain]

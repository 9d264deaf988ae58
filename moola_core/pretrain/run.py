"""The one entry point: `python -m moola_core.pretrain` alone or under torchrun.

    python -m moola_core.pretrain --config configs/pretrain.yaml --out runs/pretrain-a
    torchrun --standalone --nproc_per_node 2 -m moola_core.pretrain --out runs/pretrain-a
    torchrun --standalone --nproc_per_node 2 moola_core/pretrain/run.py --out runs/pretrain-a

Under torchrun (WORLD_SIZE > 1) it joins the process group: NCCL when the run uses GPUs, gloo
on CPU. Rank 0 prints one line per epoch and, with --json, the final figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NoReturn


def parse_overrides(pairs: list[str]) -> dict:
    """`section.key=value` strings -> {"section.key": value}, values parsed as YAML scalars."""
    import yaml

    from moola_core.errors import MoolaError

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or "." not in key:
            raise MoolaError(
                f"--set {pair!r} must look like section.key=value, e.g. train.lr=3e-4."
            )
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m moola_core.pretrain", description=__doc__)
    parser.add_argument("--config", default="configs/pretrain.yaml", help="YAML config")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, encoder.pt)")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoint.pt")
    parser.add_argument("--epochs", type=int, help="override train.epochs")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a key"
    )
    parser.add_argument("--json", action="store_true", help="print the final figures as JSON")
    return parser


def init_distributed(device_preference: str) -> bool:
    """Join torchrun's process group when WORLD_SIZE > 1; returns whether it did."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    import torch.distributed as dist

    use_cuda = device_preference != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True


def print_epoch(event: dict, stream=None) -> None:
    """Plain one-line progress (rank 0), flushed so torchrun and pipes show it at once."""
    stream = stream or sys.stdout
    if event["event"] == "start":
        print(
            f"pre-training on {event['device']} x{event['world_size']}: "
            f"{event['train_windows']} train / {event['val_windows']} val windows "
            f"(split at {event['cutoff']}), epochs {event['start_epoch'] + 1}..{event['epochs']}",
            file=stream,
            flush=True,
        )
    elif event["event"] == "epoch":
        val = "-" if event["val_loss"] is None else f"{event['val_loss']:.4f}"
        if event.get("interpolation_val_loss") is not None:
            val += f" (interpolation {event['interpolation_val_loss']:.4f})"
        print(
            f"epoch {event['epoch']}/{event['epochs']}  train {event['train_loss']:.4f}  "
            f"val {val}  ({event['seconds']:.1f}s)",
            file=stream,
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from moola_core.errors import MoolaError

    distributed = False
    try:
        from moola_core.pretrain.config import load_config
        from moola_core.pretrain.trainer import pretrain

        overrides = parse_overrides(args.set)
        if args.epochs is not None:
            overrides["train.epochs"] = args.epochs
        config = load_config(args.config, overrides)
        distributed = init_distributed(config.train.device)
        # with --json, stdout carries only the final document
        stream = sys.stderr if args.json else sys.stdout
        result = pretrain(
            config,
            args.out,
            resume=args.resume,
            on_progress=lambda event: print_epoch(event, stream),
        )
        if distributed:
            import torch.distributed as dist

            dist.barrier()  # every rank done before any leaves (see `program` for the exit)
    except MoolaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "interrupted: the last finished epoch is saved; continue with --resume.",
            file=sys.stderr,
        )
        return 130
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
        else:
            print(
                f"done: {result.epochs} epochs, val loss {result.val_loss}, "
                f"{result.windows_per_s} windows/s; encoder in {result.out_dir}/encoder.pt"
            )
    return 0


def program(argv: list[str] | None = None) -> NoReturn:
    """The command line: `main`, then exit with its code.

    Under torchrun the exit skips the interpreter's teardown. Gloo's worker thread drops a
    finished collective (and the Python-owned tensors it holds) just after `wait()` has
    returned on the main thread; when the machine is busy that moment can fall inside the
    interpreter's finalization, where the worker can no longer take the GIL, and the process
    aborts ("terminate called without an active exception", exit -6) after a run that
    succeeded. By then every epoch is saved, the process group destroyed and the output
    flushed here, so nothing the teardown would do is needed.
    """
    code = main(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    if not __package__:  # run as a file (`torchrun moola_core/pretrain/run.py`): find the package
        sys.path.insert(
            0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        )
    program()

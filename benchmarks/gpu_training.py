"""Training throughput on a GPU: pre-training before and after the sync-free bf16 loop, and
supervised training windows/s, with a CPU run beside it for result parity.

    python benchmarks/gpu_training.py                  # 50 epochs x 34,000 windows (a CUDA GPU)
    python benchmarks/gpu_training.py --tiny           # tiny sizes: runs anywhere, for a test
    python benchmarks/gpu_training.py --modes fast_bf16 --epochs 5   # one mode, shorter

Pre-training (moola_core.pretrain.trainer.pretrain, the shipped 128 x 2 encoder by default):
- `legacy`: the loop as it was (`train.legacy_loop: true`): a mask drawn on the CPU and copied
  every step, the loss read on the host every step (a GPU sync), float32;
- `fast_fp32`: the loop now (masks drawn once per epoch, order and loss kept on the device, one
  read per epoch), float32;
- `fast_bf16`: the same under bf16 autocast (the default on a GPU).
Windows are smooth random walks: throughput does not depend on the values, and building 34K real
windows would time the feature code instead. Wall time covers the whole `pretrain` call (one
validation pass and a checkpoint per epoch); windows/s is the training loop's own figure.

Supervised (moola_core.train.train_run on a synthetic labeled set): windows/s of the training
loop on the device in float32 and in bf16, and a parity check: the same config trained for a
few epochs on the CPU and on the device (float32 and bf16); their validation loss and span IoU
are listed side by side (tolerance: docs/models.md).

Needs torch, numpy, pandas and pydantic (moola_core's configs); nothing is installed. The last
line of stdout is one JSON object; `--md PATH` also writes a Markdown page.
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

import torch  # noqa: E402

MODES = ("legacy", "fast_fp32", "fast_bf16")


def smooth_windows(n: int, generator: torch.Generator):
    """Smooth random walks [n, 105, 11] with the first 19 bars marked as warm-up."""
    x = torch.randn(n, 105, 11, generator=generator).cumsum(dim=1) * 0.1
    valid = torch.ones(n, 105, dtype=torch.bool)
    valid[:, :19] = False
    x[~valid] = 0.0
    return x, valid


def pretrain_mode(mode: str, windows, args, device: str, scratch: Path) -> dict:
    """One pre-training run; `mode` is legacy, fast_fp32 or fast_bf16, optionally `@BATCH`."""
    from moola_core.pretrain.config import config_from_dict
    from moola_core.pretrain.trainer import pretrain

    mode, _, batch = mode.partition("@")
    batch_size = int(batch) if batch else args.batch_size
    config = config_from_dict(
        {
            "model": {"hidden": args.hidden, "layers": args.layers},
            "train": {
                "epochs": args.epochs,
                "batch_size": batch_size,
                "device": device,
                "legacy_loop": mode == "legacy",
                "bf16": mode == "fast_bf16",
            },
        }
    )
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = pretrain(config, scratch / f"{mode}-{batch_size}", windows=windows)
    wall = time.perf_counter() - started
    return {
        "wall_s": round(wall, 2),
        "windows_per_s": result.windows_per_s,
        "train_loss": round(result.train_loss, 5),
        "val_loss": round(result.val_loss, 5) if result.val_loss is not None else None,
        "interpolation_val_loss": (
            round(result.interpolation_val_loss, 5)
            if result.interpolation_val_loss is not None
            else None
        ),
        "bf16": result.bf16,
        "batch_size": batch_size,
        "device": result.device,
    }


def supervised(args, device: str, scratch: Path) -> dict:
    """windows/s of supervised training on `device` (fp32 and bf16) and CPU parity: the first
    fold's model of the after-the-fact protocol (whole labeled windows, early stopping on the
    fold's own slice), fitted by the training loop every run uses (moola_core.train.loop)."""
    from moola_core.train import load_config
    from moola_core.train.data import prepare_data
    from moola_core.train.loop import WindowExamples, example_dict, fit

    def fold_fit(config, data):
        fold = data.folds[0]
        fitted = fit(
            config,
            WindowExamples(example_dict(data.part(fold.train))),
            example_dict(data.part(fold.early_stopping)),
        )
        return fitted, len(fold.train)

    after = {"model.live": False, "data.negative_share": 0.0, "stream.sessions": 0}
    out: dict = {}
    big = load_config(
        None,
        {
            **after,
            "data.n_windows": args.supervised_windows,
            "optim.max_epochs": args.supervised_epochs,
            "optim.patience": args.supervised_epochs,
            "optim.batch_size": args.supervised_batch,
        },
    )
    data = prepare_data(big)
    for name, bf16 in (("fp32", False), ("bf16", True)):
        config = big.model_copy(update={"device": device, "bf16": bf16, "cpu_threads": None})
        fitted, n_train = fold_fit(config, data)
        best = fitted.history[fitted.best_epoch - 1]
        out[name] = {
            "windows_per_s": round(n_train * fitted.epochs_run / fitted.seconds, 1),
            "train_seconds": round(fitted.seconds, 2),
            "epochs": fitted.epochs_run,
            "train_windows": n_train,
            "val_span_iou": round(best["val"]["span_iou"], 4),
            "device": fitted.device,
            "bf16": bool(bf16 and fitted.device.startswith("cuda")),
        }
    # parity: the default protocol's data (174 windows), a few epochs, CPU vs the device
    small = load_config(
        None, {**after, "optim.max_epochs": args.parity_epochs, "optim.patience": 1000}
    )
    small_data = prepare_data(small)
    parity = {}
    runs = [("cpu", "cpu", False)]
    if device != "cpu":
        runs += [("device_fp32", device, False), ("device_bf16", device, True)]
    for name, dev, bf16 in runs:
        config = small.model_copy(update={"device": dev, "bf16": bf16})
        fitted, _ = fold_fit(config, small_data)
        last = fitted.history[-1]
        parity[name] = {
            "val_loss": round(last["val_loss"], 4),
            "val_span_iou": round(last["val"]["span_iou"], 4),
            "train_loss": round(last["train_loss"], 4),
        }
    out["parity"] = parity
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=34_000, help="pre-training windows")
    parser.add_argument("--epochs", type=int, default=50, help="pre-training epochs per mode")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument(
        "--modes", default=",".join(MODES), help="comma list; MODE@BATCH runs it at another batch"
    )
    parser.add_argument("--supervised-windows", type=int, default=3000)
    parser.add_argument("--supervised-epochs", type=int, default=20)
    parser.add_argument("--supervised-batch", type=int, default=32)
    parser.add_argument("--parity-epochs", type=int, default=8)
    parser.add_argument("--no-supervised", action="store_true")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU smoke run)")
    parser.add_argument("--md", default="", help="also write a Markdown page here")
    parser.add_argument("--json-out", default="", help="rewrite the summary here after each part")
    args = parser.parse_args()
    if args.tiny:
        args.windows, args.epochs, args.batch_size = 96, 2, 32
        args.hidden, args.layers = 8, 1
        args.supervised_windows, args.supervised_epochs, args.parity_epochs = 40, 2, 2
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)
    modes = [m for m in args.modes.split(",") if m]
    unknown = {m.partition("@")[0] for m in modes} - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {sorted(unknown)}; choose from {MODES}")

    from moola_core.pretrain.data import PretrainWindows
    from moola_core.train.provenance import provenance

    gen = torch.Generator().manual_seed(0)
    train_x, train_valid = smooth_windows(args.windows, gen)
    val_x, val_valid = smooth_windows(max(args.windows // 10, 16), gen)
    windows = PretrainWindows(train_x, train_valid, val_x, val_valid, "n/a")
    summary: dict = {
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "pretrain_windows": args.windows,
        "pretrain_epochs": args.epochs,
        "encoder": f"{args.hidden}x{args.layers}",
        "batch_size": args.batch_size,
        "tiny": args.tiny,
        "provenance": provenance(device),
        "pretrain": {},
    }
    with tempfile.TemporaryDirectory(prefix="moola-gpu-bench-") as scratch:
        scratch = Path(scratch)
        for mode in modes:
            try:
                summary["pretrain"][mode] = pretrain_mode(mode, windows, args, device, scratch)
            except Exception as exc:  # one failing mode must not lose the others' figures
                summary["pretrain"][mode] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            print(f"pretrain {mode}: {summary['pretrain'][mode]}", file=sys.stderr, flush=True)
            _partial(args, summary)
        done = {m: r for m, r in summary["pretrain"].items() if "error" not in r}
        if "legacy" in done:
            before = done["legacy"]
            for mode in ("fast_fp32", "fast_bf16"):
                if mode in done:
                    after = done[mode]
                    summary[f"speedup_{mode}_wall"] = round(before["wall_s"] / after["wall_s"], 2)
                    summary[f"speedup_{mode}_windows_per_s"] = round(
                        after["windows_per_s"] / before["windows_per_s"], 2
                    )
        if not args.no_supervised:
            try:
                summary["supervised"] = supervised(args, device, scratch)
            except Exception as exc:
                summary["supervised_error"] = f"{type(exc).__name__}: {exc}"[:500]
            print(f"supervised: {summary.get('supervised')}", file=sys.stderr, flush=True)
    _partial(args, summary)
    if args.md:
        Path(args.md).write_text(markdown(summary, sys.argv[1:]))
    print(json.dumps(summary))
    return 0


def _partial(args, summary: dict) -> None:
    """A long run cut short still leaves what it measured (--json-out)."""
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary) + "\n")


def markdown(summary: dict, argv: list[str]) -> str:
    prov = summary["provenance"]
    lines = [
        "# Training on a GPU: pre-training before/after and supervised throughput",
        "",
        f"Written by `python benchmarks/gpu_training.py {' '.join(argv)}` on "
        f"{summary['gpu'] or summary['device']} (torch {summary['torch']}, Python "
        f"{summary['python']}), commit {prov['commit'] or 'unknown'}"
        f"{' (dirty tree)' if prov['dirty'] else ''}. Every figure here is machine-dependent.",
        "",
        f"Pre-training: {summary['pretrain_epochs']} epochs x {summary['pretrain_windows']} "
        f"windows, encoder {summary['encoder']}, batch {summary['batch_size']}.",
        "",
        "| mode | wall s | windows/s (training loop) | final val loss | interpolation val loss |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode, r in summary["pretrain"].items():
        if "error" in r:
            lines.append(f"| {mode} | failed: {r['error'][:120]} | | | |")
            continue
        lines.append(
            f"| {mode} | {r['wall_s']} | {r['windows_per_s']} | {r['val_loss']} | "
            f"{r['interpolation_val_loss']} |"
        )
    for mode in ("fast_fp32", "fast_bf16"):
        if f"speedup_{mode}_wall" in summary:
            lines.append(
                f"\n{mode} vs legacy: {summary[f'speedup_{mode}_wall']}x wall time, "
                f"{summary[f'speedup_{mode}_windows_per_s']}x windows/s."
            )
    if "supervised_error" in summary:
        lines += ["", f"Supervised part failed: {summary['supervised_error']}"]
    if "supervised" in summary:
        sup = summary["supervised"]
        lines += [
            "",
            "## Supervised training",
            "",
            "| precision | windows/s | epochs | train windows | val span IoU |",
            "|---|---:|---:|---:|---:|",
        ]
        for name in ("fp32", "bf16"):
            r = sup[name]
            lines.append(
                f"| {name} | {r['windows_per_s']} | {r['epochs']} | {r['train_windows']} | "
                f"{r['val_span_iou']} |"
            )
        lines += [
            "",
            "Parity (174-window protocol, same seed and epochs; last epoch's validation figures):",
            "",
            "| where | val loss | val span IoU | train loss |",
            "|---|---:|---:|---:|",
        ]
        for name, r in sup["parity"].items():
            lines.append(f"| {name} | {r['val_loss']} | {r['val_span_iou']} | {r['train_loss']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

"""Throughput of the 11 causal features (swing state machine included) on one core.

    python benchmarks/features.py --bars 1800000

Generates a synthetic market (not timed), times `compute_features` over all of it, and times a
naive per-bar Python implementation of the same definitions on a prefix as the same-run
baseline (it also cross-checks the values). Writes docs/benchmarks/features.md and prints a JSON
object as its last line: bars, seconds, bars_per_s, baseline_bars_per_s, speedup, ...
"""

from __future__ import annotations

import os

# one core: no BLAS threads (set before numpy loads)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moola_core.data.features import compute_features  # noqa: E402
from moola_core.data.reference import reference_features  # noqa: E402
from moola_core.data.synthetic import generate_market  # noqa: E402

TARGET_BARS_PER_S = 600_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=1_800_000, help="bars to featurize")
    parser.add_argument(
        "--baseline-bars",
        type=int,
        default=100_000,
        help="prefix the naive baseline runs on (it is slow)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default="docs/benchmarks/features.md", help="markdown record to write ('' to skip)"
    )
    args = parser.parse_args()

    bars = generate_market(args.bars, seed=args.seed)
    o, h, lo, c = (bars[k].to_numpy() for k in ("open", "high", "low", "close"))

    runs = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        feats = compute_features(o, h, lo, c)
        runs.append(time.perf_counter() - start)
    seconds = min(runs)

    k = min(args.baseline_bars, args.bars)
    lists = [a[:k].tolist() for a in (o, h, lo, c)]
    start = time.perf_counter()
    ref_values, ref_valid = reference_features(*lists)
    baseline_seconds = time.perf_counter() - start
    ours = compute_features(o[:k], h[:k], lo[:k], c[:k])
    same_mask = bool(np.array_equal(ours.valid, ref_valid))
    max_diff = float(np.abs(ours.values - ref_values).max())

    result = {
        "bars": args.bars,
        "seconds": round(seconds, 4),
        "bars_per_s": round(args.bars / seconds),
        "runs_s": [round(r, 4) for r in runs],
        "baseline": "naive per-bar Python loop (same definitions)",
        "baseline_bars": k,
        "baseline_bars_per_s": round(k / baseline_seconds),
        "speedup": round((args.bars / seconds) / (k / baseline_seconds), 2),
        "baseline_max_abs_diff": max_diff,
        "baseline_same_mask": same_mask,
        "valid_share": round(float(feats.valid.mean()), 5),
        "target_bars_per_s": TARGET_BARS_PER_S,
        "meets_target": args.bars / seconds >= TARGET_BARS_PER_S,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(
        f"compute_features: {args.bars:,} bars in {seconds:.3f} s "
        f"({result['bars_per_s']:,} bars/s; runs {result['runs_s']})"
    )
    print(
        f"naive baseline:   {k:,} bars in {baseline_seconds:.3f} s "
        f"({result['baseline_bars_per_s']:,} bars/s); speedup {result['speedup']}x; "
        f"max |diff| {max_diff:.2e}, same mask {same_mask}"
    )
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            "# Feature throughput\n\n"
            "Written by `python benchmarks/features.py "
            f"--bars {args.bars}` (one core, BLAS threads 1; best of {args.repeat}).\n\n"
            "| measure | value |\n|---|---|\n"
            + "".join(f"| {key} | {value} |\n" for key, value in result.items())
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

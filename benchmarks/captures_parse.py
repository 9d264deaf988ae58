"""Indexing captured lines, this checkout's parser against GITREF's, in one run.

    python benchmarks/captures_parse.py [--ref main] [--lines 20000] [--rounds 5]

The same generated capture file (the server's contract: a live and a shadow line per request,
each with its 105-bar window and answer) is indexed by both parsers (`parse_lines` of
moola_ops/serving/captures.py at HEAD and at GITREF), alternating, so the machine's load falls on both
alike. Reported: rows per second per side (best and median of the rounds) and head/base. The
last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_at(ref: str, work: Path):
    source = subprocess.run(
        ["git", "show", f"{ref}:moola_ops/serving/captures.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = work / "captures_base.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("captures_base", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["captures_base"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ref", default="main")
    parser.add_argument("--lines", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from moola_ops.serving import captures as head
    from tests.unit.capture_factory import record

    work = Path(tempfile.mkdtemp(prefix="moola-bench-captures-"))
    base = load_at(args.ref, work)
    lines = []
    for i in range(args.lines // 2):
        for role, release in (("live", "v0.1"), ("shadow", "v0.2")):
            rec = record(f"req-{i}", 0, release=release, role=role, time=1e9 + i, window_id=f"w{i}")
            lines.append(json.dumps(rec, separators=(",", ":")))
    data = ("\n".join(lines) + "\n").encode()
    rates: dict[str, list[float]] = {"head": [], "base": []}
    for r in range(args.rounds):
        order = [("head", head), ("base", base)]
        for side, module in order if r % 2 == 0 else order[::-1]:
            started = time.perf_counter()
            table, _ = module.parse_lines(data)
            seconds = time.perf_counter() - started
            assert len(table) == len(lines) and table.skipped == 0
            rates[side].append(len(lines) / seconds)
    result = {"ref": args.ref, "lines": len(lines), "mb": round(len(data) / 1e6, 1)}
    for side, values in rates.items():
        result[f"{side}_rows_per_s_best"] = round(max(values))
        result[f"{side}_rows_per_s_median"] = round(statistics.median(values))
    result["head_over_base_median"] = round(
        result["head_rows_per_s_median"] / result["base_rows_per_s_median"], 3
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    import numpy

    result.update(
        commit=commit.stdout.strip(),
        python=platform.python_version(),
        numpy=numpy.__version__,
        machine=f"{platform.machine()} {platform.node()}",
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

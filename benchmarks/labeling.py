"""Label loop timings: export and import of N windows (default 10,000) through a real Label Studio,
plus what Label Studio itself costs (its venv's size, its start-up time).

    .venv/bin/python benchmarks/labeling.py [--windows 10000] [--workers 8]

Export: a labeled parquet of N synthetic windows -> one batch of N pre-annotated tasks (the
baseline in the same run: pre-annotating the same windows alone, and Label Studio's own
import of the already-built tasks). Between the two, every task is annotated through the API by
`--workers` threads (accept / move an end / reject in turn; not timed as Moola's). Import: the
batch's annotations -> a new labeled set (baseline: Label Studio's JSON export of the project
alone). Prints one JSON document as its last line: figures, commit, versions, machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    from moola_core.data import labeled, synthetic
    from moola_core.train import select_run, train_run
    from moola_ops.labeling import export_batch, import_batch, ledger, start_studio, stop_process
    from moola_ops.labeling import tasks as T
    from moola_ops.labeling.preannotate import preannotate
    from moola_ops.labeling.windows import from_labeled

    work = Path(tempfile.mkdtemp(prefix="moola-bench-label-"))
    venv = ROOT / ".venv-labelstudio"
    figures: dict = {"windows": args.windows, "workers": args.workers}
    studio = None
    try:
        say = lambda text: print(f"bench: {text}", file=sys.stderr, flush=True)  # noqa: E731
        say(f"{args.windows} synthetic windows and a small selected run")
        frame = synthetic.make_labeled_set(n_windows=args.windows, seed=11)
        path = labeled.write_labeled(frame, work / "labeled.parquet")
        config = work / "train.yaml"
        config.write_text("name: jade\noptim: {max_epochs: 1}\ndata: {n_windows: 174}\n")
        train_run(str(config), work / "runs", progress="none", n_boot=20)
        run_id = select_run(work / "runs", n_boot=20)["run_id"]

        started = time.monotonic()
        studio = start_studio(work / "ls", venv=venv)
        figures["labelstudio_start_s"] = round(time.monotonic() - started, 2)
        figures["labelstudio_venv_mb"] = _du_mb(venv)
        client = studio.client()

        # baseline 1: pre-annotating the windows alone
        cands = from_labeled(path)
        mark = time.monotonic()
        pre = preannotate(cands.ohlc, run_id, work / "runs")
        figures["baseline_preannotate_s"] = round(time.monotonic() - mark, 2)

        say("export")
        mark = time.monotonic()
        exported = export_batch(
            client,
            labeled=[str(path)],
            runs_dir=work / "runs",
            limit=args.windows,
            state=work / "state",
            project="bench",
        )
        figures["export_s"] = round(time.monotonic() - mark, 2)
        figures["export_stages_s"] = exported.seconds
        figures["export_tasks"] = exported.tasks

        # baseline 2: Label Studio's import of the same number of ready-made tasks
        other = client.create_project("bench-baseline", T.labeling_config())
        payloads = [
            T.task_payload(
                key=str(i),
                window_id=str(i),
                batch="b",
                source="labeled",
                reason="",
                ohlc=cands.ohlc[i],
                pre=pre[i],
                model_version=run_id,
            )
            for i in range(len(cands))
        ]
        mark = time.monotonic()
        client.import_tasks(other["id"], payloads)
        figures["baseline_labelstudio_import_s"] = round(time.monotonic() - mark, 2)

        say(f"annotating {exported.tasks} tasks through the API ({args.workers} threads)")
        batch = ledger.load_batch(exported.batch, work / "state")

        def review(item):
            i, task = item
            p = task["pre"]
            if i % 3 == 0:
                result = T.prediction_result(p["label"], p["start"], p["end"])
            elif i % 3 == 1:
                result = T.prediction_result(p["label"], p["start"], min(104, p["end"] + 1))
            else:
                result = T.rejection_result()
            client.annotate(task["task_id"], result, lead_time=10.0)

        mark = time.monotonic()
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(review, enumerate(batch["tasks"])))
        figures["annotate_api_s"] = round(time.monotonic() - mark, 2)

        # baseline 3: Label Studio's JSON export of the annotated project alone
        mark = time.monotonic()
        client.export_tasks(exported.project_id)
        figures["baseline_labelstudio_export_s"] = round(time.monotonic() - mark, 2)

        say("import")
        mark = time.monotonic()
        imported = import_batch(
            client,
            exported.batch,
            base=str(path),
            out=str(work / "new.parquet"),
            state=work / "state",
        )
        figures["import_s"] = round(time.monotonic() - mark, 2)
        figures["import_stages_s"] = imported.seconds
        figures["import_verdicts"] = imported.verdicts
        figures["import_rows"] = imported.rows
    finally:
        if studio is not None:
            stop_process(studio.pid, studio.data_dir)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    import numpy
    import pandas
    import torch

    label_studio_version = "1.23.2"
    figures.update(
        commit=commit,
        versions={
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "pandas": pandas.__version__,
            "label_studio": label_studio_version,
        },
        machine={
            "cpus": os.cpu_count(),
            "load_1m": round(os.getloadavg()[0], 2),
            "platform": platform.platform(),
        },
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

"""Label loop timings: export and import of N windows (default 10,000) through a real Label Studio,
plus what Label Studio itself costs (its venv's size, its start-up time).

    .venv/bin/python benchmarks/labeling.py [--windows 10000] [--workers 8]

Export: a labeled parquet of N synthetic windows -> one batch of N pre-annotated tasks (the
baseline in the same run: pre-annotating the same windows alone, and Label Studio's own
import of the already-built tasks). Between the two, `--sample` tasks are annotated one POST each (accept / move an
end / reject in turn; timed per task, not Moola's), then the batch's tasks are re-created with
their annotations in one bulk import so that N reviews take minutes. Import: the
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
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--sample", type=int, default=200, help="annotations POSTed one by one")
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
    figures: dict = {"windows": args.windows, "workers": args.workers, "sample": args.sample}
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

        say(f"{args.sample} annotations through the API; then all {exported.tasks} in bulk")
        batch = ledger.load_batch(exported.batch, work / "state")

        def answer(i: int, pre: dict) -> list:
            if i % 3 == 0:
                return T.prediction_result(pre["label"], pre["start"], pre["end"])
            if i % 3 == 1:
                return T.prediction_result(pre["label"], pre["start"], min(104, pre["end"] + 1))
            return T.rejection_result()

        # one POST per task costs ~0.3 s in Label Studio here: a sample is timed that way, and
        # the batch's tasks are re-created with their annotations in one bulk import (the same
        # stored annotations the import reads back), so 10,000 reviews take minutes, not hours
        sample = batch["tasks"][: args.sample]
        mark = time.monotonic()
        with ThreadPoolExecutor(args.workers) as pool:
            list(
                pool.map(
                    lambda item: client.annotate(
                        item[1]["task_id"], answer(item[0], item[1]["pre"]), lead_time=10.0
                    ),
                    enumerate(sample),
                )
            )
        figures["annotate_api_per_task_s"] = round((time.monotonic() - mark) / len(sample), 3)
        reviewed = client.create_project("bench-reviewed", T.labeling_config())
        windows = ledger.load_windows(exported.batch, work / "state")
        payloads = []
        for i, task in enumerate(batch["tasks"]):
            one = T.task_payload(
                key=task["key"],
                window_id=task["window_id"],
                batch=batch["batch"],
                source=task["source"],
                reason=task["reason"],
                ohlc=windows[i],
                pre=T.PreAnnotation(**task["pre"]),
                model_version=run_id,
            )
            one["annotations"] = [{"result": answer(i, task["pre"]), "lead_time": 10.0}]
            payloads.append(one)
        ids = client.import_tasks(reviewed["id"], payloads)
        for task, task_id in zip(batch["tasks"], ids, strict=True):
            task["task_id"] = task_id
        batch["project_id"] = reviewed["id"]
        ledger.update_batch(batch, work / "state")
        exported.project_id = reviewed["id"]

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
    if args.windows >= 10_000:  # the documented size: refresh the page
        write_page(figures, ROOT / "docs" / "benchmarks" / "labeling.md")
    print(json.dumps(figures))  # the last line: the figures as JSON


def write_page(f: dict, path: Path) -> None:
    """docs/benchmarks/labeling.md from one run's figures."""
    v = f["versions"]
    ex, im = f["export_stages_s"], f["import_stages_s"]
    rows = [
        ("Label Studio install", f"`du -sm .venv-labelstudio`: {f['labelstudio_venv_mb']:.0f} MB"),
        ("Label Studio start", f"launch to answering with the token: {f['labelstudio_start_s']} s"),
        (
            f"export, {f['windows']:,} windows",
            f"{f['export_s']} s (pre-annotate {ex.get('preannotate')} s, build {ex.get('build')} s, "
            f"Label Studio import {ex.get('import')} s)",
        ),
        ("baseline: pre-annotation alone", f"{f['baseline_preannotate_s']} s"),
        (
            "baseline: Label Studio's import of the same tasks alone",
            f"{f['baseline_labelstudio_import_s']} s",
        ),
        (
            f"import, {f['windows']:,} reviewed windows",
            f"{f['import_s']} s (fetch {im.get('fetch')} s, merge {im.get('merge')} s, validate "
            f"{im.get('validate')} s, write {im.get('write')} s) -> {f['import_rows']:,} rows",
        ),
        ("baseline: Label Studio's JSON export alone", f"{f['baseline_labelstudio_export_s']} s"),
        (
            "one annotation POSTed through the API (setup, not Moola)",
            f"{f['annotate_api_per_task_s']} s per task ({f['workers']} threads, {f['sample']} "
            "tasks; the rest were created in one bulk import)",
        ),
    ]
    lines = [
        "# Label loop: export, import, Label Studio's cost",
        "",
        "Written by `.venv/bin/python benchmarks/labeling.py --windows 10000` (do not edit by hand).",
        f"Machine: {f['machine']['cpus']} CPU cores, load {f['machine']['load_1m']} at the end "
        f"(shared with other work), {f['machine']['platform']}; commit {f['commit']}; Python "
        f"{v['python']}, torch {v['torch']}, numpy {v['numpy']}, pandas {v['pandas']}, Label "
        f"Studio {v['label_studio']} (SQLite, `label-studio start`'s own server).",
        "",
        "| figure | measured |",
        "|---|---|",
        *[f"| {a} | {b} |" for a, b in rows],
        "",
        "The baselines run in the same process on the same windows: what is left of export and",
        "import beyond them is Moola's own work (choosing, ledger, merging, validation, writing).",
        "",
    ]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()

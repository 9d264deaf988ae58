"""The demo's label loop (called once from moola_ops/demo/walk.py, after the A/B and the report):
a local Label Studio, the captured live windows of the first stand-in host (pulled over SSH;
shadow/live disagreements first) and some auto-labels sent for review, a reviewer answering
through the API (the demo knows each window's true pattern and span: it accepts a pre-annotation
with the right pattern and both ends within TOLERANCE bars, and corrects the others to the
truth; a second reviewer checks a few), the import into a new labeled set,
the keeper rate, a run retrained on the reviewed set and compared with the live release's run
on reviewed windows neither trained on, and the report rebuilt with its labeling section.
"""

from __future__ import annotations

from pathlib import Path

LIMIT = 40  # tasks in the demo's batch
SECOND_REVIEWS = 4  # tasks a second reviewer answers too (agreement)
TOLERANCE = 2  # bars a span end may be off before the demo's reviewer moves it
# the retrained run: the demo's recipe (demo.facts["recipe"]) on the reviewed set, 12 epochs
RETRAIN = {"name": "jade-reviewed", "seed": 17, "optim": {"max_epochs": 12, "patience": 4}}


def review_loop(demo, *, hosts, root: Path, runs_dir: Path, say=print) -> None:
    """Run the loop's stages; each checks its outcome (demo.stage fails the demo otherwise)."""
    import yaml

    from moola_core.data import labeled
    from moola_ops.labeling import export_batch, import_batch, label_status, ledger
    from moola_ops.labeling import tasks as T
    from moola_ops.labeling.server import start_studio, stop_process
    from moola_ops.report import build_report

    def expect(condition: bool, message: str) -> None:
        if not condition:
            raise RuntimeError(message)

    state, cache = root / "labeling", root / "captures"
    base = root / "data" / "labeled.parquet"
    first = hosts[0]
    with demo.stage("Label Studio", "invoke label.studio") as st:
        studio = start_studio(root / "labelstudio")
        st.detail = f"{studio.url} (pid {studio.pid}), ready in {studio.started_s:.1f} s"
    try:
        client = studio.client()
        with demo.stage(
            "export windows for review",
            f"invoke label.export --hosts {first.name} --labeled {base.name} --limit {LIMIT}",
        ) as st:
            exported = export_batch(
                client,
                labeled=[str(base)],
                hosts=[first],
                cache=cache,
                runs_dir=runs_dir,
                limit=LIMIT,
                state=state,
            )
            expect(exported.tasks == LIMIT, exported.summary())
            expect(exported.by_source["disagreement"] > 0, "no disagreement came first")
            st.detail = exported.summary()

        with demo.stage(
            "reviewers answer in Label Studio", "POST /api/tasks/ID/annotations/"
        ) as st:
            truth = _truth([base, root / "data" / "outcomes.parquet"])
            batch = ledger.load_batch(exported.batch, state)
            second = client.create_user("second-reviewer@moola.local")
            for i, task in enumerate(batch["tasks"]):
                label, start, end = truth[task["fingerprint"]]
                pre = task["pre"]
                close = (
                    pre["label"] == label
                    and abs(pre["start"] - start) <= TOLERANCE
                    and abs(pre["end"] - end) <= TOLERANCE
                )
                if close:  # right pattern, ends within a bar or two: accepted as shown
                    label, start, end = pre["label"], pre["start"], pre["end"]
                answer = T.prediction_result(label, start, end)
                client.annotate(task["task_id"], answer, lead_time=12.0 + (i * 7) % 30)
                if i < SECOND_REVIEWS:
                    client.annotate(task["task_id"], answer, completed_by=second, lead_time=20.0)
            st.detail = f"{len(batch['tasks'])} tasks answered, {SECOND_REVIEWS} twice"

        with demo.stage(
            "import the reviewed labels", f"invoke label.import --batch {exported.batch}"
        ) as st:
            merged = root / "data" / "labeled-reviewed.parquet"
            imported = import_batch(
                client, exported.batch, base=str(base), out=str(merged), state=state
            )
            expect(
                merged.is_file() and imported.rows >= len(labeled.read_labeled(base)),
                imported.summary(),
            )
            st.detail = imported.summary()

        with demo.stage("keeper rate and progress", "invoke label.status") as st:
            figures = label_status(client, state)["batches"][-1]
            expect(figures["done"] == LIMIT and figures["agreement"] == 1.0, str(figures))
            st.detail = (
                f"{figures['accepted']} accepted as-is, {figures['edited']} edited, "
                f"{figures['rejected']} rejected: keeper rate {100 * figures['keeper_rate']:.0f}%; "
                f"reviewers agreed on {figures['double_reviewed']} of {figures['double_reviewed']}"
                f" (sources {figures['by_source']}: disagreements come first, where the run "
                "is most often wrong)"
            )
    finally:
        stop_process(studio.pid, studio.data_dir)

    with demo.stage(
        "retrain on the reviewed set, compare on reviewed windows", "invoke train --config C"
    ) as st:
        from moola_core.train import train_run
        from moola_ops.labeling.holdout import compare_on_reviewed

        config = yaml.safe_load(Path(demo.facts["recipe"]).read_text())
        config["name"], config["seed"] = RETRAIN["name"], RETRAIN["seed"]
        config["optim"].update(RETRAIN["optim"])
        config["data"] = {"source": "file", "path": str(merged)}
        config_path = root / "train-reviewed.yaml"
        config_path.write_text(yaml.safe_dump(config))
        run = train_run(str(config_path), runs_dir, progress="none", n_boot=200)
        live = demo.facts["selected"]
        verdict = compare_on_reviewed(run.run_id, live, merged, runs_dir, n_boot=500)
        diff = verdict["diff"]["span_iou"]
        st.detail = (
            f"{run.run_id} vs the live run {live} on {verdict['n']} reviewed windows neither "
            f"trained on: span IoU {verdict['candidate']['span_iou']:.3f} vs "
            f"{verdict['live']['span_iou']:.3f} (difference {diff['value']:+.3f} "
            f"[{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}])"
        )

    with demo.stage("the report, with its labeling section", "invoke report") as st:
        report = build_report(root / "report.html", runs_dir=runs_dir, cache=cache, labeling=state)
        expect(
            not next(s for s in report.sections if s.id == "labeling").missing,
            "no labeling section",
        )
        st.detail = report.summary()
    say(f"\n   report: {report.path}")


def _truth(paths: list[Path]) -> dict[str, tuple[str, int, int]]:
    """fingerprint -> (label, start, end) of every window whose truth the demo knows."""
    import numpy as np

    from moola_core.data.labeled import as_ohlc, read_labeled
    from moola_ops.labeling.windows import fingerprints

    out = {}
    for path in paths:
        frame = read_labeled(path)
        prints = fingerprints(np.stack([as_ohlc(c) for c in frame["features"]]))
        for fp, row in zip(prints, frame.itertuples(), strict=True):
            out[fp] = (str(row.label), int(row.expansion_start), int(row.expansion_end))
    return out

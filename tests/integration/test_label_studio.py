"""The label loop against a real Label Studio (its own venv, SQLite, 127.0.0.1, a free port):
export windows with pre-annotations, review them through the API as a reviewer would (accept,
move span ends, reject, skip, a second reviewer), import them into a new labeled set, and the
bad inputs: Label Studio down, a wrong token, spans backwards or outside the window, a deleted
task, a duplicate window, a second import. The browser test opens a task in headless Chromium.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from moola_core.data import labeled as labeled_io
from moola_core.data import synthetic
from moola_core.errors import MoolaError
from moola_ops.hosts.inventory import Inventory
from moola_ops.labeling import (
    LabelStudio,
    LabelStudioError,
    export_batch,
    import_batch,
    label_status,
    ledger,
    start_studio,
    stop_process,
)
from moola_ops.labeling import tasks as T
from tests.unit.capture_factory import record

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """One Label Studio for the module; each test uses its own project and ledger."""
    running = start_studio(
        tmp_path_factory.mktemp("labelstudio") / "data", venv=ROOT / ".venv-labelstudio"
    )
    try:
        yield running
    finally:
        stop_process(running.pid, running.data_dir)
    assert not running.alive()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A labeled set and a small trained, selected run that pre-annotates."""
    from moola_core.train import select_run, train_run

    root = tmp_path_factory.mktemp("work")
    frame = synthetic.make_labeled_set(n_windows=174, seed=3)
    path = labeled_io.write_labeled(frame, root / "labeled.parquet")
    config = root / "train.yaml"
    config.write_text(
        f"name: jade\noptim: {{max_epochs: 2, patience: 2}}\ndata: {{source: file, path: {path}}}\n"
    )
    train_run(str(config), root / "runs", progress="none", n_boot=20)
    select_run(root / "runs", n_boot=20)
    return {"root": root, "labeled": path, "runs": root / "runs", "frame": frame}


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _export(studio, workspace, tmp_path, **kwargs):
    kwargs.setdefault("labeled", [str(workspace["labeled"])])
    kwargs.setdefault("project", f"test-{tmp_path.name}")
    return export_batch(
        studio.client(), runs_dir=workspace["runs"], state=tmp_path / "state", **kwargs
    )


def test_export_review_import_status(studio, workspace, tmp_path):
    client = studio.client()
    result = _export(studio, workspace, tmp_path, limit=12)
    assert result.tasks == 12 and result.project_created
    batch = ledger.load_batch(result.batch, tmp_path / "state")
    tasks = batch["tasks"]
    # ordered by how much a label would teach: disagreements first, then lowest score
    kinds = [t["source"] == "disagreement" for t in tasks]
    assert kinds == sorted(kinds, reverse=True)
    for group in (True, False):
        scores = [t["pre"]["score"] for t in tasks if (t["source"] == "disagreement") == group]
        assert scores == sorted(scores)
    # Label Studio holds each task with its pre-annotation (class, span, score)
    exported = {t["id"]: t for t in client.export_tasks(result.project_id)}
    first = exported[tasks[0]["task_id"]]
    assert first["data"]["moola_key"] == tasks[0]["key"]
    assert len(first["data"]["ts"]["close"]) == 105
    assert client.project(result.project_id)["model_version"] == batch["run_id"]

    # review as people would: accept 4, move a span end on 3, reject 2, skip 1, 2 untouched
    base_sha = _sha(workspace["labeled"])
    accepted, edited, rejected = tasks[0:4], tasks[4:7], tasks[7:9]
    for t in accepted:
        p = t["pre"]
        client.annotate(
            t["task_id"], T.prediction_result(p["label"], p["start"], p["end"]), lead_time=8
        )
    for t in edited:
        p = t["pre"]
        end = min(104, p["end"] + 3) if p["end"] < 104 else p["end"] - 3
        client.annotate(
            t["task_id"],
            T.prediction_result(p["label"], p["start"], max(p["start"], end)),
            lead_time=20,
        )
    for t in rejected:
        client.annotate(t["task_id"], T.rejection_result(), lead_time=5)
    client.annotate(tasks[9]["task_id"], [], was_cancelled=True)
    # a second reviewer on the first accepted task, who disagrees on the pattern
    other = client.create_user(f"second-{tmp_path.name}@moola.local")
    p = accepted[0]["pre"]
    flipped = "consolidation" if p["label"] == "retracement" else "retracement"
    client.annotate(
        accepted[0]["task_id"],
        T.prediction_result(flipped, p["start"], p["end"]),
        completed_by=other,
        lead_time=30,
    )

    out = tmp_path / "reviewed.parquet"
    imported = import_batch(
        client, result.batch, base=str(workspace["labeled"]), out=str(out), state=tmp_path / "state"
    )
    assert _sha(workspace["labeled"]) == base_sha  # the old set is untouched
    # the second reviewer's annotation is the newest: it counts, and it is an edit
    assert imported.verdicts == {"accepted": 3, "edited": 4, "rejected": 2}
    assert imported.pending == 2 and imported.skipped == 1
    assert imported.removed == 2 and imported.replaced == 7
    merged = labeled_io.read_labeled(out)  # the data.validate validator passes
    assert len(merged) == len(workspace["frame"]) - 2
    reviewed = merged[merged["review_batch"] == result.batch]
    assert len(reviewed) == 7
    assert set(reviewed["review_verdict"]) == {"accepted", "edited"}
    assert reviewed["reviewer"].str.endswith("@moola.local").all()
    row = reviewed[reviewed["pre_label"] != reviewed["label"]]
    assert len(row) == 1 and row["review_agreement"].iloc[0] == 0.0
    for t in edited:
        line = merged[merged["window_id"] == t["window_id"]].iloc[0]
        assert line["review_verdict"] == "edited" and line["expansion_start"] == t["pre"]["start"]
    for t in rejected:
        assert t["window_id"] not in set(merged["window_id"])
    # training splits it as any set: windows that share bars stay on one side (no leakage)
    from moola_core.data.splits import leakage_report, split_labeled

    assert leakage_report(merged, split_labeled(merged), embargo_minutes=105).ok
    assert imported.sharing > 0  # the synthetic set's shifted copies

    figures = label_status(client, tmp_path / "state")["batches"][0]
    assert (figures["tasks"], figures["done"], figures["pending"], figures["skipped"]) == (
        12,
        9,
        2,
        1,
    )
    assert figures["keeper_rate"] == round(3 / 9, 4)
    assert figures["double_reviewed"] == 1 and figures["agreement"] == 0.0
    assert figures["imported"] == 9
    # the report's labeling section reads the saved figures (Label Studio not needed)
    from moola_ops.report import build_report

    report = build_report(
        tmp_path / "report.html",
        runs_dir=workspace["runs"],
        cache=tmp_path / "cache",
        log=tmp_path / "log.jsonl",
        labeling=tmp_path / "state",
    )
    section = next(s for s in report.sections if s.id == "labeling")
    assert not section.missing and section.figures == ["labeling"]
    assert "keeper 33%" in (tmp_path / "report.html").read_text()

    # a second import of the same batch merges nothing twice and writes nothing
    again = tmp_path / "again.parquet"
    with pytest.raises(MoolaError, match="no newly reviewed task to import"):
        import_batch(client, result.batch, out=str(again), state=tmp_path / "state")
    assert not again.exists()
    # ... but a task finished since is merged, into yet another new file
    p = tasks[10]["pre"]
    client.annotate(tasks[10]["task_id"], T.prediction_result(p["label"], p["start"], p["end"]))
    later = import_batch(client, result.batch, state=tmp_path / "state")
    assert later.verdicts["accepted"] == 1 and later.already == 9 and later.base == str(out)
    assert Path(later.out).name == f"labeled-{result.batch}-2.parquet"

    # the next export leaves out every window already sent
    second = _export(studio, workspace, tmp_path, limit=500)
    assert second.left_out["reviewed"] == 12
    sent = {t["fingerprint"] for t in tasks}
    fresh = ledger.load_batch(second.batch, tmp_path / "state")["tasks"]
    assert fresh and not sent & {t["fingerprint"] for t in fresh}


def test_bad_annotations_are_named_and_nothing_is_written(studio, workspace, tmp_path):
    client = studio.client()
    result = _export(studio, workspace, tmp_path, limit=4)
    tasks = ledger.load_batch(result.batch, tmp_path / "state")["tasks"]
    backwards = T.prediction_result("retracement", 60, 50)
    outside = T.prediction_result("retracement", 90, 130)
    client.annotate(tasks[0]["task_id"], backwards)
    client.annotate(tasks[1]["task_id"], outside)
    client.annotate(tasks[2]["task_id"], T.prediction_result("consolidation", 55, 66))
    client.delete_task(tasks[3]["task_id"])
    out = tmp_path / "new.parquet"
    with pytest.raises(MoolaError) as caught:
        import_batch(client, result.batch, out=str(out), state=tmp_path / "state")
    message = str(caught.value)
    assert "ends at bar 50 before it starts at bar 60" in message
    assert "reaches outside the bars 0-104" in message
    assert "nothing was written" in message and "\n" not in message
    assert not out.exists()
    assert ledger.load_batch(result.batch, tmp_path / "state")["imports"] == []
    done = import_batch(
        client, result.batch, out=str(out), skip_invalid=True, state=tmp_path / "state"
    )
    assert done.verdicts["edited"] + done.verdicts["accepted"] == 1 and len(done.invalid) == 2
    assert done.deleted == [
        f"task {tasks[3]['task_id']} (window {tasks[3]['window_id']}) was deleted in Label Studio; it is left out"
    ]
    assert len(labeled_io.read_labeled(out)) == 1  # no base: the reviewed window alone


def test_captured_windows_disagreements_first_duplicates_once(
    studio, workspace, tmp_path, sandbox_factory
):
    """Live windows pulled over real SSH; the shadow disagreed on some; one window was sent
    twice; one shares bars with a window reviewed before."""
    sandbox = sandbox_factory(["local-1"])
    host = Inventory.from_sandbox(sandbox).resolve("local-1")[0]
    frame = workspace["frame"]
    windows = [np.asarray(frame["features"].iloc[i].tolist()).tolist() for i in range(8)]
    lines = []
    for i, bars in enumerate(windows):
        kw = dict(time=1_900_000_000.0 + i, window_id=f"live-{i}", ohlc=bars)
        lines.append(
            record(f"r{i}", 0, release="v0.1", role="live", label=0, start=60, end=70, **kw)
        )
        if i < 3:  # the shadow answered otherwise on three windows
            lines.append(
                record(f"r{i}", 0, release="v0.2", role="shadow", label=1, start=20, end=30, **kw)
            )
    # the same window sent again in another request (a duplicate)
    lines.append(
        record(
            "r-dup",
            0,
            release="v0.1",
            role="live",
            time=1_900_000_100.0,
            window_id="again",
            ohlc=windows[5],
        )
    )
    remote = (
        Path(sandbox.hosts["local-1"].workspace) / "captures" / "v0.1" / "20261206T000000Z-1.jsonl"
    )
    remote.parent.mkdir(parents=True)
    for folder in (remote.parent.parent, remote.parent):
        os.chmod(folder, 0o755)
    remote.write_text("".join(json.dumps(r) + "\n" for r in lines))
    os.chmod(remote, 0o644)
    # a window shifted by 10 bars from window 7 was reviewed before: window 7 shares bars
    shifted = frame.iloc[[7]].copy()
    shifted["features"] = [
        np.vstack([frame["features"].iloc[7][10:], frame["features"].iloc[8][:10]])
    ]
    shifted["window_id"] = "reviewed-before"
    before = labeled_io.write_labeled(shifted, tmp_path / "before.parquet")

    result = export_batch(
        studio.client(),
        hosts=[host],
        cache=tmp_path / "cache",
        runs_dir=workspace["runs"],
        state=tmp_path / "state",
        project=f"test-{tmp_path.name}",
        skip_labeled=[str(before)],
        limit=50,
    )
    assert result.considered == 9 and result.left_out["duplicate"] == 1
    assert result.left_out["overlap"] == 1 and result.tasks == 7
    assert result.by_source == {"disagreement": 3, "labeled": 0, "capture": 4}
    tasks = ledger.load_batch(result.batch, tmp_path / "state")["tasks"]
    assert [t["source"] for t in tasks[:3]] == ["disagreement"] * 3
    assert "live consolidation 60-70 vs shadow retracement 20-30" in tasks[0]["reason"]
    assert {t["origin"]["host"] for t in tasks} == {"local-1"}


def test_label_studio_down_or_token_wrong_is_one_sentence(studio, workspace, tmp_path):
    wrong = LabelStudio(studio.url, "0" * 40)
    with pytest.raises(LabelStudioError, match="refused the token"):
        _export_with(wrong, workspace, tmp_path)
    from moola_ops.labeling.server import free_port

    down = LabelStudio(f"http://127.0.0.1:{free_port()}", "x" * 40)
    with pytest.raises(LabelStudioError, match="does not answer"):
        _export_with(down, workspace, tmp_path)
    assert not (tmp_path / "state" / "batches").exists()  # nothing recorded
    # through the front door: one line on stderr, exit 1, no traceback
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "label.status",
            "--url",
            studio.url,
            "--token",
            "0" * 40,
            "--state",
            str(tmp_path / "state"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().startswith("error: Label Studio at") and "Traceback" not in proc.stderr
    )
    assert len(proc.stderr.strip().splitlines()) == 1


def _export_with(client, workspace, tmp_path):
    return export_batch(
        client,
        labeled=[str(workspace["labeled"])],
        runs_dir=workspace["runs"],
        state=tmp_path / "state",
        project=f"test-{tmp_path.name}",
    )


# --- the task in a real browser ---------------------------------------------------------------

_PATHS = """JSON.stringify(Array.from(document.querySelectorAll('svg path'))
  .filter(p => (p.getAttribute('d') || '').length > 0)
  .map(p => { const b = p.getBoundingClientRect();
    return {stroke: p.getAttribute('stroke'), points: (p.getAttribute('d').match(/[ML]/g) || []).length,
            x: b.x, width: b.width, y: b.y}; }))"""
_REGIONS = """JSON.stringify(Array.from(document.querySelectorAll('svg rect'))
  .filter(r => /^rgba?\\(255, 152, 0/.test(getComputedStyle(r).fill))
  .map(r => { const b = r.getBoundingClientRect(); return {x: b.x, width: b.width, y: b.y}; }))"""


def _evaluate(pipe, session, expression):
    answer = pipe.send(
        "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session
    )
    return answer["result"].get("value")


def test_a_task_draws_105_bars_and_the_pre_annotated_span(studio, workspace, tmp_path):
    from moola_ops.report.browser import open_page

    result = _export(studio, workspace, tmp_path, limit=1)
    task = ledger.load_batch(result.batch, tmp_path / "state")["tasks"][0]
    pre = task["pre"]
    with open_page(f"{studio.url}/user/login/", width=1400, height=1000) as (pipe, session):
        login = (
            f"document.querySelector('input[name=email]').value = {json.dumps('admin@moola.local')};"
            f"document.querySelector('input[name=password]').value = {json.dumps(studio.password)};"
            "document.querySelector('form').submit(); true"
        )
        assert _evaluate(pipe, session, login)
        pipe.wait_event("Page.loadEventFired", 60)
        pipe.send(
            "Page.navigate",
            {"url": f"{studio.url}/projects/{result.project_id}/data?tab=0&task={task['task_id']}"},
            session=session,
        )
        # the editor draws after its scripts load: wait for the bars, not for a clock
        deadline = time.monotonic() + 120
        while True:
            paths = json.loads(_evaluate(pipe, session, _PATHS) or "[]")
            bars = [
                p for p in paths if p["points"] == 105 and p["stroke"] in T.OHLC_COLOURS.values()
            ]
            regions = json.loads(_evaluate(pipe, session, _REGIONS) or "[]")
            if (len(bars) >= 4 and regions) or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # polled against the deadline above
    assert sorted(p["stroke"] for p in bars) == sorted(T.OHLC_COLOURS.values())  # o, h, l, c
    chart = bars[0]
    step = chart["width"] / 104  # px per bar: 105 points from the first bar to the last
    main = [r for r in regions if abs(r["y"] - chart["y"]) < 40]
    assert main, f"no pre-annotated span drawn over the bars: {regions}"
    span = main[0]
    assert abs(span["x"] - (chart["x"] + pre["start"] * step)) < step
    assert abs(span["x"] + span["width"] - (chart["x"] + pre["end"] * step)) < step


def test_a_password_that_starts_with_a_dash_still_starts(tmp_path):
    """token_urlsafe draws "-" as the first character one time in 64: Label Studio's argparse
    took such a password for a flag and exited (found by benchmarks/labeling.py)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "moola-password").write_text("-starts-with-a-dash")
    running = start_studio(data, venv=ROOT / ".venv-labelstudio")
    try:
        assert running.password == "-starts-with-a-dash" and running.client().whoami()
    finally:
        stop_process(running.pid, running.data_dir)

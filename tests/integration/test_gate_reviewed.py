"""Issue #25 item 4 on real data paths: a reviewed labeled set (as `invoke label.import` writes
it), two real training runs on it, the live release found in a real deployment log, and
`invoke select`'s gate deciding the candidate against the live release on the reviewed windows
neither trained on (moola_ops.labeling.holdout -> moola_core.train.gate)."""

from __future__ import annotations

import json

import pytest

from tests.unit.tiny_runs import tiny_config


@pytest.fixture(scope="module")
def reviewed_runs(tmp_path_factory):
    """(runs_dir, reviewed parquet, {variant: run_id}): two variants trained on a labeled set
    whose later half a person reviewed."""
    from moola_core.data import labeled, synthetic
    from moola_core.train import train_run
    from moola_core.train.data import prepare_data

    root = tmp_path_factory.mktemp("reviewed")
    frame = synthetic.make_labeled_set(n_windows=60, seed=0)
    half = len(frame) // 2
    frame["review_batch"] = [None] * half + ["b-test"] * (len(frame) - half)
    path = labeled.write_labeled(frame, root / "labeled-b-test.parquet")
    runs_dir = root / "runs"
    ids = {}
    data = None
    for name, seed in (("cand", 3), ("serving", 5)):
        config = tiny_config(
            **{"data.source": "file", "data.path": str(path), "name": name, "seed": seed}
        )
        data = data or prepare_data(config)  # same file and split: prepared once
        ids[name] = train_run(config, runs_dir, progress="none", n_boot=50, data=data).run_id
    return runs_dir, path, ids


def _log_live_release(log, run_id: str) -> None:
    """What `invoke bundle` and a deploy whose post-switch check passed write."""
    from moola_ops.log.journal import Journal

    Journal("bundle", bundle="v1.0", path=log).record("", "build", "ok", run_id=run_id)
    Journal("deploy", bundle="v1.0", path=log).record("host-1", "post-check", "ok")


def test_compare_on_reviewed_finds_the_windows_a_run_of_the_protocol_never_trained_on(
    reviewed_runs,
):
    # defect: the held-out windows were read from predictions.json's val/test, which the
    # out-of-fold protocol no longer writes; every window counted as trained on, none remained
    from moola_ops.labeling.holdout import compare_on_reviewed

    runs_dir, path, ids = reviewed_runs
    calibration = set()
    for run_id in ids.values():
        predictions = json.loads((runs_dir / run_id / "predictions.json").read_text())
        calibration.update(predictions["calibration_split"]["window_id"])
    verdict = compare_on_reviewed(ids["cand"], ids["serving"], path, runs_dir, n_boot=100)
    assert verdict["n"] >= 2
    assert set(verdict["windows"]) <= calibration  # only what neither final model trained on


def test_select_gates_the_candidate_against_the_live_release_on_reviewed_windows(
    reviewed_runs, tmp_path, monkeypatch
):
    from moola_ops.checklist.phases import run_select
    from moola_ops.labeling.holdout import compare_on_reviewed, reviewed_gate

    runs_dir, path, ids = reviewed_runs
    log = tmp_path / "deployments.jsonl"
    monkeypatch.setenv("MOOLA_LOG", str(log))
    _log_live_release(log, ids["serving"])

    # found on its own: the labeled file the runs trained on holds reviewed rows, and the
    # deployment log names the live release and the run its bundle was built from
    against_live = reviewed_gate(runs_dir)
    assert against_live is not None
    report = run_select(runs_dir=runs_dir, n_boot=200, reviewed=against_live)
    expected = compare_on_reviewed(ids["cand"], ids["serving"], path, runs_dir, n_boot=100)
    for variant, run_id in ids.items():
        gate = json.loads((runs_dir / run_id / "metrics.json").read_text())["gate"]
        (check,) = [c for c in gate["checks"] if c["evidence"] == "reviewed"]
        assert check["rule"] == "non_inferiority" and check["baseline"] == "live"
        assert check["n_windows"] == expected["n"]
        if variant == "cand":
            assert check["value"] == pytest.approx(expected["diff"]["span_iou"]["value"], abs=1e-3)
        else:  # the live release's own variant against itself
            assert check["value"] == 0.0 and check["ok"] is True
        assert gate["evidence"]["reviewed"]["windows"] == expected["n"]
        out_of_fold = [c for c in gate["checks"] if c["evidence"] != "reviewed"]
        assert gate["passed"] is (all(c["ok"] for c in out_of_fold) and check["ok"])
        assert "against the live release" in gate["summary"]
    chosen = report.facts["selection"]
    assert any(c["evidence"] == "reviewed" for c in chosen["gate"]["checks"])
    assert report.steps[-1].status == ("ok" if chosen["gate"]["passed"] else "failed")


def test_with_no_live_release_the_reviewed_check_says_why_and_is_not_counted(
    reviewed_runs, tmp_path, monkeypatch
):
    from moola_core.train import select_run
    from moola_ops.labeling.holdout import reviewed_gate

    runs_dir, path, ids = reviewed_runs
    monkeypatch.setenv("MOOLA_LOG", str(tmp_path / "empty.jsonl"))
    record = select_run(runs_dir, n_boot=200, write=False, reviewed=reviewed_gate(runs_dir))
    (check,) = [c for c in record["gate"]["checks"] if c["evidence"] == "reviewed"]
    assert check["skipped"] is True and check["ok"] is True
    assert "no release is live" in record["gate"]["summary"]
    # named explicitly, the same reviewed set and run need no log
    explicit = reviewed_gate(runs_dir, reviewed=path, live=ids["serving"])
    record = select_run(runs_dir, n_boot=200, write=False, reviewed=explicit)
    assert not any(
        c.get("skipped") for c in record["gate"]["checks"] if c["evidence"] == "reviewed"
    )


def test_select_refuses_a_reviewed_set_or_live_run_that_does_not_exist(reviewed_runs, tmp_path):
    from moola_core.errors import MoolaError
    from moola_ops.labeling.holdout import reviewed_gate

    runs_dir, _, _ = reviewed_runs
    with pytest.raises(MoolaError, match="no such labeled set"):
        reviewed_gate(runs_dir, reviewed=tmp_path / "missing.parquet")
    with pytest.raises(MoolaError, match="no such run"):
        reviewed_gate(runs_dir, live="run-that-never-was")

"""Training runs really train (tiny models, few windows): files, determinism, early stopping
with the best checkpoint kept, config validation, comparison and selection."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from moola_core.errors import MoolaError
from moola_core.models import build_model
from moola_core.train import compare_runs, evaluate_run, load_config, select_run, train_run
from moola_core.train.data import prepare_data
from tests.unit.tiny_runs import tiny_config as tiny

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def data():
    return prepare_data(tiny())


@pytest.fixture(scope="module")
def grid(tmp_path_factory, data):
    """Two variants x two seeds in one runs folder."""
    runs_dir = tmp_path_factory.mktemp("runs")
    results = [
        train_run(
            tiny(name=name, seed=seed, **{"model.span_head": head}),
            runs_dir,
            progress="none",
            data=data,
            n_boot=100,
        )
        for name, head in (("pointy", "pointer"), ("tagger", "crf"))
        for seed in (17, 13)
    ]
    return runs_dir, results


def test_a_run_writes_every_file_and_its_weights_load_safely(grid, data):
    _, results = grid
    run = results[0]
    names = {p.name for p in run.path.iterdir()}
    assert {"config.yaml", "model.json", "weights.pt", "metrics.json", "history.jsonl"} <= names
    model = build_model(json.loads((run.path / "model.json").read_text()))
    model.load_state_dict(torch.load(run.path / "weights.pt", weights_only=True))
    assert load_config(run.path / "config.yaml").seed == 17  # the resolved config reloads
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics == run.metrics
    for split in ("oof", "calibration_split"):
        entry = metrics[split]["span_iou"]
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
        assert metrics[split]["n"] == metrics["n_windows"][split] > 0
        for baseline in ("majority", "heuristic", "linear"):
            assert "span_iou" in metrics["baselines"][baseline][split]
    # one model per fold (weights and calibrated config), each fold's history, then the final
    assert sorted(p.name for p in (run.path / "folds").iterdir()) == [
        f"fold-{k}.{ext}" for k in (1, 2, 3) for ext in ("json", "pt")
    ]
    history = [json.loads(x) for x in (run.path / "history.jsonl").read_text().splitlines()]
    assert [r["model"] for r in history if r["epoch"] == 1] == [
        "fold-1",
        "fold-2",
        "fold-3",
        "final",
    ]
    final = [r for r in history if r["model"] == "final"]
    assert len(final) == metrics["final_epochs"] == metrics["epochs_run"]
    assert all("val_loss" not in r for r in final)  # the final model stops on nothing
    assert metrics["dataset_fingerprint"].startswith("sha256:")
    assert metrics["n_windows"]["oof"] == len(data.dev)


def test_out_of_fold_predictions_come_from_models_that_never_saw_the_window(data):
    """Every development window is held out exactly once; no fold trains or stops on a window
    it holds (or one sharing its bars); the calibration split is in no fold at all."""
    held = np.concatenate([f.held for f in data.folds])
    assert sorted(held.tolist()) == sorted(data.dev.tolist())
    assert not set(data.calibration.tolist()) & set(data.dev.tolist())
    for fold in data.folds:
        seen = set(fold.train.tolist()) | set(fold.early_stopping.tolist())
        assert not seen & set(fold.held.tolist())
        assert not set(data.groups[list(seen)]) & set(data.groups[fold.held])
        assert not set(fold.train.tolist()) & set(fold.early_stopping.tolist())
        assert seen <= set(data.dev.tolist())


def test_same_seed_same_weights_and_history_other_seed_differs(tmp_path, data):
    first = train_run(tiny(), tmp_path, progress="none", data=data, n_boot=10)
    again = train_run(tiny(), tmp_path, progress="none", data=data, n_boot=10)
    other = train_run(tiny(seed=13), tmp_path, progress="none", data=data, n_boot=10)
    assert first.run_id != again.run_id

    def weights(run):
        return torch.load(run.path / "weights.pt", weights_only=True)

    w1, w2, w3 = weights(first), weights(again), weights(other)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert not all(torch.equal(w1[k], w3[k]) for k in w1)

    def losses(run):
        lines = (run.path / "history.jsonl").read_text().splitlines()
        return [json.loads(line)["train_loss"] for line in lines]

    assert losses(first) == losses(again)


def test_early_stopping_keeps_the_best_checkpoint_and_the_final_model_its_median(data):
    from moola_core.train.loop import WindowExamples, example_dict, fit

    config = tiny(
        **{"optim.max_epochs": 25, "optim.patience": 2, "optim.lr": 0.02, "model.live": False}
    )
    fold = data.folds[0]
    fitted = fit(
        config,
        WindowExamples(example_dict(data.part(fold.train))),
        example_dict(data.part(fold.early_stopping)),
    )
    assert fitted.epochs_run < 25 and fitted.epochs_run - fitted.best_epoch == 2
    best_row = fitted.history[fitted.best_epoch - 1]
    assert best_row["val"]["span_iou"] == max(row["val"]["span_iou"] for row in fitted.history)
    # the weights kept are the best epoch's, not the last epoch's
    from moola_core import metrics as M
    from moola_core.train.loop import predict_arrays

    stop = data.part(fold.early_stopping)
    pred = predict_arrays(fitted.model, stop["x"], stop["valid"])
    truth = {k: stop[k] for k in ("label", "start", "end")}
    assert M.point_metrics(pred, truth)["span_iou"] == pytest.approx(best_row["val"]["span_iou"])
    # without a stopping set the model trains exactly the epochs asked
    fixed = fit(config, WindowExamples(example_dict(data.part(fold.train))), None, epochs=4)
    assert fixed.epochs_run == fixed.best_epoch == len(fixed.history) == 4


def test_a_pretrained_encoder_is_loaded_and_stays_put_when_frozen(tmp_path, data):
    from moola_core.models import BiLSTMEncoder

    torch.manual_seed(5)
    encoder = BiLSTMEncoder(n_features=11, hidden=8, layers=1)
    torch.save(encoder.state_dict(), tmp_path / "encoder.pt")
    config = tiny(pretrained_encoder=str(tmp_path / "encoder.pt"), freeze_encoder=True)
    run = train_run(config, tmp_path / "runs", progress="none", data=data, n_boot=10)
    assert run.metrics["pretrained_encoder"]["frozen"] is True
    trained = torch.load(run.path / "weights.pt", weights_only=True)
    for key, tensor in encoder.state_dict().items():
        assert torch.equal(trained[f"encoder.{key}"], tensor), key


def test_plain_progress_prints_one_line_per_epoch(tmp_path, data, capsys):
    run = train_run(tiny(), tmp_path, progress="plain", data=data, n_boot=10)
    lines = [line for line in capsys.readouterr().err.splitlines() if " epoch " in line]
    folds = [line for line in lines if " fold " in line]
    assert len(folds) == sum(f["epochs_run"] for f in run.metrics["folds"])
    assert "fold 1/3 epoch 1/3" in folds[0] and "val span_iou" in folds[0]
    assert lines[-1].startswith(f"{run.run_id} final epoch {run.metrics['final_epochs']}/")


def test_rich_progress_shows_the_run_and_its_metric(tmp_path, data, capsys):
    train_run(tiny(), tmp_path, progress="rich", data=data, n_boot=10)
    err = capsys.readouterr().err
    assert "jade-s17-" in err and "fold 1/3" in err and "val span_iou" in err


def test_every_shipped_config_validates():
    names = sorted(p.stem for p in CONFIGS.glob("jade*.yaml"))  # training configs
    assert {"jade", "jade_nopos", "jade_after", "jade_crf", "jade_center"} <= set(names)
    for name in names:
        config = load_config(CONFIGS / f"{name}.yaml")
        assert config.name == name
        build_model(config.model_dict())


@pytest.mark.parametrize(
    "overrides,words",
    [
        ({"optim.lerning_rate": 0.1}, "optim.lerning_rate"),
        ({"model.span_head": "argmax"}, "model.span_head"),
        ({"early_stopping_metric": "f2"}, "early_stopping_metric"),
        ({"split.folds": 1}, "split.folds"),
    ],
)
def test_bad_configs_fail_with_one_sentence_naming_the_key(overrides, words):
    with pytest.raises(MoolaError, match=words):
        load_config(overrides=overrides)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(MoolaError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_compare_pools_seeds_per_variant_next_to_baselines(grid):
    runs_dir, _ = grid
    table = compare_runs(runs_dir, n_boot=100)
    assert table.split == "oof"
    variants = {row["variant"]: row for row in table.rows}
    assert set(variants) == {"pointy", "tagger", "majority", "heuristic", "linear"}
    assert "ece" in variants["pointy"]["metrics"] and "ece" in variants["linear"]["metrics"]
    assert "span_iou_retracement" in variants["heuristic"]["metrics"]
    entry = variants["pointy"]["metrics"]["span_iou"]
    assert entry["value"] == pytest.approx(sum(entry["per_set"]) / 2)
    assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    assert variants["pointy"]["seeds"] == [13, 17]  # numeric order, as per_set is
    assert "| pointy | 13,17 |" in table.markdown()
    held = compare_runs(runs_dir, split="calibration_split", n_boot=100)
    assert {r["variant"] for r in held.rows} == set(variants)
    with pytest.raises(MoolaError, match="not one of oof, calibration_split"):
        compare_runs(runs_dir, split="test")


def test_select_chooses_the_variant_out_of_fold_and_ships_its_smallest_seed(grid):
    runs_dir, results = grid
    record = select_run(runs_dir, primary_metric="span_iou", n_boot=100)
    on_disk = json.loads((runs_dir / "selected.json").read_text())
    assert on_disk == record
    assert {"run_id", "metric", "value", "ci", "reason", "calibration_split", "gate"} <= set(record)
    assert record["split"] == "oof"
    table = compare_runs(runs_dir, split="oof", n_boot=100)
    best = max(table.models(), key=lambda r: r["metrics"]["span_iou"]["value"])
    assert record["variant"] == best["variant"]
    assert record["value"] == pytest.approx(best["metrics"]["span_iou"]["value"], abs=1e-4)
    # no figure picks the seed: the variant's smallest one ships
    assert record["seed"] == 13
    chosen = next(r for r in results if r.run_id == record["run_id"])
    assert chosen.metrics["variant"] == record["variant"] and chosen.metrics["seed"] == 13
    assert record["variant"] in record["reason"] and "calibration split" in record["reason"]
    # the gate judged each variant with its seeds pooled, and every run carries its verdict
    gate = record["gate"]
    assert gate["evidence"]["seeds"] == [13, 17] and gate["variants_compared"] == 2
    for result in results:
        stored = json.loads((result.path / "metrics.json").read_text())["gate"]
        assert stored["evidence"]["candidate"] == result.metrics["variant"]
    with pytest.raises(MoolaError, match="unknown metric"):
        select_run(runs_dir, primary_metric="f2")


def test_selection_without_runs_is_a_clear_error(tmp_path):
    with pytest.raises(MoolaError, match="no finished runs"):
        select_run(tmp_path)


def test_a_run_records_provenance_calibration_and_abstention(grid):
    _, results = grid
    run = results[0]
    metrics = run.metrics
    assert set(metrics["provenance"]) >= {"commit", "dirty", "versions", "machine"}
    assert metrics["provenance"]["versions"]["torch"] == torch.__version__
    assert metrics["device"] == "cpu" and metrics["bf16"] is False
    learning = metrics["learning"]
    assert len(learning["first_val_loss"]) == 3  # one per fold
    pairs = zip(learning["first_val_loss"], learning["best_val_loss"], strict=True)
    assert all(first >= best for first, best in pairs)
    model_json = json.loads((run.path / "model.json").read_text())
    calibration = metrics["calibration"]
    assert model_json["object_bias"] == calibration["object_bias"]  # a live model's Platt
    assert model_json["abstain_threshold"] == calibration["abstain_threshold"]
    assert calibration["abstain_within_bars"] == 5 and calibration["prevalence"] == 0.025
    predictions = json.loads((run.path / "predictions.json").read_text())
    oof = predictions["oof"]
    assert len(oof["abstain"]) == len(oof["label"]) == len(oof["truth"]["group"])
    assert sorted(set(oof["fold"])) == [1, 2, 3]
    assert set(predictions["baselines"]) == {"majority", "heuristic", "linear"}
    # a live model: out-of-fold as-of cuts, and the gate's stream scored for it and beside it
    assert set(predictions["oof_cuts"]) >= {"window_id", "delay", "under_way", "confidence"}
    assert set(predictions["stream"]["baselines"]) == {"linear", "heuristic"}
    assert metrics["stream"]["model"]["sessions"] == 3
    assert metrics["stream"]["reliability"]["bins"]


def test_evaluate_reproduces_the_recorded_metrics(grid):
    runs_dir, results = grid
    report = evaluate_run(results[0].run_id, runs_dir, n_boot=100)
    assert report["matches_recorded"] is True
    with pytest.raises(MoolaError, match="no finished run"):
        evaluate_run("jade-s1-nothing", runs_dir)


def test_old_split_keys_name_the_new_protocol():
    with pytest.raises(
        MoolaError, match="split.val_share is gone: a run is now judged out of fold"
    ):
        load_config(overrides={"split.val_share": 0.2})


def test_a_labeled_file_gets_no_pattern_free_windows_by_default(tmp_path):
    config = load_config(overrides={"data.source": "file", "data.path": "x.parquet"})
    assert config.data.negative_share == 0.0
    with pytest.raises(MoolaError, match="negative_share needs data.source: synthetic"):
        load_config(
            overrides={"data.source": "file", "data.path": "x.parquet", "data.negative_share": 0.3}
        )


REPO = Path(__file__).resolve().parents[2]


def invoke(*args):
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True
    )


def test_invoke_compare_json_and_a_clear_error_for_an_empty_runs_folder(grid, tmp_path):
    runs_dir, _ = grid
    done = invoke("compare", "--runs-dir", str(runs_dir), "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    assert {row["variant"] for row in rows} >= {"pointy", "tagger", "heuristic"}
    empty = invoke("compare", "--runs-dir", str(tmp_path))
    assert empty.returncode == 1
    assert "no finished runs" in empty.stderr and "Traceback" not in empty.stderr


def test_doctor_reports_every_check_with_a_fix_for_anything_missing():
    from moola_ops.cli.train import doctor_checks

    checks = {check["name"]: check for check in doctor_checks(str(REPO))}
    assert {"python", "torch", "cuda", "fabric", "paramiko", "sshd", "pip check"} <= set(checks)
    for check in checks.values():
        assert check["status"] in ("ok", "warn", "fail")
        if check["status"] != "ok":
            assert check["fix"], check
    assert checks["torch"]["status"] == "ok"

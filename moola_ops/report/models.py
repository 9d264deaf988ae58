"""The report's model sections: training curves and the candidate comparison (with CIs and
the baselines), the chosen run's reliability diagram, and predicted vs true spans on
candlesticks (out-of-fold windows, best and worst, and the real-bar sample)."""

from __future__ import annotations

import json
from pathlib import Path

from moola_core.errors import MoolaError
from moola_ops.report.page import Section, _esc, _figure, _table

N_SPAN_WINDOWS = 3  # best and worst test windows shown each
N_REAL_WINDOWS = 6


def _candidates(runs_dir: Path) -> Section:
    from moola_core.train import runs as R

    section = Section("candidates", "Candidates: training curves and comparison")
    found = R.list_runs(runs_dir)
    if not found:
        section.missing = f"no finished training runs in {runs_dir} (train with `invoke train`)"
        return section
    from moola_ops.report import figures

    histories = {}
    for run in found:
        path = run.path / R.HISTORY
        if path.is_file():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            # the first fold's model: it stops on its own slice (the final model has none)
            rows = [r for r in rows if r.get("model", "fold-1") == "fold-1" and "val" in r]
            if rows:
                histories[run.run_id] = rows
    if histories:
        _figure(
            section,
            "curves",
            figures.training_curves(histories, "curves"),
            "First fold of each run: training (dashed) and early-stopping (solid) loss per "
            "epoch, and early-stopping span IoU; the star marks the epoch whose weights were "
            "kept. The final model trains for the folds' median best epoch.",
        )
    from moola_core.train.compare import compare_runs

    selected = _selected(runs_dir)
    for split, note in (
        ("oof", "out of fold: what the choice and the quality gate read"),
        ("calibration_split", "the final models on the sealed calibration split"),
    ):
        try:
            comparison = compare_runs(runs_dir, split=split, n_boot=500)
        except MoolaError as exc:
            section.body.append(f"<p class='note'>{_esc(exc)}</p>")
            continue
        metrics = ("span_iou", "accuracy")
        _figure(
            section,
            f"compare-{split}",
            figures.comparison(comparison.rows, metrics, split, f"compare-{split}"),
            f"Candidates and baselines on {split} ({note}), 95% bootstrap CIs over windows "
            "and seeds.",
        )
        rows = []
        for r in comparison.rows:
            mark = (
                " (selected)"
                if selected and selected in r["run_ids"] and r["kind"] == "model"
                else ""
            )
            rows.append(
                [r["variant"] + mark, r["kind"], r["n"]]
                + [
                    _fmt(r["metrics"][m])
                    for m in ("span_iou", "accuracy", "start_hit3", "end_hit3", "boundary_mae")
                ]
            )
        section.body.append(
            _table(
                [
                    "variant",
                    "kind",
                    "windows",
                    "span IoU",
                    "accuracy",
                    "start ±3",
                    "end ±3",
                    "boundary MAE",
                ],
                rows,
            )
        )
    return section


def _fmt(m: dict) -> str:
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def _selected(runs_dir: Path) -> str | None:
    try:
        return json.loads((runs_dir / "selected.json").read_text()).get("run_id")
    except (OSError, ValueError):
        return None


def _chosen_run(runs_dir: Path):
    from moola_core.train import runs as R

    found = [r for r in R.list_runs(runs_dir) if (r.path / R.PREDICTIONS).is_file()]
    if not found:
        return None
    selected = _selected(runs_dir)
    for run in found:
        if run.run_id == selected:
            return run
    return max(found, key=lambda r: r.metrics.get("oof", {}).get("span_iou", {}).get("value", 0))


def _spans(runs_dir: Path, real: bool) -> Section:
    section = Section("spans", "Predicted vs true spans")
    run = _chosen_run(runs_dir)
    if run is None:
        section.missing = "no run with predictions to draw"
        return section
    import numpy as np

    from moola_core.metrics import span_iou
    from moola_core.spec import LABELS
    from moola_core.train import runs as R
    from moola_ops.report import figures

    predictions = json.loads((run.path / R.PREDICTIONS).read_text())
    if "oof" not in predictions:
        section.missing = f"{run.run_id} was trained before out-of-fold runs; train it again"
        return section
    test = predictions["oof"]
    truth = test["truth"]
    iou = span_iou(test["start"], test["end"], truth["start"], truth["end"])
    order = np.argsort(iou, kind="stable")
    picks = [(int(i), "best") for i in order[::-1][:N_SPAN_WINDOWS]]
    picks += [(int(i), "worst") for i in order[:N_SPAN_WINDOWS]]
    frame = _labeled_frame(run)
    if frame is None:
        section.body.append(
            "<p class='note'>the run's labeled data cannot be loaded, so its out-of-fold "
            "windows cannot be drawn</p>"
        )
    else:
        by_id = {str(w): i for i, w in enumerate(frame["window_id"])}
        windows = []
        for i, kind in picks:
            row = by_id.get(str(test["window_id"][i]))
            if row is None:
                continue
            ohlc = np.asarray(frame["features"].iloc[row].tolist(), dtype=float).reshape(-1, 4)
            right = "right" if test["label"][i] == truth["label"][i] else "wrong"
            windows.append(
                {
                    "ohlc": ohlc,
                    "true_span": (truth["start"][i], truth["end"][i]),
                    "pred_span": (test["start"][i], test["end"][i]),
                    "title": f"{kind}: {test['window_id'][i]}  IoU {iou[i]:.2f}\n"
                    f"true {LABELS[truth['label'][i]]}, predicted "
                    f"{LABELS[test['label'][i]]} ({right})",
                }
            )
        if windows:
            _figure(
                section,
                "spans-test",
                figures.span_grid(windows, "spans-test"),
                f"Out-of-fold windows of {run.run_id} (each predicted by the fold model that "
                f"never saw it): the {N_SPAN_WINDOWS} best and {N_SPAN_WINDOWS} worst by span "
                "IoU. Green band: true span; hatched orange: predicted span.",
            )
    if real:
        try:
            windows = _real_windows(run, runs_dir)
        except MoolaError as exc:
            section.body.append(f"<p class='note'>real-bar sample: {_esc(exc)}</p>")
        else:
            _figure(
                section,
                "spans-real",
                figures.span_grid(windows, "spans-real"),
                "The same model on the real 1-minute sample (moola_core.data.real, one US "
                "stock): real bars have no labels, so only the predicted span is drawn.",
            )
    return section


def _labeled_frame(run):
    from moola_core.train.config import load_config
    from moola_core.train.data import load_labeled_frame
    from moola_core.train.runs import CONFIG

    try:
        return load_labeled_frame(load_config(run.path / CONFIG))
    except (MoolaError, OSError):
        return None


def _real_windows(run, runs_dir: Path) -> list[dict]:
    import numpy as np
    import torch

    from moola_core.data.bars import session_bounds
    from moola_core.data.real import load_real_sample
    from moola_core.spec import LABELS, WINDOW_LEN
    from moola_core.train.runs import load_model
    from moola_ops.watch.drift import window_features

    bars = load_real_sample()
    ohlc = bars[["open", "high", "low", "close"]].to_numpy(dtype=float)
    starts = []
    for a, b in session_bounds(bars["timestamp"], 5.0):
        starts += list(range(int(a), int(b) - WINDOW_LEN + 1, WINDOW_LEN))
    step = max(1, len(starts) // N_REAL_WINDOWS)
    starts = starts[::step][:N_REAL_WINDOWS]
    windows = np.stack([ohlc[s : s + WINDOW_LEN] for s in starts])
    x, valid = window_features(windows)
    model = load_model(run.run_id, runs_dir)
    with torch.no_grad():
        pred = model.predict(torch.from_numpy(x), torch.from_numpy(valid))
    out = []
    for i, s in enumerate(starts):
        label = int(pred["label"][i])
        p = float(pred["class_probs"][i][label])
        stamp = bars["timestamp"].iloc[s].strftime("%m-%d %H:%M")
        out.append(
            {
                "ohlc": windows[i],
                "pred_span": (int(pred["start"][i]), int(pred["end"][i])),
                "title": f"real bars from {stamp} UTC\npredicted {LABELS[label]} (p {p:.2f})",
            }
        )
    return out


def _reliability(runs_dir: Path) -> Section:
    """The chosen run's calibration: how often an expansion really was under way (live model)
    or the window really held the predicted class, for each band of the stated probability."""
    section = Section("reliability", "Reliability: is the stated probability right?")
    run = _chosen_run(runs_dir)
    if run is None:
        section.missing = "no run with predictions to draw"
        return section
    from moola_ops.report import figures

    stream = run.metrics.get("stream") or {}
    cuts = run.metrics.get("live_cuts") or {}
    panels = []
    if stream.get("reliability"):
        panels.append(
            (
                f"every bar of the gate's stream ({stream.get('sessions')} sessions, never used "
                "to train or choose)",
                stream["reliability"],
            )
        )
    if cuts.get("reliability"):
        share = cuts["reliability"].get("at_share")
        panels.append(
            (
                "out-of-fold as-of cuts (fold models), the prior shift undone: probabilities at "
                f"the cuts' own share of expansions under way ({share:.0%})"
                if share is not None
                else "out-of-fold as-of cuts (fold models)",
                cuts["reliability"],
            )
        )
    if not panels:
        section.missing = (
            f"{run.run_id} is not a live model (model.live): its confidence is not a "
            "probability of an event, so there is no reliability diagram to draw"
        )
        return section
    _figure(
        section,
        "reliability",
        figures.reliability(panels, "reliability"),
        f"{run.run_id}: predicted probability (x, mean per bin; bins hold equal numbers of "
        "answers) against the observed share of bars with an expansion under way (y). On the "
        "diagonal the probability is right; ECE is the count-weighted mean gap. The abstain "
        f"threshold is {run.metrics.get('calibration', {}).get('abstain_threshold', 0):.3f}.",
    )
    return section

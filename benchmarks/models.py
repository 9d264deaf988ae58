"""The model benchmark: variants x seeds through the whole protocol, chosen on validation,
tested once on fresh data and streams, next to the baselines; plus the quality gate's error
rates at real data sizes.

    python benchmarks/models.py                       # full: -> docs/benchmarks/models.md
    python benchmarks/models.py --quick --out /tmp/models.md   # a smoke run (tiny models)

1. **Train** every variant (configs/<variant>.yaml) x seeds on the default protocol (174
   synthetic windows, data seed 0): each run is `invoke train`'s run (out-of-fold models,
   final model, calibration split, the gate's 40-session stream).
2. **Choose on validation**: the out-of-fold predictions and the gate's stream (what
   `invoke select` reads). The new model is the live variant selection picks; the
   after-the-fact model is the best after-the-fact variant the same way. `invoke select`'s
   verdict is recorded for every variant.
3. **Test once**, on data no step before touched (seeds 9001-9006): a fresh labeled set (600
   windows) for span figures; fresh synthetic streams (150 sessions, the market's own
   prevalence of expansions and hard negatives) for the stream figures of the new model, the
   after-the-fact model, the linear baseline and the heuristic, all on the same bars; the
   real-bar sample (unlabeled: every alarm counted); fresh as-of cuts for the abstain
   threshold's recall; the calibration of P(expansion under way) on the stream (adaptive ECE,
   reliability bins).
4. **The gate's error rates**, simulated on paired per-window values drawn from the real runs
   (see `simulate_gate`): the false-pass rate for variants truly equal to the linear baseline
   through the whole selection, and the power at a true +0.05 span IoU.

Every figure has a 95% bootstrap CI (windows' overlap groups or stream sessions, and seeds).
Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from moola_core import metrics as M  # noqa: E402
from moola_core import streams  # noqa: E402

SEEDS = (17, 13, 23, 29)
VARIANTS = ("jade", "jade_nopos", "jade_after")
FRESH_SEED, STREAM_SEED, ASOF_SEED = 9001, 9005, 9003  # never used in development
FRESH_WINDOWS, STREAM_SESSIONS, ASOF_WINDOWS = 600, 150, 300
SIM_TRIALS, SIM_VARIANTS = 2000, 5
TRUE_GAIN = 0.05
MODELS = ("live", "after_the_fact", "linear", "heuristic")
FRESH_METRICS = (
    "span_iou",
    "span_iou_consolidation",
    "span_iou_retracement",
    "iou_ge_50",
    "boundary_mae",
    "accuracy",
    "ece",
)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def load(run_path: Path, name: str) -> dict:
    return json.loads((run_path / name).read_text())


# -- 1. training ----------------------------------------------------------------------------


def train_all(variants, seeds, runs_dir: Path, overrides: dict) -> tuple[dict, dict]:
    """({variant: [RunResult per seed]}, {variant: [wall seconds per run]}); variants sharing
    data settings share prepared data (so a variant's first run also pays for the cuts, the
    baselines and the stream's features)."""
    from moola_core.train import load_config, train_run
    from moola_core.train.data import prepare_data

    results, prepared, seconds = {}, {}, {}
    for variant in variants:
        config = load_config(REPO / "configs" / f"{variant}.yaml", overrides)
        key = json.dumps(config.model_dump(include={"data", "split", "live", "stream"}))
        data = prepared.get(key) or prepare_data(config)
        prepared[key] = data
        for seed in seeds:
            started = time.perf_counter()
            result = train_run(
                config.model_copy(update={"seed": seed}),
                runs_dir,
                progress="none",
                data=data,
            )
            m = result.metrics
            seconds.setdefault(variant, []).append(round(time.perf_counter() - started, 1))
            stream = (m.get("stream") or {}).get("model", {})
            say(
                f"{variant} seed {seed}: out-of-fold span IoU {m['oof']['span_iou']['value']:.3f} "
                f"(linear {m['baselines']['linear']['oof']['span_iou']['value']:.3f}), stream "
                f"false alarms/1k {stream.get('false_alarms_per_1k', {}).get('value', float('nan')):.2f}, "
                f"{time.perf_counter() - started:.0f} s"
            )
            results.setdefault(variant, []).append(result)
    return results, seconds


def choose(results: dict, live: bool) -> str | None:
    """The variant `invoke select` would pick among the live (or after-the-fact) variants:
    the best pooled out-of-fold span IoU."""
    pool = {v: r for v, r in results.items() if bool(r[0].metrics.get("live")) == live}
    if not pool:
        return None
    return max(
        pool, key=lambda v: np.mean([r.metrics["oof"]["span_iou"]["value"] for r in pool[v]])
    )


# -- 3. test once ---------------------------------------------------------------------------


def models_of(results: list):
    from moola_core.train.runs import load_model

    return [load_model(r.run_id, r.path.parent) for r in results]


def fresh_labeled(n: int, seed: int):
    from moola_core.data import labeled, splits, synthetic

    frame = synthetic.make_labeled_set(n_windows=n, seed=seed).reset_index(drop=True)
    arrays = labeled.to_model_arrays(frame)
    row_group = splits.overlap_groups(len(frame), labeled.sharing_pairs(frame).keys())
    truth = {"label": arrays.label, "start": arrays.start, "end": arrays.end, "group": row_group}
    return frame, arrays, truth


def dev_baselines(results: dict):
    """The baselines every run of the protocol was compared with, fitted on its development
    windows (the same for every seed and variant: the data is the same)."""
    from moola_core.train.config import load_config
    from moola_core.train.data import prepare_data

    first = next(iter(results.values()))[0]
    data = prepare_data(load_config(first.path / "config.yaml"))
    return data.baselines("dev")


def stream_scores(stream, batches, predictors: dict, live_names: set) -> tuple[dict, dict]:
    """Each predictor bar by bar over one stream -> ({name: StreamScore}, {name: predictions})."""
    from moola_core.train.run import stream_predictions

    preds = stream_predictions(predictors, batches)
    scores = {
        name: streams.score_alarms(stream, streams.alarms(pred, live=name in live_names))
        for name, pred in preds.items()
    }
    return scores, preds


def asof_recall(models, seed: int, n: int, within: int, n_boot: int = 1000) -> dict:
    """Share of fresh expansions (as-of cuts built as the calibration split's are, bars before
    each window included) answered within `within` bars of their first bar, by each model at
    its own abstain threshold -> {"value", "ci_low", "ci_high", "per_seed", "windows"}."""
    from moola_core.data import synthetic
    from moola_core.train.live import detected_within, episode_cuts
    from moola_core.train.loop import predict_arrays

    frame, arrays, truth = fresh_labeled(n, seed)
    context_by_id = synthetic.labeled_set_context(n, seed)
    ohlc = np.stack([np.asarray(c, dtype=float).reshape(-1, 4) for c in frame["features"]])
    cuts = episode_cuts(
        ohlc,
        arrays.start,
        arrays.end,
        arrays.label,
        context=[context_by_id.get(w) for w in arrays.window_id],
        delays=list(range(0, within + 1)),
    )
    hits = []
    for model in models:
        pred = predict_arrays(model, cuts.x, cuts.valid)
        windows, peak = detected_within(pred["confidence"], cuts, within)
        hits.append(peak >= model.config["abstain_threshold"])
    hits = np.stack(hits).astype(float)  # [K, W]
    groups = np.asarray(truth["group"])[windows]
    rng = np.random.default_rng(0)
    weights = M.resample_weights(groups, n_boot, rng)  # [B, W]
    seed_pick = rng.integers(0, len(models), size=(n_boot, len(models)))
    boot = np.array(
        [(weights[b] @ hits[seed_pick[b]].mean(0)) / weights[b].sum() for b in range(n_boot)]
    )
    return {
        "value": float(hits.mean()),
        "ci_low": float(np.percentile(boot, 2.5)),
        "ci_high": float(np.percentile(boot, 97.5)),
        "per_seed": [round(float(h.mean()), 4) for h in hits],
        "windows": int(hits.shape[1]),
    }


def calibration_on_stream(stream, preds: list[dict], n_boot: int = 1000) -> dict:
    """Adaptive-bin ECE of P(expansion under way) against the truth at every bar, each seed's
    model separately, averaged; CI over sessions (and seeds); the first seed's bins."""
    truth = stream.under_way()[stream.bars].astype(float)
    session = stream.session[stream.bars]
    sessions, where = np.unique(session, return_inverse=True)
    rng = np.random.default_rng(0)
    drawn = rng.integers(0, len(sessions), size=(n_boot, len(sessions)))
    values, boots = [], []
    for pred in preds:
        prob = pred["confidence"]
        values.append(M.reliability_bins(prob, truth)["ece"])
        boot = []
        for b in range(n_boot):
            w = np.bincount(drawn[b], minlength=len(sessions))[where]
            boot.append(M.reliability_bins(prob, truth, weights=w)["ece"])
        boots.append(boot)
    boot = np.mean(boots, axis=0)
    return {
        "value": float(np.mean(values)),
        "ci_low": float(np.percentile(boot, 2.5)),
        "ci_high": float(np.percentile(boot, 97.5)),
        "per_seed": [round(v, 4) for v in values],
        "bins": M.reliability_bins(preds[0]["confidence"], truth)["bins"],
    }


def threshold_sweep(stream, preds: list[dict], thresholds) -> list[dict]:
    """A live model's stream figures at other thresholds (the trade-off curve)."""
    rows = []
    for t in thresholds:
        scores = [streams.score_alarms(stream, p["confidence"] >= t) for p in preds]
        s = streams.summarize(scores, n_boot=200)
        rows.append(
            {
                "threshold": t,
                "false_alarms_per_1k": s["false_alarms_per_1k"]["value"],
                "recall_within": s["recall_within"]["value"],
            }
        )
    return rows


# -- 4. the gate's error rates ----------------------------------------------------------------


def simulate_gate(
    predictions: dict,
    linear: dict,
    heuristic: dict,
    truth: dict,
    *,
    trials: int,
    n_variants: int,
    gain: float,
    seed: int = 0,
    n_boot: int = 1000,
    size: float = 1.0,
) -> dict:
    """Share of simulated selections whose chosen variant passes the gate.

    The generative model is fitted to the real runs' out-of-fold per-window span IoU:
    `predictions` {variant: [per-seed OOF prediction dicts]} on the same windows as the
    linear and heuristic baselines' OOF predictions and `truth` (with overlap groups). Per
    real variant v: its window effect D_v(w) = mean over seeds of IoU_v,s(w) - linear(w),
    centred to mean 0 (the variant is exactly as good as linear) and shifted by `gain`, and its
    seed residuals R_v,s(w) = IoU_v,s(w) - mean over seeds. A trial draws a new data set
    (overlap groups drawn with replacement, as many as there are), `n_variants` variants (each
    a real variant's window effects, in turn) with as many seeds as the real runs (residuals
    of the real seeds drawn with replacement), then runs the selection and the gate exactly
    as `invoke select` does: best pooled mean, then moola_core.train.gate.decide with the
    Bonferroni share for n_variants. `size` scales the number of groups drawn (2.0: a data set
    twice as large, drawn from the same windows)."""
    from moola_core.train.gate import Evidence, GateRules, decide, per_window

    lin = per_window(linear, truth, "span_iou")
    heu = per_window(heuristic, truth, "span_iou")
    effects, residuals = [], []
    for per_seed in predictions.values():
        values = np.stack([per_window(p, truth, "span_iou") for p in per_seed])  # [S, n]
        mean = values.mean(0)
        effect = mean - lin
        effects.append(effect - effect.mean() + gain)
        residuals.append(values - mean)
    groups = np.asarray(truth["group"])
    ids = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in ids]
    rng = np.random.default_rng(seed)
    rules = GateRules(variants_compared=n_variants, n_boot=n_boot, stream_against=())
    passed = 0
    for trial in range(trials):
        picked = rng.integers(0, len(ids), size=int(round(size * len(ids))))
        rows = np.concatenate([members[g] for g in picked])
        new_groups = np.concatenate([np.full(len(members[g]), k) for k, g in enumerate(picked)])
        window_ids = tuple(f"w{i}" for i in range(len(rows)))
        candidates = []
        for k in range(n_variants):
            v = k % len(effects)
            n_seeds = residuals[v].shape[0]
            seeds = rng.integers(0, n_seeds, size=n_seeds)
            values = lin[rows] + effects[v][rows] + residuals[v][seeds][:, rows].mean(0)
            candidates.append(values)
        best = int(np.argmax([c.mean() for c in candidates]))
        cand = Evidence(f"v{best}", window_ids, new_groups, candidates[best])
        comparators = {
            "linear": Evidence("linear", window_ids, new_groups, lin[rows]),
            "heuristic": Evidence("heuristic", window_ids, new_groups, heu[rows]),
        }
        verdict = decide(cand, comparators, replace(rules, seed=trial))
        passed += bool(verdict["passed"])
    rate = passed / trials
    half = 1.96 * np.sqrt(rate * (1 - rate) / trials)
    return {
        "rate": rate,
        "ci_low": max(0.0, rate - half),
        "ci_high": min(1.0, rate + half),
        "trials": trials,
        "variants": n_variants,
        "seeds": int(residuals[0].shape[0]),
        "windows": int(round(size * len(lin))),
        "gain": gain,
    }


# -- the page ---------------------------------------------------------------------------------


def per_window_of(pred: dict, truth: dict):
    from moola_core.train.gate import per_window

    return per_window(pred, truth, "span_iou")


def fmt(entry, digits: int = 3) -> str:
    if entry is None or entry.get("value") is None:
        return "-"
    low, high = entry.get("ci_low"), entry.get("ci_high")
    value = f"{entry['value']:.{digits}f}"
    if low is None or high is None:
        return value + (" [-, -]" if "ci_low" in entry else "")
    return f"{value} [{low:.{digits}f}, {high:.{digits}f}]"


def fmt_delay(entry) -> str:
    if entry["value"] is None:
        return "not reached (over half missed)"
    high = "not reached" if entry["ci_high"] is None else f"{entry['ci_high']:.0f}"
    low = "-" if entry["ci_low"] is None else f"{entry['ci_low']:.0f}"
    return f"{entry['value']:.0f} [{low}, {high}]"


def main() -> int:  # noqa: C901 - one benchmark, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--stream-sessions", type=int, default=STREAM_SESSIONS)
    parser.add_argument("--trials", type=int, default=SIM_TRIALS, help="gate simulation trials")
    parser.add_argument("--quick", action="store_true", help="tiny models and data: a smoke run")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a training-config override for every run (repeatable), e.g. split.folds=3",
    )
    parser.add_argument("--runs-dir", default="", help="keep the runs here (default: temporary)")
    parser.add_argument("--out", default=str(REPO / "docs/benchmarks/models.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    overrides: dict = {}
    fresh_windows, asof_windows, sessions, trials = (
        FRESH_WINDOWS,
        ASOF_WINDOWS,
        args.stream_sessions,
        args.trials,
    )
    if args.quick:
        overrides = {
            "data.n_windows": 60,
            "model.hidden": 8,
            "model.layers": 1,
            "optim.max_epochs": 2,
            "split.folds": 3,
            "stream.sessions": 3,
        }
        fresh_windows, asof_windows, sessions, trials = 60, 30, 4, 40
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--set {item!r}: write SECTION.KEY=VALUE, e.g. split.folds=3")
        import yaml

        overrides[key.strip()] = yaml.safe_load(value)
    runs_dir = Path(args.runs_dir or tempfile.mkdtemp(prefix="moola-bench-"))
    started = dt.datetime.now(dt.UTC)
    clock = time.perf_counter()
    from moola_core.train.provenance import provenance

    prov = provenance("cpu")
    say(f"runs in {runs_dir}; variants {variants}, seeds {seeds}")

    # 1. train ---------------------------------------------------------------------------------
    results, run_seconds = train_all(variants, seeds, runs_dir, overrides)
    first_run = next(iter(results.values()))[0]
    first = first_run.metrics
    from moola_core.train.config import load_config

    gate_sessions = load_config(first_run.path / "config.yaml").stream.sessions

    # 2. choose on validation (out of fold), and invoke select's verdicts ----------------------
    from moola_core.train.selection import select_run

    selection = select_run(runs_dir, n_boot=1000)
    gates = {v: load(r[0].path, "metrics.json").get("gate", {}) for v, r in results.items()}
    live_variant = choose(results, live=True)
    after_variant = choose(results, live=False)
    if live_variant is None or after_variant is None:
        raise SystemExit("the benchmark needs one live and one after-the-fact variant")
    say(f"chosen on validation: live {live_variant}, after the fact {after_variant}")
    oof_rows = []
    for variant, runs in results.items():
        preds = [load(r.path, "predictions.json")["oof"] for r in runs]
        oof_rows.append((variant, M.evaluate_mean(preds, preds[0]["truth"])))
    base_oof = load(results[live_variant][0].path, "predictions.json")
    truth_oof = base_oof["oof"]["truth"]
    for name in ("linear", "heuristic", "majority"):
        oof_rows.append((name, M.evaluate_mean([base_oof["baselines"][name]["oof"]], truth_oof)))

    # 3. test once -------------------------------------------------------------------------------
    say("test: fresh labeled set ...")
    live_models = models_of(results[live_variant])
    after_models = models_of(results[after_variant])
    baselines = dev_baselines(results)
    _, fresh, fresh_truth = fresh_labeled(fresh_windows, FRESH_SEED)
    from moola_core.train.loop import predict_arrays

    fresh_preds = {
        "live": [predict_arrays(m, fresh.x, fresh.valid) for m in live_models],
        "after_the_fact": [predict_arrays(m, fresh.x, fresh.valid) for m in after_models],
        "linear": [baselines["linear"].predict(fresh.x, fresh.valid)],
        "heuristic": [baselines["heuristic"].predict(fresh.x, fresh.valid)],
    }
    fresh_rows = {k: M.evaluate_mean(v, fresh_truth) for k, v in fresh_preds.items()}
    fresh_diff = {
        other: M.paired_difference(fresh_preds["live"], fresh_preds[other], fresh_truth, "span_iou")
        for other in ("after_the_fact", "linear", "heuristic")
    }

    say(f"test: a fresh {sessions}-session stream (features, then every model bar by bar) ...")
    stream = streams.synthetic_stream(sessions, STREAM_SEED)
    batches = list(streams.window_batches(stream))
    predictors = {
        f"live{i}": (lambda x, v, m=m: predict_arrays(m, x, v)) for i, m in enumerate(live_models)
    }
    predictors.update(
        {
            f"after{i}": (lambda x, v, m=m: predict_arrays(m, x, v))
            for i, m in enumerate(after_models)
        }
    )
    predictors["linear"] = baselines["linear"].predict
    predictors["heuristic"] = baselines["heuristic"].predict
    members = {
        "live": [f"live{i}" for i in range(len(live_models))],
        "after_the_fact": [f"after{i}" for i in range(len(after_models))],
        "linear": ["linear"],
        "heuristic": ["heuristic"],
    }
    live_names = set(members["live"])
    scores, preds = stream_scores(stream, batches, predictors, live_names)
    del batches
    grouped = {k: [scores[n] for n in names] for k, names in members.items()}
    stream_figures = {k: streams.summarize(v) for k, v in grouped.items()}
    stream_vs_after = {
        metric: streams.paired_difference(grouped["live"], grouped["after_the_fact"], metric)
        for metric in ("false_alarms_per_1k", "recall_within")
    }
    live_preds = [preds[n] for n in members["live"]]
    calibration = calibration_on_stream(stream, live_preds)
    sweep = threshold_sweep(stream, live_preds, (0.05, 0.1, 0.15, 0.2, 0.25, 0.3))
    # which false alarms start near a hard negative (a decoy, a failed breakout, a pattern
    # without its expansion), as a share of each model's false alarms
    near = np.zeros(len(stream.ohlc), dtype=bool)
    for a, b in stream.hard_negatives:
        near[a : b + 6] = True
    inside = streams.event_windows(stream)
    hard_kinds = {}
    for key, names_of in members.items():
        shares = []
        for n in names_of:
            alarm = np.zeros(len(stream.ohlc), dtype=bool)
            alarm[stream.bars] = streams.alarms(preds[n], live=n in live_names)
            outside = alarm & ~inside
            start = outside & ~np.concatenate([[False], outside[:-1]])
            shares.append(float((start & near).sum()) / max(float(start.sum()), 1.0))
        hard_kinds[key] = round(float(np.mean(shares)), 3)

    say("test: the real-bar sample (unlabeled) ...")
    try:
        real = streams.real_stream()
        real_batches = list(streams.window_batches(real))
        real_scores, _ = stream_scores(real, real_batches, predictors, live_names)
        real_grouped = {k: [real_scores[n] for n in names] for k, names in members.items()}
        real_figures = {k: streams.summarize(v) for k, v in real_grouped.items()}
    except Exception as exc:  # the sample is an optional extra; say why it is missing
        real_figures = {"error": str(exc)}

    say("test: fresh as-of cuts for the abstain threshold's recall ...")
    live_calibration = results[live_variant][0].metrics["calibration"]
    within = int(live_calibration.get("abstain_within_bars", streams.RECALL_WITHIN))
    recall_fresh = asof_recall(live_models, ASOF_SEED, asof_windows, within)

    # 4. the gate's error rates ------------------------------------------------------------------
    say(f"gate simulation: {trials} trials x 2 ...")
    predictions = {
        v: [load(r.path, "predictions.json")["oof"] for r in runs] for v, runs in results.items()
    }
    sim_args = dict(
        linear=base_oof["baselines"]["linear"]["oof"],
        heuristic=base_oof["baselines"]["heuristic"]["oof"],
        truth=truth_oof,
        trials=trials,
        n_variants=SIM_VARIANTS,
    )
    false_pass = simulate_gate(predictions, gain=0.0, **sim_args)
    power = simulate_gate(predictions, gain=TRUE_GAIN, **sim_args)
    one_seed = {live_variant: predictions[live_variant][:1]}
    pooled = {live_variant: predictions[live_variant]}
    alone = {**sim_args, "n_variants": 1}
    power_one = simulate_gate(one_seed, **alone, gain=TRUE_GAIN)
    false_pass_one = simulate_gate(one_seed, **alone, gain=0.0)
    power_pooled = simulate_gate(pooled, **alone, gain=TRUE_GAIN)
    power_by_size = {
        str(size): simulate_gate(one_seed, **alone, gain=TRUE_GAIN, size=size)
        for size in (2.0, 3.0)
    }
    diff_sd = float(
        np.std(
            per_window_of(predictions[live_variant][0], truth_oof)
            - per_window_of(base_oof["baselines"]["linear"]["oof"], truth_oof)
        )
    )
    minutes = (time.perf_counter() - clock) / 60

    # -- the page ---------------------------------------------------------------------------------
    live_fa = stream_figures["live"]["false_alarms_per_1k"]["value"]
    after_fa = stream_figures["after_the_fact"]["false_alarms_per_1k"]["value"]
    live_rec = stream_figures["live"]["recall_within"]["value"]
    after_rec = stream_figures["after_the_fact"]["recall_within"]["value"]
    target_met = bool(live_fa <= 0.5 * after_fa and live_rec >= after_rec)
    recall_target = first["calibration"].get("abstain_recall_target", 0.9)
    names = {
        "live": f"live ({live_variant})",
        "after_the_fact": f"after the fact ({after_variant})",
        "linear": "linear baseline",
        "heuristic": "heuristic",
    }
    command = "python benchmarks/models.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    versions = prov.get("versions", {})
    lines = [
        "# Model benchmark: live and after-the-fact models, chosen out of fold, tested once",
        "",
        f"Written by `{command}` on {started:%Y-%m-%d %H:%M} UTC in {minutes:.0f} min; commit "
        f"{prov['commit'] or 'unknown'}{' (dirty tree)' if prov['dirty'] else ''}; Python "
        f"{platform.python_version()}, torch {versions.get('torch', torch.__version__)}, numpy "
        f"{versions.get('numpy', np.__version__)}; machine {prov['machine']['node']} "
        f"({platform.machine()}, {prov['machine']['cpu_count']} CPUs, shared with other work; "
        "one torch thread).",
        "",
        f"Protocol: `make_labeled_set({first['n_windows']['oof'] + first['n_windows']['calibration_split'] + first['n_windows']['purged']}, seed=0)` "
        f"-> {first['n_windows']['oof']} development windows in {len(first['folds'])} "
        f"time folds (out-of-fold predictions) and a sealed calibration split of "
        f"{first['n_windows']['calibration_split']}; variants {', '.join(variants)} x seeds "
        f"{', '.join(map(str, seeds))}"
        + (" (**quick smoke run: tiny models**)" if args.quick else "")
        + (
            "; every run's config overridden with "
            + ", ".join(f"`{k}={v}`" for k, v in overrides.items())
            if overrides
            else ""
        )
        + ".",
        "",
        "## Validation: out of fold (what the choice and the gate read)",
        "",
        "Mean over seeds [95% CI over overlap groups and seeds]; baselines fitted on the same "
        "training parts.",
        "",
        "| model | span_iou | iou_ge_50 | boundary_mae | accuracy | ece |",
        "|---|---|---|---|---|---|",
        *[
            f"| {name} | "
            + " | ".join(
                fmt(rep.get(m))
                for m in ("span_iou", "iou_ge_50", "boundary_mae", "accuracy", "ece")
            )
            + " |"
            for name, rep in sorted(oof_rows, key=lambda r: -r[1]["span_iou"]["value"])
        ],
        "",
        f"Chosen on validation: the live model **{live_variant}**; the after-the-fact model "
        f"{after_variant}. `invoke select` over all variants picks **{selection['variant']}** "
        f"(ships {selection['run_id']}).",
        "",
        "The quality gate's verdict per variant (seeds pooled, Bonferroni over "
        f"{len(variants)} variants, stream = the runs' {gate_sessions}-session gate stream):",
        "",
        *[f"- **{v}**: {g.get('summary', 'no verdict')}" for v, g in gates.items()],
        "",
        f"## Test once: the fresh labeled set ({fresh_windows} windows, seed {FRESH_SEED})",
        "",
        "| model | " + " | ".join(FRESH_METRICS) + " |",
        "|---|" + "---|" * len(FRESH_METRICS),
        *[
            f"| {names[k]} | " + " | ".join(fmt(rep.get(m)) for m in FRESH_METRICS) + " |"
            for k, rep in fresh_rows.items()
        ],
        "",
        *[f"- paired span IoU, live minus {names[k]}: {fmt(d)}" for k, d in fresh_diff.items()],
        "",
        f"## Test once: the stream ({stream_figures['live']['sessions']} sessions, "
        f"{stream_figures['live']['bars']:,} bars, {stream_figures['live']['events']} expansions, "
        f"seed {STREAM_SEED})",
        "",
        "Every model answers every bar's 105-bar window, features computed per window as the "
        "server does. A live model alarms when it does not abstain; a span model (the "
        "after-the-fact model and the baselines) when it answers and its span ends within "
        f"{streams.NOW_TOLERANCE} bars of now. An expansion's window runs from its first bar to "
        f"{streams.GRACE} bars after its last; a false alarm is a run of alarm bars outside "
        "every window. Mean over seeds [95% CI over sessions and seeds].",
        "",
        "| model | false alarms per 1,000 bars | recall within 5 bars | detection delay p50 (bars) | "
        "delay p25 / p75 / p90 | missed | quiet bars alarmed | false alarms near a hard negative |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {names[k]} | {fmt(f['false_alarms_per_1k'], 2)} | {fmt(f['recall_within'])} | "
            f"{fmt_delay(f['delay_p50'])} | "
            + " / ".join("-" if v is None else f"{v:.0f}" for v in f["delay_quantiles"].values())
            + f" | {f['missed_share']:.3f} | {fmt(f['quiet_alarm_share'])} | "
            f"{hard_kinds.get(k, '-')} |"
            for k, f in stream_figures.items()
        ],
        "",
        f"- paired, live minus after the fact: false alarms per 1,000 bars "
        f"{fmt(stream_vs_after['false_alarms_per_1k'], 2)}, recall within 5 bars "
        f"{fmt(stream_vs_after['recall_within'])}",
        f"- **target** (the live model's false alarms at most half the after-the-fact model's, "
        f"at equal or better recall within 5 bars): {live_fa:.2f} vs {after_fa:.2f} "
        f"({live_fa / max(after_fa, 1e-9):.2f}x), recall {live_rec:.3f} vs {after_rec:.3f}: "
        + ("**met**" if target_met else "**not met**")
        + (
            " (the recall difference's CI includes 0: the two are not distinguishable on "
            f"{stream_figures['live']['events']} expansions)"
            if stream_vs_after["recall_within"]["ci_low"]
            <= 0
            <= stream_vs_after["recall_within"]["ci_high"]
            else ""
        ),
        "",
        "The live model at other thresholds on the same stream (mean over seeds; the shipped "
        "threshold is each seed's conformal one):",
        "",
        "| threshold on P(under way) | false alarms per 1,000 bars | recall within 5 bars |",
        "|---|---|---|",
        *[
            f"| {r['threshold']:.2f} | {r['false_alarms_per_1k']:.2f} | {r['recall_within']:.3f} |"
            for r in sweep
        ],
        "",
        "## Test once: calibration and the abstain threshold",
        "",
        f"- ECE of the live model's P(expansion under way) at every bar of the stream, "
        f"{M.ADAPTIVE_BINS} adaptive (equal-count) bins: **{fmt(calibration, 4)}** "
        f"(per seed {calibration['per_seed']})",
        f"- share of fresh expansions answered within {within} bars of their first bar "
        f"(as-of cuts of a fresh {asof_windows}-window set, built as the calibration split's): "
        f"**{fmt(recall_fresh)}** (per seed {recall_fresh['per_seed']}; stated recall "
        f"{recall_target}, guaranteed in expectation by conformal risk control)",
        "",
        "Reliability (first seed; predicted probability per bin -> observed share of bars "
        "under way, bins of equal counts):",
        "",
        "| mean P(under way) | observed share | bars |",
        "|---|---|---|",
        *[f"| {b['p']:.4f} | {b['rate']:.4f} | {b['n']:.0f} |" for b in calibration["bins"]],
        "",
        "## The real-bar sample (unlabeled: every alarm counted, an upper bound of false alarms)",
        "",
    ]
    if "error" in real_figures:
        lines.append(f"Not measured: {real_figures['error']}")
    else:
        lines += [
            "| model | alarms per 1,000 bars | bars alarmed |",
            "|---|---|---|",
            *[
                f"| {names[k]} | {fmt(f['false_alarms_per_1k'], 2)} | {fmt(f['quiet_alarm_share'])} |"
                for k, f in real_figures.items()
            ],
        ]
    lines += [
        "",
        "## The gate's error rates at real data sizes (simulation)",
        "",
        f"Out-of-fold per-window span IoU of the real runs above ({false_pass['windows']} "
        f"windows: what a {first['n_windows']['oof'] + first['n_windows']['calibration_split'] + first['n_windows']['purged']}-label set gives) is the generative model "
        "(benchmarks/models.py `simulate_gate`): each trial draws a new data set (overlap "
        f"groups with replacement), {SIM_VARIANTS} variants (window effects of the real "
        f"variants, centred so each is exactly as good as linear, plus a true gain) with "
        f"{false_pass['seeds']} seeds each (real seed residuals drawn with replacement), then "
        "chooses the best pooled variant and decides the gate exactly as `invoke select` "
        f"does. {trials} trials per figure; 95% binomial intervals.",
        "",
        f"- false-pass rate, every variant truly equal to the linear baseline: "
        f"**{false_pass['rate']:.3f}** [{false_pass['ci_low']:.3f}, {false_pass['ci_high']:.3f}] "
        "(target <= 0.05)",
        f"- power, every variant truly +{TRUE_GAIN} span IoU over linear: **{power['rate']:.3f}** "
        f"[{power['ci_low']:.3f}, {power['ci_high']:.3f}] (aim >= 0.7)",
        f"- one variant, one seed (the README's `invoke train` then `invoke select`): false-pass "
        f"{false_pass_one['rate']:.3f}, power at +{TRUE_GAIN} {power_one['rate']:.3f}; with "
        f"{power_by_size['2.0']['windows']} and {power_by_size['3.0']['windows']} out-of-fold "
        f"windows (twice and three times the labels) {power_by_size['2.0']['rate']:.3f} and "
        f"{power_by_size['3.0']['rate']:.3f}",
        f"- one variant, its {len(predictions[live_variant])} seeds pooled: power at "
        f"+{TRUE_GAIN} {power_pooled['rate']:.3f}",
        f"- the per-window span IoU difference (one seed minus linear) has a standard deviation "
        f"of {diff_sd:.2f}: a window is mostly found or missed, so the mean needs many windows",
        "",
        "Covered: which windows a data set holds, training-seed noise, the choice among "
        "variants, seed pooling, the decision rule. Not covered: retraining on each new data "
        "set (the window effects are those of models trained on this one), the stream check "
        "(it can only lower the pass rate), calibration (it changes no span).",
        "",
        "## Training time",
        "",
        f"Wall seconds per run ({len(first['folds'])} fold models, the final model, calibration, the gate's stream; "
        "one torch thread on a shared 2-core machine, so these move with the load):",
        "",
        "| variant | seconds per run (each seed) | training seconds (fits only, each seed) |",
        "|---|---|---|",
        *[
            f"| {v} | {', '.join(f'{x:.0f}' for x in run_seconds[v])} | "
            + ", ".join(f"{r.metrics['train_seconds']:.0f}" for r in results[v])
            + " |"
            for v in variants
        ],
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    say("\n".join(lines))

    def model_values(figures: dict, key: str) -> dict:
        return {k: figures[k][key]["value"] for k in MODELS}

    def model_cis(figures: dict, key: str) -> dict:
        return {k: [figures[k][key]["ci_low"], figures[k][key]["ci_high"]] for k in MODELS}

    summary = {
        "stream_false_alarms_per_1k_bars": model_values(stream_figures, "false_alarms_per_1k"),
        "stream_false_alarms_per_1k_bars_ci": model_cis(stream_figures, "false_alarms_per_1k"),
        "stream_detection_delay_p50_bars": model_values(stream_figures, "delay_p50"),
        "stream_detection_delay_p50_bars_ci": model_cis(stream_figures, "delay_p50"),
        "stream_recall_within_5_bars": model_values(stream_figures, "recall_within"),
        "stream_recall_within_5_bars_ci": model_cis(stream_figures, "recall_within"),
        "stream_target_met": target_met,
        "stream_live_over_after_false_alarms": live_fa / max(after_fa, 1e-9),
        "stream_live_minus_after": stream_vs_after,
        "gate_false_pass_rate": false_pass["rate"],
        "gate_false_pass_rate_ci": [false_pass["ci_low"], false_pass["ci_high"]],
        "gate_power_at_0_05": power["rate"],
        "gate_power_at_0_05_ci": [power["ci_low"], power["ci_high"]],
        "gate_one_run": {
            "false_pass": false_pass_one["rate"],
            "power_at_0_05": power_one["rate"],
            "power_at_0_05_by_windows": {
                str(p["windows"]): p["rate"] for p in (power_one, *power_by_size.values())
            },
        },
        "gate_one_variant_seeds_pooled_power_at_0_05": power_pooled["rate"],
        "gate_window_difference_sd": round(diff_sd, 3),
        "calibration_ece_fresh": calibration["value"],
        "calibration_ece_fresh_ci": [calibration["ci_low"], calibration["ci_high"]],
        "abstain_recall_fresh": recall_fresh["value"],
        "abstain_recall_fresh_ci": [recall_fresh["ci_low"], recall_fresh["ci_high"]],
        "abstain_recall_target": recall_target,
        "real_sample_alarms_per_1k_bars": (
            model_values(real_figures, "false_alarms_per_1k")
            if "error" not in real_figures
            else None
        ),
        "fresh_span_iou": {k: v["span_iou"]["value"] for k, v in fresh_rows.items()},
        "fresh_live_minus_linear_span_iou": [
            fresh_diff["linear"]["value"],
            fresh_diff["linear"]["ci_low"],
            fresh_diff["linear"]["ci_high"],
        ],
        "oof_span_iou": {name: rep["span_iou"]["value"] for name, rep in oof_rows},
        "live_variant": live_variant,
        "after_the_fact_variant": after_variant,
        "selected_variant": selection["variant"],
        "gates_passed": {v: bool(g.get("passed")) for v, g in gates.items()},
        "seeds": seeds,
        "variants": variants,
        "stream_sessions": stream_figures["live"]["sessions"],
        "stream_events": stream_figures["live"]["events"],
        "minutes": round(minutes, 1),
        "run_seconds": run_seconds,
        "quick": bool(args.quick),
        "overrides": overrides,
        "fresh_windows": fresh_windows,
        "asof_windows": asof_windows,
        "trials": trials,
        "provenance": prov,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

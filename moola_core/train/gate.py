"""The quality gate of phase 2: no model ships that does not beat the simple baselines.

The gate judges a *variant* (a training recipe, all its seeds pooled), never its luckiest seed,
on evidence that nothing else touched:

1. **Windows** (superiority). On the out-of-fold (OOF) predictions of the labeled windows
   (moola_core.train.data: each window predicted by a model that never trained, stopped or was
   calibrated on it), the variant's per-window primary metric (span IoU by default; the mean
   over its seeds) minus each baseline's on the same window. The variant passes a baseline
   when the one-sided lower bound of the mean difference, at level ALPHA / k, is above 0:
   a cluster bootstrap resamples the windows' overlap groups, and k is the number of variants
   the selection chose among (Bonferroni), so picking the best of k recipes cannot buy a pass.
2. **Stream** (non-inferiority). On the gate's stream (moola_core.streams, a market no step
   before touched), the false alarms per 1,000 bars of the variant's final models may exceed
   each baseline's by at most FALSE_ALARM_MARGIN: the one-sided upper bound (level ALPHA,
   sessions and seeds resampled) of the difference must stay within it. A run without a
   stream (a labeled file) says so; the verdict then rests on the windows. Recall is not
   gated by default: the abstain threshold already guarantees it on held-out windows
   (conformal risk control, moola_core.train.calibration), and a 40-session stream holds too
   few expansions (~35) to show non-inferiority on recall (with RECALL_MARGIN = 0.10, a model
   with the baseline's recall would fail more often than not); `GateRules(recall_margin=...)`
   adds the check where the evidence is larger.

3. **Reviewed windows** (non-inferiority, when a reviewed labeled set exists: issue #25). On
   the windows a person reviewed (`invoke label.import`) that neither the candidate's runs nor
   the live release's run trained on (moola_ops.labeling.holdout), the candidate's per-window
   metric minus the live release's: the one-sided lower bound (level ALPHA / k, overlap groups
   resampled) must stay above -WINDOW_MARGIN. A new model ships only if it is not worse than
   what serves now on the labels people checked. `add_reviewed(gate, ...)` joins this verdict
   to the out-of-fold one; with fewer than two such windows, or no live release known, the
   check says so and is not counted.

Every check must pass. The error rates this rule has at real data sizes are simulated in
benchmarks/models.py (docs/benchmarks/models.md): the share of variants that are truly no
better than the linear baseline that pass, and the power at a true +0.05 span IoU.

The evidence is data, not runs: `decide(candidate, comparators, rules)` takes `Evidence`
(per-window values with their overlap groups, and stream scores) for the candidate and for
each model it is compared with. `evidence_from_runs` builds them from training runs (OOF and
the baselines fitted beside them); another labeled set or another comparison model (say the
live release on reviewed windows) plugs in by building its own Evidence.

The verdict is written into every run of the variant (metrics.json "gate") and into
runs/selected.json, so a bundle carries it (`manifest.metrics["gate"]`). A person may ship a
failing run anyway with `invoke select --override "reason"`; the override (who, when, why) is
recorded beside the verdict. `gate_allows(manifest)` (moola_core.bundle.gate) is what deploy
asks. Imports numpy when deciding; nothing heavy at import time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

GATE_BASELINES = ("heuristic", "linear")
ALPHA = 0.025  # one-sided error rate of each check (a two-sided 95% interval's tail)
# The stated non-inferiority margins on the stream (see docs/models.md for why these values):
FALSE_ALARM_MARGIN = 1.0  # more false alarms per 1,000 bars than a baseline: at most this
RECALL_MARGIN = 0.10  # less recall within 5 bars than a baseline: at most this (when asked)
WINDOW_MARGIN = 0.05  # worse per-window metric than the live release on reviewed windows: at most
N_BOOT = 2000


@dataclass(frozen=True)
class Evidence:
    """What the gate knows about one model: its per-window values of the gate's metric on the
    gate's windows and, when there is one, its scores on the gate's stream.

    `values` is float [n] (for several seeds: the mean over seeds of each window's value),
    `window_id` names the windows (comparisons pair on it) and `group` holds their overlap
    groups (windows sharing bars are resampled together). `stream` is a list of
    moola_core.streams.StreamScore, one per seed, all on the same stream."""

    name: str
    window_id: tuple
    group: object  # array [n]
    values: object  # array [n]
    stream: list = field(default_factory=list)
    seeds: tuple = ()
    where: str = "out of fold"  # which windows, for the verdict's sentence


@dataclass(frozen=True)
class GateRules:
    """The decision rule; every number is stated in the verdict."""

    metric: str = "span_iou"
    alpha: float = ALPHA
    variants_compared: int = 1  # Bonferroni over the recipes the selection chose among
    superiority_over: tuple = GATE_BASELINES
    noninferior_to: tuple = ()  # comparators the candidate may trail by window_margin at most
    stream_against: tuple = GATE_BASELINES
    false_alarm_margin: float = FALSE_ALARM_MARGIN
    recall_margin: float | None = None  # RECALL_MARGIN to gate recall too
    window_margin: float = WINDOW_MARGIN
    n_boot: int = N_BOOT
    seed: int = 0


def _windows_check(
    candidate: Evidence, other: Evidence, rules: GateRules, rule: str = "superiority"
) -> dict:
    """Superiority: the lower bound of candidate - other must be above 0; non-inferiority:
    above -rules.window_margin (one-sided, level alpha / variants compared)."""
    import numpy as np

    from moola_core import metrics as M

    position = {w: i for i, w in enumerate(other.window_id)}
    missing = [w for w in candidate.window_id if w not in position]
    check = _window_check_head(rules, other.name, rule)
    if missing or not len(candidate.window_id):
        return {**check, "ok": False, "missing": True, "value": None, "bound": None}
    sign = -1.0 if rules.metric in M.LOWER_IS_BETTER else 1.0
    mine = np.asarray(candidate.values, dtype=float)
    theirs = np.asarray(other.values, dtype=float)[[position[w] for w in candidate.window_id]]
    diff = sign * (mine - theirs)
    rng = np.random.default_rng(rules.seed)
    weights = M.resample_weights(candidate.group, rules.n_boot, rng)  # [B, n]
    boot = weights @ diff / weights.sum(axis=1)
    level = rules.alpha / max(rules.variants_compared, 1)
    bound = float(np.quantile(boot, level))
    need = 0.0 if rule == "superiority" else -rules.window_margin
    return {
        **check,
        "value": round(float(diff.mean()), 4),
        "bound": round(bound, 4),
        "level": level,
        "n_windows": int(len(diff)),
        "ok": bool(bound > need),
    }


def _window_check_head(rules: GateRules, name: str, rule: str) -> dict:
    head = {"name": f"{rules.metric} vs {name}", "baseline": name, "evidence": "windows"}
    head["rule"] = rule
    if rule == "non_inferiority":
        head["margin"] = rules.window_margin
    return head


def _stream_checks(candidate: Evidence, other: Evidence, rules: GateRules) -> list[dict]:
    from moola_core import streams

    out = []
    wanted = [("false_alarms_per_1k", rules.false_alarm_margin, +1)]
    if rules.recall_margin is not None:
        wanted.append(("recall_within", rules.recall_margin, -1))
    for metric, margin, worse in wanted:
        check = {
            "name": f"stream {metric} vs {other.name}",
            "baseline": other.name,
            "evidence": "stream",
            "rule": "non_inferiority",
            "metric": metric,
            "margin": margin,
        }
        if not candidate.stream or not other.stream:
            out.append({**check, "ok": True, "skipped": True, "value": None, "bound": None})
            continue
        diff = streams.paired_difference(
            candidate.stream,
            other.stream,
            metric,
            n_boot=rules.n_boot,
            seed=rules.seed,
            level=1.0 - 2.0 * rules.alpha,
        )
        # worse = +1: higher is worse (false alarms): the upper bound must stay <= margin;
        # worse = -1: lower is worse (recall): the lower bound must stay >= -margin
        bound = diff["ci_high"] if worse > 0 else diff["ci_low"]
        ok = bound <= margin if worse > 0 else bound >= -margin
        out.append(
            {**check, "value": round(diff["value"], 4), "bound": round(bound, 4), "ok": bool(ok)}
        )
    return out


def decide(candidate: Evidence, comparators: Mapping[str, Evidence], rules: GateRules) -> dict:
    """The gate's verdict for `candidate` against `comparators` (name -> Evidence) -> the record
    stored as "gate": {"passed", "metric", "alpha", "variants_compared", "margins", "evidence",
    "checks": [...], "summary", "evaluated_at"}. A comparator the rules name but that is
    missing fails its checks (a run without the linear baseline cannot prove it beats it)."""
    checks = []
    wanted = [(name, "superiority") for name in rules.superiority_over]
    wanted += [(name, "non_inferiority") for name in rules.noninferior_to]
    for name, rule in wanted:
        other = comparators.get(name)
        if other is None:
            missing = {"ok": False, "missing": True, "value": None, "bound": None}
            checks.append({**_window_check_head(rules, name, rule), **missing})
            continue
        checks.append(_windows_check(candidate, other, rules, rule))
    for name in rules.stream_against:
        other = comparators.get(name)
        if other is not None:
            checks.extend(_stream_checks(candidate, other, rules))
    passed = all(c["ok"] for c in checks)
    stream_used = any(c["evidence"] == "stream" and not c.get("skipped") for c in checks)
    return {
        "passed": passed,
        "metric": rules.metric,
        "alpha": rules.alpha,
        "variants_compared": rules.variants_compared,
        "margins": {
            "false_alarms_per_1k": rules.false_alarm_margin,
            "recall_within": rules.recall_margin,
            **({"windows": rules.window_margin} if rules.noninferior_to else {}),
        },
        "evidence": {
            "candidate": candidate.name,
            "seeds": list(candidate.seeds),
            "windows": len(candidate.window_id),
            "where": candidate.where,
            "stream": stream_used,
        },
        "checks": checks,
        "summary": gate_summary(checks, rules, passed, candidate),
        "evaluated_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def gate_summary(checks: list[dict], rules: GateRules, passed: bool, candidate: Evidence) -> str:
    """One sentence: the evidence, then each check with its difference and bound."""
    parts = []
    for c in checks:
        if c.get("missing"):
            parts.append(f"{c['name']}: no predictions (FAIL)")
        elif c.get("skipped"):
            parts.append(f"{c['name']}: no stream (not checked)")
        elif c["evidence"] == "windows":
            need = "0" if c["rule"] == "superiority" else f"{-c['margin']:+g}"
            parts.append(
                f"{c['name']} {c['value']:+.3f} (lower bound {c['bound']:+.3f} > {need}: "
                f"{'ok' if c['ok'] else 'FAIL'})"
            )
        else:
            side = "upper" if c["metric"] == "false_alarms_per_1k" else "lower"
            need = f"<= {c['margin']:+g}" if side == "upper" else f">= {-c['margin']:+g}"
            parts.append(
                f"{c['name']} {c['value']:+.3f} ({side} bound {c['bound']:+.3f} {need}: "
                f"{'ok' if c['ok'] else 'FAIL'})"
            )
    seeds = len(candidate.seeds) or 1
    verdict = "passed" if passed else "FAILED"
    return (
        f"quality gate {verdict} for {candidate.name} ({seeds} seed(s) pooled, "
        f"{len(candidate.window_id)} windows {candidate.where}, one-sided level {rules.alpha:g}"
        + (f" / {rules.variants_compared} variants" if rules.variants_compared > 1 else "")
        + "): "
        + "; ".join(parts)
    )


# -- evidence from training runs ------------------------------------------------------------


def per_window(pred: Mapping, truth: Mapping, metric: str):
    """One model's per-window value of `metric` (a mean-over-windows metric) -> float [n]."""
    from moola_core import metrics as M

    parts = M.per_window(pred, truth)
    per = {
        "span_iou": parts["iou"],
        "accuracy": parts["correct"],
        "start_hit3": parts["start_hit"],
        "end_hit3": parts["end_hit"],
        "boundary_mae": parts["boundary_err"],
        "iou_ge_50": (parts["iou"] >= 0.5).astype(float),
        "iou_ge_70": (parts["iou"] >= 0.7).astype(float),
    }
    if metric not in per:
        from moola_core.errors import MoolaError

        raise MoolaError(
            f"the gate needs a per-window metric; {metric!r} is not one of {sorted(per)}."
        )
    return per[metric]


def evidence_from_runs(name: str, predictions: list[Mapping], metric: str, split: str = "oof"):
    """(the variant's Evidence, {baseline: Evidence}) from the predictions.json of its runs
    (all on the same windows): per-window values averaged over the runs (seeds); the
    baselines come from the first run (they are fitted on the same training parts for every
    seed)."""
    import numpy as np

    from moola_core.streams import StreamScore

    first = predictions[0][split]
    truth = first["truth"]
    values = np.mean([per_window(p[split], p[split]["truth"], metric) for p in predictions], axis=0)
    stream = [StreamScore.from_dict(p["stream"]["model"]) for p in predictions if p.get("stream")]
    candidate = Evidence(
        name,
        tuple(first["window_id"]),
        np.asarray(truth["group"]),
        values,
        stream if len(stream) == len(predictions) else [],
        tuple(p.get("seed") for p in predictions if p.get("seed") is not None),
    )
    baselines = {}
    for base, by_split in predictions[0].get("baselines", {}).items():
        if split not in by_split:
            continue
        base_stream = (predictions[0].get("stream") or {}).get("baselines", {}).get(base)
        baselines[base] = Evidence(
            base,
            tuple(first["window_id"]),
            np.asarray(truth["group"]),
            per_window(by_split[split], truth, metric),
            [StreamScore.from_dict(base_stream)] if base_stream else [],
        )
    return candidate, baselines


def evaluate_gate(
    predictions: list[Mapping] | Mapping,
    metric: str = "span_iou",
    *,
    name: str = "candidate",
    variants_compared: int = 1,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict:
    """The gate for one variant from its runs' predictions.json contents (one or a list, the
    seeds of one variant) -> the record stored as "gate"."""
    if isinstance(predictions, Mapping):
        predictions = [predictions]
    candidate, baselines = evidence_from_runs(name, list(predictions), metric)
    rules = GateRules(metric=metric, variants_compared=variants_compared, n_boot=n_boot, seed=seed)
    return decide(candidate, baselines, rules)


# -- the live release on reviewed windows (issue #25) ----------------------------------------

REVIEWED_WHERE = "reviewed, trained on by neither"


def reviewed_rules(metric: str, variants_compared: int, live: str = "live", **kw) -> GateRules:
    """The rule on reviewed windows: not worse than the live release by more than the margin."""
    return GateRules(
        metric=metric,
        variants_compared=variants_compared,
        superiority_over=(),
        noninferior_to=(live,),
        stream_against=(),
        **kw,
    )


def add_reviewed(gate: dict, reviewed: dict | str) -> dict:
    """The out-of-fold verdict `gate` joined with `reviewed`: the verdict of `decide` on the
    reviewed windows (it must pass too), or a sentence saying why they were not checked
    (recorded, not counted) -> the joined verdict (a new dict)."""
    joined = {**gate, "checks": list(gate["checks"]), "evidence": dict(gate["evidence"])}
    if isinstance(reviewed, str):
        joined["checks"].append(
            {
                "name": f"{gate['metric']} vs live",
                "baseline": "live",
                "evidence": "reviewed",
                "rule": "non_inferiority",
                "ok": True,
                "skipped": True,
                "why": reviewed,
                "value": None,
                "bound": None,
            }
        )
        joined["evidence"]["reviewed"] = None
        joined["summary"] = f"{gate['summary']}; reviewed windows not checked: {reviewed}"
        return joined
    for check in reviewed["checks"]:
        joined["checks"].append({**check, "evidence": "reviewed"})
    joined["passed"] = bool(gate["passed"] and reviewed["passed"])
    joined["margins"] = {**gate["margins"], **reviewed["margins"]}
    joined["evidence"]["reviewed"] = reviewed["evidence"]
    verdict = "passed" if joined["passed"] else "FAILED"
    joined["summary"] = (
        f"quality gate {verdict}: out of fold, {gate['summary']}; against the live release, "
        f"{reviewed['summary']}"
    )
    return joined

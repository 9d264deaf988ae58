"""Calibration after training, fitted on the validation split only.

Temperature scaling (Guo et al. 2017): divide the logits by one positive number T chosen to
minimise the validation negative log-likelihood. It changes no decision (argmax and the best
start/end pair stay the same), only how sure the model says it is. Two temperatures: one for
the class head, one for the span pointer's start and end logits.

The abstain threshold: `predict` answers "no pattern" (abstain) when its confidence is below
it. The "recall" rule sets it by conformal risk control (Angelopoulos et al. 2022) on the
calibration windows: with a miss loss L_i(t) = 1 when window i is not answered at threshold t
(for a live model: not answered at any as-of cut 0..`within` bars after its expansion began),
the threshold is the largest t with (sum_i L_i(t) + 1) / (n + 1) <= 1 - recall. For a new
window exchangeable with the n calibration windows, P(missed) <= 1 - recall: the stated recall
holds in expectation on held-out data (crc_threshold). How many pattern-free windows or quiet
bars it then answers is measured (benchmarks/models.py), never assumed.

A live model's under-way head gets Platt scaling (a slope and an intercept, fitted on the
calibration cuts) and a prior shift: the cuts hold expansions far more often than a served
stream does, so the intercept moves by logit(prevalence) - logit(share of cuts under way)
(Saerens et al. 2002), making the served probability P(expansion under way) at the stream's
prevalence (`live.prevalence`).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

LOG_T_GRID = torch.linspace(math.log(0.05), math.log(20.0), 241)  # T from 0.05 to 20


def fit_temperature(nll_at) -> tuple[float, float, float]:
    """Grid search on log T of a function T -> mean NLL -> (T, nll at T=1, nll at T)."""
    values = torch.tensor([float(nll_at(float(math.exp(v)))) for v in LOG_T_GRID])
    best = int(torch.argmin(values))
    return float(math.exp(float(LOG_T_GRID[best]))), float(nll_at(1.0)), float(values[best])


def crc_threshold(peaks, recall: float) -> tuple[float, bool]:
    """Conformal risk control for a miss loss: the largest threshold t with
    (#{peak_i < t} + 1) / (n + 1) <= 1 - recall, where peak_i is the highest confidence at
    which window i would be answered -> (t, reachable). `reachable` is False when n is too
    small for the guarantee (n + 1 < 1 / (1 - recall)): then t = 0, answering everything."""
    peaks = torch.sort(torch.as_tensor(peaks, dtype=torch.float64).reshape(-1)).values
    alpha = 1.0 - float(recall)
    n = len(peaks)
    j = int(math.floor(alpha * (n + 1) + 1e-9))  # misses allowed: at most j - 1 windows below t
    if n == 0 or j < 1:
        return 0.0, False
    return float(peaks[min(j, n) - 1]), True


def fit_platt(logit, target) -> tuple[float, float, float, float]:
    """Platt scaling: slope a and intercept b minimising the binary cross-entropy of
    sigmoid(a * logit + b) -> (a, b, nll before (a=1, b=0), nll after). a is kept > 0 (a head
    that learned nothing gets a tiny slope, not a reversed one)."""
    z = torch.as_tensor(logit, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(target, dtype=torch.float64).reshape(-1)
    params = torch.zeros(2, dtype=torch.float64, requires_grad=True)  # log a, b

    def nll():
        return F.binary_cross_entropy_with_logits(torch.exp(params[0]) * z + params[1], y)

    before = float(F.binary_cross_entropy_with_logits(z, y))
    optimizer = torch.optim.LBFGS([params], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = nll()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return float(torch.exp(params[0])), float(params[1]), before, float(nll())


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def f1_threshold(confidence, has_pattern) -> float:
    """The threshold (answer when confidence >= it) with the best detection F1 over windows
    with (`has_pattern` True) and without a pattern; ties go to the lowest threshold."""
    confidence = torch.as_tensor(confidence, dtype=torch.float64).reshape(-1)
    has = torch.as_tensor(has_pattern, dtype=torch.bool).reshape(-1)
    if not len(confidence):
        return 0.0
    order = torch.argsort(confidence, descending=True, stable=True)
    conf, hit = confidence[order], has[order].double()
    tp = torch.cumsum(hit, 0)  # answering the k + 1 most confident windows
    answered = torch.arange(1, len(conf) + 1, dtype=torch.float64)
    f1 = 2 * tp / (answered + hit.sum())
    # a cut can only fall between distinct values: the last index of each run of equal ones
    last = torch.ones(len(conf), dtype=torch.bool)
    last[:-1] = conf[:-1] != conf[1:]
    f1 = torch.where(last, f1, torch.full_like(f1, -1.0))
    k = int(torch.nonzero(f1 == f1.max())[-1])
    return float(conf[k])


@torch.no_grad()
def calibrate(
    model,
    x,
    valid,
    label,
    start,
    end,
    recall: float = 0.9,
    has_pattern=None,
    rule: str = "recall",
) -> dict:
    """Fit the temperatures and the abstain threshold on validation tensors; write them into
    `model.config` and return what was fitted (with the NLL before and after).

    `has_pattern` (bool [N]; None: all) marks pattern-free validation windows: the class and
    span temperatures and the threshold's recall use the windows with a pattern only; a model
    with an objectness head also gets `object_temperature`, fitted on all of them. `rule`
    "recall" keeps `recall` of the patterns answered; "f1" maximises detection F1 over all
    windows (it needs pattern-free ones)."""
    if rule not in ("recall", "f1"):
        raise ValueError(f"unknown abstain rule {rule!r}")
    if rule == "f1" and (has_pattern is None or bool(has_pattern.all())):
        raise ValueError("the f1 abstain rule needs pattern-free validation windows")
    all_valid = valid
    was_training = model.training
    model.eval()
    try:
        out = full_out = model(x, valid)
        if "object_logit" in out and has_pattern is not None:
            obj = out["object_logit"].float()
            target = has_pattern.float()
            object_t, object_before, object_after = fit_temperature(
                lambda t: F.binary_cross_entropy_with_logits(obj / t, target)
            )
            model.config["object_temperature"] = round(object_t, 4)
        else:
            object_t = None
        if has_pattern is not None:
            keep = has_pattern.bool()
            out = {k: v[keep] for k, v in out.items()}
            valid, label, start, end = valid[keep], label[keep], start[keep], end[keep]
        logits = out["class_logits"].float()
        temperature, class_before, class_after = fit_temperature(
            lambda t: F.cross_entropy(logits / t, label)
        )
        fitted = {
            "temperature": round(temperature, 4),
            "class_nll_before": round(class_before, 4),
            "class_nll_after": round(class_after, 4),
        }
        model.config["temperature"] = fitted["temperature"]
        if "start_logits" in out:
            s_logits, e_logits = out["start_logits"].float(), out["end_logits"].float()
            span_t, span_before, span_after = fit_temperature(
                lambda t: (
                    0.5
                    * (F.cross_entropy(s_logits / t, start) + F.cross_entropy(e_logits / t, end))
                )
            )
            fitted.update(
                span_temperature=round(span_t, 4),
                span_nll_before=round(span_before, 4),
                span_nll_after=round(span_after, 4),
            )
            model.config["span_temperature"] = fitted["span_temperature"]
        if object_t is not None:
            fitted.update(
                object_temperature=model.config["object_temperature"],
                object_nll_before=round(object_before, 4),
                object_nll_after=round(object_after, 4),
            )
        model.config["abstain_threshold"] = 0.0
        if rule == "f1":
            confidence = model.decode(full_out, all_valid)["confidence"].float()
            threshold = f1_threshold(confidence, has_pattern)
        else:
            confidence = model.decode(out, valid)["confidence"].float()
            threshold, reachable = crc_threshold(confidence, recall)
            fitted["abstain_guarantee"] = reachable
        model.config["abstain_threshold"] = threshold
        fitted.update(abstain_threshold=threshold, abstain_rule=rule)
        if rule == "recall":
            fitted["abstain_recall_target"] = recall
        return fitted
    finally:
        model.train(was_training)


@torch.no_grad()
def calibrate_live(
    model,
    cuts,
    *,
    prevalence: float,
    recall: float = 0.9,
    within: int = 5,
) -> dict:
    """Calibrate a live model on as-of cuts of the calibration windows (moola_core.train.live
    AsOfCuts, negatives included): class and span temperatures on the cuts that show an
    expansion, Platt scaling plus a prior shift to `prevalence` for the under-way head, then
    the abstain threshold by conformal risk control so that a calibration-like expansion is
    answered within `within` bars of its onset with probability >= `recall`. Writes the fitted
    values into `model.config` and returns them."""
    from moola_core.train.live import detected_within

    was_training = model.training
    model.eval()
    try:
        x, valid = torch.from_numpy(cuts.x), torch.from_numpy(cuts.valid)
        outs = [model(x[i : i + 512], valid[i : i + 512]) for i in range(0, len(x), 512)]
        out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        seen = torch.from_numpy(cuts.visible)
        label, start, end = (torch.from_numpy(getattr(cuts, k)) for k in ("label", "start", "end"))
        logits = out["class_logits"].float()[seen]
        temperature, class_before, class_after = fit_temperature(
            lambda t: F.cross_entropy(logits / t, label[seen])
        )
        span_t, span_before, span_after = 1.0, None, None
        if "start_logits" in out:  # the pointer head's start and end logits
            s_logits = out["start_logits"].float()[seen]
            e_logits = out["end_logits"].float()[seen]
            span_t, span_before, span_after = fit_temperature(
                lambda t: (
                    0.5
                    * (
                        F.cross_entropy(s_logits / t, start[seen])
                        + F.cross_entropy(e_logits / t, end[seen])
                    )
                )
            )
        target = torch.from_numpy(cuts.under_way).double()
        slope, intercept, object_before, object_after = fit_platt(out["object_logit"], target)
        share = float(target.mean())
        bias = intercept + _logit(prevalence) - _logit(share)
        model.config.update(
            temperature=round(temperature, 4),
            span_temperature=round(span_t, 4),
            object_temperature=round(1.0 / slope, 6),
            object_bias=round(bias, 6),
            abstain_threshold=0.0,
        )
        confidence = model.decode(out, valid)["confidence"].double().numpy()
        windows, peaks = detected_within(confidence, cuts, within)
        threshold, reachable = crc_threshold(peaks, recall)
        model.config["abstain_threshold"] = threshold
        return {
            "temperature": model.config["temperature"],
            "class_nll_before": round(class_before, 4),
            "class_nll_after": round(class_after, 4),
            "span_temperature": model.config["span_temperature"],
            "span_nll_before": None if span_before is None else round(span_before, 4),
            "span_nll_after": None if span_after is None else round(span_after, 4),
            "object_temperature": model.config["object_temperature"],
            "object_bias": model.config["object_bias"],
            "object_nll_before": round(object_before, 4),
            "object_nll_after": round(object_after, 4),
            "cuts": int(len(cuts)),
            "cuts_under_way_share": round(share, 4),
            "prevalence": prevalence,
            "abstain_threshold": threshold,
            "abstain_rule": "recall",
            "abstain_recall_target": recall,
            "abstain_within_bars": within,
            "abstain_windows": int(len(windows)),
            "abstain_guarantee": reachable,
        }
    finally:
        model.train(was_training)

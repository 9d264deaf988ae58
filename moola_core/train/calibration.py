"""Calibration after training, fitted on the validation split only.

Temperature scaling (Guo et al. 2017): divide the logits by one positive number T chosen to
minimise the validation negative log-likelihood. It changes no decision (argmax and the best
start/end pair stay the same), only how sure the model says it is. Two temperatures: one for
the class head, one for the span pointer's start and end logits.

The abstain threshold: `predict` answers "no pattern" (abstain) when its confidence is below
it. Validation holds only windows with a pattern, so the threshold is the confidence quantile
that keeps `recall` of them answered (default 0.9: abstain on at most about a tenth of real
patterns); how many pattern-free windows it then refuses is measured on a detection set
(benchmarks/models.py), never assumed.
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
            threshold = float(torch.quantile(confidence, 1.0 - recall)) if len(confidence) else 0.0
        model.config["abstain_threshold"] = threshold
        fitted.update(abstain_threshold=threshold, abstain_rule=rule)
        if rule == "recall":
            fitted["abstain_recall_target"] = recall
        return fitted
    finally:
        model.train(was_training)

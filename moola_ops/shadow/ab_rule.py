"""The A/B decision rule: promote, keep, or not enough evidence yet (docs/ab.md).

All differences are shadow - live, paired on the same requests, with 95% bootstrap CIs.

- **keep** the live release when the primary metric's difference CI lies entirely below 0, or
  when a regression is shown: the other quality metric's difference CI lies entirely below 0,
  the shadow's error rate is higher than live's with a CI entirely above 0, or the shadow's
  latency p99 is over the SLA even at its CI's lower end;
- **promote** the candidate only when the primary metric's difference CI lies entirely above 0
  and no regression is shown;
- otherwise **not enough evidence yet**, with how many more shadowed requests would settle the
  primary metric at the observed effect (at least MIN_EFFECT).

Without outcomes the primary metric is unknown: only a regression (errors, latency) decides
(keep); else it is not enough evidence.
"""

from __future__ import annotations

import math

PRIMARY = "span_iou"  # the metric `invoke select` chooses by
QUALITY = (
    "span_iou",
    "accuracy",
)  # the metrics with outcomes; the one not primary must not regress
NAMES = {"span_iou": "span IoU", "accuracy": "accuracy"}
MIN_EFFECT = 0.01  # with no observed difference, "more requests" is sized to detect this much


def needed_requests(diff: dict, n: int) -> int:
    """How many requests in all (with outcomes) make the 95% CI exclude zero at the observed
    effect (at least MIN_EFFECT): the CI's half-width shrinks as 1/sqrt(n)."""
    half = (diff["ci_high"] - diff["ci_low"]) / 2.0
    effect = max(abs(diff["value"]), MIN_EFFECT)
    if not math.isfinite(half) or half <= 0:
        return n
    return math.ceil(n * (half / effect) ** 2)


def change(d: dict) -> str:
    return f"{d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def regressions(result) -> list[str]:
    """What the candidate is shown to do worse than live, apart from the primary metric."""
    found = []
    live = result.live_release
    err = result.error_diff
    if err is not None and err.ci_low > 0:
        found.append(
            f"it failed {100 * result.shadow_error_rate:.1f}% of the requests {live} answered "
            f"(error rate difference {err.fmt(3, True)})"
        )
    p99 = result.latency_ms["shadow"]["p99"]
    sla = result.sla_p99_ms
    if sla and math.isfinite(p99.ci_low) and p99.ci_low > sla:
        found.append(f"its latency p99 {p99.fmt(1)} ms is over the {sla:g} ms SLA")
    if result.outcomes is not None:
        for metric in QUALITY:
            d = result.outcomes[metric]["diff"]
            if metric != result.primary and d["ci_high"] < 0:
                found.append(f"its {NAMES[metric]} is worse ({change(d)})")
    return found


def decide(result):
    """Fill `decision`, `reasons`, `more_requests` and the one sentence of an ABResult."""
    live, cand = result.live_release, result.shadow_release
    primary = NAMES.get(result.primary, result.primary)
    shown = regressions(result)
    result.reasons = list(shown)
    result.more_requests = None
    o = result.outcomes
    if o is None:
        if shown:
            result.decision = "keep"
            result.sentence = f"keep {live}: {cand} regresses: {'; '.join(shown)}."
            return result
        result.decision = "more-evidence"
        result.sentence = (
            f"not enough evidence yet: no outcomes were given (--outcomes FILE), so accuracy "
            f"is unknown; on {result.n_pairs:,} paired requests they agree on "
            f"{100 * result.agreement.value:.1f}% of labels and their spans overlap with IoU "
            f"{result.span_iou.value:.3f}."
        )
        return result
    n = o["n"]
    diff = o[result.primary]["diff"]
    facts = (
        "; ".join(
            f"{NAMES[m]}{' (primary)' if m == result.primary else ''} {change(o[m]['diff'])}"
            for m in (result.primary, *[q for q in QUALITY if q != result.primary])
        )
        + f" on {n:,} requests with known outcomes (shadow - live, 95% CIs)"
    )
    if diff["ci_high"] < 0:
        result.reasons.insert(0, f"its {primary} is worse")
        result.decision = "keep"
        result.sentence = f"keep {live}: {cand} is worse in {primary}, the primary metric: {facts}."
    elif shown:
        result.decision = "keep"
        result.sentence = f"keep {live}: {cand} regresses: {'; '.join(shown)}. {facts}."
    elif diff["ci_low"] > 0:
        result.decision = "promote"
        result.sentence = (
            f"promote {cand}: it beats {live} in {primary}, the primary metric, and regresses "
            f"in nothing checked: {facts}."
        )
    else:
        more = needed_requests(diff, n) - n
        share = n / max(1, n + o["n_without"])  # requests with outcomes are a share of all
        result.more_requests = max(1, math.ceil(max(more, 1) / share))
        result.decision = "more-evidence"
        result.sentence = (
            f"not enough evidence yet: the {primary} CI includes 0 ({facts}); at the observed "
            f"effect about {result.more_requests:,} more shadowed requests would settle it."
        )
    return result

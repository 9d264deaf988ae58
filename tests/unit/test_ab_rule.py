"""The A/B decision rule (moola_ops/shadow/ab_rule.py, docs/ab.md), one test per branch, on captures
constructed so that each release is right on exactly the chosen windows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moola_core.data import synthetic
from moola_core.errors import MoolaError
from moola_core.spec import LABELS
from moola_ops.serving.captures import parse_lines
from moola_ops.shadow import ab
from moola_ops.shadow.ab_rule import change
from tests.unit.capture_factory import record

N = 160


@pytest.fixture(scope="module")
def labeled():
    return synthetic.make_labeled_set(n_windows=174, seed=7)


def _mask(first: int, last: int = N) -> np.ndarray:
    """Right on windows first..last-1."""
    out = np.zeros(N, dtype=bool)
    out[first:last] = True
    return out


def _traffic(
    labeled,
    live_label,
    live_span,
    shadow_label,
    shadow_span,
    *,
    shadow_latency=5.0,
    shadow_failed=0,
) -> list[dict]:
    """One window per request. A right label is the true one; a right span is the true span,
    a wrong one is 5 bars at the far end of the window (IoU 0). The shadow answers the first
    `shadow_failed` requests with an error line as the server writes it (index null)."""
    out = []
    for i in range(N):
        row = labeled.iloc[i]
        truth = LABELS.index(row["label"])
        ts, te = int(row["expansion_start"]), int(row["expansion_end"])
        far = (0, 4) if ts >= 52 else (100, 104)
        for role, release, label_ok, span_ok, latency in (
            ("live", "v0.1", live_label, live_span, 5.0),
            ("shadow", "v0.2", shadow_label, shadow_span, shadow_latency),
        ):
            if role == "shadow" and i < shadow_failed:
                out.append(
                    {
                        "v": 1,
                        "request_id": f"r{i}",
                        "index": None,
                        "window_id": None,
                        "time": 1e9 + i,
                        "release": release,
                        "role": role,
                        "status": 500,
                        "latency_ms": 1.0,
                        "batch_size": 0,
                        "error": "the model failed on this batch",
                    }
                )
                continue
            start, end = (ts, te) if span_ok[i] else far
            out.append(
                record(
                    f"r{i}",
                    0,
                    release=release,
                    role=role,
                    time=1e9 + i,
                    label=truth if label_ok[i] else 1 - truth,
                    start=start,
                    end=end,
                    window_id=row["window_id"],
                    latency_ms=latency + (i % 7) * 0.1,
                )
            )
    return out


def _analyze(records, outcomes=None, **kw):
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    table, _ = parse_lines(data)
    return ab.analyze(table, outcomes, **kw)


def test_promote_needs_the_primary_metric_above_zero_and_no_regression(labeled):
    # span IoU: live right on 50%, shadow on 80% (nested: every pair differs the same way)
    result = _analyze(_traffic(labeled, _mask(0), _mask(80), _mask(0), _mask(32)), labeled)
    iou = result.outcomes["span_iou"]["diff"]
    assert iou["ci_low"] > 0 and result.outcomes["accuracy"]["diff"]["value"] == 0
    assert result.primary == "span_iou"
    assert result.decision == "promote" and result.reasons == []
    assert result.sentence.startswith("promote v0.2: it beats v0.1 in span IoU, the primary")


def test_a_better_accuracy_alone_is_not_enough_when_span_iou_is_unsettled(labeled):
    """The case that promoted before: accuracy's CI above 0, span IoU's CI across 0."""
    live_span, shadow_span = _mask(0, 112), _mask(48)  # both right on 70%, different windows
    result = _analyze(_traffic(labeled, _mask(64), live_span, _mask(16), shadow_span), labeled)
    o = result.outcomes
    assert o["accuracy"]["diff"]["ci_low"] > 0
    assert o["span_iou"]["diff"]["ci_low"] < 0 < o["span_iou"]["diff"]["ci_high"]
    assert result.decision == "more-evidence"
    assert result.more_requests is not None and result.more_requests > 0
    assert "span IoU CI includes 0" in result.sentence
    assert f"{result.more_requests:,} more shadowed requests" in result.sentence
    # with accuracy as the primary metric the same captures promote
    by_accuracy = _analyze(
        _traffic(labeled, _mask(64), live_span, _mask(16), shadow_span), labeled, primary="accuracy"
    )
    assert by_accuracy.decision == "promote"


def test_keep_when_the_primary_metric_is_worse(labeled):
    result = _analyze(_traffic(labeled, _mask(0), _mask(32), _mask(0), _mask(80)), labeled)
    assert result.outcomes["span_iou"]["diff"]["ci_high"] < 0
    assert result.decision == "keep"
    assert result.sentence.startswith("keep v0.1: v0.2 is worse in span IoU, the primary")


def test_keep_when_the_primary_is_better_but_accuracy_regresses(labeled):
    result = _analyze(_traffic(labeled, _mask(16), _mask(80), _mask(64), _mask(32)), labeled)
    o = result.outcomes
    assert o["span_iou"]["diff"]["ci_low"] > 0 and o["accuracy"]["diff"]["ci_high"] < 0
    assert result.decision == "keep"
    assert result.reasons == [f"its accuracy is worse ({change(o['accuracy']['diff'])})"]
    assert result.sentence.startswith("keep v0.1: v0.2 regresses: its accuracy is worse")


def test_keep_when_the_shadow_fails_more_often(labeled):
    """Error lines as the server writes them (index null) stand for their request's windows."""
    records = _traffic(labeled, _mask(0), _mask(80), _mask(0), _mask(32), shadow_failed=24)
    result = _analyze(records, labeled)
    assert result.shadow_errors == 24
    assert result.error_diff.value == pytest.approx(24 / N) and result.error_diff.ci_low > 0
    assert result.outcomes["span_iou"]["diff"]["ci_low"] > 0  # better, yet kept
    assert result.decision == "keep" and "failed 15.0% of the requests" in result.sentence


def test_one_shadow_error_is_not_a_regression(labeled):
    records = _traffic(labeled, _mask(0), _mask(80), _mask(0), _mask(32), shadow_failed=1)
    result = _analyze(records, labeled)
    assert result.shadow_errors == 1 and result.error_diff.ci_low <= 0
    assert result.decision == "promote"


def test_keep_when_the_shadow_is_over_the_latency_sla(labeled):
    records = _traffic(labeled, _mask(0), _mask(80), _mask(0), _mask(32), shadow_latency=40.0)
    slow = _analyze(records, labeled, sla_p99_ms=20.0)
    assert slow.latency_ms["shadow"]["p99"].ci_low > 20.0
    assert slow.decision == "keep" and "over the 20 ms SLA" in slow.sentence
    # the same captures under a looser SLA, or with no SLA known, promote
    assert _analyze(records, labeled, sla_p99_ms=100.0).decision == "promote"
    assert _analyze(records, labeled).decision == "promote"


def test_without_outcomes_only_a_regression_decides(labeled):
    fine = _analyze(_traffic(labeled, _mask(0), _mask(80), _mask(0), _mask(32)))
    assert fine.decision == "more-evidence" and "--outcomes" in fine.sentence
    failing = _analyze(
        _traffic(labeled, _mask(0), _mask(80), _mask(0), _mask(32), shadow_failed=40)
    )
    assert failing.decision == "keep" and failing.sentence.startswith("keep v0.1: v0.2 regresses")


def test_an_unknown_primary_metric_is_one_clear_error(labeled):
    with pytest.raises(MoolaError, match="--primary 'f1'"):
        _analyze(_traffic(labeled, _mask(0), _mask(0), _mask(0), _mask(0)), labeled, primary="f1")

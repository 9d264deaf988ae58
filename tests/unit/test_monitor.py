"""Monitoring from captures: rates, errors, latency against the SLA, PSI drift, the writers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moola_core.data import synthetic
from moola_ops.serving.captures import parse_lines
from moola_ops.watch import monitor as M
from moola_ops.watch.health import CRITICAL, OK, UNKNOWN, WARNING
from moola_ops.watch.health_output import write_textfile
from tests.unit.capture_factory import ab_traffic, record


@pytest.fixture(scope="module")
def labeled():
    return synthetic.make_labeled_set(n_windows=174, seed=7)


@pytest.fixture(scope="module")
def reference(labeled):
    return M.reference_from_labeled(labeled)


def _table(records):
    table, _ = parse_lines("".join(json.dumps(r) + "\n" for r in records).encode())
    return table


def _live(records):
    return [r for r in records if r["role"] == "live"]


def test_psi_is_zero_on_the_same_data_and_large_on_a_shift():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(1, 20_000, 11))
    ref = M.reference_bins(base, np.ones((1, 20_000), dtype=bool))
    same = rng.normal(size=20_000)
    assert M.psi(ref["open_norm"], same) < 0.01
    assert M.psi(ref["open_norm"], same + 1.0) > 0.25
    # hand-computed: two bins, 50/50 expected, 80/20 actual
    two = {"edges": [0.0], "share": [0.5, 0.5]}
    expected = (0.8 - 0.5) * np.log(0.8 / 0.5) + (0.2 - 0.5) * np.log(0.2 / 0.5)
    assert M.psi(two, np.array([1.0] * 8 + [-1.0] * 2)) == pytest.approx(expected)


def test_healthy_traffic_is_ok(labeled, reference):
    records = _live(ab_traffic(labeled, 200, seed=1))
    result = M.monitor(_table(records), reference, host="h1", sla_p99_ms=50.0)
    assert result.state == OK, M.status_line(result)
    assert result.n_requests == 200 and result.n_errors == 0
    assert result.rate_per_min == pytest.approx(200 / (199 * 0.5) * 60, rel=0.01)
    assert max(result.psi.values()) < M.MonitorPolicy().psi_warn
    assert sum(result.series["requests"]) == 200
    assert set(result.labels) == {"consolidation", "retracement"}


def test_drifted_inputs_are_critical(labeled, reference):
    records = _live(ab_traffic(labeled, 100, seed=2))
    for r in records:  # every bar closes where it opened: body and close features collapse
        r["ohlc"] = [[o, h, lo, o] for o, h, lo, _ in r["ohlc"]]
    result = M.monitor(_table(records), reference, host="h1")
    drift = next(c for c in result.checks if c.name == "drift")
    assert drift.state == CRITICAL and "body_pct" in drift.message
    assert result.psi["body_pct"] >= M.MonitorPolicy().psi_crit


def test_errors_and_slow_answers_raise_the_state(labeled, reference):
    records = _live(ab_traffic(labeled, 100, seed=3))
    for i in range(3):
        records.append(record(f"e{i}", 0, release="v0.1", role="live", time=1.8e9, status=500))
    result = M.monitor(_table(records), reference, host="h1", sla_p99_ms=6.0)
    states = {c.name: c.state for c in result.checks}
    assert states["errors"] == WARNING  # 3/103 is above 1%, below 5%
    assert states["latency"] == CRITICAL  # p99 about 9 ms against a 6 ms SLA
    assert result.state == CRITICAL
    line = M.status_line(result)
    assert line.startswith("MOOLA-MONITOR CRITICAL - h1:") and "'p99_ms'=" in line
    assert line.count("|") == 1


def test_shadow_rows_are_not_production(labeled, reference):
    records = ab_traffic(labeled, 50, seed=4)
    result = M.monitor(_table(records), reference, host="h1")
    assert result.n_requests == 50


def test_no_traffic_is_unknown(reference):
    result = M.monitor(_table([]), reference, host="h1", since=0.0, until=60.0)
    assert result.state == UNKNOWN and "no live requests" in M.status_line(result)


def test_prometheus_textfile_is_written_atomically(tmp_path, labeled, reference):
    result = M.monitor(_table(_live(ab_traffic(labeled, 60, seed=5))), reference, host="h1")
    text = M.prometheus_text(result, now=1.0)
    assert 'moola_monitor_feature_psi{host="h1",feature="body_pct"}' in text
    assert 'moola_monitor_latency_seconds{host="h1",quantile="0.99"}' in text
    path = write_textfile(tmp_path / "moola_monitor.prom", text)
    assert path.read_text() == text and not list(tmp_path.glob(".*.tmp"))


def test_window_features_match_training_features(labeled):
    from moola_core.data.labeled import to_model_arrays

    arrays = to_model_arrays(labeled.head(20))
    ohlc = np.stack(
        [np.asarray(c.tolist(), dtype=float).reshape(105, 4) for c in labeled.head(20)["features"]]
    )
    xs, valid = M.window_features(ohlc)
    assert np.array_equal(valid, arrays.valid)
    assert np.allclose(xs, arrays.x)

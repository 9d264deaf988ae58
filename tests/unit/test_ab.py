"""A/B analysis over captures: bootstraps against the naive resampling, pairing, the decision."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moola_core.data import synthetic
from moola_core.errors import MoolaError
from moola_ops.serving.captures import add_local_file, load_table, parse_lines, parse_since
from moola_ops.shadow import ab
from tests.unit.capture_factory import ab_traffic, record, write_lines


@pytest.fixture(scope="module")
def labeled():
    return synthetic.make_labeled_set(n_windows=174, seed=7)


def _table(records):
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    table, used = parse_lines(data)
    assert used == len(data)
    return table


def _naive_ci(values, stat, n_boot=4000, seed=5):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    return np.percentile(stat(values[idx]), [2.5, 97.5])


def test_boot_mean_matches_naive_resampling():
    values = np.random.default_rng(1).random(400)
    est = ab.boot_mean(values, n_boot=4000)
    low, high = _naive_ci(values, lambda r: r.mean(axis=1))
    assert est.value == pytest.approx(values.mean())
    assert est.ci_low == pytest.approx(low, abs=0.004)
    assert est.ci_high == pytest.approx(high, abs=0.004)


def test_boot_mean_on_a_grid_stays_close_when_values_are_all_distinct():
    values = np.random.default_rng(2).normal(size=20_000)  # > MAX_GRID distinct values
    est = ab.boot_mean(values, n_boot=2000)
    half = 1.96 * values.std() / np.sqrt(len(values))
    assert est.value == pytest.approx(values.mean())
    assert est.ci_low == pytest.approx(values.mean() - half, abs=0.003)
    assert est.ci_high == pytest.approx(values.mean() + half, abs=0.003)


def test_boot_quantile_matches_naive_resampling():
    values = np.random.default_rng(3).exponential(5.0, size=600)
    est = ab.boot_quantile(values, 0.99, n_boot=4000)
    low, high = _naive_ci(values, lambda r: np.percentile(r, 99, axis=1, method="inverted_cdf"))
    assert est.ci_low == pytest.approx(low, rel=0.05)
    assert est.ci_high == pytest.approx(high, rel=0.05)
    assert est.ci_low <= est.value <= est.ci_high


def test_parse_lines_leaves_a_torn_line_and_skips_damaged_ones():
    good = json.dumps(record("r1", 0, release="v0.1", role="live", time=1.0)) + "\n"
    data = (good + "not json\n" + json.dumps({"v": 2}) + "\n" + good[:40]).encode()
    table, used = parse_lines(data)
    assert len(table) == 1 and table.skipped == 2
    assert used == data.rfind(b"\n") + 1  # the torn tail waits for the rest of its line
    assert table.ohlc.shape == (1, 105, 4) and bool(table["has_ohlc"][0])


def test_promote_when_the_candidate_is_clearly_better(labeled):
    table = _table(ab_traffic(labeled, 400, live_acc=0.55, shadow_acc=0.95))
    result = ab.analyze(table, labeled)
    assert result.n_pairs == 400
    assert result.outcomes["n"] == 400
    diff = result.outcomes["accuracy"]["diff"]
    assert diff["ci_low"] > 0.25 and diff["value"] == pytest.approx(
        result.outcomes["accuracy"]["shadow"]["value"]
        - result.outcomes["accuracy"]["live"]["value"]
    )
    assert result.decision == "promote"
    assert result.sentence.startswith("promote v0.2")
    assert result.latency_ms["shadow"]["p50"].value > result.latency_ms["live"]["p50"].value


def test_keep_when_the_candidate_is_worse(labeled):
    table = _table(ab_traffic(labeled, 400, live_acc=0.9, shadow_acc=0.5, seed=1))
    result = ab.analyze(table, labeled)
    assert result.decision == "keep"
    assert result.sentence.startswith("keep v0.1")


def test_more_evidence_says_how_many_more_requests(labeled):
    table = _table(ab_traffic(labeled, 30, live_acc=0.7, shadow_acc=0.7, seed=2))
    result = ab.analyze(table, labeled)
    assert result.decision == "more-evidence"
    assert result.more_requests is not None and result.more_requests > 0
    assert f"{result.more_requests:,} more shadowed requests" in result.sentence


def test_without_outcomes_only_agreement_is_known(labeled):
    table = _table(ab_traffic(labeled, 100, seed=3))
    result = ab.analyze(table)
    assert result.outcomes is None and result.decision == "more-evidence"
    assert "--outcomes" in result.sentence
    assert 0 <= result.agreement.ci_low <= result.agreement.value <= result.agreement.ci_high <= 1


def test_pairs_only_sampled_requests_and_counts_shadow_errors(labeled):
    records = ab_traffic(labeled, 200, sample=0.5, seed=4)
    n_shadow = sum(r["role"] == "shadow" for r in records)
    # a live request the shadow failed, and a shadow answer with no live twin
    records.append(record("fail-1", 0, release="v0.1", role="live", time=2e9))
    records.append(record("fail-1", 0, release="v0.2", role="shadow", time=2e9, status=500))
    records.append(record("orphan", 0, release="v0.2", role="shadow", time=2e9))
    result = ab.analyze(_table(records))
    assert result.n_pairs == n_shadow < 200
    assert result.shadow_errors == 1


def test_a_failing_shadow_is_kept_out(labeled):
    records = ab_traffic(labeled, 50, seed=5)
    for i in range(10):
        records.append(record(f"x{i}", 0, release="v0.1", role="live", time=2e9))
        records.append(record(f"x{i}", 0, release="v0.2", role="shadow", time=2e9, status=500))
    result = ab.analyze(_table(records), labeled)
    assert result.decision == "keep" and "failed" in result.sentence


def test_no_shadow_answers_is_one_clear_error():
    table = _table([record("r1", 0, release="v0.1", role="live", time=1.0)])
    with pytest.raises(MoolaError, match="invoke shadow start"):
        ab.analyze(table)


def test_outcomes_that_match_no_window_are_an_error(labeled):
    table = _table(ab_traffic(labeled, 20, seed=6))
    other = labeled.assign(window_id=labeled["window_id"] + "-other")
    with pytest.raises(MoolaError, match="outcomes file"):
        ab.analyze(table, other)


def test_cache_round_trip_and_since_filter(tmp_path, labeled):
    records = ab_traffic(labeled, 30, seed=7, t0=1000.0)
    path = write_lines(tmp_path / "20261127T170000Z-1.jsonl", records)
    add_local_file(tmp_path / "cache", "h1", "v0.1", path)
    table = load_table(tmp_path / "cache", "h1", with_ohlc=True)
    assert len(table) == 60 and table.ohlc.shape == (60, 105, 4)
    later = load_table(tmp_path / "cache", "h1", since=1000.0 + 15 * 0.5)
    assert 0 < len(later) < 60 and later["time"].min() >= 1007.5


def test_parse_since():
    assert parse_since("", now=100.0) is None
    assert parse_since("90m", now=10_000.0) == 10_000.0 - 5400
    assert parse_since("2026-11-27T17:00:00Z") == pytest.approx(1795798800.0)
    with pytest.raises(MoolaError, match="--since"):
        parse_since("yesterday")


def test_error_lines_as_the_server_writes_them_are_rows():
    """serve.py's error line: index, window_id null, batch_size 0, no output, no ohlc."""
    line = {
        "v": 1,
        "request_id": "r9",
        "time": 5.0,
        "release": "v0.1",
        "role": "live",
        "status": 400,
        "latency_ms": 0.4,
        "index": None,
        "window_id": None,
        "batch_size": 0,
        "error": "window 0: expected 105 bars",
    }
    table = _table([line, record("r1", 0, release="v0.1", role="live", time=6.0)])
    assert len(table) == 2 and table.skipped == 0
    assert table["status"].tolist() == [400, 200] and table["index"].tolist() == [-1, 0]
    assert table["label"][0] == -1 and not table["has_ohlc"][0]

"""Bars: loading from parquet and CSV, validation with row and column, session gaps, windows."""

import numpy as np
import pandas as pd
import pytest

from moola_core.data.bars import load_bars, session_bounds, validate_bars
from moola_core.data.synthetic import SESSION_BARS, generate_market
from moola_core.data.windows import unlabeled_windows
from moola_core.errors import MoolaError, ValidationError
from moola_core.spec import N_FEATURES, WINDOW_LEN


@pytest.fixture(scope="module")
def bars():
    return generate_market(3 * SESSION_BARS, seed=4)


def findings(problems):
    return {(p.row, p.column) for p in problems}


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_load_round_trip(bars, tmp_path, suffix):
    path = tmp_path / f"bars{suffix}"
    if suffix == ".csv":
        bars.to_csv(path, index=False)
    else:
        bars.to_parquet(path, index=False)
    back = load_bars(path)
    assert list(back.columns) == ["timestamp", "open", "high", "low", "close", "volume"]
    assert str(back["timestamp"].dt.tz) == "UTC"
    assert (back["timestamp"] == bars["timestamp"]).all()
    np.testing.assert_allclose(back["close"], bars["close"], rtol=1e-12)


def test_csv_with_offsets_and_capitalised_names_is_read_as_utc(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text(
        "Datetime,Open,High,Low,Close\n"
        "2026-07-29 09:30:00-04:00,10,11,9,10.5\n"
        "2026-07-29 09:31:00-04:00,10.5,11,10,10.2\n"
    )
    df = load_bars(path)
    assert df["timestamp"].iloc[0] == pd.Timestamp("2026-07-29 13:30", tz="UTC")
    assert "volume" not in df.columns


def test_every_bad_bar_is_reported_and_none_dropped(bars):
    bad = bars.head(20).copy()
    bad["timestamp"] = bad["timestamp"].astype(object)  # room for a bad value
    bad.loc[3, "timestamp"] = bad.loc[2, "timestamp"]  # duplicate
    bad.loc[6, "timestamp"] = bad.loc[1, "timestamp"]  # out of order
    bad.loc[8, "close"] = np.nan
    bad.loc[9, "open"] = -1.0
    bad.loc[10, "high"] = bad.loc[10, "low"] * 0.999  # below the body
    bad.loc[11, "low"] = bad.loc[11, "high"] * 1.001  # above the body
    bad.loc[12, "volume"] = -5
    bad.loc[13, "timestamp"] = "not a time"
    problems = validate_bars(bad)
    expected = {
        (3, "timestamp"),
        (6, "timestamp"),
        (8, "close"),
        (9, "open"),
        (10, "high"),
        (11, "low"),
        (12, "volume"),
        (13, "timestamp"),
    }
    assert expected <= findings(problems)
    assert any("duplicate" in p.message and p.row == 3 for p in problems)
    assert any("earlier than" in p.message and p.row == 6 for p in problems)
    assert len(bad) == 20


def test_missing_columns_and_bad_files(tmp_path):
    assert (None, "close") in findings(validate_bars(pd.DataFrame({"timestamp": [], "open": []})))
    with pytest.raises(MoolaError, match="does not exist"):
        load_bars(tmp_path / "none.csv")
    other = tmp_path / "bars.xlsx"
    other.write_text("x")
    with pytest.raises(MoolaError, match="neither .parquet nor .csv"):
        load_bars(other)
    broken = tmp_path / "broken.csv"
    broken.write_text("timestamp,open,high,low,close\n2024-01-02 10:00,1,0.5,1,1\n")
    with pytest.raises(ValidationError, match="row 0, column high"):
        load_bars(broken)


def test_session_bounds_split_at_gaps(bars):
    bounds = session_bounds(bars["timestamp"], max_gap_minutes=5)
    assert bounds.tolist() == [[0, 390], [390, 780], [780, 1170]]
    # a gap limit longer than a weekend joins everything
    assert len(session_bounds(bars["timestamp"], max_gap_minutes=7 * 24 * 60)) == 1


def test_windows_never_cross_a_gap_and_keep_start_times(bars):
    ws = unlabeled_windows(bars, stride=7, max_gap_minutes=5)
    per_session = len(range(0, SESSION_BARS - WINDOW_LEN + 1, 7))
    assert len(ws) == 3 * per_session
    assert ws.x.shape == (len(ws), WINDOW_LEN, N_FEATURES) and ws.valid.shape == (
        len(ws),
        WINDOW_LEN,
    )
    span = (ws.end_ts - ws.start_ts).total_seconds() / 60
    assert (span == WINDOW_LEN - 1).all()  # 105 consecutive minutes: no gap inside a window
    assert (ws.start_ts == bars["timestamp"].iloc[ws.start_index].to_numpy()).all()
    # features restart at each session: its first bars are warm-up
    first_of_session = ws.start_index % SESSION_BARS == 0
    assert not ws.valid[first_of_session, :19].any()


def test_windows_of_one_session_are_views(bars):
    one = bars.head(SESSION_BARS)
    ws = unlabeled_windows(one, stride=3)
    assert ws.x.base is not None and not ws.x.flags["OWNDATA"]
    assert np.shares_memory(ws.x, ws.x.base)
    from moola_core.data.windows import stream_features

    values, _ = stream_features(one, 5)
    np.testing.assert_array_equal(ws.x[2], values[6 : 6 + WINDOW_LEN])


def test_window_arguments_are_checked(bars):
    with pytest.raises(MoolaError, match="stride"):
        unlabeled_windows(bars, stride=0)
    short = unlabeled_windows(bars.head(50))
    assert len(short) == 0 and short.x.shape == (0, WINDOW_LEN, N_FEATURES)


def test_a_copy_too_large_is_refused_with_a_stride_that_fits(bars, monkeypatch):
    import moola_core.data.windows as windows

    monkeypatch.setattr(windows, "MAX_GATHER_BYTES", 1 << 20)  # 1 MiB instead of 4 GiB
    with pytest.raises(MoolaError, match="use a stride of at least") as caught:
        unlabeled_windows(bars, stride=1)
    fit = int(str(caught.value).split("at least ")[1].split(" ")[0])
    assert len(unlabeled_windows(bars, stride=fit).x) > 0

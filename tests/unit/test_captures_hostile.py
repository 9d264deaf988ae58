"""Capture files a compromised or broken host could write, generated here: they must neither
exhaust the operator's memory nor stop a later read. Every bad line is skipped and counted;
every good line around it is kept; a cache an older Moola poisoned is rebuilt, not trusted."""

from __future__ import annotations

import base64
import json
import tracemalloc

import numpy as np
import pytest

from moola_ops.serving import captures
from moola_ops.serving.captures import add_local_file, index_file, load_table, parse_lines
from moola_ops.shadow import ab
from moola_ops.watch.monitor import monitor
from tests.unit.capture_factory import record

NAME = "20261127T170000Z-1.jsonl"


def good(i: int, role: str = "live", release: str = "v0.1") -> dict:
    return record(f"req-{i}", 0, release=release, role=role, time=1000.0 + i, window_id=f"w{i}")


def packed(rec: dict, data: bytes | None = None) -> dict:
    """`rec` as a binary request's line: its window as base64 of float32 little-endian bytes."""
    if data is None:
        data = np.asarray(rec["ohlc"], dtype="<f4").tobytes()
    out = {k: v for k, v in rec.items() if k != "ohlc"}
    return dict(out, ohlc_f32le=base64.b64encode(data).decode())


def lines(records) -> bytes:
    return b"".join(
        (r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records
    )


def test_two_thousand_lines_and_one_huge_window_id_stay_small_in_memory(tmp_path):
    # one 20 KB window_id made every id column 20,000 characters wide (80 KB a row); the
    # field 200 KB long made `invoke monitor` and `invoke ab` try to allocate 37.8 GiB
    huge = dict(good(2000), window_id="x" * 20_000)
    longer = dict(good(2001), window_id="y" * 200_000)  # past the line limit: never held
    raw = tmp_path / NAME
    raw.write_bytes(lines([good(i) for i in range(2000)] + [huge, longer]))
    tracemalloc.start()
    try:
        rows, skipped = index_file(raw, tmp_path / "index")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (rows, skipped) == (2000, 2)
    assert peak < 100e6, f"indexing {raw.stat().st_size / 1e6:.1f} MB took {peak / 1e6:.0f} MB"
    with np.load(tmp_path / "index" / (NAME[:-6] + ".npz")) as data:
        for name, dtype in captures.COLUMNS.items():
            if dtype == "U":
                assert data[name].dtype.itemsize <= 4 * captures.MAX_TEXT, name


BAD_LINES = {
    "status 1e400": dict(good(0), status=1e400),
    "status as text": dict(good(0), status="200"),
    "status out of range": dict(good(0), status=70000),
    "index 1e10": dict(good(0), index=10_000_000_000),
    "index negative": dict(good(0), index=-3),
    "index a float": dict(good(0), index=1.5),
    "strings in ohlc": dict(good(0), ohlc=[["a", "b", "c", "d"]] * 105),
    "ohlc 104 bars": dict(good(0), ohlc=[[1.0, 2.0, 0.5, 1.5]] * 104),
    "ohlc inf": dict(good(0), ohlc=[[1e400, 2.0, 0.5, 1.5]] * 105),
    "ohlc_f32le 1676 bytes": packed(good(0), b"\x00\x00\x80\x3f" * 419),
    "ohlc_f32le not base64": dict(packed(good(0)), ohlc_f32le="not base64!"),
    "ohlc_f32le a number": dict(packed(good(0)), ohlc_f32le=12),
    "ohlc_f32le NaN": packed(good(0), b"\x00\x00\xc0\x7f" * 420),
    "ohlc_f32le and ohlc": dict(packed(good(0)), ohlc=good(0)["ohlc"]),
    "time NaN": dict(good(0), time=float("nan")),
    "time missing": {k: v for k, v in good(0).items() if k != "time"},
    "latency negative": dict(good(0), latency_ms=-1.0),
    "batch 1e12": dict(good(0), batch_size=10**12),
    "window_id a list": dict(good(0), window_id=["w"]),
    "request_id with a newline": dict(good(0), request_id="a\nb"),
    "release 200 characters": dict(good(0), release="v" * 200),
    "unknown role": dict(good(0), role="canary"),
    "unknown label": dict(good(0), output=dict(good(0)["output"], label="breakout")),
    "probability 2": dict(
        good(0), output=dict(good(0)["output"], probs={"consolidation": -1, "retracement": 2})
    ),
    "start 1e6": dict(good(0), output=dict(good(0)["output"], start=10**6)),
    "abstain as text": dict(good(0), output=dict(good(0)["output"], abstain="yes")),
    "output a list": dict(good(0), output=[1, 2]),
    "not an object": [1, 2, 3],
    "nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "not JSON": b"{not json",
    "binary": b"\xff\xfe\x00\x01",
}


@pytest.mark.parametrize("what", list(BAD_LINES))
def test_a_line_out_of_bounds_is_skipped_and_counted_never_fatal(what):
    data = lines([good(1), BAD_LINES[what], good(2)])
    table, used = parse_lines(data)
    assert len(table) == 2 and table.skipped == 1, what
    assert table["request_id"].tolist() == ["req-1", "req-2"] and used == len(data)


def test_every_bad_line_at_once_then_figures_from_the_good_ones(tmp_path):
    records = []
    for i in range(60):
        records.append(good(i, "live", "v0.1"))
        records.append(good(i, "shadow", "v0.2"))
    records += list(BAD_LINES.values())
    raw = tmp_path / "raw" / NAME
    raw.parent.mkdir()
    raw.write_bytes(lines(records))
    add_local_file(tmp_path / "cache", "h1", "v0.1", raw)
    table = load_table(tmp_path / "cache", "h1", with_ohlc=True)
    assert len(table) == 120 and table.skipped == len(BAD_LINES)
    result = ab.analyze(table, shadow_release="v0.2")
    assert result.n_pairs == 60 and result.skipped_lines == len(BAD_LINES)
    assert any("skipped lines" in line for line in ab.render_text(result))
    checked = monitor(table, None, host="h1")
    (captures_check,) = [c for c in checked.checks if c.name == "captures"]
    assert str(len(BAD_LINES)) in captures_check.message


def test_a_cache_an_older_moola_poisoned_is_rebuilt_from_the_raw_file(tmp_path):
    cache = tmp_path / "cache"
    raw = cache / "h1" / "raw" / "v0.1" / NAME
    raw.parent.mkdir(parents=True)
    raw.write_bytes(lines([good(i) for i in range(5)] + [dict(good(5), window_id="x" * 5000)]))
    # as the old parser indexed it: every line a row, the id column 5,000 characters wide
    index = cache / "h1" / "index" / "v0.1"
    index.mkdir(parents=True)
    cols = {
        name: np.array(
            [0] * 6 if dtype != "U" else ["x" * 5000] * 6,
            dtype=str if dtype == "U" else dtype,
        )
        for name, dtype in captures.COLUMNS.items()
    }
    np.savez(index / (NAME[:-6] + ".npz"), skipped=np.array(0), **cols)
    np.save(index / (NAME[:-6] + ".ohlc.npy"), np.zeros((6, 105, 4), dtype="float32"))
    table = load_table(cache, "h1")
    assert len(table) == 5 and table.skipped == 1
    assert table["window_id"].dtype.itemsize <= 4 * captures.MAX_TEXT
    (index / (NAME[:-6] + ".npz")).write_bytes(b"not a zip")  # a damaged index: rebuilt too
    assert len(load_table(cache, "h1")) == 5


def test_a_binary_window_line_reads_as_the_same_float32_window_as_its_json_line():
    as_json = good(1)
    table, _ = parse_lines(lines([as_json, packed(good(2))]))
    assert table.skipped == 0 and table["has_ohlc"].tolist() == [True, True]
    want = np.asarray(as_json["ohlc"], dtype="float32")
    assert np.array_equal(table.ohlc[0], want) and np.array_equal(table.ohlc[1], want)

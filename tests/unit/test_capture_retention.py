"""Bounded captures on a host (issue #23): the server deletes capture files past the retention
and beyond the host's size cap over every release, oldest first, keeps the newest file of each
release (another server may be writing it), and counts what it deleted in /metrics."""

from __future__ import annotations

import os
import time

from moola_core.runtime.serve import Captures, Metrics

MIB = 1024 * 1024


def make(folder, name, age_s, size=1000):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("x" * (size - 1) + "\n")
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def item(request_id):
    row = {"label": "consolidation", "probs": {}, "start": 1, "end": 2, "abstain": False}
    return {
        "request_id": request_id,
        "time": time.time(),
        "status": 200,
        "latency_ms": 1.0,
        "batch_size": 1,
        "ids": [None],
        "ohlc": [[[1.0, 1.0, 1.0, 1.0]] * 105],
        "raw": [None],
        "rows": [row],
    }


def test_old_files_go_by_age_then_the_oldest_by_the_host_cap(tmp_path):
    old, new = tmp_path / "v1.0", tmp_path / "v1.1"
    aged = make(old, "a.jsonl", 10 * 86400)
    oldest, older = make(old, "b.jsonl", 3 * 3600), make(old, "c.jsonl", 2 * 3600)
    newest_old = make(old, "d.jsonl", 3600)  # v1.0's newest: kept whatever the cap
    kept = make(new, "e.jsonl", 1800)
    metrics = Metrics()
    captures = Captures(tmp_path, "v1.1", "live", 16, 256, metrics, host_mb=2500 / MIB, keep_days=7)
    captures.start()
    captures.put(item("r1"))
    captures.close()
    assert not aged.exists() and not oldest.exists() and not older.exists()
    assert newest_old.exists() and kept.exists()
    written = [p for p in new.glob("*.jsonl") if p != kept]
    assert len(written) == 1 and '"request_id":"r1"' in written[0].read_text()
    text = metrics.render({}, {})
    assert 'moola_serve_captures_deleted_files_total{reason="age"} 1' in text
    assert 'moola_serve_captures_deleted_files_total{reason="size"} 2' in text
    assert 'moola_serve_captures_deleted_bytes_total{reason="size"} 2000' in text


def test_a_release_over_its_own_cap_loses_its_oldest_files_only(tmp_path):
    mine, other = tmp_path / "v2.0", tmp_path / "v1.9"
    first, second = make(mine, "a.jsonl", 300), make(mine, "b.jsonl", 200)
    third = make(mine, "c.jsonl", 100)
    theirs = make(other, "a.jsonl", 900)  # older, but another release under the host cap
    spare = make(other, "b.jsonl", 800)
    metrics = Metrics()
    captures = Captures(tmp_path, "v2.0", "live", 16, 1500 / MIB, metrics, host_mb=1024)
    captures.start()
    captures.put(item("r2"))
    captures.close()
    assert not first.exists() and not second.exists() and third.exists()
    assert theirs.exists() and spare.exists()
    assert 'moola_serve_captures_deleted_files_total{reason="size"} 2' in metrics.render({}, {})

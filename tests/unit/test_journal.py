"""The deployment log: schema, concurrent writers from several processes, pandas-readable."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from moola_ops.log.journal import STATUSES, Event, Journal, append, log_path, read_events


def _writer(path: str, worker: int, lines: int) -> None:
    journal = Journal("deploy", bundle="v1", path=path)
    for i in range(lines):
        journal.record(f"host-{worker}", "upload", "ok", duration_s=0.1, n=i, pad="x" * 3000)


def test_concurrent_processes_neither_interleave_nor_lose_lines(tmp_path):
    path = tmp_path / "log" / "deployments.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 50)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    raw = path.read_text().splitlines()
    assert len(raw) == 200
    events = [json.loads(line) for line in raw]  # every line is whole JSON
    for w in range(4):
        assert sorted(e["detail"]["n"] for e in events if e["host"] == f"host-{w}") == list(
            range(50)
        )


def test_step_records_ok_failed_and_aborted_with_durations(tmp_path):
    path = tmp_path / "d.jsonl"
    journal = Journal("deploy", bundle="v0.3", path=path, actor="alice@laptop")
    with journal.step("runpod-1", "upload") as info:
        info["bytes"] = 10
    with pytest.raises(RuntimeError), journal.step("runpod-1", "check"):
        raise RuntimeError("golden mismatch")
    with pytest.raises(KeyboardInterrupt), journal.step("runpod-1", "switch"):
        raise KeyboardInterrupt
    with journal.step("runpod-1", "prune") as info:
        info["status"] = "skipped"
    events = read_events(path)
    assert [(e["step"], e["status"]) for e in events] == [
        ("upload", "ok"),
        ("check", "failed"),
        ("switch", "aborted"),
        ("prune", "skipped"),
    ]
    assert events[0]["detail"] == {"bytes": 10}
    assert events[1]["detail"]["error"] == "golden mismatch"
    assert {e["deployment"] for e in events} == {journal.deployment}
    assert all(e["actor"] == "alice@laptop" and e["bundle"] == "v0.3" for e in events)
    assert all(e["time"].endswith("Z") and e["duration_s"] >= 0 for e in events)


def test_env_overrides_the_path_and_filters_work(tmp_path, monkeypatch):
    monkeypatch.setenv("MOOLA_LOG", str(tmp_path / "env.jsonl"))
    assert log_path() == tmp_path / "env.jsonl"
    a, b = Journal("deploy"), Journal("rollback")
    a.record("h1", "lock", "ok")
    b.record("h2", "lock", "refused")
    assert [e["host"] for e in read_events(phase="rollback")] == ["h2"]
    assert [e["phase"] for e in read_events(deployment=a.deployment)] == ["deploy"]
    assert read_events(tmp_path / "missing.jsonl") == []


def test_unknown_status_is_a_bug_not_a_line(tmp_path):
    with pytest.raises(ValueError):
        append(Event("d", "a", "h", "v", "deploy", "x", "maybe"), tmp_path / "x.jsonl")
    assert "aborted" in STATUSES


def test_a_torn_line_is_skipped_and_pandas_reads_the_log(tmp_path):
    path = tmp_path / "d.jsonl"
    Journal("deploy", path=path).record("h", "lock", "ok", holder={"pid": 1})
    with open(path, "a") as fh:
        fh.write('{"deployment": "torn"')
    assert len(read_events(path)) == 1
    import pandas as pd

    path.write_text(path.read_text().splitlines()[0] + "\n")
    frame = pd.read_json(path, lines=True)
    assert list(frame["step"]) == ["lock"]


def test_lines_that_are_not_events_are_skipped(tmp_path):
    # `invoke log` and `invoke checklist` died with KeyError / AttributeError on such lines
    path = tmp_path / "log.jsonl"
    Journal("deploy", path=path, actor="alice@laptop").record("h1", "switch", "ok")
    with open(path, "a") as fh:
        fh.write('{}\n[1]\n"x"\n{"time": "2026-01-01T00:00:00.000Z", "phase": "deploy"}\n{torn\n')
    Journal("rollback", path=path, actor="alice@laptop").record("h1", "switch", "ok")
    assert [e["phase"] for e in read_events(path)] == ["deploy", "rollback"]


# --- the write path fails loudly and never tears the log (issue 15, item 1) -----------------

_SHORT_WRITE = """
import resource, signal, sys
from moola_ops.log.journal import Journal
from moola_ops.log.logfile import JournalWriteError
path, limit = sys.argv[1], int(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit write() fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    Journal("deploy", path=path).record("h1", "switch", "ok", pad="x" * 12000)
except JournalWriteError as exc:
    print(exc)
    sys.exit(3)
"""


def _record_under_file_limit(path, limit: int):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", _SHORT_WRITE, str(path), str(limit)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_short_write_is_an_error_and_leaves_only_whole_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    Journal("deploy", path=path).record("h1", "lock", "ok")
    before = path.read_bytes()
    # the file may grow by 4 KB: a 12 KB event is written partly, then the disk is "full"
    done = _record_under_file_limit(path, len(before) + 4096)
    assert done.returncode == 3, done.stderr  # an error, not a silent truncation
    message = done.stdout.strip()
    assert message.startswith(f"could not write the deployment log {path} (File too large)")
    assert "only 4096 of" in message and "taken back out" in message
    assert "\n" not in message and "Traceback" not in done.stderr
    assert path.read_bytes() == before  # the partial line was removed
    Journal("deploy", path=path).record("h1", "unlock", "ok")
    assert [e["step"] for e in read_events(path)] == ["lock", "unlock"]


def test_an_event_after_a_torn_line_starts_on_a_fresh_line(tmp_path):
    path = tmp_path / "d.jsonl"
    Journal("deploy", path=path).record("h1", "lock", "ok")
    with open(path, "ab") as fh:  # what a writer killed mid-line (or an old version) leaves
        fh.write(b'{"deployment": "torn", "pad": "xxxx')
    Journal("deploy", path=path).record("h1", "switch", "ok")
    Journal("deploy", path=path).record("h1", "unlock", "ok")
    assert [e["step"] for e in read_events(path)] == ["lock", "switch", "unlock"]
    assert path.read_bytes().endswith(b"\n")


def test_a_log_that_cannot_be_written_is_one_sentence(tmp_path):
    from moola_core.errors import MoolaError
    from moola_ops.log.journal import check_writable
    from moola_ops.log.logfile import JournalWriteError

    folder = tmp_path / "log-is-a-folder"
    folder.mkdir()
    with pytest.raises(JournalWriteError) as caught:
        Journal("deploy", path=folder).record("h1", "switch", "ok")
    assert isinstance(caught.value, MoolaError)
    assert str(caught.value).startswith(f"could not write the deployment log {folder}")
    assert "it is a folder" in str(caught.value)

    blocked = tmp_path / "a-file" / "deployments.jsonl"  # its folder is a file
    blocked.parent.write_text("")
    with pytest.raises(JournalWriteError, match="a file is in the way"):
        check_writable(blocked)
    assert check_writable(tmp_path / "new" / "d.jsonl").is_file()

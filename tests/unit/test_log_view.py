"""`invoke log`'s rows and filters (moola_ops.render) and the log's rotation by size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from moola_core.errors import MoolaError
from moola_ops.log import journal
from moola_ops.render import LogFilter, format_table, log_rows, parse_since

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ev(time, phase, step, status="ok", host="h1", deployment="d1", **detail):
    return {
        "time": f"2026-11-27T{time}.000Z",
        "deployment": deployment,
        "actor": "me",
        "host": host,
        "bundle": "v0.3",
        "phase": phase,
        "step": step,
        "status": status,
        "duration_s": 1.5,
        "detail": detail,
    }


def test_health_runs_collapse_and_a_failing_run_keeps_its_reason():
    events = [ev("10:00:00", "deploy", "switch")]
    for i in range(5):  # five passing cron runs, two hosts each
        events += [
            ev(f"10:0{i + 1}:00", "healthcheck", "fast", host=h, deployment=f"hc{i}")
            for h in ("h1", "h2")
        ]
    events += [
        ev("10:07:00", "healthcheck", "fast", host="h1", deployment="hc9"),
        ev(
            "10:07:00",
            "healthcheck",
            "fast",
            "failed",
            host="h2",
            deployment="hc9",
            summary="checksums: weights.pt differs",
        ),
    ]
    events.append(ev("10:08:00", "deploy", "check", "failed", summary="p99 over the SLA"))
    rows = log_rows(events)
    assert [(r.phase, r.status) for r in rows] == [
        ("deploy", "ok"),
        ("healthcheck", "ok"),
        ("healthcheck", "failed"),
        ("deploy", "failed"),
    ]
    assert rows[1].deployment.startswith("5 runs since") and rows[1].host == "h1,h2"
    assert rows[2].reason == "h2: checksums: weights.pt differs"
    assert rows[3].reason == "p99 over the SLA"
    assert len(log_rows(events, collapse_health=False)) == len(events)


def test_table_has_a_header_and_columns_fit_the_longest_phase():
    rows = log_rows(
        [ev("10:00:00", "post-deploy-verification", "sanity"), ev("10:00:01", "deploy", "upload")]
    )
    lines = format_table(rows)
    assert lines[0].split() == [
        "time",
        "deployment",
        "phase",
        "host",
        "step",
        "status",
        "seconds",
        "bundle",
        "reason",
    ]
    # every column starts at the same offset on every line: the long phase did not push it
    col = lines[0].index("host")
    assert all(line[col:].split()[0] in ("host", "h1") for line in lines)


def test_filters_by_phase_host_glob_deployment_since_and_failure():
    events = [
        ev("09:00:00", "deploy", "lock", host="local-1", deployment="20261127T0900Z-aa"),
        ev("10:00:00", "deploy", "check", "failed", host="local-2"),
        ev("11:00:00", "rollback", "switch", host="runpod-1"),
        ev("12:00:00", "verify", "sanity", "refused", host="local-1"),
    ]
    keep = lambda **kw: [e["step"] for e in events if LogFilter(**kw).keep(e)]  # noqa: E731
    assert keep(phases=("rollback", "verify")) == ["switch", "sanity"]
    assert keep(hosts=("local-*",)) == ["lock", "check", "sanity"]
    assert keep(deployment="20261127T0900Z") == ["lock"]
    assert keep(since="2026-11-27T10:30:00.000Z") == ["switch", "sanity"]
    assert keep(failed=True) == ["check", "sanity"]


def test_since_reads_relative_and_absolute_times():
    now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert parse_since("2h", now) == "2026-11-27T10:00:00.000Z"
    assert parse_since("3d", now) == "2026-11-24T12:00:00.000Z"
    assert parse_since("2026-11-27", now) == "2026-11-27T00:00:00.000Z"
    assert parse_since("2026-11-27 14:30", now) == "2026-11-27T14:30:00.000Z"
    with pytest.raises(MoolaError, match="--since 'yesterday' is not a time"):
        parse_since("yesterday", now)


def test_the_log_rotates_by_size_and_readers_span_every_file(tmp_path, monkeypatch):
    log = tmp_path / "deployments.jsonl"
    monkeypatch.setenv("MOOLA_LOG_MAX_MB", str(2000 / 1024 / 1024))  # ~2 kB per file
    monkeypatch.setenv("MOOLA_LOG_KEEP", "3")
    j = journal.Journal("deploy", path=log)
    for i in range(40):
        j.record("h1", f"step-{i}", "ok", pad="x" * 100)
    rotated = journal.rotated_files(log)
    assert [p.name for p in rotated] == [
        "deployments.jsonl.3",
        "deployments.jsonl.2",
        "deployments.jsonl.1",
    ]
    assert all(p.stat().st_size < 2000 + 400 for p in [*rotated, log])
    steps = [e["step"] for e in journal.read_events(log)]
    # oldest files beyond the 3 kept are gone; what is kept reads in order, without a gap
    numbers = [int(s.split("-")[1]) for s in steps]
    assert numbers == list(range(numbers[0], 40)) and numbers[0] > 0


def test_concurrent_writers_across_a_rotation_lose_no_line(tmp_path):
    log = tmp_path / "deployments.jsonl"
    code = (
        "import sys; from moola_ops.log.journal import Journal\n"
        "j = Journal('deploy', path=sys.argv[1])\n"
        "for i in range(150): j.record(sys.argv[2], f's{i}', 'ok', pad='y' * 60)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": REPO,
        "MOOLA_LOG_MAX_MB": str(8000 / 1024 / 1024),
        "MOOLA_LOG_KEEP": "100",
    }
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(log), f"w{n}"], env=env) for n in range(3)
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    events = journal.read_events(log)
    assert len(journal.rotated_files(log)) > 3
    assert len(events) == 450
    assert len({(e["host"], e["step"]) for e in events}) == 450


def test_invoke_log_with_no_log_names_no_file(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO, "MOOLA_LOG": str(tmp_path / "none.jsonl")}
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "-r", REPO, "log"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert "none.jsonl" not in done.stdout and "log is empty" in done.stdout
    (tmp_path / "none.jsonl").write_text(json.dumps(ev("10:00:00", "deploy", "lock")) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "-r", REPO, "log", "--phase", "verify"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "no log lines match (1 lines in the log)"

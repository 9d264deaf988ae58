"""The step-progress hook (journal.subscribe) and its renderer (moola_ops.progress)."""

from __future__ import annotations

import io
import json
import threading

import pytest

from moola_ops import progress
from moola_ops.log import journal


def test_listeners_see_a_transient_start_and_the_written_end(tmp_path):
    seen: list[journal.Event] = []
    unsubscribe = journal.subscribe(seen.append)
    log = tmp_path / "log.jsonl"
    try:
        j = journal.Journal("deploy", bundle="v1", path=log)
        with j.step("h1", "upload", bytes=10):
            pass
        with pytest.raises(RuntimeError), j.step("h1", "check"):
            raise RuntimeError("golden outputs differ")
    finally:
        unsubscribe()
    assert [(e.host, e.step, e.status) for e in seen] == [
        ("h1", "upload", "started"),
        ("h1", "upload", "ok"),
        ("h1", "check", "started"),
        ("h1", "check", "failed"),
    ]
    assert seen[0].deployment == j.deployment and seen[0].detail == {"bytes": 10}
    written = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["step"], e["status"]) for e in written] == [("upload", "ok"), ("check", "failed")]
    # unsubscribed: nothing more arrives
    j.record("h1", "prune", "ok")
    assert len(seen) == 4


def test_a_broken_listener_cannot_break_a_run(tmp_path):
    def boom(event):
        raise ValueError("renderer bug")

    unsubscribe = journal.subscribe(boom)
    try:
        with journal.Journal("deploy", path=tmp_path / "l.jsonl").step("h", "switch"):
            pass
    finally:
        unsubscribe()
    assert '"status":"ok"' in (tmp_path / "l.jsonl").read_text()


def test_transient_steps_are_announced_and_never_written(tmp_path, monkeypatch):
    monkeypatch.setenv("MOOLA_LOG", str(tmp_path / "l.jsonl"))
    seen = []
    unsubscribe = journal.subscribe(seen.append)
    try:
        with journal.transient_step("healthcheck", "h2", "facts"):
            pass
        with pytest.raises(OSError), journal.transient_step("healthcheck", "h2", "connect"):
            raise OSError("connection refused")
    finally:
        unsubscribe()
    assert [(e.step, e.status) for e in seen] == [
        ("facts", "started"),
        ("facts", "ok"),
        ("connect", "started"),
        ("connect", "failed"),
    ]
    assert seen[-1].detail["error"] == "connection refused"
    assert not (tmp_path / "l.jsonl").exists()


def test_off_a_terminal_one_plain_line_per_finished_step(tmp_path):
    out = io.StringIO()
    with progress.show("deploy v1", hosts=["h1", "h2"], live=False, stream=out):
        j = journal.Journal("deploy", path=tmp_path / "l.jsonl")
        for host in ("h1", "h2"):
            with j.step(host, "upload"):
                pass
        j.record("h2", "check", "failed", error="p99 3.1 ms over the 2 ms SLA")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].split()[1:5] == ["deploy", "h1", "upload", "ok"]
    assert lines[2].endswith("check failed 0.0s  p99 3.1 ms over the 2 ms SLA")
    assert "\x1b" not in out.getvalue()


def test_plain_false_keeps_a_non_terminal_silent(tmp_path):
    out = io.StringIO()
    with progress.show("healthcheck", live=False, plain=False, stream=out):
        journal.Journal("healthcheck", path=tmp_path / "l.jsonl").record("h1", "fast", "ok")
    assert out.getvalue() == ""


def test_the_live_view_shows_each_hosts_current_step():
    view = progress.ProgressView("deploy v1", hosts=("h1", "h2", "h3"), live=True)
    event = journal.Event
    view(event("d", "me", "h1", "v1", "deploy", "upload", "started"))
    view.upload("h1", 4_000_000)(1_000_000, 4_000_000)
    view(event("d", "me", "h2", "v1", "deploy", "check", "started"))
    view(event("d", "me", "h2", "v1", "deploy", "check", "failed", detail={"error": "golden"}))
    from rich.console import Console

    text = io.StringIO()
    Console(file=text, width=120, color_system=None).print(view.renderable())
    rendered = text.getvalue()
    row = {line.split()[0]: line for line in rendered.splitlines() if line.split()[:1]}
    assert "upload 1.0/4.0 MB" in next(v for v in rendered.splitlines() if " h1 " in f" {v} ")
    h2 = next(v for v in rendered.splitlines() if "h2" in v)
    assert "check failed" in h2 and "check: golden" in h2
    assert "waiting" in next(v for v in rendered.splitlines() if "h3" in v)
    assert row  # the table rendered rows at all


def test_events_from_many_threads_are_all_rendered(tmp_path):
    out = io.StringIO()
    with progress.show(live=False, stream=out):
        j = journal.Journal("deploy", path=tmp_path / "l.jsonl")
        threads = [
            threading.Thread(target=lambda h=h: [j.record(h, f"s{i}", "ok") for i in range(20)])
            for h in ("a", "b", "c", "d")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    lines = out.getvalue().splitlines()
    assert len(lines) == 80 and all(len(line.split()) == 6 for line in lines)

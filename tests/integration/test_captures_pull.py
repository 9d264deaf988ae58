"""Pulling captures from a real OpenSSH stand-in host: incremental, checksummed; then `invoke ab`
and `invoke monitor` over what was pulled, and a host that stops answering."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from moola_core.data import labeled as labeled_io
from moola_core.data import synthetic
from moola_ops.checklist.spec import load_checklist
from moola_ops.checklist.states import checklist_states
from moola_ops.hosts.inventory import Inventory
from moola_ops.log.journal import Journal, read_events
from moola_ops.serving.captures import load_table
from moola_ops.serving.captures_pull import pull_host
from moola_ops.shadow import ab
from moola_ops.watch import monitor
from moola_ops.watch.health import OK, UNKNOWN
from tests.unit.capture_factory import ab_traffic

NAME = "20261127T170000Z-1.jsonl"


@pytest.fixture(scope="module")
def frame():
    return synthetic.make_labeled_set(n_windows=174, seed=7)


def _lines(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _write(path: Path, data: bytes, mode: str = "wb") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for folder in (path.parent.parent, path.parent):
        os.chmod(folder, 0o755)
    with open(path, mode) as fh:
        fh.write(data)
    os.chmod(path, 0o644)


@pytest.fixture
def host_and_files(sandbox_factory, frame):
    sandbox = sandbox_factory(["local-1"])
    inventory = Inventory.from_sandbox(sandbox)
    host = inventory.resolve("local-1")[0]
    remote = Path(sandbox.hosts["local-1"].workspace) / "captures" / "v0.1" / NAME
    return inventory, host, remote


def test_pull_is_incremental_and_checksummed(host_and_files, frame, tmp_path):
    inventory, host, remote = host_and_files
    cache = tmp_path / "cache"
    first = _lines(ab_traffic(frame, 20, seed=1))
    torn = _lines(ab_traffic(frame, 1, seed=2, t0=1_900_000_000.0))
    _write(remote, first + torn[:100])  # the server is mid-line
    pulled = pull_host(host, cache)
    assert pulled.files == 1 and pulled.fetched_files == 1 and not pulled.refetched
    assert pulled.fetched_bytes == len(first) + 100
    assert len(load_table(cache, "local-1")) == 40  # the torn line waits

    more = _lines(ab_traffic(frame, 5, seed=3, t0=1_950_000_000.0))
    _write(remote, torn[100:] + more, mode="ab")
    pulled = pull_host(host, cache)
    assert pulled.fetched_bytes == len(torn) - 100 + len(more)  # only the new bytes travel
    assert len(load_table(cache, "local-1")) == 40 + 2 + 10

    assert pull_host(host, cache).fetched_files == 0  # nothing new: nothing fetched

    # the host's file changed under us (same name, other bytes): fetched again, whole
    data = remote.read_bytes().replace(b"req-0", b"req-X", 1) + more
    _write(remote, data)
    pulled = pull_host(host, cache)
    assert pulled.refetched == [f"v0.1/{NAME}"]
    local = cache / "local-1" / "raw" / "v0.1" / NAME
    assert local.read_bytes() == data


def test_ab_over_ssh_is_logged_and_shown_by_the_checklist(
    host_and_files, frame, tmp_path, monkeypatch
):
    inventory, host, remote = host_and_files
    monkeypatch.setenv("MOOLA_LOG", str(tmp_path / "log.jsonl"))
    _write(remote, _lines(ab_traffic(frame, 300, seed=4, live_acc=0.6, shadow_acc=0.95)))
    outcomes = labeled_io.write_labeled(frame, tmp_path / "outcomes.parquet")
    result, pulled = ab.run_ab(
        "local-1", outcomes=str(outcomes), inventory=inventory, cache=tmp_path / "cache"
    )
    assert pulled.fetched_files == 1 and result.decision == "promote"
    assert (tmp_path / "cache" / "local-1" / "ab.json").is_file()
    line = read_events(phase="ab")[-1]
    assert line["bundle"] == "v0.2" and line["status"] == "ok"
    assert line["detail"]["summary"] == result.sentence
    # the candidate's deployment shows the A/B as phase 6 evidence
    deploy = Journal("deploy", bundle="v0.2")
    deploy.record("local-1", "post-check", "ok")
    report = checklist_states(load_checklist(), read_events(), deploy.deployment)
    step = next(s for s in report.steps if s.step == "ab")
    assert step.phase == 6 and step.state == "done" and step.detail.startswith("promote v0.2")


def test_monitor_pulls_and_falls_back_to_the_cache_when_the_host_is_gone(
    sandbox_factory, frame, tmp_path
):
    sandbox = sandbox_factory(["local-1"])
    inventory = Inventory.from_sandbox(sandbox)
    remote = Path(sandbox.hosts["local-1"].workspace) / "captures" / "v0.1" / NAME
    records = [r for r in ab_traffic(frame, 120, seed=5) if r["role"] == "live"]
    _write(remote, _lines(records))
    reference = labeled_io.write_labeled(frame, tmp_path / "train.parquet")
    kwargs = {
        "since": "2026-01-01T00:00:00Z",
        "reference": str(reference),
        "inventory": inventory,
        "cache": tmp_path / "cache",
        "timeout_s": 30,
    }
    result = monitor.run_monitor("local-1", **kwargs)
    assert result.state == OK, monitor.status_line(result)
    assert result.n_requests == 120 and result.psi_windows == 120
    assert (tmp_path / "cache" / "local-1" / "monitor.json").is_file()

    sandbox.stop()  # the host stops answering: the cache still gives the figures
    result = monitor.run_monitor("local-1", **kwargs)
    assert result.state == UNKNOWN and result.checks[0].name == "pull"
    assert result.n_requests == 120


def test_hostile_capture_lines_are_skipped_and_counted_and_never_stop_a_pull(
    host_and_files, frame, tmp_path
):
    # one such line used to stop every later pull ("bad lines are never fatal", said the docs)
    inventory, host, remote = host_and_files
    cache = tmp_path / "cache"
    good = ab_traffic(frame, 10, seed=4)
    bad = [
        dict(good[0], status=1e400),
        dict(good[0], index=10_000_000_000),
        dict(good[0], ohlc=[["a", "b", "c", "d"]] * 105),
        dict(good[0], window_id="x" * 200_000),
    ]
    _write(remote, _lines(good[:10] + bad + good[10:]))
    pulled = pull_host(host, cache)
    assert pulled.rows == 20 and pulled.skipped_lines == 4
    assert "4 damaged or out-of-range lines skipped" in pulled.summary()
    _write(remote, _lines(ab_traffic(frame, 3, seed=5, t0=1_950_000_000.0)), mode="ab")
    assert pull_host(host, cache).rows == 26  # the file indexed again, whole: 20 + 6
    assert len(load_table(cache, "local-1")) == 26


def test_a_pull_that_fails_midway_leaves_the_cache_as_it_was(host_and_files, frame, tmp_path):
    inventory, host, remote = host_and_files
    cache = tmp_path / "cache"
    first = _lines(ab_traffic(frame, 5, seed=6))
    _write(remote, first)
    pull_host(host, cache)
    state = json.loads((cache / "local-1" / "state.json").read_text())
    _write(remote, _lines(ab_traffic(frame, 5, seed=7, t0=1_950_000_000.0)), mode="ab")
    index = cache / "local-1" / "index" / "v0.1"
    aside = index.with_name("v0.1.aside")
    index.rename(aside)
    index.write_text("a file where the index folder should be")  # indexing fails
    with pytest.raises(OSError):
        pull_host(host, cache)
    raw = cache / "local-1" / "raw" / "v0.1" / NAME
    assert raw.read_bytes() == first  # the new bytes were fetched, then cut back
    assert json.loads((cache / "local-1" / "state.json").read_text()) == state
    index.unlink()
    aside.rename(index)
    assert len(load_table(cache, "local-1")) == 10  # what the last good pull indexed
    assert pull_host(host, cache).rows == 20
    assert len(load_table(cache, "local-1")) == 20


def test_a_pull_is_bounded_oldest_first_and_the_next_one_goes_on(host_and_files, frame, tmp_path):
    _inventory, host, remote = host_and_files
    cache = tmp_path / "cache"
    files = []
    for i, hour in enumerate(("17", "18", "19")):  # three files, one hour apart, v0.1 and v0.2
        path = (
            remote.parent.parent / ("v0.2" if i == 1 else "v0.1") / f"20261127T{hour}0000Z-1.jsonl"
        )
        data = _lines(ab_traffic(frame, 20, seed=10 + i, t0=1_900_000_000.0 + i * 3600))
        _write(path, data)
        files.append((path, len(data)))
    bound = files[0][1] + files[1][1]  # room for the two oldest, not the third
    pulled = pull_host(host, cache, max_bytes=bound)
    assert pulled.fetched_files == 2 and pulled.fetched_bytes == bound
    assert pulled.left_files == 1 and pulled.left_bytes == files[2][1]
    assert "left for the next pull" in pulled.summary()
    local = cache / "local-1" / "raw"
    assert (local / "v0.1" / files[0][0].name).exists() and (
        local / "v0.2" / files[1][0].name
    ).exists()
    assert not (local / "v0.1" / files[2][0].name).exists()
    again = pull_host(host, cache, max_bytes=bound)  # only what the first one left
    assert again.fetched_files == 1 and again.fetched_bytes == files[2][1] and not again.left_files
    # one file larger than the bound still comes (a pull always makes progress)
    big = remote.parent / "20261127T200000Z-1.jsonl"
    _write(big, _lines(ab_traffic(frame, 40, seed=20, t0=1_990_000_000.0)))
    assert pull_host(host, cache, max_bytes=10).fetched_files == 1


# --- `invoke monitor --timeout` bounds the whole command (issue #24) ---------------------------


def test_monitor_timeout_cancels_a_stalled_pull_on_the_host(sandbox_factory, tmp_path):
    # the host's python (the capture listing) stalls until the test opens its gate: before, the
    # abandoned pull ran on, on the host and in the interpreter, after the command's deadline
    import subprocess
    import sys

    from tests.integration.helpers import gone, write_inventory

    sandbox = sandbox_factory(["local-1"])
    workspace = Path(sandbox.hosts["local-1"].workspace)
    stall = Path(sandbox.root) / "stalling-python"
    stall.write_text(
        f"#!/bin/sh\necho $$ > {workspace}/stalled.pid\n"
        f'while [ ! -f {workspace}/go ]; do sleep 0.1; done\nexec python3 "$@"\n'
    )
    stall.chmod(0o755)
    inventory = write_inventory(tmp_path / "hosts.yaml", sandbox.hosts, python=str(stall))
    invoke = str(Path(sys.executable).parent / "invoke")
    argv = [invoke, "monitor", "--host", "local-1", "--inventory", str(inventory)]
    argv += ["--timeout", "6", "--cache", str(tmp_path / "cache")]
    try:
        proc = subprocess.run(
            argv, cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert proc.stdout.startswith(
            "MOOLA-MONITOR UNKNOWN - local-1: pull UNKNOWN: local-1 did not send its captures "
            "within 6 s; figures are from the local cache"
        ), proc.stdout
        stalled = int((workspace / "stalled.pid").read_text())
        assert gone(stalled), "the pull's listing still runs on the host after the deadline"
    finally:
        (workspace / "go").touch()


def test_monitor_ends_by_its_timeout_while_the_figures_are_still_computed(
    sandbox_factory, frame, tmp_path, monkeypatch
):
    # a new release's training reference can take long to build; the deadline still holds. The
    # computation is held at the test's own gate, so nothing depends on how fast it would be
    import threading

    inventory = Inventory.from_sandbox(sandbox_factory(["local-1"]))
    reference = labeled_io.write_labeled(frame, tmp_path / "train.parquet")
    gate, reached = threading.Event(), threading.Event()
    real = monitor.reference_from_labeled

    def held(data):
        reached.set()
        gate.wait(120)
        return real(data)

    monkeypatch.setattr(monitor, "reference_from_labeled", held)
    box: dict = {}

    def run() -> None:
        box["result"] = monitor.run_monitor(
            "local-1",
            reference=str(reference),
            inventory=inventory,
            cache=tmp_path / "cache",
            timeout_s=3,
            pull=False,
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        thread.join(60)  # a hang detector: the gate stays shut far longer than the timeout
        assert not thread.is_alive(), "monitor waited for its figures past --timeout"
        assert reached.is_set() and not gate.is_set()
        result = box["result"]
        assert result.state == UNKNOWN and result.checks[-1].name == "figures"
        assert result.checks[-1].message.startswith("not computed within --timeout 3 s")
        assert not (tmp_path / "cache" / "local-1" / "monitor.json").exists()  # not saved over
    finally:
        gate.set()

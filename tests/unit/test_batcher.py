"""The server's dynamic batcher with a real (tiny) release loaded: a lone request runs its pass
in its own thread, requests that arrive while a pass runs share the next one. A file hook
(`hold_dir`) holds a pass at a named moment; nothing here depends on timing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from moola_core.runtime.serve import Batcher, Metrics, Predictor
from tests.integration.helpers import window
from tests.unit.test_runtime import make_release


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    torch.set_num_threads(1)
    release = make_release(tmp_path_factory.mktemp("batcher"), sla_p99_ms=10_000.0)
    loaded = Predictor(release, "cpu")
    loaded.load()
    return loaded


def ohlc(seed: int):
    return torch.tensor([window(seed)], dtype=torch.float64)


def handle(batcher: Batcher, seed: int):
    """What the request handler does: announce, submit, run inline when told, wait."""
    batcher.arrive(1)
    pending = batcher.submit(ohlc(seed))
    if pending.inline:
        batcher.run_inline(pending)
    assert pending.done.wait(120)
    return pending


def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_a_lone_request_runs_inline_and_late_arrivals_share_the_next_pass(predictor, tmp_path):
    hold = tmp_path / "hold"
    batcher = Batcher(predictor, Metrics(), max_batch=64, max_wait_s=0.002, hold_dir=tmp_path)
    batcher.start()
    try:
        lone = handle(batcher, 1)  # the model is idle: no hand-over to the batcher thread
        assert lone.inline and lone.batch_size == 1 and lone.error is None
        assert lone.rows == predictor.predict_ohlc(ohlc(1))  # the same answer as in process

        hold.touch()  # the next pass waits at its start until the file goes
        first: list = []
        runner = threading.Thread(target=lambda: first.append(handle(batcher, 2)))
        runner.start()
        wait_for(lambda: Path(tmp_path, "in-forward").exists(), "the first pass to start")
        late: list = []
        clients = [
            threading.Thread(target=lambda s=s: late.append(handle(batcher, s))) for s in (3, 4, 5)
        ]
        for client in clients:
            client.start()
        wait_for(lambda: batcher.queued_windows() == 3, "three requests queued behind it")
        hold.unlink()
        for thread in (runner, *clients):
            thread.join(120)
        assert first[0].inline and first[0].batch_size == 1
        assert sorted(p.batch_size for p in late) == [3, 3, 3]  # one pass for the three
        assert not any(p.inline for p in late)
        for p in late:
            assert p.error is None and len(p.rows) == 1
    finally:
        batcher.stop()

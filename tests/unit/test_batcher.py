"""The server's dynamic batcher with a real (tiny) release loaded: a lone request is answered
alone and at once, requests that arrive while a pass runs share the next one. A file hook
(`hold_dir`) holds a pass at a named moment; nothing here depends on timing."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from moola_core.runtime.serve import Batcher, Metrics, Predictor
from tests.integration.helpers import wait_for, window
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
    """What the request handler does: announce (being read), submit, wait for the answer."""
    batcher.arrive(1)
    pending = batcher.submit(ohlc(seed))
    assert pending.done.wait(120)
    return pending


def test_a_lone_request_is_answered_alone_and_late_arrivals_share_the_next_pass(
    predictor, tmp_path
):
    hold = tmp_path / "hold"
    batcher = Batcher(predictor, Metrics(), max_batch=64, max_wait_s=0.002, hold_dir=tmp_path)
    batcher.start()
    try:
        lone = handle(batcher, 1)  # nothing else arrives: it does not wait for company
        assert lone.batch_size == 1 and lone.error is None
        assert lone.rows == predictor.predict_ohlc(ohlc(1))  # the same answer as in process

        Path(tmp_path, "in-forward").unlink()  # every pass touches it; the lone one did
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
        assert first[0].batch_size == 1
        assert sorted(p.batch_size for p in late) == [3, 3, 3]  # one pass for the three
        for p in late:
            assert p.error is None and len(p.rows) == 1
    finally:
        batcher.stop()


class GatedPredictor:
    """The real predictor; records which thread ran each pass, and a pass on the batcher's
    thread waits at its start until the test opens the gate."""

    def __init__(self, predictor):
        self.predictor, self.threads = predictor, []
        self.entered, self.gate = threading.Event(), threading.Event()

    def predict_ohlc(self, x):
        self.threads.append(threading.current_thread().name)
        if threading.current_thread().name == "batcher":
            self.entered.set()
            assert self.gate.wait(120)
        return self.predictor.predict_ohlc(x)


def test_a_request_alone_runs_on_the_callers_thread_only_while_the_batcher_is_idle(predictor):
    gated = GatedPredictor(predictor)
    metrics = Metrics()
    batcher = Batcher(gated, metrics, max_batch=64, max_wait_s=0.002)
    batcher.start()
    try:
        batcher.arrive(1)
        alone = batcher.run_alone(ohlc(1))
        assert alone is not None and alone.done.is_set() and alone.batch_size == 1
        assert alone.rows == predictor.predict_ohlc(ohlc(1))
        assert gated.threads == [threading.current_thread().name]
        assert metrics.batch_counts[0] == 1  # counted as a pass of one

        batcher.arrive(1)
        batcher.arrive(1)  # another request is being read: it may share a pass, so no
        assert batcher.run_alone(ohlc(2)) is None and batcher.arriving == 2
        batcher.arrive(-2)

        running = handle_async(batcher, 3)
        assert gated.entered.wait(120)  # a pass runs on the batcher's thread
        batcher.arrive(1)
        assert batcher.run_alone(ohlc(4)) is None  # nothing done; the caller submits it
        queued = batcher.submit(ohlc(4))
        gated.gate.set()
        running.join(120)
        assert queued.done.wait(120) and queued.error is None
        assert gated.threads.count("batcher") == 2
    finally:
        batcher.stop()


def test_the_hold_hook_keeps_every_pass_on_the_batchers_thread(predictor, tmp_path):
    batcher = Batcher(predictor, Metrics(), max_batch=64, max_wait_s=0.002, hold_dir=tmp_path)
    batcher.start()
    try:
        batcher.arrive(1)
        assert batcher.run_alone(ohlc(1)) is None
        assert batcher.submit(ohlc(1)).done.wait(120)
    finally:
        batcher.stop()


def handle_async(batcher: Batcher, seed: int) -> threading.Thread:
    thread = threading.Thread(target=lambda: handle(batcher, seed))
    thread.start()
    return thread

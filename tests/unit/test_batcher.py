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

"""One fleet executor: work on many hosts in parallel, canary first, then batches, within
deadlines, and honour Ctrl-C (or SIGTERM) within seconds.

Deploy, rollback, drill, restore, verify and the health checks all run through `run_fleet`.
Light (standard library only): the cron health check imports it.

Each host runs in a daemon thread; the caller's thread only waits, in short slices, so
Ctrl-C reaches it at once. A first Ctrl-C sets `cancel` and calls `on_interrupt` (the engine
cuts connections that are not inside a switch); the hosts then clean up (unlock, switch back)
within their own cleanup deadline, which the executor waits for, bounded by `grace_s`. A second
Ctrl-C stops waiting at once. A host past its deadline is reported by `on_late`, never waited
for, and one host's trouble never holds the others' results.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
SLICE_S = 0.1  # how often the waiting thread wakes (Ctrl-C latency)


class FleetInterrupted(KeyboardInterrupt, Generic[R]):
    """Ctrl-C or SIGTERM: `results` maps host index -> result for the hosts that finished."""

    def __init__(self, results: dict[int, Any], unfinished: list[int]):
        super().__init__("interrupted")
        self.results = results
        self.unfinished = unfinished


def waves_of(items: Sequence[T], canary: int, batch: int) -> list[list[int]]:
    """Indexes of `items` per wave: the canary hosts first, then batches of `batch` (0: all)."""
    rest = list(range(len(items)))
    waves: list[list[int]] = []
    if canary > 0 and len(rest) > 1:
        waves.append(rest[:canary])
        rest = rest[canary:]
    size = batch if batch > 0 else len(rest)
    waves += [rest[i : i + size] for i in range(0, len(rest), size)] if rest else []
    return waves


def run_fleet(
    items: Sequence[T],
    work: Callable[[T, threading.Event, float | None], R],
    *,
    parallel: int = 4,
    canary: int = 0,
    batch: int = 0,
    run_deadline_s: float | None = None,
    host_deadline_s: float | None = None,
    ok: Callable[[R], bool] = lambda r: True,
    on_skip: Callable[[T, str], R] | None = None,
    on_late: Callable[[T, float], R] | None = None,
    on_error: Callable[[T, BaseException], R] | None = None,
    on_interrupt: Callable[[], None] | None = None,
    grace_s: float | Callable[[int], float] = 120.0,
) -> list[R]:
    """Run `work(item, cancel, deadline)` for every item; results in the items' order.

    `deadline` is a time.monotonic() value (None: none): the earlier of the run's deadline
    (`run_deadline_s` from the start, waiting for a turn included) and the host's own
    (`host_deadline_s` from when it starts). A wave starts only when the one before is ok;
    otherwise its hosts get `on_skip(item, reason)`. Raises FleetInterrupted on Ctrl-C, once
    every host finished or was past its grace after it (`grace_s`: seconds, or per item index,
    so a host inside its switch may be given longer than one that only cleans up).
    """
    grace = grace_s if callable(grace_s) else (lambda _i: grace_s)
    started = time.monotonic()
    run_deadline = started + run_deadline_s if run_deadline_s else None
    cancel = threading.Event()
    slots = threading.BoundedSemaphore(max(1, parallel))
    results: dict[int, R] = {}
    deadlines: dict[int, float | None] = {}
    done = threading.Condition()

    def one(i: int) -> None:
        wait_for = None if run_deadline is None else max(0.0, run_deadline - time.monotonic())
        if not slots.acquire(timeout=wait_for):
            return  # never got a turn before the run's deadline: reported late
        try:
            begun = time.monotonic()
            limits = [
                d
                for d in (run_deadline, begun + host_deadline_s if host_deadline_s else None)
                if d is not None
            ]
            deadlines[i] = min(limits) if limits else None
            try:
                result = work(items[i], cancel, deadlines[i])
            except BaseException as exc:  # one host's bug is that host's failure
                if on_error is None:
                    raise
                result = on_error(items[i], exc)
            with done:
                results[i] = result
                done.notify_all()
        finally:
            slots.release()

    previous_term = _sigterm_as_interrupt()
    interrupted_at: float | None = None
    unfinished: list[int] = []
    try:
        for number, wave in enumerate(waves_of(items, canary, batch)):
            failed = [i for i in results if not ok(results[i])]
            if interrupted_at is not None or failed:
                reason = "aborted" if interrupted_at is not None else "an earlier host failed"
                what = "canary" if canary > 0 and number == 1 else "batch"
                for i in wave:
                    if on_skip is not None:
                        results[i] = on_skip(items[i], f"{reason} ({what} stopped the rollout)")
                continue
            threads = {
                i: threading.Thread(target=one, args=(i,), daemon=True, name=f"fleet-{i}")
                for i in wave
            }
            for t in threads.values():
                t.start()
            while True:
                pending = [i for i, t in threads.items() if t.is_alive() and i not in results]
                if not pending:
                    break
                now = time.monotonic()
                late = [
                    i for i in pending if _past(deadlines.get(i), run_deadline, now, i, deadlines)
                ]
                if interrupted_at is not None and all(
                    now - interrupted_at > grace(i) for i in pending
                ):
                    unfinished += pending
                    break
                if late and len(late) == len(pending):
                    for i in late:
                        if on_late is not None:
                            results[i] = on_late(items[i], now - started)
                    break
                try:
                    with done:
                        done.wait(SLICE_S)
                except KeyboardInterrupt:
                    if interrupted_at is not None:  # the second Ctrl-C: stop waiting now
                        unfinished += [i for i in pending if i not in results]
                        break
                    interrupted_at = time.monotonic()
                    cancel.set()
                    if on_interrupt is not None:
                        on_interrupt()
            if unfinished:
                break
    finally:
        _restore_sigterm(previous_term)
    if interrupted_at is not None or unfinished:
        raise FleetInterrupted(dict(results), unfinished)
    return [results[i] for i in range(len(items)) if i in results]


def _past(deadline: float | None, run_deadline: float | None, now: float, i, started) -> bool:
    """A host is late once its own deadline passed, or the run's while it waited for a turn."""
    if i not in started:  # still waiting for a slot
        return run_deadline is not None and now >= run_deadline
    return deadline is not None and now >= deadline


def _sigterm_as_interrupt():
    """SIGTERM (systemd, CI cancelling a job) is handled like Ctrl-C, in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt()

    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(previous) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)

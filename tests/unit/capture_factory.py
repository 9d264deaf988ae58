"""Capture lines in the server's contract format, for the ab/monitor/report tests.

Real OHLC windows come from the synthetic market's labeled set, so features (and PSI) are
computed from prices a model could see; the answers are drawn so that the shadow's accuracy
and span IoU against the truth differ from the live one's by a chosen amount.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from moola_core.spec import LABELS


def record(
    request_id: str,
    index: int,
    *,
    release: str,
    role: str,
    time: float,
    label: int = 0,
    start: int = 40,
    end: int = 50,
    window_id: str | None = None,
    latency_ms: float = 5.0,
    ohlc=None,
    status: int = 200,
) -> dict:
    """One capture line as a dict (an error line when status is not 200)."""
    rec = {
        "v": 1,
        "request_id": request_id,
        "index": index,
        "window_id": window_id,
        "time": time,
        "release": release,
        "role": role,
        "status": status,
        "latency_ms": latency_ms,
        "batch_size": 1,
    }
    if status != 200:
        rec["error"] = "the server failed; see its log"
        return rec
    p = 0.8 if label == 1 else 0.2
    rec["ohlc"] = ohlc if ohlc is not None else flat_window()
    rec["output"] = {
        "label": LABELS[label],
        "probs": {LABELS[0]: 1 - p, LABELS[1]: p},
        "start": int(start),
        "end": int(end),
        "abstain": False,
    }
    return rec


def flat_window(price: float = 100.0) -> list:
    """105 bars of a gently rising price (a valid window, little information)."""
    return [
        [
            price + i * 0.01,
            price + i * 0.01 + 0.05,
            price + i * 0.01 - 0.05,
            price + i * 0.01 + 0.02,
        ]
        for i in range(105)
    ]


def write_lines(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def ab_traffic(
    labeled,
    n_requests: int,
    *,
    live: str = "v0.1",
    shadow: str = "v0.2",
    live_acc: float = 0.6,
    shadow_acc: float = 0.9,
    shadow_latency: float = 6.0,
    seed: int = 0,
    t0: float = 1_800_000_000.0,
    sample: float = 1.0,
) -> list[dict]:
    """Live and shadow answers for `n_requests` windows drawn from a labeled frame.

    Each answer is right (label and the true span) with its release's accuracy, else the wrong
    label and a span shifted by 20 bars.
    """
    rng = np.random.default_rng(seed)
    rows = labeled.sample(n=n_requests, replace=True, random_state=seed).reset_index(drop=True)
    out = []
    for i, row in rows.iterrows():
        truth = LABELS.index(row["label"])
        ts, te = int(row["expansion_start"]), int(row["expansion_end"])
        ohlc = np.asarray(row["features"].tolist(), dtype=float).reshape(105, 4).tolist()
        t = t0 + i * 0.5
        for role, release, acc, lat in (
            ("live", live, live_acc, 5.0),
            ("shadow", shadow, shadow_acc, shadow_latency),
        ):
            if role == "shadow" and rng.random() > sample:
                continue
            right = rng.random() < acc
            label = truth if right else 1 - truth
            start, end = (ts, te) if right else (min(ts + 20, 100), min(te + 20, 104))
            out.append(
                record(
                    f"req-{i}",
                    0,
                    release=release,
                    role=role,
                    time=t + 0.01,
                    label=label,
                    start=start,
                    end=end,
                    window_id=row["window_id"],
                    latency_ms=float(lat + rng.exponential(1.0)),
                    ohlc=ohlc,
                )
            )
    return out

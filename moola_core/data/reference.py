"""The feature definitions written the slow, obvious way: one Python loop, bar by bar.

This is the executable spec that `features.compute_features` (vectorised numpy plus a tight
swing loop) is tested against, and the same-run baseline of benchmarks/features.py.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from moola_core.data.features import (
    ATR_PERIOD,
    MIN_WARMUP,
    RANGE_EMA_SPAN,
    RANGE_FLOOR,
    SWING_REVERSAL_ATR,
)
from moola_core.spec import WINDOW_LEN


def clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def reference_features(o, h, lo, c) -> tuple[np.ndarray, np.ndarray]:
    """The features bar by bar in one plain loop: float32 [n, 11] and bool [n].

    Slow (~100k bars/s) but readable; `compute_features` must match it exactly.
    """
    n = len(c)
    values = [[0.0] * 11 for _ in range(n)]
    valid = [False] * n
    alpha = 2.0 / (RANGE_EMA_SPAN + 1.0)
    range_ema = None
    trs: deque = deque(maxlen=ATR_PERIOD)
    direction = 0
    hi = hi_i = lo_ = lo_i = None
    ext = ext_i = opp = opp_i = None
    sh = sh_i = sl = sl_i = None
    for t in range(n):
        bar_range = h[t] - lo[t]
        rng = max(bar_range, RANGE_FLOOR)
        range_ema = bar_range if range_ema is None else alpha * bar_range + (1 - alpha) * range_ema
        tr = bar_range if t == 0 else max(bar_range, abs(h[t] - c[t - 1]), abs(lo[t] - c[t - 1]))
        trs.append(tr)
        atr = max(sum(trs) / len(trs), RANGE_FLOOR)
        thr = SWING_REVERSAL_ATR * atr
        # zig-zag, same rules as moola_core.data.features
        if direction == 0:
            if hi is None or h[t] > hi:
                hi, hi_i = h[t], t
            if lo_ is None or lo[t] < lo_:
                lo_, lo_i = lo[t], t
            up, down = hi >= c[t] + thr, lo_ <= c[t] - thr
            if up and down:
                up = hi - c[t] >= c[t] - lo_
                down = not up
            if up:
                sh, sh_i, direction = hi, hi_i, -1
                ext, ext_i = (lo_, lo_i) if lo_i > hi_i else (lo[t], t)
                opp, opp_i = h[t], t
            elif down:
                sl, sl_i, direction = lo_, lo_i, 1
                ext, ext_i = (hi, hi_i) if hi_i > lo_i else (h[t], t)
                opp, opp_i = lo[t], t
        elif direction == 1:
            if h[t] > ext:
                ext, ext_i, opp, opp_i = h[t], t, lo[t], t
            elif lo[t] < opp:
                opp, opp_i = lo[t], t
            if ext >= c[t] + thr:
                sh, sh_i, direction = ext, ext_i, -1
                ext, ext_i, opp, opp_i = opp, opp_i, h[t], t
        else:
            if lo[t] < ext:
                ext, ext_i, opp, opp_i = lo[t], t, h[t], t
            elif h[t] > opp:
                opp, opp_i = h[t], t
            if ext <= c[t] - thr:
                sl, sl_i, direction = ext, ext_i, 1
                ext, ext_i, opp, opp_i = opp, opp_i, lo[t], t
        if t < MIN_WARMUP or sh is None or sl is None:
            continue
        body = clip((c[t] - o[t]) / rng, -1, 1)
        range_z = clip(bar_range / max(range_ema, RANGE_FLOOR), 0, 3)
        values[t] = [
            clip((o[t] - lo[t]) / rng, 0, 1),
            clip((c[t] - lo[t]) / rng, 0, 1),
            body,
            clip((h[t] - max(o[t], c[t])) / rng, 0, 1),
            clip((min(o[t], c[t]) - lo[t]) / rng, 0, 1),
            range_z,
            clip((sh - c[t]) / atr, -3, 3),
            clip((c[t] - sl) / atr, -3, 3),
            clip((t - sh_i) / WINDOW_LEN, 0, 3),
            clip((t - sl_i) / WINDOW_LEN, 0, 3),
            clip(range_z * direction * body, -2, 2),
        ]
        valid[t] = True
    return np.asarray(values, dtype=np.float32), np.asarray(valid)

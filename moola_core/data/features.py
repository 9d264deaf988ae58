"""The 11 per-bar features, computed causally: the value at bar t uses bars 0..t only.

Candle (6), swing (4) and expansion (1) features in `spec.FEATURE_NAMES` order. Every feature
is a ratio of price differences, so multiplying all prices by a constant changes nothing.
Bars whose indicators are still warming up are marked False in `valid` (their values are 0 and
must be ignored through the mask, never read as data).

The swing features come from a causal zig-zag: a swing high is confirmed when the close falls
`SWING_REVERSAL_ATR` ATRs below the highest high of the current up leg (and mirrored for swing
lows). The state machine is one tight pass over the bars in plain Python (it is sequential by
nature); everything else is vectorised numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moola_core.spec import FEATURE_NAMES, N_FEATURES, WINDOW_LEN

RANGE_FLOOR = 1e-6  # rng = max(H - L, RANGE_FLOOR): a flat bar has no shape, not a division by 0
RANGE_EMA_SPAN = 20  # range_z = (H - L) / EMA20(H - L)
ATR_PERIOD = 10  # ATR = mean true range of the last 10 bars
SWING_REVERSAL_ATR = 1.2  # a swing is confirmed when price reverses by >= 1.2 ATR
BARS_SINCE_SCALE = float(WINDOW_LEN)  # bars_since_* = bars / 105

# Bars before this index never have a full EMA/ATR history; swings may need longer.
MIN_WARMUP = max(RANGE_EMA_SPAN, ATR_PERIOD) - 1

# Feature column indexes, so callers never hard-code positions.
COL = {name: i for i, name in enumerate(FEATURE_NAMES)}

# [lo, hi] clip bounds per feature, in FEATURE_NAMES order (tests check every value against them).
BOUNDS: dict[str, tuple[float, float]] = {
    "open_norm": (0.0, 1.0),
    "close_norm": (0.0, 1.0),
    "body_pct": (-1.0, 1.0),
    "upper_wick_pct": (0.0, 1.0),
    "lower_wick_pct": (0.0, 1.0),
    "range_z": (0.0, 3.0),
    "dist_to_prev_SH": (-3.0, 3.0),
    "dist_to_prev_SL": (-3.0, 3.0),
    "bars_since_SH_norm": (0.0, 3.0),
    "bars_since_SL_norm": (0.0, 3.0),
    "expansion_proxy": (-2.0, 2.0),
}


@dataclass(frozen=True)
class Features:
    """Per-bar model inputs: `values` float32 [n, 11] in FEATURE_NAMES order, `valid` bool [n]."""

    values: np.ndarray
    valid: np.ndarray


@dataclass(frozen=True)
class Swings:
    """The causal zig-zag, per bar: the last confirmed swing high/low known at bar t.

    `*_price` is NaN and `*_index` is -1 until the first such swing is confirmed; `leg_dir` is
    +1 (up leg, after a swing low), -1 (down leg, after a swing high) or 0 (not yet known).
    """

    sh_price: np.ndarray  # float64 [n]
    sh_index: np.ndarray  # int64 [n]
    sl_price: np.ndarray  # float64 [n]
    sl_index: np.ndarray  # int64 [n]
    leg_dir: np.ndarray  # int8 [n]


def ema(x: np.ndarray, span: int) -> np.ndarray:
    """Causal exponential moving average, alpha = 2 / (span + 1), seeded with x[0].

    Computed in blocks of 64 bars: inside a block a lower-triangular weight matrix does the
    recurrence as one matrix product; a short loop carries the state from block to block.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        return x.copy()
    alpha = 2.0 / (span + 1.0)
    decay = 1.0 - alpha
    block = 64
    j = np.arange(block)
    # weights[j, i] = alpha * decay**(j - i) for i <= j, else 0: y_block = weights @ x_block
    lag = j[:, None] - j[None, :]
    weights = np.where(lag >= 0, alpha * decay ** np.maximum(lag, 0), 0.0)
    carry_weight = decay ** (j + 1)  # how much of the previous block's last value survives at j
    n_blocks = -(-n // block)
    padded = np.zeros(n_blocks * block)
    padded[:n] = x
    blocks = padded.reshape(n_blocks, block)  # [B, 64]
    local = blocks @ weights.T  # [B, 64]: EMA of each block started from 0
    # Seed y[-1] = x[0] so that y[0] = x[0]. Carry the state across blocks with a scalar loop:
    # carry_in[b] is y at the last bar before block b.
    block_last = local[:, -1].tolist()
    block_decay = decay**block
    carry_in = [0.0] * n_blocks
    carry = float(x[0])
    for b in range(n_blocks):
        carry_in[b] = carry
        carry = block_last[b] + carry * block_decay
    out = local + np.asarray(carry_in)[:, None] * carry_weight[None, :]
    return out.reshape(-1)[:n]


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """max(H - L, |H - C[t-1]|, |L - C[t-1]|); the first bar has no previous close: H - L."""
    tr = high - low
    prev_close = close[:-1]
    tr[1:] = np.maximum(tr[1:], np.abs(high[1:] - prev_close))
    tr[1:] = np.maximum(tr[1:], np.abs(low[1:] - prev_close))
    return tr


def atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = ATR_PERIOD):
    """Mean true range of the last `period` bars (fewer at the very start; those are warm-up)."""
    tr = true_range(high, low, close)
    csum = np.concatenate(([0.0], np.cumsum(tr)))
    n = len(tr)
    idx = np.arange(1, n + 1)
    lo = np.maximum(idx - period, 0)
    # The exact windowed sum for the first bars; cumsum differences afterwards would drift in
    # the last digits on long series, so recompute with a sliding window where it is full.
    out = (csum[idx] - csum[lo]) / (idx - lo)
    if n >= period:
        win = np.lib.stride_tricks.sliding_window_view(tr, period)
        out[period - 1 :] = win.sum(axis=1) / period
    return out


def _zigzag_events(high: list, low: list, close: list, threshold: list) -> list:
    """The zig-zag state machine; returns confirmation events (t, kind, price, index).

    kind +1: a swing high at `index` with `price` was confirmed at bar t (a down leg starts);
    kind -1: a swing low. Plain Python floats in lists: this loop is the hot path.
    """
    events = []
    append = events.append
    n = len(close)
    if n == 0:
        return events
    # Undecided start: track the highest high and the lowest low since bar 0.
    hi = high[0]
    hi_i = 0
    lo = low[0]
    lo_i = 0
    t = 0
    direction = 0
    for t in range(n):
        h = high[t]
        lw = low[t]
        c = close[t]
        if h > hi:
            hi = h
            hi_i = t
        if lw < lo:
            lo = lw
            lo_i = t
        thr = threshold[t]
        if hi - c >= thr and (c - lo < thr or hi - c >= c - lo):
            append((t, 1, hi, hi_i))
            direction = -1
            # the down leg's extreme: the lowest low after the swing high if we saw one
            if lo_i <= hi_i:
                lo = lw
                lo_i = t
            break
        if c - lo >= thr:
            append((t, -1, lo, lo_i))
            direction = 1
            if hi_i <= lo_i:
                hi = h
                hi_i = t
            break
    if direction == 0:
        return events
    # In an up leg: `ext` is the highest high of the leg; `opp` the lowest low after it (it
    # becomes the next down leg's starting extreme). Mirrored in a down leg.
    if direction == 1:
        ext, ext_i, opp, opp_i = hi, hi_i, low[t], t
    else:
        ext, ext_i, opp, opp_i = lo, lo_i, high[t], t
    for t in range(t + 1, n):  # noqa: B020 (resumes after the undecided start)
        c = close[t]
        if direction == 1:
            h = high[t]
            if h > ext:  # ties keep the earlier bar as the swing
                ext = h
                ext_i = t
                opp = low[t]
                opp_i = t
            else:
                lw = low[t]
                if lw < opp:
                    opp = lw
                    opp_i = t
            if ext - c >= threshold[t]:
                append((t, 1, ext, ext_i))
                direction = -1
                ext, ext_i, opp, opp_i = opp, opp_i, high[t], t
        else:
            lw = low[t]
            if lw < ext:
                ext = lw
                ext_i = t
                opp = high[t]
                opp_i = t
            else:
                h = high[t]
                if h > opp:
                    opp = h
                    opp_i = t
            if c - ext >= threshold[t]:
                append((t, -1, ext, ext_i))
                direction = 1
                ext, ext_i, opp, opp_i = opp, opp_i, low[t], t
    return events


def zigzag(high: np.ndarray, low: np.ndarray, close: np.ndarray, atr_values: np.ndarray) -> Swings:
    """Run the causal zig-zag (reversal >= SWING_REVERSAL_ATR * ATR) and spread it per bar."""
    n = len(close)
    threshold = SWING_REVERSAL_ATR * atr_values
    events = _zigzag_events(high.tolist(), low.tolist(), close.tolist(), threshold.tolist())
    sh_price = np.full(n, np.nan)
    sl_price = np.full(n, np.nan)
    sh_index = np.full(n, -1, dtype=np.int64)
    sl_index = np.full(n, -1, dtype=np.int64)
    leg_dir = np.zeros(n, dtype=np.int8)
    if events:
        ev = np.array(events, dtype=np.float64)  # [E, 4]: t, kind, price, index
        t_conf = ev[:, 0].astype(np.int64)
        kind = ev[:, 1]
        for sign, price_out, index_out in ((1, sh_price, sh_index), (-1, sl_price, sl_index)):
            pick = kind == sign
            price_out[t_conf[pick]] = ev[pick, 2]
            index_out[t_conf[pick]] = ev[pick, 3].astype(np.int64)
        leg_dir[t_conf] = -kind.astype(np.int8)
        # Forward-fill each series from the bar where an event was confirmed.
        _ffill(sh_price, sh_index)
        _ffill(sl_price, sl_index)
        last = np.maximum.accumulate(np.where(leg_dir != 0, np.arange(n), 0))
        leg_dir = np.where(np.arange(n) >= t_conf[0], leg_dir[last], 0).astype(np.int8)
    return Swings(sh_price, sh_index, sl_price, sl_index, leg_dir)


def _ffill(price: np.ndarray, index: np.ndarray) -> None:
    """Forward-fill in place the entries where index >= 0 (the bars where a swing was set)."""
    n = len(index)
    has = index >= 0
    src = np.maximum.accumulate(np.where(has, np.arange(n), -1))
    known = src >= 0
    price[known] = price[src[known]]
    index[known] = index[src[known]]


def compute_features(open_, high, low, close) -> Features:
    """The 11 causal features for a bar series; warm-up rows are False in `valid` (values 0).

    Inputs are 1-D arrays of equal length n (any float dtype). Returns float32 [n, 11] and
    bool [n]. A row is valid once the range EMA and ATR are warm and both a swing high and a
    swing low have been confirmed.
    """
    o = np.asarray(open_, dtype=np.float64)
    h = np.asarray(high, dtype=np.float64)
    lo = np.asarray(low, dtype=np.float64)
    c = np.asarray(close, dtype=np.float64)
    n = len(c)
    if not (len(o) == len(h) == len(lo) == n):
        raise ValueError("open, high, low and close must have the same length")
    values = np.zeros((n, N_FEATURES), dtype=np.float32)
    if n == 0:
        return Features(values, np.zeros(0, dtype=bool))

    bar_range = h - lo
    rng = np.maximum(bar_range, RANGE_FLOOR)
    body_top = np.maximum(o, c)
    body_bottom = np.minimum(o, c)
    body_pct = np.clip((c - o) / rng, -1.0, 1.0)
    range_z = np.clip(bar_range / np.maximum(ema(bar_range, RANGE_EMA_SPAN), RANGE_FLOOR), 0, 3)

    atr_values = np.maximum(atr(h, lo, c), RANGE_FLOOR)
    swings = zigzag(h, lo, c, atr_values)
    t = np.arange(n)
    leg_dir = swings.leg_dir.astype(np.float64)

    values[:, COL["open_norm"]] = np.clip((o - lo) / rng, 0.0, 1.0)
    values[:, COL["close_norm"]] = np.clip((c - lo) / rng, 0.0, 1.0)
    values[:, COL["body_pct"]] = body_pct
    values[:, COL["upper_wick_pct"]] = np.clip((h - body_top) / rng, 0.0, 1.0)
    values[:, COL["lower_wick_pct"]] = np.clip((body_bottom - lo) / rng, 0.0, 1.0)
    values[:, COL["range_z"]] = range_z
    with np.errstate(invalid="ignore"):
        values[:, COL["dist_to_prev_SH"]] = np.clip((swings.sh_price - c) / atr_values, -3, 3)
        values[:, COL["dist_to_prev_SL"]] = np.clip((c - swings.sl_price) / atr_values, -3, 3)
    values[:, COL["bars_since_SH_norm"]] = np.clip((t - swings.sh_index) / BARS_SINCE_SCALE, 0, 3)
    values[:, COL["bars_since_SL_norm"]] = np.clip((t - swings.sl_index) / BARS_SINCE_SCALE, 0, 3)
    values[:, COL["expansion_proxy"]] = np.clip(range_z * leg_dir * body_pct, -2.0, 2.0)

    valid = (t >= MIN_WARMUP) & (swings.sh_index >= 0) & (swings.sl_index >= 0)
    values[~valid] = 0.0
    return Features(values, valid)


def compute_features_frame(bars) -> Features:
    """compute_features over a bars DataFrame with open/high/low/close columns."""
    return compute_features(
        bars["open"].to_numpy(),
        bars["high"].to_numpy(),
        bars["low"].to_numpy(),
        bars["close"].to_numpy(),
    )

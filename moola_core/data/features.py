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
ZIGZAG_CHUNK = 1 << 15  # bars per chunk of the swing loop

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
    n = len(tr)
    out = np.cumsum(tr[:period]) / np.arange(1, min(period, n) + 1)  # the first bars: expanding
    if n <= period:
        return out
    # A full window: `period` shifted slices added in a fixed order (exact and causal; a cumsum
    # difference would drift in the last digits over millions of bars).
    window_sum = tr[period - 1 :].copy()
    for lag in range(1, period):
        window_sum += tr[period - 1 - lag : n - lag]
    return np.concatenate((out[: period - 1], window_sum / period))


def _zigzag_events(
    high: list,
    low: list,
    up_trigger: list,
    down_trigger: list,
    close,
    start: int,
    state: list,
    flat: list,
) -> None:
    """The zig-zag state machine over plain Python floats (this loop is the hot path).

    Runs over one chunk of bars beginning at bar `start`, resuming from `state` and saving it
    back, and appends to `flat` = [t0, i0, t1, i1, ...]: swing k confirmed at bar t_k with its
    extreme at bar i_k; kinds alternate starting with state[1] (+1 swing high, -1 swing low).
    `up_trigger` = close + threshold: an up leg ends when its highest high reaches it (the close
    fell threshold below the high); `down_trigger` = close - threshold mirrors it.
    """
    append = flat.append
    # direction: +1 up leg, -1 down leg, 0 undecided (before the first swing); undecided tracks
    # the highest high / lowest low since bar 0; in a leg `ext` is its extreme and `opp` the
    # opposite extreme since then (where the next leg starts)
    direction, first_kind, hi, hi_i, lo, lo_i, ext, ext_i, opp, opp_i = state
    bars = zip(high, low, up_trigger, down_trigger, strict=True)
    for t, (h, lw, c_up, c_down) in enumerate(bars, start):
        if direction == 1:
            if h > ext:  # ties keep the earlier bar as the swing
                ext, ext_i, opp, opp_i = h, t, lw, t
            elif lw < opp:
                opp, opp_i = lw, t
            if ext >= c_up:
                append(t)
                append(ext_i)
                direction = -1
                ext, ext_i, opp, opp_i = opp, opp_i, h, t
        elif direction == -1:
            if lw < ext:
                ext, ext_i, opp, opp_i = lw, t, h, t
            elif h > opp:
                opp, opp_i = h, t
            if ext <= c_down:
                append(t)
                append(ext_i)
                direction = 1
                ext, ext_i, opp, opp_i = opp, opp_i, lw, t
        else:
            if h > hi:
                hi, hi_i = h, t
            if lw < lo:
                lo, lo_i = lw, t
            high_swing = hi >= c_up
            low_swing = lo <= c_down
            if high_swing and low_swing:  # one wild bar reversed both ways: the larger wins
                c = float(close[t])
                high_swing = hi - c >= c - lo
                low_swing = not high_swing
            if high_swing:
                append(t)
                append(hi_i)
                first_kind, direction = 1, -1
                ext, ext_i = (lo, lo_i) if lo_i > hi_i else (lw, t)
                opp, opp_i = h, t
            elif low_swing:
                append(t)
                append(lo_i)
                first_kind, direction = -1, 1
                ext, ext_i = (hi, hi_i) if hi_i > lo_i else (h, t)
                opp, opp_i = lw, t
    state[:] = [direction, first_kind, hi, hi_i, lo, lo_i, ext, ext_i, opp, opp_i]


def _hold(times: np.ndarray, values: np.ndarray, n: int, fill) -> np.ndarray:
    """Per bar, the value of the last event at or before it (`fill` before the first event)."""
    out = np.full(n, fill, dtype=values.dtype)
    if len(times):
        out[times[0] :] = np.repeat(values, np.diff(np.append(times, n)))
    return out


def zigzag(high: np.ndarray, low: np.ndarray, close: np.ndarray, atr_values: np.ndarray) -> Swings:
    """Run the causal zig-zag (reversal >= SWING_REVERSAL_ATR * ATR) and spread it per bar."""
    n = len(close)
    threshold = SWING_REVERSAL_ATR * atr_values
    up_trigger = close + threshold
    down_trigger = close - threshold
    flat: list[int] = []
    if n:
        state = [0, 0, float(high[0]), 0, float(low[0]), 0, 0.0, 0, 0.0, 0]
        # chunks keep the Python float lists small (cache-friendly, bounded memory)
        for a in range(0, n, ZIGZAG_CHUNK):
            b = min(a + ZIGZAG_CHUNK, n)
            _zigzag_events(
                high[a:b].tolist(),
                low[a:b].tolist(),
                up_trigger[a:b].tolist(),
                down_trigger[a:b].tolist(),
                close,
                a,
                state,
                flat,
            )
        first_kind = state[1]
    else:
        first_kind = 0
    events = np.array(flat, dtype=np.int64).reshape(-1, 2)  # [E, 2]: confirmed at, extreme at
    kind = first_kind * (1 - 2 * (np.arange(len(events)) % 2))  # +1 SH, -1 SL, alternating
    is_high = kind == 1
    sh_index = _hold(events[is_high, 0], events[is_high, 1], n, -1)
    sl_index = _hold(events[~is_high, 0], events[~is_high, 1], n, -1)
    leg_dir = _hold(events[:, 0], (-kind).astype(np.int8), n, 0)
    sh_price = np.where(sh_index >= 0, high[sh_index], np.nan)
    sl_price = np.where(sl_index >= 0, low[sl_index], np.nan)
    return Swings(sh_price, sh_index, sl_price, sl_index, leg_dir)


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

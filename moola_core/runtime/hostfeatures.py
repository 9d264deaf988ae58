"""The 11 model features from OHLC windows, on a host that has only Python and torch.

A port of `moola_core/data/features.compute_features` (numpy) to torch float64 plus one plain
Python loop for the causal zig-zag, so a server answers from the same inputs the model was
trained on. Training/serving skew is the classic silent bug: tests/unit/test_hostfeatures.py
compares this module with the numpy one on thousands of windows, the real-bar sample included.

Where exact ties decide the outcome (the zig-zag's swing confirmation), the arithmetic is the
numpy module's, operation for operation, so thresholds are the same bits: the true range, the
ATR (an expanding mean, then `period` shifted slices added in the same order) and the
triggers `close +/- 1.2 * ATR`. The range EMA is one lower-triangular matrix product instead of
numpy's 64-bar blocks; it only feeds continuous features, where the two agree to ~1e-16.

Standard library and torch only (this file ships to hosts). The constants are the numpy
module's; a test checks that they are equal.
"""

from __future__ import annotations

from moola_core.spec import FEATURE_NAMES, N_FEATURES

RANGE_FLOOR = 1e-6
RANGE_EMA_SPAN = 20
ATR_PERIOD = 10
SWING_REVERSAL_ATR = 1.2
BARS_SINCE_SCALE = 105.0
MIN_WARMUP = max(RANGE_EMA_SPAN, ATR_PERIOD) - 1
COL = {name: i for i, name in enumerate(FEATURE_NAMES)}

_EMA_WEIGHTS: dict = {}  # (n, device) -> (weights [n, n], carry [n]) for the range EMA


def _ema_weights(torch, n: int, device):
    key = (n, str(device))
    if key not in _EMA_WEIGHTS:
        alpha = 2.0 / (RANGE_EMA_SPAN + 1.0)
        decay = 1.0 - alpha
        j = torch.arange(n, dtype=torch.float64, device=device)
        lag = j[:, None] - j[None, :]  # [n, n]
        weights = torch.where(
            lag >= 0, alpha * decay ** lag.clamp(min=0), torch.zeros((), dtype=torch.float64)
        )
        carry = decay ** (j + 1)  # how much of the seed y[-1] = x[0] survives at bar j
        _EMA_WEIGHTS[key] = (weights, carry)
    return _EMA_WEIGHTS[key]


def _atr(torch, tr):
    """[B, n] true range -> [B, n] ATR, in the numpy module's order of operations."""
    n = tr.shape[1]
    period = ATR_PERIOD
    head = torch.cumsum(tr[:, :period], dim=1) / torch.arange(
        1, min(period, n) + 1, dtype=torch.float64, device=tr.device
    )
    if n <= period:
        return head
    window_sum = tr[:, period - 1 :].clone()
    for lag in range(1, period):
        window_sum += tr[:, period - 1 - lag : n - lag]
    return torch.cat((head[:, : period - 1], window_sum / period), dim=1)


def _zigzag(high: list, low: list, up_trigger: list, down_trigger: list, close: list):
    """The causal zig-zag over one window -> per bar (sh_index, sl_index, leg_dir) lists.

    The state machine of `features._zigzag_events` over plain floats, followed by its
    `_hold` spreading: each bar sees the last swing high/low confirmed at or before it.
    """
    n = len(close)
    events = []  # (confirmed at, extreme at)
    direction, first_kind = 0, 0
    hi, hi_i, lo, lo_i = high[0], 0, low[0], 0
    ext, ext_i, opp, opp_i = 0.0, 0, 0.0, 0
    for t in range(n):
        h, lw, c_up, c_down = high[t], low[t], up_trigger[t], down_trigger[t]
        if direction == 1:
            if h > ext:
                ext, ext_i, opp, opp_i = h, t, lw, t
            elif lw < opp:
                opp, opp_i = lw, t
            if ext >= c_up:
                events.append((t, ext_i))
                direction = -1
                ext, ext_i, opp, opp_i = opp, opp_i, h, t
        elif direction == -1:
            if lw < ext:
                ext, ext_i, opp, opp_i = lw, t, h, t
            elif h > opp:
                opp, opp_i = h, t
            if ext <= c_down:
                events.append((t, ext_i))
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
                c = close[t]
                high_swing = hi - c >= c - lo
                low_swing = not high_swing
            if high_swing:
                events.append((t, hi_i))
                first_kind, direction = 1, -1
                ext, ext_i = (lo, lo_i) if lo_i > hi_i else (lw, t)
                opp, opp_i = h, t
            elif low_swing:
                events.append((t, lo_i))
                first_kind, direction = -1, 1
                ext, ext_i = (hi, hi_i) if hi_i > lo_i else (h, t)
                opp, opp_i = lw, t
    sh_index, sl_index, leg_dir = [-1] * n, [-1] * n, [0] * n
    kind = first_kind
    for k, (at, extreme) in enumerate(events):
        until = events[k + 1][0] if k + 1 < len(events) else n
        held = sh_index if kind == 1 else sl_index
        held[at:] = [extreme] * (n - at)
        leg_dir[at:until] = [-kind] * (until - at)
        kind = -kind
    return sh_index, sl_index, leg_dir


def compute_features(ohlc):
    """OHLC windows float [B, n, 4] (any float dtype, CPU) -> (values float32 [B, n, 11] in
    FEATURE_NAMES order, valid bool [B, n]); warm-up bars are False in `valid`, values 0.

    The same numbers as `moola_core.data.features.compute_features` applied to each window.
    """
    import torch

    x = ohlc.to(torch.float64)
    if x.dim() != 3 or x.shape[2] != 4:
        raise ValueError(f"expected OHLC windows [B, n, 4], got shape {tuple(x.shape)}")
    b, n = x.shape[0], x.shape[1]
    values = torch.zeros((b, n, N_FEATURES), dtype=torch.float32)
    valid = torch.zeros((b, n), dtype=torch.bool)
    if n == 0 or b == 0:
        return values, valid
    o, h, lo, c = x[..., 0], x[..., 1], x[..., 2], x[..., 3]  # [B, n] each

    bar_range = h - lo
    rng = bar_range.clamp(min=RANGE_FLOOR)
    body_pct = ((c - o) / rng).clamp(-1.0, 1.0)
    weights, carry = _ema_weights(torch, n, x.device)
    ema = bar_range @ weights.T + bar_range[:, :1] * carry[None, :]
    range_z = (bar_range / ema.clamp(min=RANGE_FLOOR)).clamp(0.0, 3.0)

    tr = bar_range.clone()
    prev_close = c[:, :-1]
    tr[:, 1:] = torch.maximum(tr[:, 1:], (h[:, 1:] - prev_close).abs())
    tr[:, 1:] = torch.maximum(tr[:, 1:], (lo[:, 1:] - prev_close).abs())
    atr = _atr(torch, tr).clamp(min=RANGE_FLOOR)
    threshold = SWING_REVERSAL_ATR * atr
    up_trigger = (c + threshold).tolist()
    down_trigger = (c - threshold).tolist()
    highs, lows, closes = h.tolist(), lo.tolist(), c.tolist()
    swings = [
        _zigzag(highs[i], lows[i], up_trigger[i], down_trigger[i], closes[i]) for i in range(b)
    ]
    sh_index = torch.tensor([s[0] for s in swings], dtype=torch.int64)  # [B, n]
    sl_index = torch.tensor([s[1] for s in swings], dtype=torch.int64)
    leg_dir = torch.tensor([s[2] for s in swings], dtype=torch.float64)
    nan = torch.full((), float("nan"), dtype=torch.float64)
    sh_price = torch.where(sh_index >= 0, h.gather(1, sh_index.clamp(min=0)), nan)
    sl_price = torch.where(sl_index >= 0, lo.gather(1, sl_index.clamp(min=0)), nan)
    t = torch.arange(n, dtype=torch.int64)[None, :]
    since_sh = (t - sh_index).to(torch.float64)  # numpy divides int64 in float64 too
    since_sl = (t - sl_index).to(torch.float64)

    body_top = torch.maximum(o, c)
    body_bottom = torch.minimum(o, c)
    columns = {
        "open_norm": ((o - lo) / rng).clamp(0.0, 1.0),
        "close_norm": ((c - lo) / rng).clamp(0.0, 1.0),
        "body_pct": body_pct,
        "upper_wick_pct": ((h - body_top) / rng).clamp(0.0, 1.0),
        "lower_wick_pct": ((body_bottom - lo) / rng).clamp(0.0, 1.0),
        "range_z": range_z,
        "dist_to_prev_SH": ((sh_price - c) / atr).clamp(-3.0, 3.0),
        "dist_to_prev_SL": ((c - sl_price) / atr).clamp(-3.0, 3.0),
        "bars_since_SH_norm": (since_sh / BARS_SINCE_SCALE).clamp(0.0, 3.0),
        "bars_since_SL_norm": (since_sl / BARS_SINCE_SCALE).clamp(0.0, 3.0),
        "expansion_proxy": (range_z * leg_dir * body_pct).clamp(-2.0, 2.0),
    }
    for name, column in columns.items():
        values[..., COL[name]] = column.to(torch.float32)
    valid = (t >= MIN_WARMUP) & (sh_index >= 0) & (sl_index >= 0)
    values[~valid] = 0.0
    return values, valid

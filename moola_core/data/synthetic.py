"""A deterministic synthetic 1-minute market with planted expansion episodes and exact spans.

The stream looks like equity minute bars: 390-bar sessions on weekdays (14:30-21:00 UTC) with
overnight and weekend gaps, volatility clustering (a slowly varying log-volatility), a U-shaped
intraday volatility profile and overnight price gaps. Into it we plant episodes, each one a
pattern followed by an expansion (a run of wide, directional bars):

- consolidation -> expansion: a quiet, range-bound stretch, then a breakout either way;
- retracement -> expansion: a trend leg, a partial pull-back against it, then the trend resumes.

Every episode lives inside one 105-bar window slot of a session, so a labeled window can be cut
around it with the exact `expansion_start`/`expansion_end` (inclusive bar indexes in the window).
Spans start at bar >= SPAN_MIN_START so the features are past their warm-up there.

The difficulty knob (`difficulty="easy" | "default" | "hard"` or a float in [0, 1], easy = 0,
default = 0.5, hard = 1) moves these together: the expansion's drift and width shrink, the
pattern's signature fades (a looser consolidation, a shallower pull-back), and distractors
appear:

- inside an episode's window, a decoy: a wide but directionless burst away from the episode,
  which fools any rule that only looks for "the widest bars" (`Difficulty.decoy_prob`);
- in a window slot without an episode, a hard negative (`Difficulty.hard_negative_prob`): a
  decoy burst, a failed breakout (a consolidation, two or three wide bars one way, then a
  reversal that gives the move back) or a pattern without its expansion (a consolidation or a
  trend leg and pull-back after which nothing happens). None at easy, half the empty slots at
  default, every one at hard; `SyntheticMarket.hard_negatives` lists them.

At the default a model must use direction and context, not range alone.

Windows with no expansion at all are part of the knob too (`Difficulty.no_pattern_share`: 20%
at easy, 35% at default, 50% at hard): the sets used to measure whether a model can say "no
pattern" (`make_detection_set`) mix them with episode windows, and `make_asof_set` cuts each
episode as a live system would see it, `d` bars after the expansion began (d < 0: before).
The pattern-free windows are the empty slots, so they carry the difficulty's hard negatives.
The labeled training set (`make_labeled_set`) stays episode windows only: its schema has a
class for every window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from moola_core.data.features import ema
from moola_core.errors import MoolaError
from moola_core.spec import LABELS, WINDOW_LEN

SESSION_BARS = 390  # 14:30-21:00 UTC, one bar per minute
SESSION_OPEN = pd.Timedelta(hours=14, minutes=30)
SLOT_OFFSETS = (15, 140, 265)  # window slots inside a session; 20 free bars separate them
SPAN_MIN_START = 45  # expansion spans start here or later (features are warm by then)
SPAN_MAX_END = WINDOW_LEN - 1
BASE_SIGMA = 6e-4  # per-bar log-return volatility before the intraday profile
START_DAY = "2021-01-04"  # a Monday


@dataclass(frozen=True)
class Difficulty:
    """What the difficulty knob moves; see the module docstring."""

    level: float  # 0 easy .. 1 hard
    expansion_drift: float  # mean log-return per expansion bar, in units of sigma
    expansion_vol: float  # volatility multiplier inside the expansion
    consolidation_vol: float  # volatility multiplier inside a consolidation (lower = quieter)
    retrace_depth: tuple[float, float]  # share of the leg given back by the pull-back
    decoy_prob: float  # chance that an episode's window holds one directionless wide burst
    decoy_vol: float  # its volatility multiplier
    hard_negative_prob: float  # chance that an empty window slot holds a hard negative
    no_pattern_share: float  # share of windows without any expansion in detection sets

    @classmethod
    def of(cls, difficulty: str | float) -> Difficulty:
        """Resolve "easy"/"default"/"hard" or a float in [0, 1] into parameters."""
        presets = {"easy": 0.0, "default": 0.5, "hard": 1.0}
        if isinstance(difficulty, str):
            if difficulty not in presets:
                raise MoolaError(
                    f"unknown difficulty {difficulty!r}; use easy, default, hard or a number "
                    "between 0 and 1."
                )
            level = presets[difficulty]
        else:
            level = float(difficulty)
            if not 0.0 <= level <= 1.0:
                raise MoolaError(f"difficulty {level} is out of range; use a number in [0, 1].")

        def lerp(easy: float, hard: float) -> float:
            return easy + (hard - easy) * level

        return cls(
            level=level,
            expansion_drift=lerp(1.3, 0.45),
            expansion_vol=lerp(2.6, 1.5),
            consolidation_vol=lerp(0.35, 0.8),
            retrace_depth=(lerp(0.5, 0.25), lerp(0.7, 0.45)),
            decoy_prob=lerp(0.0, 1.0),
            decoy_vol=lerp(1.8, 2.4),
            hard_negative_prob=lerp(0.0, 1.0),
            no_pattern_share=lerp(0.2, 0.5),
        )


@dataclass(frozen=True)
class SyntheticMarket:
    """Bars plus the planted episodes (one row per episode, bar indexes into `bars`)."""

    bars: pd.DataFrame  # timestamp (UTC), open, high, low, close, volume
    episodes: pd.DataFrame  # label, window_start, expansion_start, expansion_end (absolute)
    # kind (decoy, failed_breakout, pattern_only), window_start, first, last (absolute bars of
    # the distractor, inclusive); empty slots without one are not listed
    hard_negatives: pd.DataFrame | None = None


def session_timestamps(n_sessions: int) -> pd.DatetimeIndex:
    """Minute timestamps of n weekday sessions, 390 bars each, starting on START_DAY."""
    days = pd.bdate_range(START_DAY, periods=n_sessions).to_numpy()  # naive dates, read as UTC
    minutes = (pd.to_timedelta(np.arange(SESSION_BARS), unit="min") + SESSION_OPEN).to_numpy()
    stamps = days[:, None] + minutes[None, :]  # [S, 390]
    return pd.DatetimeIndex(stamps.reshape(-1)).tz_localize("UTC")


def _plan_episode(rng: np.random.Generator, label: str, window_start: int, knobs: Difficulty):
    """Choose an episode's geometry; returns a dict of absolute bar ranges and parameters."""
    length = int(rng.integers(6, 17))  # expansion bars
    start = int(rng.integers(SPAN_MIN_START + 10, SPAN_MAX_END - length + 2))
    direction = 1 if rng.random() < 0.5 else -1
    plan = {
        "label": label,
        "window_start": window_start,
        "expansion_start": window_start + start,
        "expansion_end": window_start + start + length - 1,
        "direction": direction,
    }
    if label == "consolidation":
        plan["pattern"] = (window_start + start - int(rng.integers(18, 31)), window_start + start)
    else:
        pullback = int(rng.integers(6, 13))
        leg = int(rng.integers(12, 21))
        plan["pullback"] = (window_start + start - pullback, window_start + start)
        plan["leg"] = (window_start + start - pullback - leg, window_start + start - pullback)
        plan["depth"] = float(rng.uniform(*knobs.retrace_depth))
    # A decoy: a wide, directionless burst somewhere in the window away from the episode.
    if rng.random() < knobs.decoy_prob:
        span = int(rng.integers(5, 12))
        first_pattern_bar = min(r[0] for k, r in plan.items() if k in ("pattern", "leg"))
        before = first_pattern_bar - window_start - span - 2
        after_start = plan["expansion_end"] - window_start + 3
        choices = []
        if before >= 3:
            choices.append(window_start + int(rng.integers(3, before + 1)))
        if after_start + span <= WINDOW_LEN:
            choices.append(window_start + after_start)
        if choices:
            first = choices[int(rng.integers(len(choices)))]
            plan["decoy"] = (first, first + span)
    return plan


HARD_NEGATIVE_KINDS = ("decoy", "failed_breakout", "pattern_only")


def _plan_hard_negative(rng: np.random.Generator, window_start: int) -> dict:
    """A distractor for an empty window slot: where a real episode would put its expansion,
    something that looks like part of one (see the module docstring)."""
    kind = HARD_NEGATIVE_KINDS[int(rng.integers(len(HARD_NEGATIVE_KINDS)))]
    at = window_start + int(rng.integers(SPAN_MIN_START + 10, SPAN_MAX_END - 8))
    direction = 1 if rng.random() < 0.5 else -1
    plan = {"kind": kind, "window_start": window_start, "direction": direction}
    if kind == "decoy":
        span = int(rng.integers(5, 12))
        plan["burst"] = (at, at + span)
    elif kind == "failed_breakout":
        burst, reversal = int(rng.integers(2, 4)), int(rng.integers(3, 6))
        plan["pattern"] = (at - int(rng.integers(18, 31)), at)
        plan["burst"] = (at, at + burst)
        plan["reversal"] = (at + burst, at + burst + reversal)
    elif rng.random() < 0.5:  # a consolidation and no breakout
        plan["pattern"] = (at - int(rng.integers(18, 31)), at)
    else:  # a trend leg and its pull-back, and the trend does not resume
        pullback, leg = int(rng.integers(6, 13)), int(rng.integers(12, 21))
        plan["pullback"] = (at - pullback, at)
        plan["leg"] = (at - pullback - leg, at - pullback)
    ranges = [
        v for k, v in plan.items() if k in ("pattern", "burst", "reversal", "pullback", "leg")
    ]
    plan["first"] = min(r[0] for r in ranges)
    plan["last"] = max(r[1] for r in ranges) - 1
    return plan


def _paint_hard_negative(plan: dict, drift: np.ndarray, vol: np.ndarray, zero_sum: list, knobs):
    """Write a hard negative's drift (sigma units) and volatility multipliers into the arrays."""
    if "pattern" in plan:
        p0, p1 = plan["pattern"]
        vol[p0:p1] = knobs.consolidation_vol
        drift[p0:p1] = 0.0
        zero_sum.append((p0, p1))
    if "leg" in plan:
        l0, l1 = plan["leg"]
        q0, q1 = plan["pullback"]
        leg_drift = 0.9 * plan["direction"]
        drift[l0:l1] = leg_drift
        drift[q0:q1] = -leg_drift * 0.5 * (l1 - l0) / (q1 - q0)
        vol[q0:q1] = 0.9
    if plan["kind"] == "decoy":
        d0, d1 = plan["burst"]
        vol[d0:d1] = knobs.decoy_vol
        drift[d0:d1] = 0.0
        zero_sum.append((d0, d1))
    elif plan["kind"] == "failed_breakout":
        # the first bars of an expansion, then a reversal that gives the move back
        b0, b1 = plan["burst"]
        r0, r1 = plan["reversal"]
        push = plan["direction"] * knobs.expansion_drift
        drift[b0:b1] = push
        vol[b0:b1] = knobs.expansion_vol
        drift[r0:r1] = -push * (b1 - b0) / (r1 - r0)
        vol[r0:r1] = 0.5 * (1.0 + knobs.expansion_vol)


def _paint_episode(plan: dict, drift: np.ndarray, vol: np.ndarray, zero_sum: list, knobs):
    """Write an episode's drift (sigma units) and volatility multipliers into the arrays."""
    a, b = plan["expansion_start"], plan["expansion_end"] + 1
    drift[a:b] = plan["direction"] * knobs.expansion_drift
    vol[a:b] = knobs.expansion_vol
    if plan["label"] == "consolidation":
        p0, p1 = plan["pattern"]
        vol[p0:p1] = knobs.consolidation_vol
        drift[p0:p1] = 0.0
        zero_sum.append((p0, p1))  # range-bound: no net move across the pattern
    else:
        l0, l1 = plan["leg"]
        q0, q1 = plan["pullback"]
        leg_drift = 0.9 * plan["direction"]
        drift[l0:l1] = leg_drift
        # the pull-back gives back `depth` of the leg's expected move over its own bars
        drift[q0:q1] = -leg_drift * plan["depth"] * (l1 - l0) / (q1 - q0)
        vol[q0:q1] = 0.9
    if "decoy" in plan:
        d0, d1 = plan["decoy"]
        vol[d0:d1] = knobs.decoy_vol
        drift[d0:d1] = 0.0
        zero_sum.append((d0, d1))


def simulate_market(
    n_sessions: int,
    seed: int,
    difficulty: str | float = "default",
    episode_labels: list[str | None] | None = None,
    episode_rate: float = 0.3,
) -> SyntheticMarket:
    """Simulate n sessions of bars; plant episodes in window slots.

    `episode_labels` fixes the label of each slot in order (None leaves a slot empty); without
    it each slot gets an episode with probability `episode_rate`, label drawn at random.
    """
    if n_sessions < 1:
        raise MoolaError("n_sessions must be at least 1; ask for more bars.")
    knobs = Difficulty.of(difficulty)
    rng = np.random.default_rng(seed)
    n = n_sessions * SESSION_BARS
    timestamps = session_timestamps(n_sessions)

    # Volatility: slow log-vol (clustering) x intraday U-shape.
    shocks = rng.standard_normal(n)
    shocks[0] = 0.0  # the EMA is seeded with its first value: start the process at its mean
    log_vol = np.clip(ema(shocks, 300) * 7.0, -1.5, 1.5)  # stationary std ~0.4
    minute = np.tile(np.arange(SESSION_BARS), n_sessions) / (SESSION_BARS - 1)
    intraday = 0.75 + 1.2 * (minute - 0.5) ** 2 * 4 * 0.5
    sigma = BASE_SIGMA * np.exp(log_vol - 0.16) * intraday  # [n]

    drift = np.zeros(n)  # in sigma units
    vol = np.ones(n)
    zero_sum: list[tuple[int, int]] = []
    slots = [s * SESSION_BARS + off for s in range(n_sessions) for off in SLOT_OFFSETS]
    if episode_labels is None:
        episode_labels = [
            (LABELS[int(rng.integers(2))] if rng.random() < episode_rate else None) for _ in slots
        ]
    if len(episode_labels) > len(slots):
        raise MoolaError("more episodes than window slots; ask for more sessions.")
    plans, negatives = [], []
    # distractors draw from their own generator, so adding them left every episode's bars as
    # they were (the labeled sets did not change)
    negative_rng = np.random.default_rng([seed, 11])
    for i, slot in enumerate(slots):
        label = episode_labels[i] if i < len(episode_labels) else None
        if label is None:
            if negative_rng.random() < knobs.hard_negative_prob:
                plan = _plan_hard_negative(negative_rng, slot)
                _paint_hard_negative(plan, drift, vol, zero_sum, knobs)
                negatives.append(plan)
            continue
        plan = _plan_episode(rng, label, slot, knobs)
        _paint_episode(plan, drift, vol, zero_sum, knobs)
        plans.append(plan)

    z = rng.standard_normal(n)
    for p0, p1 in zero_sum:
        z[p0:p1] -= z[p0:p1].mean()
    log_ret = sigma * (drift + vol * z)
    # Overnight gap at each session's first bar.
    first = np.arange(n_sessions) * SESSION_BARS
    gap = rng.normal(0.0, 0.004, n_sessions)
    gap[0] = 0.0
    close = 100.0 * np.exp(np.cumsum(log_ret) + np.repeat(np.cumsum(gap), SESSION_BARS))
    open_ = np.empty(n)
    open_[0] = 100.0
    open_[1:] = close[:-1]
    open_[first[1:]] = close[first[1:] - 1] * np.exp(gap[1:])
    # A small open/close drift inside the bar so that opens are not always the last close.
    open_ *= np.exp(rng.normal(0.0, 0.1, n) * sigma)
    wick = sigma * vol * 0.6
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 1.0, n)) * wick)
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 1.0, n)) * wick)
    bar_range = (high - low) / close / BASE_SIGMA
    volume = np.round(rng.lognormal(7.0, 0.5, n) * intraday * (0.5 + bar_range / 4))

    bars = pd.DataFrame(
        {
            "timestamp": timestamps,
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
        }
    )
    episodes = pd.DataFrame(
        [
            {k: p[k] for k in ("label", "window_start", "expansion_start", "expansion_end")}
            for p in plans
        ],
        columns=["label", "window_start", "expansion_start", "expansion_end"],
    )
    hard = pd.DataFrame(
        [{k: p[k] for k in ("kind", "window_start", "first", "last")} for p in negatives],
        columns=["kind", "window_start", "first", "last"],
    )
    return SyntheticMarket(bars, episodes, hard)


def generate_market(
    n_bars: int, seed: int = 0, difficulty: str | float = "default"
) -> pd.DataFrame:
    """An unlabeled stream of n_bars synthetic 1-minute bars (for pre-training and benchmarks).

    Columns: timestamp (UTC), open, high, low, close, volume. Deterministic in (n_bars, seed,
    difficulty). Episodes are planted in about 30% of the window slots.
    """
    if n_bars < 1:
        raise MoolaError("n_bars must be at least 1.")
    n_sessions = -(-n_bars // SESSION_BARS)
    market = simulate_market(n_sessions, seed, difficulty)
    return market.bars.iloc[:n_bars].reset_index(drop=True)


def make_labeled_set(
    n_windows: int = 174,
    seed: int = 0,
    difficulty: str | float = "default",
    augmented_share: float = 0.1,
    consolidation_share: float = 0.55,
) -> pd.DataFrame:
    """A labeled set in the Moola schema, cut from a synthetic market around planted episodes.

    Columns: window_id, label, expansion_start, expansion_end, features (105 x [o,h,l,c]
    float64 arrays), start_ts, end_ts (UTC, first and last bar). About `augmented_share` of the
    windows are shifted copies of another window (3-10 bars), as in the original data: they
    share bars with their source, so splits must keep them on one side.
    """
    frame, _, _ = _labeled_windows(
        n_windows, seed, difficulty, augmented_share, consolidation_share
    )
    return frame


def labeled_set_context(
    n_windows: int = 174,
    seed: int = 0,
    difficulty: str | float = "default",
    bars: int = WINDOW_LEN,
) -> dict[str, np.ndarray]:
    """The `bars` bars of the market just before each window of `make_labeled_set` with the
    same arguments -> {window_id: float64 [k, 4] OHLC, k <= bars (fewer at the stream's start)}.

    A live system sees these: cut as of a bar before a window's expansion, the 105 bars it
    answers on start before the labeled window does (moola_core.train.live)."""
    frame, ohlc, first_bar = _labeled_windows(n_windows, seed, difficulty, 0.1, 0.55)
    return {
        str(w): ohlc[max(0, w0 - bars) : w0].copy()
        for w, w0 in zip(frame["window_id"], first_bar, strict=True)
    }


def _labeled_windows(n_windows, seed, difficulty, augmented_share, consolidation_share):
    """make_labeled_set's frame, the market's OHLC [n, 4] and each window's first bar."""
    if n_windows < 1:
        raise MoolaError("n_windows must be at least 1.")
    rng = np.random.default_rng([seed, 174])
    n_aug = int(round(augmented_share * n_windows)) if n_windows > 1 else 0
    n_base = n_windows - n_aug
    labels = [LABELS[0] if rng.random() < consolidation_share else LABELS[1] for _ in range(n_base)]
    n_sessions = -(-n_base // len(SLOT_OFFSETS))
    market = simulate_market(n_sessions, seed, difficulty, episode_labels=labels)
    bars, episodes = market.bars, market.episodes
    ohlc = bars[["open", "high", "low", "close"]].to_numpy()
    stamps = bars["timestamp"]

    rows, first_bar = [], []

    def add(window_id: str, label: str, w0: int, s: int, e: int) -> None:
        first_bar.append(int(w0))
        rows.append(
            {
                "window_id": window_id,
                "label": label,
                "expansion_start": int(s - w0),
                "expansion_end": int(e - w0),
                "features": ohlc[w0 : w0 + WINDOW_LEN].copy(),
                "start_ts": stamps.iloc[w0],
                "end_ts": stamps.iloc[w0 + WINDOW_LEN - 1],
            }
        )

    augment_from = set(rng.choice(n_base, size=n_aug, replace=False).tolist()) if n_aug else set()
    for k, ep in enumerate(episodes.itertuples(index=False)):
        add(f"syn{seed}-{k:04d}", ep.label, ep.window_start, ep.expansion_start, ep.expansion_end)
        if k in augment_from:
            # shift the window so the span stays inside [SPAN_MIN_START - 10, 104]
            room_left = ep.expansion_start - ep.window_start - (SPAN_MIN_START - 10)
            room_right = SPAN_MAX_END - (ep.expansion_end - ep.window_start)
            shifts = [d for d in range(-10, 11) if abs(d) >= 3 and -room_right <= d <= room_left]
            d = int(shifts[int(rng.integers(len(shifts)))])
            add(
                f"syn{seed}-{k:04d}-aug{d:+d}",
                ep.label,
                ep.window_start + d,
                ep.expansion_start,
                ep.expansion_end,
            )
    return pd.DataFrame(rows).reset_index(drop=True), ohlc, np.array(first_bar, dtype=np.int64)


def window_arrays(windows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs of OHLC windows ([105, 4] each) -> x float32 [N, 105, 11], valid bool."""
    from moola_core.data.features import compute_features
    from moola_core.spec import N_FEATURES

    x = np.zeros((len(windows), WINDOW_LEN, N_FEATURES), dtype=np.float32)
    valid = np.zeros((len(windows), WINDOW_LEN), dtype=bool)
    for i, ohlc in enumerate(windows):
        feats = compute_features(ohlc[:, 0], ohlc[:, 1], ohlc[:, 2], ohlc[:, 3])
        x[i], valid[i] = feats.values, feats.valid
    return x, valid


@dataclass(frozen=True)
class EvalWindows:
    """Windows for detection and as-of evaluation, with the truth a live system would know.

    has_pattern False: no expansion is visible in the window (start/end are -1, label -1).
    """

    x: np.ndarray  # float32 [N, 105, 11]
    valid: np.ndarray  # bool [N, 105]
    has_pattern: np.ndarray  # bool [N]
    label: np.ndarray  # int64 [N], -1 without a pattern
    start: np.ndarray  # int64 [N] (inclusive bar indexes in the window), -1 without
    end: np.ndarray
    window_id: list[str]


def _eval_windows(windows, has, label, start, end, ids) -> EvalWindows:
    """EvalWindows from per-window lists (OHLC windows, has-pattern flags, truth, ids)."""
    x, valid = window_arrays(windows)
    return EvalWindows(
        x,
        valid,
        np.array(has),
        np.array(label, dtype=np.int64),
        np.array(start, dtype=np.int64),
        np.array(end, dtype=np.int64),
        ids,
    )


def make_detection_set(
    n_windows: int = 600,
    seed: int = 0,
    difficulty: str | float = "default",
    no_pattern_share: float | None = None,
) -> EvalWindows:
    """Episode windows mixed with windows that hold no expansion (`no_pattern_share` of them,
    by default the difficulty's), cut from one synthetic market in window slots."""
    knobs = Difficulty.of(difficulty)
    share = knobs.no_pattern_share if no_pattern_share is None else float(no_pattern_share)
    if not 0.0 <= share < 1.0 or n_windows < 1:
        raise MoolaError("need n_windows >= 1 and a no-pattern share in [0, 1).")
    rng = np.random.default_rng([seed, 600])
    labels = [
        None if rng.random() < share else LABELS[int(rng.integers(2))] for _ in range(n_windows)
    ]
    market = simulate_market(
        -(-n_windows // len(SLOT_OFFSETS)), seed, difficulty, episode_labels=labels
    )
    ohlc = market.bars[["open", "high", "low", "close"]].to_numpy()
    slots = [
        s * SESSION_BARS + off
        for s in range(len(market.bars) // SESSION_BARS)
        for off in SLOT_OFFSETS
    ]
    episodes = iter(market.episodes.itertuples(index=False))
    windows, has, label, start, end, ids = [], [], [], [], [], []
    for k, (slot, name) in enumerate(zip(slots, labels, strict=False)):
        windows.append(ohlc[slot : slot + WINDOW_LEN])
        ids.append(f"det{seed}-{k:04d}")
        if name is None:
            has.append(False)
            label.append(-1)
            start.append(-1)
            end.append(-1)
            continue
        ep = next(episodes)
        has.append(True)
        label.append(LABELS.index(ep.label))
        start.append(ep.expansion_start - slot)
        end.append(ep.expansion_end - slot)
    return _eval_windows(windows, has, label, start, end, ids)


def make_pattern_free_windows(
    n_windows: int, seed: int = 0, difficulty: str | float = "default"
) -> tuple[np.ndarray, np.ndarray]:
    """`n_windows` windows without any expansion, cut from one synthetic market in window slots
    -> model inputs (x [N, 105, 11], valid [N, 105]). They carry the difficulty's hard negatives
    (decoys, failed breakouts, patterns without an expansion: none at easy, every window at
    hard). Training with negatives (`data.negative_share`) takes its pattern-free windows here."""
    if n_windows < 1:
        raise MoolaError("n_windows must be at least 1.")
    sessions = -(-n_windows // len(SLOT_OFFSETS))
    market = simulate_market(sessions, seed, difficulty, episode_labels=[None] * n_windows)
    ohlc = market.bars[["open", "high", "low", "close"]].to_numpy()
    slots = [s * SESSION_BARS + off for s in range(sessions) for off in SLOT_OFFSETS]
    return window_arrays([ohlc[slot : slot + WINDOW_LEN] for slot in slots[:n_windows]])


def make_asof_set(
    n_windows: int = 300, seed: int = 0, difficulty: str | float = "default", delay: int = 0
) -> EvalWindows:
    """Each episode as a live system sees it: the 105 bars ending `delay` bars after the
    expansion's first bar (delay < 0: that many bars before it, so no expansion is visible).

    The visible span is [104 - delay, min(expansion end, 104)] in the cut window. Episodes whose
    cut would start before the first bar of the stream are skipped.
    """
    if n_windows < 1:
        raise MoolaError("n_windows must be at least 1.")
    rng = np.random.default_rng([seed, 105])
    labels = [LABELS[int(rng.integers(2))] for _ in range(n_windows)]
    market = simulate_market(
        -(-n_windows // len(SLOT_OFFSETS)) + 1,
        seed,
        difficulty,
        episode_labels=[None, None, None, *labels],
    )
    ohlc = market.bars[["open", "high", "low", "close"]].to_numpy()
    windows, has, label, start, end, ids = [], [], [], [], [], []
    for k, ep in enumerate(market.episodes.itertuples(index=False)):
        last = ep.expansion_start + delay  # the newest bar the live system has
        first = last - (WINDOW_LEN - 1)
        if first < 0 or last >= len(ohlc):
            continue
        windows.append(ohlc[first : last + 1])
        ids.append(f"asof{seed}-{k:04d}{delay:+d}")
        visible = delay >= 0
        has.append(visible)
        label.append(LABELS.index(ep.label) if visible else -1)
        start.append(ep.expansion_start - first if visible else -1)
        end.append(min(ep.expansion_end, last) - first if visible else -1)
    return _eval_windows(windows, has, label, start, end, ids)

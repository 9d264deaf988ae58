"""Training and judging a model the way it serves: as-of cuts, windows that end "now".

A served window is the latest 105 bars. For a labeled episode whose expansion covers bars
[s, e], the as-of cut at delay d is the 105 bars ending at now = s + d. What a live system can
know about it:

    visible    d >= 0             an expansion has begun by now: its class and its visible
                                  span [s, min(e, now)] are the cut's class and span targets
    under way  0 <= d <= e - s    the target of the under-way head: P(expansion under way)

Each labeled window gives cuts at d in [-before, -1] (not yet), [0, e - s] (under way),
[e - s + 1, e - s + after] (just over) and the labeled window itself (now = its last bar).
Synthetic pattern-free markets give negative cuts: windows ending in the first bars of a hard
negative (a failed breakout looks like an expansion's start) and at slot ends.

The bars of a cut come from the labeled window and the bars before it (its context): a
synthetic set has them (`synthetic.labeled_set_context`), so its cuts are exactly the windows
a server sees. A labeled file has none: a cut that would start before the window's first bar
is a prefix cut, its missing bars left invalid (masked like a longer feature warm-up); such a
cut has fewer valid bars the earlier it is, which a model can learn as a shortcut, so the
stream figures (benchmarks/models.py) are what to trust (docs/models.md, Live use).

numpy only; the windows' features come from moola_core.data.features, the serving code's twin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moola_core.spec import N_FEATURES, WINDOW_LEN

PRE, UNDER_WAY, AFTER, NEGATIVE = 0, 1, 2, 3  # the kind of a cut
KIND_NAMES = ("before", "under way", "after", "negative")
NO_DELAY = -9999  # the delay of a negative cut (no expansion to be after)
# the delays the early-stopping cuts use (plus the labeled window itself): a fixed, small set
EARLY_STOPPING_DELAYS = (-8, -3, -1, 0, 1, 3, 6)


@dataclass(frozen=True)
class AsOfCuts:
    """Model inputs of as-of cuts with their truth; one row per cut.

    `window` is the labeled window a cut comes from (an index into the run's arrays; -1 for a
    negative cut); label/start/end are the class and the visible span in the cut's own bar
    indexes (0 where nothing is visible)."""

    x: np.ndarray  # float32 [M, 105, 11]
    valid: np.ndarray  # bool [M, 105]
    window: np.ndarray  # int64 [M]
    delay: np.ndarray  # int64 [M], NO_DELAY for negatives
    kind: np.ndarray  # int8 [M]: PRE, UNDER_WAY, AFTER, NEGATIVE
    visible: np.ndarray  # bool [M]
    under_way: np.ndarray  # bool [M]
    label: np.ndarray  # int64 [M]
    start: np.ndarray  # int64 [M]
    end: np.ndarray  # int64 [M]

    def __len__(self) -> int:
        return len(self.x)

    def take(self, rows) -> AsOfCuts:
        """The cuts at `rows` (an index array), as a new AsOfCuts."""
        rows = np.asarray(rows, dtype=np.int64)
        return AsOfCuts(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))

    def rows_of(self, windows) -> np.ndarray:
        """Row indexes of the cuts that come from `windows` (labeled window indexes)."""
        return np.flatnonzero(np.isin(self.window, np.asarray(windows, dtype=np.int64)))

    def tensors(self) -> dict:
        """The training loop's example dict: x, valid, label, start, end, has, target."""
        return {
            "x": self.x,
            "valid": self.valid,
            "label": self.label,
            "start": self.start,
            "end": self.end,
            "has": self.visible,
            "target": self.under_way,
        }


def _features(ohlc_list: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Features of OHLC stretches of up to 105 bars, each right-aligned into 105 bars (missing
    leading bars invalid) -> x float32 [M, 105, 11], valid bool [M, 105]."""
    from moola_core.data.features import compute_features

    x = np.zeros((len(ohlc_list), WINDOW_LEN, N_FEATURES), dtype=np.float32)
    valid = np.zeros((len(ohlc_list), WINDOW_LEN), dtype=bool)
    for i, ohlc in enumerate(ohlc_list):
        k = len(ohlc)
        feats = compute_features(ohlc[:, 0], ohlc[:, 1], ohlc[:, 2], ohlc[:, 3])
        x[i, WINDOW_LEN - k :] = feats.values
        valid[i, WINDOW_LEN - k :] = feats.valid
    return x, valid


def episode_cuts(
    ohlc: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    label: np.ndarray,
    *,
    context: list[np.ndarray | None] | None = None,
    before: int = 12,
    after: int = 4,
    windows=None,
    delays=None,
) -> AsOfCuts:
    """As-of cuts of labeled windows (see the module docstring).

    ohlc float [N, 105, 4] with each window's expansion [start, end] (inclusive, window bar
    indexes) and class; `context[i]` the bars before window i (float [k, 4], oldest first) or
    None; `windows` limits the cuts to those window indexes; `delays` (a list of d) replaces
    the default set of delays (the labeled window itself is always cut)."""
    n = len(ohlc)
    windows = np.arange(n) if windows is None else np.asarray(windows, dtype=np.int64)
    stretches, rows = [], []
    last = WINDOW_LEN - 1
    for i in windows:
        s, e = int(start[i]), int(end[i])
        bars = ohlc[i]
        ctx = context[i] if context is not None and context[i] is not None else bars[:0]
        joined = np.concatenate([ctx, bars])  # window bar j is joined[len(ctx) + j]
        offset = len(ctx)
        wanted = (list(range(-before, e - s + after + 1)) if delays is None else list(delays)) + [
            last - s
        ]
        seen = set()
        for d in wanted:
            now = s + d  # the newest bar, in window indexes
            if now > last or now in seen or now + offset < 0:
                continue
            seen.add(now)
            first = max(0, now + offset - last)
            stretches.append(joined[first : now + offset + 1])
            shift = last - now  # cut index = window index + shift
            visible = d >= 0
            under = 0 <= d <= e - s
            kind = PRE if d < 0 else UNDER_WAY if under else AFTER
            rows.append(
                (
                    int(i),
                    d,
                    kind,
                    visible,
                    under,
                    int(label[i]) if visible else 0,
                    s + shift if visible else 0,
                    min(e, now) + shift if visible else 0,
                )
            )
    return _assemble(stretches, rows)


def _assemble(stretches: list, rows: list) -> AsOfCuts:
    x, valid = _features(stretches)
    cols = list(zip(*rows, strict=True)) if rows else [[]] * 8
    return AsOfCuts(
        x,
        valid,
        np.array(cols[0], dtype=np.int64),
        np.array(cols[1], dtype=np.int64),
        np.array(cols[2], dtype=np.int8),
        np.array(cols[3], dtype=bool),
        np.array(cols[4], dtype=bool),
        np.array(cols[5], dtype=np.int64),
        np.array(cols[6], dtype=np.int64),
        np.array(cols[7], dtype=np.int64),
    )


RANDOM_NEGATIVES_PER_SLOT = 3  # ordinary bars: most of what a served stream holds


def negative_cuts(n_slots: int, seed: int, difficulty: str | float = "default") -> AsOfCuts:
    """Cuts of a synthetic market without episodes: windows ending in the first bars of each
    hard negative (0, 1, 2, 4 and 7 bars in) and 3 bars after it, at every slot's end, and at
    RANDOM_NEGATIVES_PER_SLOT ordinary bars per slot anywhere in the market."""
    from moola_core.data import synthetic

    market = synthetic.simulate_market(
        -(-n_slots // len(synthetic.SLOT_OFFSETS)) + 1,
        seed,
        difficulty,
        episode_labels=[None] * n_slots,
    )
    ohlc = market.bars[["open", "high", "low", "close"]].to_numpy()
    last = WINDOW_LEN - 1
    nows = []
    for s in range(len(ohlc) // synthetic.SESSION_BARS):
        for off in synthetic.SLOT_OFFSETS:
            nows.append(s * synthetic.SESSION_BARS + off + last)
    for hard in market.hard_negatives.itertuples(index=False):
        nows += [hard.first + k for k in (0, 1, 2, 4, 7)] + [hard.last + 3]
    rng = np.random.default_rng([seed, 21])
    nows += rng.integers(last, len(ohlc), size=RANDOM_NEGATIVES_PER_SLOT * n_slots).tolist()
    nows = sorted({n for n in nows if last <= n < len(ohlc)})
    stretches = [ohlc[now - last : now + 1] for now in nows]
    rows = [(-1, NO_DELAY, NEGATIVE, False, False, 0, 0, 0)] * len(nows)
    return _assemble(stretches, rows)


def concat(parts: list[AsOfCuts]) -> AsOfCuts:
    """One AsOfCuts from several (rows in order)."""
    fields = AsOfCuts.__dataclass_fields__
    return AsOfCuts(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))


def kinds_by_window(cuts: AsOfCuts) -> dict[int, list[np.ndarray]]:
    """{labeled window: [rows before, rows under way, rows after]}: the index sample_epoch
    draws from (built once per run)."""
    index: dict[int, list[np.ndarray]] = {}
    empty = np.empty(0, dtype=np.int64)
    order = np.argsort(cuts.window, kind="stable")
    bounds = np.flatnonzero(np.diff(cuts.window[order])) + 1
    for rows in np.split(order, bounds):
        w = int(cuts.window[rows[0]]) if len(rows) else -1
        if w < 0:
            continue
        index[w] = [
            rows[cuts.kind[rows] == k] if (cuts.kind[rows] == k).any() else empty
            for k in (PRE, UNDER_WAY, AFTER)
        ]
    return index


def sample_epoch(index: dict, windows, rng: np.random.Generator) -> np.ndarray:
    """Row indexes of one epoch's examples: one cut per labeled window in `windows`, its kind
    drawn evenly among before / under way / after-or-whole (the kinds it has) and the cut
    uniformly within it. `index` is kinds_by_window(cuts)."""
    picked = []
    for w in np.asarray(windows, dtype=np.int64):
        groups = [g for g in index.get(int(w), ()) if len(g)]
        if not groups:
            continue
        group = groups[int(rng.integers(len(groups)))]
        picked.append(int(group[int(rng.integers(len(group)))]))
    return np.array(picked, dtype=np.int64)


def early_stopping_rows(cuts: AsOfCuts, windows) -> np.ndarray:
    """The fixed cuts early stopping scores for `windows`: EARLY_STOPPING_DELAYS and each
    window's whole labeled window."""
    rows = cuts.rows_of(windows)
    fixed = rows[np.isin(cuts.delay[rows], EARLY_STOPPING_DELAYS)]
    return np.union1d(fixed, whole_window_rows(cuts, windows))


def whole_window_rows(cuts: AsOfCuts, windows) -> np.ndarray:
    """The row of each window's own cut (now = its last bar): its largest delay."""
    out = []
    for w in np.asarray(windows, dtype=np.int64):
        rows = np.flatnonzero(cuts.window == w)
        if len(rows):
            out.append(int(rows[np.argmax(cuts.delay[rows])]))
    return np.array(out, dtype=np.int64)


def detected_within(confidence: np.ndarray, cuts: AsOfCuts, within: int) -> tuple:
    """Per labeled window, the highest confidence among its cuts d = 0..within -> (windows
    [W], peak [W]): a window is detected within `within` bars at threshold t iff peak >= t."""
    rows = np.flatnonzero((cuts.delay >= 0) & (cuts.delay <= within) & (cuts.kind != NEGATIVE))
    windows = np.unique(cuts.window[rows])
    peak = np.array([confidence[rows[cuts.window[rows] == w]].max() for w in windows])
    return windows, peak

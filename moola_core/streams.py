"""Stream evaluation, NAB-style: a model run bar by bar over a continuous stream of bars.

At every bar t (from the 105th on) the model answers the window of the 105 bars ending at t,
as the server would. Each answer is an alarm or not:

- a live model (`model.live`) alarms when it does not abstain: its calibrated P(expansion
  under way) reached the abstain threshold;
- a span model (the after-the-fact model, the linear baseline, the heuristic) alarms when it
  does not abstain (baselines never do) *and* its span reaches the present (ends within
  NOW_TOLERANCE bars of t): "an expansion is under way now" is how a span is read live.

Events are the planted expansions [s, e]. Each event owns the window [s, e + GRACE] (NAB's
anomaly window, starting at the onset: an answer before an expansion began is a false
alarm). Scored per event and per session:

- detection delay: the first alarm bar in the event's window minus s (missed: none);
- recall within k bars: share of events detected with delay <= k;
- false alarms: runs of consecutive alarm bars outside every event's window (a run is one
  alert a person would see), per 1,000 bars; `quiet_alarm_share` is the share of bars
  outside the windows that alarm (so a model stuck "on" cannot hide behind few runs).

Intervals resample whole sessions (days) with replacement, and training seeds when several
models' scores are pooled: bars within a day are not independent. On an unlabeled stream
(the real-bar sample) there are no events: every alarm run counts, an upper bound of false
alarms. numpy only; the features are computed per window with moola_core.data.features,
bit-equal to what the server computes (tests/unit/test_hostfeatures.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from moola_core.spec import N_FEATURES, WINDOW_LEN

GRACE = 5  # bars after an expansion's last bar that still belong to its event window
NOW_TOLERANCE = 2  # a span "reaches the present" when it ends at bar >= 104 - this
RECALL_WITHIN = 5  # the headline recall: detected within this many bars of the onset


@dataclass(frozen=True)
class Stream:
    """Bars of a continuous stream with their sessions and (when labeled) expansion events."""

    ohlc: np.ndarray  # float64 [n, 4]
    session: np.ndarray  # int64 [n]: the trading day each bar belongs to
    events: np.ndarray  # int64 [E, 2]: (first, last) bar of each expansion; [0, 2] unlabeled
    name: str = "stream"
    labeled: bool = True
    hard_negatives: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))

    @property
    def bars(self) -> np.ndarray:
        """The bars that are answered: every bar with 104 bars before it."""
        return np.arange(WINDOW_LEN - 1, len(self.ohlc))

    def under_way(self) -> np.ndarray:
        """bool [n]: an expansion is under way at the bar (first <= t <= last of an event)."""
        out = np.zeros(len(self.ohlc), dtype=bool)
        for s, e in self.events:
            out[s : e + 1] = True
        return out


def synthetic_stream(n_sessions: int, seed: int, difficulty: str | float = "default") -> Stream:
    """A synthetic market at its own prevalence of episodes (about 0.9 per 390-bar session)
    with the difficulty's hard negatives in the empty slots."""
    from moola_core.data import synthetic

    market = synthetic.simulate_market(n_sessions, seed, difficulty)
    ohlc = market.bars[["open", "high", "low", "close"]].to_numpy()
    events = market.episodes[["expansion_start", "expansion_end"]].to_numpy(dtype=np.int64)
    hard = market.hard_negatives[["first", "last"]].to_numpy(dtype=np.int64)
    session = np.arange(len(ohlc)) // synthetic.SESSION_BARS
    return Stream(
        ohlc,
        session,
        events.reshape(-1, 2),
        f"synthetic seed {seed}",
        True,
        hard.reshape(-1, 2),
    )


def real_stream() -> Stream:
    """The pinned real-bar sample (moola_core.data.real) as an unlabeled stream."""
    from moola_core.data.bars import session_bounds
    from moola_core.data.real import load_real_sample

    bars = load_real_sample()
    session = np.zeros(len(bars), dtype=np.int64)
    for k, (a, b) in enumerate(session_bounds(bars["timestamp"], 5.0)):
        session[int(a) : int(b)] = k
    ohlc = bars[["open", "high", "low", "close"]].to_numpy(dtype=float)
    return Stream(ohlc, session, np.zeros((0, 2), np.int64), "real sample", False)


def window_batches(stream: Stream, batch: int = 2048):
    """(bar indexes [b], x float32 [b, 105, 11], valid bool [b, 105]) for every answered bar,
    in batches; each window's features are computed from its own 105 bars, as a server does."""
    from moola_core.data.features import compute_features

    bars = stream.bars
    for i in range(0, len(bars), batch):
        chunk = bars[i : i + batch]
        x = np.zeros((len(chunk), WINDOW_LEN, N_FEATURES), dtype=np.float32)
        valid = np.zeros((len(chunk), WINDOW_LEN), dtype=bool)
        for j, t in enumerate(chunk):
            w = stream.ohlc[t - WINDOW_LEN + 1 : t + 1]
            feats = compute_features(w[:, 0], w[:, 1], w[:, 2], w[:, 3])
            x[j], valid[j] = feats.values, feats.valid
        yield chunk, x, valid


def alarms(pred: dict, live: bool) -> np.ndarray:
    """Which answers are alarms (module docstring): bool [b] from predict's output."""
    answered = ~np.asarray(pred.get("abstain", np.zeros(len(pred["end"]), bool)), dtype=bool)
    if live:
        return answered
    return answered & (np.asarray(pred["end"]) >= WINDOW_LEN - 1 - NOW_TOLERANCE)


def event_windows(stream: Stream, grace: int = GRACE) -> np.ndarray:
    """bool [n]: the bar belongs to some event's window [first, last + grace]."""
    out = np.zeros(len(stream.ohlc), dtype=bool)
    for s, e in stream.events:
        out[s : e + grace + 1] = True
    return out


@dataclass(frozen=True)
class StreamScore:
    """One model's alarms on one stream, reduced to per-session and per-event counts."""

    sessions: np.ndarray  # int64 [S]: session ids, in order
    bars: np.ndarray  # int64 [S]: answered bars per session
    false_alarms: np.ndarray  # int64 [S]: alarm runs outside every event window
    quiet_bars: np.ndarray  # int64 [S]: answered bars outside every event window
    quiet_alarms: np.ndarray  # int64 [S]: ... of which alarmed
    event_session: np.ndarray  # int64 [E]: session of each event's onset (index into sessions)
    delay: np.ndarray  # int64 [E]: first alarm in the event's window minus its onset; -1 missed

    def to_dict(self) -> dict:
        return {k: getattr(self, k).tolist() for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, raw: dict) -> StreamScore:
        return cls(*(np.asarray(raw[k], dtype=np.int64) for k in cls.__dataclass_fields__))


def score_alarms(stream: Stream, alarm: np.ndarray, grace: int = GRACE) -> StreamScore:
    """Score alarms given for every answered bar (`stream.bars` order) -> StreamScore."""
    n = len(stream.ohlc)
    full = np.zeros(n, dtype=bool)
    answered = np.zeros(n, dtype=bool)
    full[stream.bars] = np.asarray(alarm, dtype=bool)
    answered[stream.bars] = True
    inside = event_windows(stream, grace)
    outside = full & ~inside
    run_start = outside & ~np.concatenate([[False], outside[:-1]])
    sessions, where = np.unique(stream.session, return_inverse=True)
    count = len(sessions)

    def per_session(mask: np.ndarray) -> np.ndarray:
        return np.bincount(where[mask], minlength=count).astype(np.int64)

    delays, event_session = [], []
    for s, e in stream.events:
        if not answered[s]:
            continue  # an event before the first answered bar cannot be scored
        hits = np.flatnonzero(full[s : e + grace + 1])
        delays.append(int(hits[0]) if len(hits) else -1)
        event_session.append(int(where[s]))
    return StreamScore(
        sessions.astype(np.int64),
        per_session(answered),
        per_session(run_start),
        per_session(answered & ~inside),
        per_session(outside),
        np.array(event_session, dtype=np.int64),
        np.array(delays, dtype=np.int64),
    )


def _session_weights(n_sessions: int, n_boot: int, rng) -> np.ndarray:
    drawn = rng.integers(0, n_sessions, size=(n_boot, n_sessions))
    counts = np.zeros((n_boot, n_sessions))
    np.add.at(counts, (np.arange(n_boot)[:, None], drawn), 1.0)
    return counts  # [B, S]


def _interval(boot: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    boot = boot[~np.isnan(boot)]  # a resample without any event has no median delay
    if not len(boot):
        return float("nan"), float("nan")
    # nearest rank: no interpolation between an inf ("not within") and a number
    low, high = np.percentile(boot, [tail, 100.0 - tail], method="nearest")
    return float(low), float(high)


def _json_number(value: float) -> float | None:
    """A figure for JSON: None where it is not a finite number (an undefined or never-reached
    median), so the files stay standard JSON."""
    return float(value) if np.isfinite(value) else None


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """Median of values (inf allowed) with non-negative weights [n] -> float."""
    if weights.sum() <= 0:
        return float("nan")
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, 0.5 * cum[-1])])


def summarize(
    scores: list[StreamScore],
    within: int = RECALL_WITHIN,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Headline figures of one model (several seeds' scores of the same stream pooled) with
    bootstrap CIs over sessions and seeds -> {"false_alarms_per_1k", "recall_within",
    "delay_p50", "quiet_alarm_share": {"value", "ci_low", "ci_high"}, "events", "bars",
    "sessions", "within"}. delay_p50 is inf when more than half the events were missed."""
    if not scores:
        raise ValueError("no stream scores to summarize")
    rng = np.random.default_rng(seed)
    n_sessions = len(scores[0].sessions)
    weights = _session_weights(n_sessions, n_boot, rng)  # [B, S]
    k = len(scores)
    seed_w = np.ones((n_boot, k))
    if k > 1:
        drawn = rng.integers(0, k, size=(n_boot, k))
        seed_w = np.zeros((n_boot, k))
        np.add.at(seed_w, (np.arange(n_boot)[:, None], drawn), 1.0)

    def fa_rate(sc: StreamScore, w) -> np.ndarray:
        return 1000.0 * (w @ sc.false_alarms) / np.maximum(w @ sc.bars, 1)

    def quiet(sc: StreamScore, w) -> np.ndarray:
        return (w @ sc.quiet_alarms) / np.maximum(w @ sc.quiet_bars, 1)

    def recall(sc: StreamScore, w) -> np.ndarray:
        hit = ((sc.delay >= 0) & (sc.delay <= within)).astype(float)
        ew = w[..., sc.event_session] if len(sc.delay) else np.zeros(w.shape[:-1] + (0,))
        return (ew @ hit) / np.maximum(ew.sum(-1), 1e-12)

    def delay_values(sc: StreamScore) -> np.ndarray:
        return np.where(sc.delay >= 0, sc.delay, np.inf).astype(float)

    out: dict = {
        "sessions": n_sessions,
        "bars": int(scores[0].bars.sum()),
        "events": int(len(scores[0].delay)),
        "within": within,
        "n_sets": k,
    }
    ones = np.ones(n_sessions)
    for name, fn in (
        ("false_alarms_per_1k", fa_rate),
        ("quiet_alarm_share", quiet),
        ("recall_within", recall),
    ):
        point = float(np.mean([fn(sc, ones) for sc in scores]))
        boot = np.stack([fn(sc, weights) for sc in scores], axis=1)  # [B, K]
        boot = (boot * seed_w).sum(1) / seed_w.sum(1)
        low, high = _interval(boot, level)
        out[name] = {"value": point, "ci_low": low, "ci_high": high}
        out[name] = {k: _json_number(v) for k, v in out[name].items()}
    # the median delay over the pooled events of all seeds (missed = inf)
    values = np.concatenate([delay_values(sc) for sc in scores])
    sess = np.concatenate([sc.event_session for sc in scores])
    which = np.concatenate([np.full(len(sc.delay), i) for i, sc in enumerate(scores)])
    if len(values):
        point = _weighted_median(values, np.ones(len(values)))
        boot = np.array(
            [_weighted_median(values, weights[b, sess] * seed_w[b, which]) for b in range(n_boot)]
        )
        low, high = _interval(boot, level)
        quart = {
            str(q): _json_number(np.percentile(values, q, method="nearest")) for q in (25, 75, 90)
        }
    else:
        point, low, high, quart = float("nan"), float("nan"), float("nan"), {}
    out["delay_p50"] = {
        k: _json_number(v)
        for k, v in zip(("value", "ci_low", "ci_high"), (point, low, high), strict=True)
    }
    out["delay_quantiles"] = quart
    out["missed_share"] = float(np.mean(~np.isfinite(values))) if len(values) else None
    return out


def paired_difference(
    a: list[StreamScore],
    b: list[StreamScore],
    metric: str,
    within: int = RECALL_WITHIN,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """metric(A) - metric(B) on the same stream, sessions resampled together (and each side's
    seeds): metric is "false_alarms_per_1k" or "recall_within" -> {"value", "ci_low",
    "ci_high"}; `level` is two-sided."""
    if metric not in ("false_alarms_per_1k", "recall_within"):
        raise ValueError(f"unknown stream metric {metric!r}")
    rng = np.random.default_rng(seed)
    n_sessions = len(a[0].sessions)
    weights = _session_weights(n_sessions, n_boot, rng)

    def side(scores):
        values, boots = [], []
        for sc in scores:
            if metric == "false_alarms_per_1k":
                values.append(1000.0 * sc.false_alarms.sum() / max(sc.bars.sum(), 1))
                boots.append(
                    1000.0 * (weights @ sc.false_alarms) / np.maximum(weights @ sc.bars, 1)
                )
            else:
                hit = ((sc.delay >= 0) & (sc.delay <= within)).astype(float)
                ew = weights[:, sc.event_session]
                values.append(float(hit.mean()) if len(hit) else 0.0)
                boots.append((ew @ hit) / np.maximum(ew.sum(1), 1e-12))
        k = len(scores)
        if k > 1:
            drawn = rng.integers(0, k, size=(n_boot, k))
            sw = np.zeros((n_boot, k))
            np.add.at(sw, (np.arange(n_boot)[:, None], drawn), 1.0)
        else:
            sw = np.ones((n_boot, 1))
        boot = (np.stack(boots, 1) * sw).sum(1) / sw.sum(1)
        return float(np.mean(values)), boot

    va, ba = side(a)
    vb, bb = side(b)
    low, high = _interval(ba - bb, level)
    return {"value": va - vb, "ci_low": low, "ci_high": high}

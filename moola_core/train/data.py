"""The labeled windows a run trains and is judged on, and how they are divided.

    labeled set, by time:  [ development (K folds)                     | calibration ]
                                                                        sealed: the final
    fold k:  train on the other folds (minus an early-stopping slice),   model's temperatures,
             stop on that slice, predict fold k  -> out-of-fold (OOF)    Platt and abstain
                                                    predictions          threshold only
    final model: every development window, for the folds' median best epoch

Every development window gets exactly one OOF prediction from a model that never trained,
stopped or was calibrated on it (nor on a window sharing its bars: overlap groups stay in one
fold, and an embargo purges training windows that end or start within `embargo_minutes` of
the held-out fold). Model choice and the quality gate read only the OOF predictions; the
calibration split is read only to calibrate the final model (and to report it). Baselines are
fitted on the same training parts, so every comparison is paired on the same windows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from moola_core.errors import MoolaError
from moola_core.train.config import TrainConfig

# pattern-free markets: NEGATIVE_SEED_BASE + 10 * data_seed + pool (1 train, 2 early stopping,
# 3 calibration); the gate's synthetic stream: STREAM_SEED_BASE + data_seed
NEGATIVE_SEED_BASE = 7100
NEGATIVE_POOLS = ("train", "early_stopping", "calibration")
STREAM_SEED_BASE = 7300


@dataclass(frozen=True)
class Fold:
    """One fold of the development windows (int indexes into the run's arrays)."""

    held: np.ndarray  # scored out of fold
    train: np.ndarray  # what the fold's model trains on
    early_stopping: np.ndarray  # what it stops (and calibrates its OOF confidences) on


@dataclass
class RunData:
    """Model arrays for every labeled window, the division into folds and calibration, and
    what runs on the same data share (baselines, as-of cuts, the gate stream), built once."""

    arrays: object  # moola_core.data.labeled.ModelArrays
    ohlc: np.ndarray  # float64 [N, 105, 4]
    dev: np.ndarray  # int indexes: the development windows (the folds cover them)
    calibration: np.ndarray  # the sealed calibration split
    folds: list[Fold]
    fingerprint: str  # sha256 of the windows, labels and spans the run saw
    # overlap group per window (windows that share bars have the same id): bootstraps resample
    # groups, not windows, so an augmented copy never counts as independent evidence
    groups: np.ndarray
    config: TrainConfig
    # the bars before each window (synthetic sets; None for a labeled file): as-of cuts
    context: list | None = None
    purged: list[str] = field(default_factory=list)
    _memo: dict = field(default_factory=dict, repr=False)

    # -- windows -------------------------------------------------------------------------------
    def part(self, index) -> dict[str, np.ndarray]:
        """{"x","valid","label","start","end"} of the windows at `index`."""
        index = np.asarray(index, dtype=np.int64)
        a = self.arrays
        return {
            "x": a.x[index],
            "valid": a.valid[index],
            "label": a.label[index],
            "start": a.start[index],
            "end": a.end[index],
        }

    def truth(self, index) -> dict[str, np.ndarray]:
        """{"label","start","end","group"} of the windows at `index` (what metrics score)."""
        index = np.asarray(index, dtype=np.int64)
        a = self.arrays
        return {
            "label": a.label[index],
            "start": a.start[index],
            "end": a.end[index],
            "group": self.groups[index],
        }

    def window_ids(self, index) -> list[str]:
        return [self.arrays.window_id[i] for i in np.asarray(index, dtype=np.int64)]

    @property
    def oof_order(self) -> np.ndarray:
        """The development windows in the order OOF predictions are stored (fold by fold)."""
        return np.concatenate([f.held for f in self.folds])

    # -- what runs on the same data share -------------------------------------------------------
    def baselines(self, key) -> dict:
        """Every simple baseline fitted like the models: key = fold number (its training part,
        the linear one stopping on its early-stopping slice) or "dev" (every development window,
        stopping on an early-stopping slice of them) -> {name: fitted}."""
        memo = self._memo.setdefault("baselines", {})
        if key not in memo:
            from moola_core.baselines import fit_baselines

            if key == "dev":
                train, stop = _slice_early_stopping(
                    self.dev, self.groups, self.config.split.early_stopping_share, 99
                )
            else:
                train, stop = self.folds[key].train, self.folds[key].early_stopping
            part = self.part(train)
            memo[key] = fit_baselines(
                part["x"],
                part["valid"],
                part["label"],
                part["start"],
                part["end"],
                val=self.part(stop),
            )
        return memo[key]

    def cuts(self):
        """As-of cuts of every labeled window (moola_core.train.live), built once."""
        if "cuts" not in self._memo:
            from moola_core.train.live import episode_cuts

            a = self.arrays
            self._memo["cuts"] = episode_cuts(
                self.ohlc,
                a.start,
                a.end,
                a.label,
                context=self.context,
                before=self.config.live.before,
                after=self.config.live.after,
            )
        return self._memo["cuts"]

    def negatives(self, pool: str, live: bool):
        """Pattern-free examples of one pool ("train", "early_stopping", "calibration") from
        their own synthetic market of the run's difficulty, or None without
        data.negative_share: full windows {"x", "valid"} (live=False) or negative as-of cuts."""
        share = self.config.data.negative_share
        if share <= 0:
            return None
        key = ("negatives", pool, live)
        if key not in self._memo:
            from moola_core.data import synthetic
            from moola_core.train.live import negative_cuts

            sizes = {"train": len(self.dev), "early_stopping": len(self.dev) // 5}
            sizes["calibration"] = len(self.calibration)
            n = max(1, int(round(sizes[pool] * share / (1.0 - share))))
            seed = NEGATIVE_SEED_BASE + 10 * self.config.data.data_seed
            seed += 1 + NEGATIVE_POOLS.index(pool)
            difficulty = self.config.data.difficulty
            if live:
                self._memo[key] = negative_cuts(n, seed, difficulty)
            else:
                x, valid = synthetic.make_pattern_free_windows(n, seed, difficulty)
                self._memo[key] = {"x": x, "valid": valid}
        return self._memo[key]

    def stream(self):
        """The gate's stream (synthetic data only; None for a labeled file) and its windows'
        features: (Stream, [(bars, x, valid), ...]) built once."""
        if self.config.data.source != "synthetic" or self.config.stream.sessions < 1:
            return None
        if "stream" not in self._memo:
            from moola_core.streams import synthetic_stream, window_batches

            stream = synthetic_stream(
                self.config.stream.sessions,
                STREAM_SEED_BASE + self.config.data.data_seed,
                self.config.data.difficulty,
            )
            self._memo["stream"] = (stream, list(window_batches(stream)))
        return self._memo["stream"]


def load_labeled_frame(config: TrainConfig):
    """The labeled DataFrame the config names (synthetic set or a labeled parquet file)."""
    from moola_core.data import labeled, synthetic

    if config.data.source == "synthetic":
        return synthetic.make_labeled_set(
            n_windows=config.data.n_windows,
            seed=config.data.data_seed,
            difficulty=config.data.difficulty,
        )
    if not config.data.path:
        raise MoolaError("data.source is 'file' but data.path is empty; give a labeled parquet.")
    return labeled.read_labeled(config.data.path)


def fingerprint(arrays) -> str:
    """sha256 over window ids, labels, spans and features: the same data gives the same id."""
    digest = hashlib.sha256()
    digest.update("\n".join(arrays.window_id).encode())
    for array in (arrays.label, arrays.start, arrays.end, arrays.x, arrays.valid):
        digest.update(np.ascontiguousarray(array).tobytes())
    return "sha256:" + digest.hexdigest()


def _times(frame) -> tuple[np.ndarray, np.ndarray, bool]:
    import pandas as pd

    if "start_ts" in frame.columns and "end_ts" in frame.columns:
        start = pd.to_datetime(frame["start_ts"], utc=True).to_numpy()
        end = pd.to_datetime(frame["end_ts"], utc=True).to_numpy()
        return start, end, True
    order = np.arange(len(frame))
    return order, order, False


def _slice_early_stopping(windows, groups, share: float, seed: int):
    """(train, early stopping): a seeded random `share` of the windows' overlap groups stops
    training; the rest trains. At least one group on each side."""
    windows = np.asarray(windows, dtype=np.int64)
    ids = np.unique(groups[windows])
    rng = np.random.default_rng([seed, 15])
    n_stop = min(max(1, int(round(share * len(ids)))), max(len(ids) - 1, 1))
    stop_ids = rng.choice(ids, size=n_stop, replace=False)
    stop = np.isin(groups[windows], stop_ids)
    return np.sort(windows[~stop]), np.sort(windows[stop])


def make_folds(
    frame, dev: np.ndarray, groups: np.ndarray, k: int, embargo_minutes: float, es_share: float
) -> list[Fold]:
    """K folds of contiguous time blocks over the development windows. Overlap groups stay whole; a fold's training part drops every window
    within the embargo of the held-out block (before and after it)."""
    start, end, timed = _times(frame)
    dev = np.asarray(dev, dtype=np.int64)
    gids = np.unique(groups[dev])
    if len(gids) < k:
        raise MoolaError(
            f"{len(gids)} independent windows cannot make {k} folds; lower split.folds or "
            "add labeled windows."
        )
    g_start = np.array([start[dev[groups[dev] == g]].min() for g in gids])
    g_end = np.array([end[dev[groups[dev] == g]].max() for g in gids])
    order = np.argsort(g_start, kind="stable")
    gids, g_start, g_end = gids[order], g_start[order], g_end[order]
    sizes = np.array([np.sum(groups[dev] == g) for g in gids])
    # block boundaries where the cumulative window count crosses i / k of the total
    cum = np.cumsum(sizes)
    cuts = [int(np.searchsorted(cum, cum[-1] * i / k)) + 1 for i in range(1, k)]
    block = np.zeros(len(gids), dtype=np.int64)
    for c in cuts:
        block[c:] += 1
    if len(np.unique(block)) < k:
        block = np.minimum(np.arange(len(gids)) * k // len(gids), k - 1)
    embargo = (
        np.timedelta64(int(embargo_minutes * 60), "s") if timed and embargo_minutes > 0 else None
    )
    folds = []
    for f in range(k):
        held_groups = gids[block == f]
        held = np.sort(dev[np.isin(groups[dev], held_groups)])
        lo, hi = g_start[block == f].min(), g_end[block == f].max()
        keep = block != f
        if embargo is not None:
            near = (g_end > lo - embargo) & (g_start < hi + embargo)
            keep &= ~near
        train_groups = gids[keep]
        train = np.sort(dev[np.isin(groups[dev], train_groups)])
        if len(train) < 2:
            raise MoolaError(
                f"fold {f + 1} of {k} leaves {len(train)} training window(s); lower split.folds "
                "or add labeled windows."
            )
        fit, stop = _slice_early_stopping(train, groups, es_share, f)
        folds.append(Fold(held, fit, stop))
    return folds


def prepare_data(config: TrainConfig, frame=None) -> RunData:
    """Load (or take) the labeled set, compute model arrays, seal the calibration split and
    cut the development windows into folds, without leakage (see the module docstring)."""
    from moola_core.data import labeled, splits

    frame = load_labeled_frame(config) if frame is None else frame
    frame = frame.reset_index(drop=True)
    arrays = labeled.to_model_arrays(frame)
    if list(arrays.window_id) != [str(w) for w in frame["window_id"]]:
        raise MoolaError("the labeled set's rows and model arrays disagree; re-create it.")
    share = config.split.calibration_share
    split = splits.split_labeled(
        frame, fractions=(1.0 - share, 0.0, share), embargo_minutes=config.split.embargo_minutes
    )
    position = {w: i for i, w in enumerate(arrays.window_id)}
    dev = np.array(sorted(position[w] for w in split.train), dtype=np.int64)
    calibration = np.array(sorted(position[w] for w in split.test), dtype=np.int64)
    if len(calibration) == 0 or len(dev) == 0:
        raise MoolaError(
            f"{len(frame)} labeled windows leave an empty development or calibration split; "
            "add windows or change split.calibration_share."
        )
    groups = splits.overlap_groups(len(frame), labeled.sharing_pairs(frame).keys())
    folds = make_folds(
        frame,
        dev,
        groups,
        config.split.folds,
        config.split.embargo_minutes,
        config.split.early_stopping_share,
    )
    ohlc = np.stack(
        [np.asarray(cell, dtype=np.float64).reshape(-1, 4) for cell in frame["features"]]
    )
    context = None
    if config.data.source == "synthetic":
        from moola_core.data import synthetic

        by_id = synthetic.labeled_set_context(
            config.data.n_windows, config.data.data_seed, config.data.difficulty
        )
        context = [by_id.get(w) for w in arrays.window_id]
    return RunData(
        arrays,
        ohlc,
        dev,
        calibration,
        folds,
        fingerprint(arrays),
        groups.astype(np.int64),
        config,
        context,
        list(split.purged),
    )


def negatives_fingerprint(data: RunData) -> str | None:
    """sha256 over the pattern-free examples of every pool the run used (None without)."""
    pools = [key[1:] for key in data._memo if isinstance(key, tuple) and key[0] == "negatives"]
    if not pools:
        return None
    digest = hashlib.sha256()
    for pool, live in sorted(pools):
        item = data._memo[("negatives", pool, live)]
        x, valid = (item.x, item.valid) if live else (item["x"], item["valid"])
        digest.update(np.ascontiguousarray(x).tobytes())
        digest.update(np.ascontiguousarray(valid).tobytes())
    return "sha256:" + digest.hexdigest()

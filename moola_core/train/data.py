"""The labeled windows a run trains and is scored on, and their train/val/test split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from moola_core.errors import MoolaError
from moola_core.train.config import TrainConfig


@dataclass(frozen=True)
class RunData:
    """Model arrays for every window plus the index of each split into them."""

    arrays: object  # moola_core.data.labeled.ModelArrays
    train: np.ndarray  # int indexes into arrays
    val: np.ndarray
    test: np.ndarray
    fingerprint: str  # sha256 of the windows, labels and spans the run saw
    # overlap group per window (windows that share bars have the same id): the bootstrap
    # resamples groups, not windows, so an augmented copy never counts as independent evidence
    groups: np.ndarray | None = None
    # pattern-free windows per split (data.negative_share): {"train"|"val"|"test": {"x",
    # "valid"}}; None without. They never enter the labeled metrics or the baselines.
    negatives: dict | None = None

    def part(self, split: str) -> dict[str, np.ndarray]:
        """{"x","valid","label","start","end"} of one split ("train", "val" or "test")."""
        index = getattr(self, split)
        a = self.arrays
        return {
            "x": a.x[index],
            "valid": a.valid[index],
            "label": a.label[index],
            "start": a.start[index],
            "end": a.end[index],
        }

    def fit_baselines(self) -> dict:
        """Every simple baseline fitted on the train split, stopping on val -> {name: fitted}."""
        from moola_core.baselines import fit_baselines

        train = self.part("train")
        return fit_baselines(
            train["x"],
            train["valid"],
            train["label"],
            train["start"],
            train["end"],
            val=self.part("val"),
        )

    def truth(self, split: str) -> dict[str, np.ndarray]:
        """{"label","start","end","group"} of one split (what metrics.evaluate scores against)."""
        index = getattr(self, split)
        a = self.arrays
        groups = self.groups if self.groups is not None else np.arange(len(a.label))
        return {
            "label": a.label[index],
            "start": a.start[index],
            "end": a.end[index],
            "group": groups[index],
        }

    def window_ids(self, split: str) -> list[str]:
        return [self.arrays.window_id[i] for i in getattr(self, split)]


NEGATIVE_SEED_BASE = 7100  # pattern-free markets: 7100 + 10 * data_seed + split (1, 2, 3)


def load_negatives(config: TrainConfig, counts: dict[str, int]) -> dict | None:
    """Pattern-free windows for each split so that they make `data.negative_share` of it:
    one synthetic market of the run's difficulty per split, seeded apart from the labeled set
    and from each other (no window is shared across splits)."""
    share = config.data.negative_share
    if share <= 0:
        return None
    from moola_core.data import synthetic

    out = {}
    for i, split in enumerate(("train", "val", "test"), start=1):
        n = max(1, int(round(counts[split] * share / (1.0 - share))))
        seed = NEGATIVE_SEED_BASE + 10 * config.data.data_seed + i
        x, valid = synthetic.make_pattern_free_windows(n, seed, config.data.difficulty)
        out[split] = {"x": x, "valid": valid}
    return out


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


def prepare_data(config: TrainConfig, frame=None) -> RunData:
    """Load (or take) the labeled set, compute model arrays and split it without leakage."""
    from moola_core.data import labeled, splits

    frame = load_labeled_frame(config) if frame is None else frame
    arrays = labeled.to_model_arrays(frame)
    split = splits.split_labeled(
        frame,
        fractions=(
            1.0 - config.split.val_share - config.split.test_share,
            config.split.val_share,
            config.split.test_share,
        ),
        embargo_minutes=config.split.embargo_minutes,
    )
    position = {window_id: i for i, window_id in enumerate(arrays.window_id)}
    indexes = {
        name: np.array(sorted(position[w] for w in getattr(split, name)), dtype=np.int64)
        for name in ("train", "val", "test")
    }
    for name, index in indexes.items():
        if len(index) == 0:
            raise MoolaError(f"the {name} split is empty; use more windows or change split shares.")
    frame = frame.reset_index(drop=True)
    row_group = splits.overlap_groups(len(frame), labeled.sharing_pairs(frame).keys())
    by_id = dict(zip((str(w) for w in frame["window_id"]), row_group, strict=True))
    groups = np.array([by_id[w] for w in arrays.window_id], dtype=np.int64)
    # the fingerprint names the labeled windows (what val and test scores are computed on), so
    # runs with and without pattern-free windows compare on the same windows; the negatives
    # carry their own fingerprint (negatives_fingerprint, in metrics.json)
    negatives = load_negatives(config, {k: len(v) for k, v in indexes.items()})
    return RunData(
        arrays,
        indexes["train"],
        indexes["val"],
        indexes["test"],
        fingerprint(arrays),
        groups,
        negatives,
    )


def negatives_fingerprint(negatives: dict | None) -> str | None:
    """sha256 over the pattern-free windows of every split (None without them)."""
    if not negatives:
        return None
    digest = hashlib.sha256()
    for split in ("train", "val", "test"):
        digest.update(np.ascontiguousarray(negatives[split]["x"]).tobytes())
        digest.update(np.ascontiguousarray(negatives[split]["valid"]).tobytes())
    return "sha256:" + digest.hexdigest()

"""Time-ordered train/val/test splits that never leak a bar, and the report that proves it.

Windows that share bars (an augmented copy and its source, two overlapping cuts) form one group,
and a group never straddles a split. Groups are found two ways: by time (`start_ts`/`end_ts`
intervals intersect) and by content (the windows hold at least labeled.SHARED_BARS_MIN identical
[o,h,l,c] rows), so sets without time columns are still checked. The splits follow time: every
train group ends before every val group starts, and val before test. After each boundary an
embargo drops the groups that start within `embargo_minutes` of the previous split's last bar
(serial correlation across a boundary leaks too); they are listed as `purged`.

Boundaries are chosen among the group edges to match the requested fractions and, where the
counts allow (>= 3 windows of a label), to give every split every label in about the overall
proportion.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from moola_core.data.labeled import has_time, normalize_columns, sharing_pairs
from moola_core.errors import MoolaError, ValidationError
from moola_core.spec import LABELS

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Window ids per split, those purged by the embargo, and where the boundaries fell."""

    train: list[str]
    val: list[str]
    test: list[str]
    purged: list[str] = field(default_factory=list)
    boundaries: list[str] = field(default_factory=list)  # ISO times (or row numbers) of cuts
    n_groups: int = 0

    def assignment(self) -> dict[str, str]:
        """window_id -> split name (purged windows are absent)."""
        return {w: name for name in SPLIT_NAMES for w in getattr(self, name)}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LeakagePair:
    """Two windows in different splits that share bars."""

    window_a: str
    split_a: str
    window_b: str
    split_b: str
    reason: str  # "time overlap" and/or "N identical bars"


@dataclass(frozen=True)
class LeakageReport:
    """Cross-split pairs that share bars, embargo breaches and label counts per split."""

    pairs: list[LeakagePair]
    embargo_breaches: list[str]
    label_counts: dict[str, dict[str, int]]
    time_checked: bool  # False when the set has no start_ts/end_ts (content check only)

    @property
    def ok(self) -> bool:
        return not self.pairs and not self.embargo_breaches

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def raise_if_leaky(self) -> None:
        """Raise ValidationError naming the first leaking pairs when the report is not ok."""
        if self.ok:
            return
        shown = "; ".join(
            f"{p.window_a} ({p.split_a}) ~ {p.window_b} ({p.split_b}): {p.reason}"
            for p in self.pairs[:5]
        )
        if self.embargo_breaches:
            shown = "; ".join(filter(None, [shown, *self.embargo_breaches[:5]]))
        raise ValidationError(
            f"the split leaks: {len(self.pairs)} cross-split pair(s) share bars and "
            f"{len(self.embargo_breaches)} embargo breach(es) ({shown}); re-split with "
            "split_labeled so that sharing windows stay together.",
            [asdict(p) for p in self.pairs],
        )


def overlap_groups(n: int, pairs) -> np.ndarray:
    """Group id per row: rows linked by a (a, b) pair share an id, transitively (union-find)."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def split_labeled(
    df: pd.DataFrame,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    embargo_minutes: float = 105.0,
) -> Split:
    """Split a labeled set by time into train/val/test; sharing windows stay on one side.

    Without start_ts/end_ts the row order is taken as time order and no embargo applies.
    """
    df = normalize_columns(df).reset_index(drop=True)
    n = len(df)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1):
        raise MoolaError(f"split fractions {fractions} must be three numbers >= 0 summing to 1.")
    if n < 3:
        raise MoolaError(f"a labeled set of {n} window(s) cannot be split three ways; add windows.")
    timed = has_time(df)
    if timed:
        start = pd.to_datetime(df["start_ts"], utc=True).to_numpy()
        end = pd.to_datetime(df["end_ts"], utc=True).to_numpy()
    else:
        start = end = np.arange(n)
    group = overlap_groups(n, sharing_pairs(df).keys())

    # Groups in time order, each with its first start, last end, size and label counts.
    gids = np.unique(group)
    g_start = np.array([start[group == g].min() for g in gids])
    g_end = np.array([end[group == g].max() for g in gids])
    order = np.argsort(g_start, kind="stable")
    gids, g_start, g_end = gids[order], g_start[order], g_end[order]
    labels = df["label"].to_numpy()
    counts = np.array([[np.sum((group == g) & (labels == lab)) for lab in LABELS] for g in gids])
    i, j = _choose_boundaries(counts, np.asarray(fractions, dtype=np.float64))

    split_of_group = np.zeros(len(gids), dtype=np.int64)
    split_of_group[i:j] = 1
    split_of_group[j:] = 2
    purged_groups = set()
    if timed and embargo_minutes > 0:
        embargo = np.timedelta64(int(embargo_minutes * 60), "s")
        for k in (i, j):
            if 0 < k < len(gids):
                last_end = g_end[:k].max()
                for g in range(k, len(gids)):
                    if g_start[g] < last_end + embargo and split_of_group[g] == split_of_group[k]:
                        purged_groups.add(g)
    ids = df["window_id"].astype(str).to_numpy()
    out: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    purged: list[str] = []
    row_split = {}
    for gi, g in enumerate(gids):
        rows = np.flatnonzero(group == g)
        if gi in purged_groups:
            purged.extend(ids[rows])
            continue
        for r in rows:
            row_split[int(r)] = SPLIT_NAMES[split_of_group[gi]]
    for r in sorted(row_split, key=lambda r: (start[r], r)):
        out[row_split[r]].append(str(ids[r]))
    boundaries = [
        str(pd.Timestamp(g_start[k]).isoformat()) if timed else str(int(g_start[k]))
        for k in (i, j)
        if k < len(gids)
    ]
    return Split(out["train"], out["val"], out["test"], purged, boundaries, int(len(gids)))


def _choose_boundaries(counts: np.ndarray, fractions: np.ndarray) -> tuple[int, int]:
    """Group indexes (i, j): train = [0, i), val = [i, j), test = [j, G).

    Minimises the gap to the target fractions plus the gap to the overall label mix; where a
    label has >= 3 windows, every split must hold at least one of it (if any cut allows).
    """
    g = len(counts)
    cum = np.vstack([np.zeros((1, counts.shape[1])), np.cumsum(counts, axis=0)])  # [G+1, L]
    total = cum[-1]
    n = total.sum()
    ii, jj = np.meshgrid(np.arange(g + 1), np.arange(g + 1), indexing="ij")
    ok = ii <= jj
    parts = [cum[ii], cum[jj] - cum[ii], total - cum[jj]]  # each [G+1, G+1, L]
    sizes = [p.sum(-1) for p in parts]
    mix = total / max(n, 1)
    cost = np.zeros(ii.shape)
    feasible = ok.copy()
    for p, s, f in zip(parts, sizes, fractions, strict=True):
        cost += np.abs(s / n - f)
        with np.errstate(invalid="ignore", divide="ignore"):
            cost += 0.05 * np.where(s > 0, np.abs(p / s[..., None] - mix).sum(-1), 1.0)
        if f > 0:
            feasible &= s > 0
            for lab in range(counts.shape[1]):
                if total[lab] >= 3:
                    feasible &= p[..., lab] > 0
    if not feasible.any():  # the counts do not allow stratification: sizes only
        feasible = ok & np.all(
            [(s > 0) | (f == 0) for s, f in zip(sizes, fractions, strict=True)], axis=0
        )
    if not feasible.any():
        feasible = ok
    cost = np.where(feasible, cost, np.inf)
    i, j = np.unravel_index(int(np.argmin(cost)), cost.shape)
    return int(i), int(j)


def leakage_report(df: pd.DataFrame, split: Split, embargo_minutes: float = 0.0) -> LeakageReport:
    """Every cross-split pair of windows that share bars (and embargo breaches if asked).

    Check a split you made elsewhere by building a Split from its id lists.
    """
    df = normalize_columns(df).reset_index(drop=True)
    where = split.assignment()
    ids = df["window_id"].astype(str).tolist()
    unknown = [w for w in where if w not in set(ids)]
    if unknown:
        raise MoolaError(
            f"the split names windows absent from the set (e.g. {unknown[0]!r}); "
            "pass the labeled set the split was made from."
        )
    pairs = []
    for (a, b), reason in sharing_pairs(df).items():
        sa, sb = where.get(ids[a]), where.get(ids[b])
        if sa and sb and sa != sb:
            pairs.append(LeakagePair(ids[a], sa, ids[b], sb, reason))
    breaches = []
    if embargo_minutes > 0 and has_time(df):
        start = pd.to_datetime(df["start_ts"], utc=True)
        end = pd.to_datetime(df["end_ts"], utc=True)
        gap = pd.Timedelta(minutes=embargo_minutes)
        for earlier, later in (("train", "val"), ("val", "test"), ("train", "test")):
            e_rows = [r for r, w in enumerate(ids) if where.get(w) == earlier]
            l_rows = [r for r, w in enumerate(ids) if where.get(w) == later]
            if not e_rows or not l_rows:
                continue
            last_end = end.iloc[e_rows].max()
            for r in l_rows:
                if start.iloc[r] < last_end + gap:
                    breaches.append(
                        f"{ids[r]} ({later}) starts within {embargo_minutes:g} min of the "
                        f"{earlier} split's last bar"
                    )
    label_counts = {
        name: {
            lab: int(
                sum(
                    1
                    for r, w in enumerate(ids)
                    if where.get(w) == name and df["label"].iloc[r] == lab
                )
            )
            for lab in LABELS
        }
        for name in SPLIT_NAMES
    }
    return LeakageReport(pairs, breaches, label_counts, has_time(df))


def check_split(df: pd.DataFrame, split: Split, embargo_minutes: float = 0.0) -> LeakageReport:
    """leakage_report, raising ValidationError when it finds any leak."""
    report = leakage_report(df, split, embargo_minutes)
    report.raise_if_leaky()
    return report

"""Labeled sets in the original Moola schema, their parquet form, validation and model arrays.

One row per window:

- `window_id` (str, unique), `label` (one of spec.LABELS),
- `expansion_start`, `expansion_end`: inclusive bar indexes in [0, 104], start <= end
  (`ptr_start`/`ptr_end` are accepted as aliases and renamed on read),
- `features`: the window's 105 bars as rows of [open, high, low, close],
- optional `start_ts`, `end_ts` (UTC): the first and last bar's time; they place windows in
  time for splits and reveal windows that share bars.

The model never sees raw prices: `to_model_arrays` computes the 11 features per window from its
OHLC rows. Pickled cells are refused: unpickling runs arbitrary code, so it is never done
silently (see `convert_pickled`).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from moola_core.data.features import compute_features
from moola_core.data.problems import Problem, raise_if_errors
from moola_core.errors import MoolaError, ValidationError
from moola_core.spec import LABELS, N_FEATURES, WINDOW_LEN

REQUIRED_COLUMNS = ("window_id", "label", "expansion_start", "expansion_end", "features")
TIME_COLUMNS = ("start_ts", "end_ts")
ALIASES = {"ptr_start": "expansion_start", "ptr_end": "expansion_end"}
OHLC_SHAPE = (WINDOW_LEN, 4)
SHARED_BARS_MIN = 3  # identical [o,h,l,c] rows that make two windows "share bars"
PICKLE_HINT = (
    "pickled cells can run code when loaded, so Moola refuses them; if you trust the file, "
    "convert it once with `invoke data.convert-pickled --src FILE --dst NEW.parquet --trust` "
    "and use the new file"
)


@dataclass(frozen=True)
class ModelArrays:
    """What models train on: features per window and the targets."""

    x: np.ndarray  # float32 [N, 105, 11]
    valid: np.ndarray  # bool [N, 105]: False on warm-up bars (x is 0 there)
    label: np.ndarray  # int64 [N]: index into spec.LABELS
    start: np.ndarray  # int64 [N]: expansion_start
    end: np.ndarray  # int64 [N]: expansion_end
    window_id: list[str]


def normalize_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Rename `ptr_start`/`ptr_end` to the canonical names (only where no canonical column)."""
    renames = {a: c for a, c in ALIASES.items() if a in df.columns and c not in df.columns}
    return df.rename(columns=renames) if renames else df


def is_pickled_cell(cell) -> bool:
    """True for raw bytes that look like a pickle stream (protocol 2+ starts with 0x80)."""
    return isinstance(cell, (bytes, bytearray, memoryview)) and bytes(cell[:1]) == b"\x80"


def as_ohlc(cell) -> np.ndarray | None:
    """A features cell as float64 [105, 4], or None when it cannot be read as a 2-D grid.

    Accepts a 2-D array, a list of rows, or the array-of-arrays that parquet reading yields.
    The shape is not checked here (validation reports it).
    """
    if cell is None or isinstance(cell, (bytes, bytearray, memoryview, str)):
        return None
    try:
        if isinstance(cell, np.ndarray) and cell.dtype != object:
            arr = cell.astype(np.float64, copy=False)
        else:
            arr = np.array([np.asarray(r, dtype=np.float64) for r in cell], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.ndim == 2 else None


def validate_labeled(df: pd.DataFrame, strict_overlap: bool = False) -> list[Problem]:
    """Every problem of a labeled set, with row and column; nothing is dropped or fixed.

    Errors: missing columns, pickled cells, empty or duplicate ids, unknown labels, spans out
    of [0, 104] or start > end, features not 105 x [o,h,l,c], NaN/Inf or non-positive prices,
    high/low not containing open/close, identical windows under two ids. Windows that share
    bars (by start_ts/end_ts) are warnings, errors with `strict_overlap`: augmented copies
    legitimately overlap, and the splitter keeps them on one side.
    """
    problems: list[Problem] = []
    df = normalize_columns(df)
    for alias, canon in ALIASES.items():
        if alias in df.columns and canon in df.columns:
            problems.append(
                Problem(None, alias, f"both {alias} and {canon} are present; keep one of them")
            )
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    for col in missing:
        problems.append(Problem(None, col, "required column is missing"))

    if "window_id" in df.columns:
        ids = df["window_id"]
        for i, wid in enumerate(ids):
            if not isinstance(wid, str) or not wid.strip():
                problems.append(Problem(i, "window_id", f"window id {wid!r} is empty or not text"))
        dup = ids.duplicated(keep=False).to_numpy()
        for i in np.flatnonzero(dup):
            problems.append(Problem(int(i), "window_id", f"duplicate window id {ids.iloc[i]!r}"))

    if "label" in df.columns:
        for i, label in enumerate(df["label"]):
            if label not in LABELS:
                problems.append(
                    Problem(i, "label", f"unknown label {label!r}; expected one of {list(LABELS)}")
                )

    spans_ok = "expansion_start" in df.columns and "expansion_end" in df.columns
    for col in ("expansion_start", "expansion_end"):
        if col not in df.columns:
            continue
        for i, value in enumerate(df[col]):
            if not _is_int(value):
                problems.append(Problem(i, col, f"{value!r} is not an integer bar index"))
            elif not 0 <= int(value) <= WINDOW_LEN - 1:
                problems.append(Problem(i, col, f"{int(value)} is outside [0, {WINDOW_LEN - 1}]"))
    if spans_ok:
        for i, (s, e) in enumerate(zip(df["expansion_start"], df["expansion_end"], strict=True)):
            if _is_int(s) and _is_int(e) and int(s) > int(e):
                problems.append(
                    Problem(i, "expansion_start", f"start {int(s)} is after end {int(e)}")
                )

    if "features" in df.columns:
        problems.extend(_validate_features(df["features"]))

    if "window_id" in df.columns and "features" in df.columns:
        problems.extend(_sharing_problems(df, strict_overlap))
    return problems


def _sharing_problems(df: pd.DataFrame, strict: bool) -> list[Problem]:
    """Windows that share bars: by time when start_ts/end_ts exist, else by identical bars."""
    severity = "error" if strict else "warning"
    column = "start_ts" if all(c in df.columns for c in TIME_COLUMNS) else "features"
    ids = df["window_id"].tolist()
    return [
        Problem(
            b,
            column,
            f"window {ids[b]!r} shares bars with row {a} ({ids[a]!r}; {why}); "
            "splits keep them together",
            severity,
        )
        for (a, b), why in sharing_pairs(df).items()
    ]


def _is_int(value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    return isinstance(value, (float, np.floating)) and np.isfinite(value) and value == int(value)


def _validate_features(cells: pd.Series) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[bytes, int] = {}
    for i, cell in enumerate(cells):
        if is_pickled_cell(cell):
            problems.append(Problem(i, "features", f"cell holds pickled bytes; {PICKLE_HINT}"))
            continue
        arr = as_ohlc(cell)
        if arr is None:
            problems.append(
                Problem(
                    i, "features", f"expected {WINDOW_LEN} rows of [o,h,l,c], got {_kind(cell)}"
                )
            )
            continue
        if arr.shape != OHLC_SHAPE:
            problems.append(
                Problem(
                    i, "features", f"shape {arr.shape}, expected {OHLC_SHAPE} (rows of o,h,l,c)"
                )
            )
            continue
        bad = ~np.isfinite(arr)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            problems.append(
                Problem(
                    i,
                    "features",
                    f"{int(bad.sum())} NaN/Inf values (first at bar {r}, {'ohlc'[c]})",
                )
            )
            continue
        if (arr <= 0).any():
            r = int(np.argwhere(arr <= 0)[0][0])
            problems.append(Problem(i, "features", f"non-positive price at bar {r}"))
        o, h, lo, c = arr.T
        broken = (h < np.maximum(o, c)) | (lo > np.minimum(o, c))
        if broken.any():
            problems.append(
                Problem(
                    i,
                    "features",
                    f"high/low do not contain open/close at {int(broken.sum())} "
                    f"bar(s) (first at bar {int(np.argmax(broken))})",
                )
            )
        key = arr.tobytes()
        if key in seen:
            problems.append(
                Problem(i, "features", f"same bars as row {seen[key]} under another window id")
            )
        else:
            seen[key] = i
    return problems


def _kind(cell) -> str:
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(cell, np.ndarray):
        return f"an array of shape {cell.shape}"
    return type(cell).__name__


def overlapping_pairs(df: pd.DataFrame) -> list[tuple[int, int]]:
    """Row pairs (a, b) whose [start_ts, end_ts] intervals intersect (a before b in time)."""
    start = pd.to_datetime(df["start_ts"], utc=True).to_numpy()
    end = pd.to_datetime(df["end_ts"], utc=True).to_numpy()
    order = np.argsort(start, kind="stable")
    pairs = []
    active: list[int] = []  # rows whose end is still at or after the current start
    for b in order:
        active = [a for a in active if end[a] >= start[b]]
        pairs.extend((int(a), int(b)) for a in active)
        active.append(int(b))
    return pairs


def check_labeled(df: pd.DataFrame, what: str = "labeled set") -> pd.DataFrame:
    """Normalize and validate; raise ValidationError listing the problems when any is an error."""
    df = normalize_columns(df)
    problems = validate_labeled(df)
    raise_if_errors(problems, what)
    return df


def read_labeled(path: str | Path, validate: bool = True) -> pd.DataFrame:
    """Read a labeled parquet; features become float64 [105, 4] arrays.

    With `validate` (default) a file with errors raises ValidationError listing them. Pickled
    cells are refused either way.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise MoolaError(
            f"labeled set {path} does not exist; check the path or generate one "
            "with `invoke data.market`."
        )
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise MoolaError(f"cannot read {path} as parquet ({exc}); pass a parquet file.") from None
    field = table.schema.field("features") if "features" in table.column_names else None
    if field is not None and (
        pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type)
    ):
        raise ValidationError(f"{path}: column features holds pickled bytes; {PICKLE_HINT}.")
    df = normalize_columns(table.to_pandas())
    if "features" in df.columns:
        df["features"] = [
            arr if (arr := as_ohlc(cell)) is not None else cell for cell in df["features"]
        ]
    if validate:
        check_labeled(df, str(path))
    return df


def write_labeled(df: pd.DataFrame, path: str | Path) -> Path:
    """Validate and write a labeled set to parquet (features as lists of [o,h,l,c] rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = check_labeled(df)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = df.copy()
    flat = np.stack([as_ohlc(c) for c in out["features"]]).reshape(-1)  # [N*105*4]
    rows = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float64()), 4)
    offsets = pa.array(np.arange(len(out) + 1, dtype=np.int32) * WINDOW_LEN, pa.int32())
    features = pa.ListArray.from_arrays(offsets, rows)
    table = pa.Table.from_pandas(out.drop(columns=["features"]), preserve_index=False)
    table = table.append_column("features", features)
    pq.write_table(table, path)
    return path


def convert_pickled(src: str | Path, dst: str | Path, trust: bool = False) -> Path:
    """Unpickle the features cells of a file you trust and write it in the safe list form.

    Refuses unless `trust` is True: unpickling can run code hidden in the file.
    """
    if not trust:
        raise MoolaError(
            f"converting {src} unpickles its cells, which can run code; pass "
            "--trust only for a file from a source you trust."
        )
    df = pd.read_parquet(src)
    df = normalize_columns(df)
    df["features"] = [
        np.asarray(pickle.loads(bytes(c)), dtype=np.float64) if is_pickled_cell(c) else c
        for c in df["features"]
    ]
    return write_labeled(df, dst)


def to_model_arrays(df: pd.DataFrame) -> ModelArrays:
    """Validate the set and compute the 11 features per window from its 105 OHLC rows."""
    df = check_labeled(df)
    n = len(df)
    x = np.zeros((n, WINDOW_LEN, N_FEATURES), dtype=np.float32)
    valid = np.zeros((n, WINDOW_LEN), dtype=bool)
    for i, cell in enumerate(df["features"]):
        ohlc = as_ohlc(cell)  # [105, 4]
        feats = compute_features(ohlc[:, 0], ohlc[:, 1], ohlc[:, 2], ohlc[:, 3])
        x[i] = feats.values
        valid[i] = feats.valid
    label = np.array([LABELS.index(v) for v in df["label"]], dtype=np.int64)
    return ModelArrays(
        x=x,
        valid=valid,
        label=label,
        start=df["expansion_start"].to_numpy().astype(np.int64),
        end=df["expansion_end"].to_numpy().astype(np.int64),
        window_id=[str(w) for w in df["window_id"]],
    )


# --- windows that share bars (validation warns; splits keep them on one side) ---------------


def sharing_pairs(df: pd.DataFrame) -> dict[tuple[int, int], str]:
    """Row pairs (a < b) that share bars, with the reason (time overlap / identical bars)."""
    pairs: dict[tuple[int, int], list[str]] = {}
    if has_time(df):
        for a, b in overlapping_pairs(df):
            pairs.setdefault((min(a, b), max(a, b)), []).append("time overlap")
    # content: map each bar row's bytes to the windows holding it
    holders: dict[bytes, set[int]] = {}
    for i, cell in enumerate(df["features"]):
        arr = as_ohlc(cell)
        if arr is None:
            continue
        for row in np.ascontiguousarray(arr, dtype=np.float64):
            holders.setdefault(row.tobytes(), set()).add(i)
    shared: dict[tuple[int, int], int] = {}
    for rows in holders.values():
        if len(rows) < 2:
            continue
        ordered = sorted(rows)
        for x, a in enumerate(ordered):
            for b in ordered[x + 1 :]:
                shared[(a, b)] = shared.get((a, b), 0) + 1
    for key, count in shared.items():
        if count >= SHARED_BARS_MIN:
            pairs.setdefault(key, []).append(f"{count} identical bars")
    return {k: " and ".join(v) for k, v in sorted(pairs.items())}


def has_time(df: pd.DataFrame) -> bool:
    """True when the set has bar times (start_ts, end_ts)."""
    return "start_ts" in df.columns and "end_ts" in df.columns

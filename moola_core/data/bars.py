"""1-minute OHLC(V) bars: load from parquet or CSV, validate, split into gap-free sessions.

A bars frame has `timestamp` (UTC), `open`, `high`, `low`, `close` and optionally `volume`.
Validation reports every problem with its row and column and changes nothing: a bad bar is
never dropped silently, the caller decides.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from moola_core.data.problems import Problem, raise_if_errors
from moola_core.errors import MoolaError

PRICE_COLUMNS = ("open", "high", "low", "close")
BAR_COLUMNS = ("timestamp", *PRICE_COLUMNS)
TIMESTAMP_ALIASES = ("timestamp", "time", "datetime", "date", "ts")


def normalize_bars(df: pd.DataFrame) -> pd.DataFrame:
    """Lower-case column names, find the timestamp column, parse it as UTC.

    Naive timestamps are taken to be UTC. Unparsable ones become NaT (validation reports them).
    A timestamp index (as yfinance-style frames have) is moved into a column.
    """
    df = df.rename(columns={c: str(c).strip().lower() for c in df.columns})
    if not any(a in df.columns for a in TIMESTAMP_ALIASES) and isinstance(
        df.index, pd.DatetimeIndex
    ):
        df = df.rename_axis("timestamp").reset_index()
    if "timestamp" not in df.columns:
        for alias in TIMESTAMP_ALIASES[1:]:
            if alias in df.columns:
                df = df.rename(columns={alias: "timestamp"})
                break
    if "timestamp" in df.columns:
        ts = pd.to_datetime(df["timestamp"], errors="coerce", utc=True)
        df = df.assign(timestamp=ts)
    keep = [c for c in (*BAR_COLUMNS, "volume") if c in df.columns]
    return df[keep].reset_index(drop=True)


def validate_bars(df: pd.DataFrame) -> list[Problem]:
    """Every problem of a bars frame, with row and column; nothing is dropped or fixed.

    Checks: required columns, parseable and strictly increasing timestamps (duplicates and
    out-of-order rows named separately), finite positive prices, high >= max(open, close),
    low <= min(open, close), finite non-negative volume.
    """
    problems: list[Problem] = []
    for col in BAR_COLUMNS:
        if col not in df.columns:
            problems.append(Problem(None, col, "required column is missing"))
    if "timestamp" in df.columns:
        ts = pd.to_datetime(df["timestamp"], errors="coerce", utc=True)
        nat = ts.isna().to_numpy()
        for i in np.flatnonzero(nat):
            problems.append(Problem(int(i), "timestamp", "timestamp is missing or unparsable"))
        ns = ts.to_numpy(dtype="datetime64[ns]").astype(np.int64)
        both = ~nat[1:] & ~nat[:-1]
        step = np.diff(ns)
        for i in np.flatnonzero(both & (step == 0)) + 1:
            problems.append(Problem(int(i), "timestamp", f"duplicate timestamp {ts.iloc[i]}"))
        for i in np.flatnonzero(both & (step < 0)) + 1:
            problems.append(
                Problem(
                    int(i),
                    "timestamp",
                    f"{ts.iloc[i]} is earlier than the row before; sort by time",
                )
            )
    prices = {}
    for col in PRICE_COLUMNS:
        if col not in df.columns:
            continue
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        prices[col] = values
        for i in np.flatnonzero(~np.isfinite(values)):
            problems.append(Problem(int(i), col, f"price {df[col].iloc[i]} is not a finite number"))
        for i in np.flatnonzero(np.isfinite(values) & (values <= 0)):
            problems.append(Problem(int(i), col, f"price {values[i]} is not positive"))
    if len(prices) == 4:
        o, h, lo, c = (prices[k] for k in PRICE_COLUMNS)
        with np.errstate(invalid="ignore"):
            for i in np.flatnonzero(h < np.maximum(o, c)):
                problems.append(
                    Problem(
                        int(i), "high", f"high {h[i]} is below max(open, close) {max(o[i], c[i])}"
                    )
                )
            for i in np.flatnonzero(lo > np.minimum(o, c)):
                problems.append(
                    Problem(
                        int(i), "low", f"low {lo[i]} is above min(open, close) {min(o[i], c[i])}"
                    )
                )
    if "volume" in df.columns:
        vol = pd.to_numeric(df["volume"], errors="coerce").to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            for i in np.flatnonzero(~np.isfinite(vol) | (vol < 0)):
                problems.append(Problem(int(i), "volume", f"volume {vol[i]} is not a count >= 0"))
    problems.sort(key=lambda p: (-1 if p.row is None else p.row, p.column or ""))
    return problems


def check_bars(df: pd.DataFrame, what: str = "bars") -> pd.DataFrame:
    """Normalize and validate; raise ValidationError listing the problems when there are any."""
    df = normalize_bars(df)
    problems = validate_bars(df)
    raise_if_errors(problems, what)
    return df


def load_bars(path: str | Path, validate: bool = True) -> pd.DataFrame:
    """Read bars from .parquet or .csv (timestamp, open, high, low, close[, volume]), UTC.

    With `validate` (default) a file with problems raises ValidationError listing them all.
    """
    path = Path(path)
    if not path.exists():
        raise MoolaError(f"bars file {path} does not exist; check the path.")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        elif suffix in (".csv", ".txt") or path.name.lower().endswith(".csv.gz"):
            df = pd.read_csv(path)
        else:
            raise MoolaError(f"bars file {path} is neither .parquet nor .csv; convert it to one.")
    except (OSError, ValueError) as exc:
        raise MoolaError(f"cannot read bars from {path} ({exc}); check the file format.") from None
    df = normalize_bars(df)
    if validate:
        check_bars(df, str(path))
    return df


def session_bounds(timestamps, max_gap_minutes: float) -> np.ndarray:
    """[start, end) row ranges of gap-free runs: a new run starts after a gap > max_gap_minutes.

    Returns int64 [S, 2]. A 1-minute stream has steps of 1 minute; an overnight break is a gap.
    """
    ts = pd.DatetimeIndex(pd.to_datetime(timestamps, utc=True))
    n = len(ts)
    if n == 0:
        return np.zeros((0, 2), dtype=np.int64)
    step_min = np.diff(ts.as_unit("s").asi8) / 60.0
    breaks = np.flatnonzero(step_min > max_gap_minutes) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [n]))
    return np.stack([starts, ends], axis=1).astype(np.int64)

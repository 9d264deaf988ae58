"""Captured requests: read the server's capture files, index them into columns, cache them locally.

The model server appends one JSON line per answered window to
`captures/<release>/YYYYmmddTHHMMSSZ-<seq>.jsonl` in the host's workspace (the contract is in
docs/serving.md and /work/coord/README.md). `invoke ab`, `invoke monitor` and `invoke report`
read the same lines through this module:

- `parse_lines(data)` turns capture bytes into a `CaptureTable` (numpy columns, one row per
  line; a torn last line is left for the next pull),
- `pull_captures(session, host, cache)` (moola_ops/captures_pull.py) copies new bytes from the host over SFTP, incrementally
  (only what grew since the last pull) and checksummed (the host's sha256 of the file prefix must
  equal the local copy's, or the file is fetched again from the start),
- `load_table(cache, host, since=...)` concatenates the cached, indexed columns: the A/B
  analysis of 100,000 request pairs starts from here without parsing JSON again.

Light at import (cron path): numpy is imported inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moola_core.errors import MoolaError
from moola_core.spec import LABELS, WINDOW_LEN

DEFAULT_CACHE = Path(".moola/captures")
CAPTURE_NAME = re.compile(r"^\d{8}T\d{6}Z-\d+\.jsonl$")
ROLES = ("live", "shadow")
# columns of a CaptureTable and their numpy dtypes (strings are fixed-width unicode: no pickle)
COLUMNS = {
    "request_id": "U",
    "index": "int32",
    "window_id": "U",
    "time": "float64",
    "release": "U",
    "role": "int8",  # index into ROLES
    "status": "int16",
    "latency_ms": "float64",
    "batch_size": "int32",
    "label": "int8",  # index into spec.LABELS, -1 when the line has no answer
    "prob": "float32",  # probability of LABELS[1] (the other is 1 - prob)
    "start": "int16",
    "end": "int16",
    "abstain": "bool",
    "has_ohlc": "bool",
}


@dataclass
class CaptureTable:
    """Captured lines as columns (numpy arrays of equal length) plus optional OHLC [n, 105, 4]."""

    columns: dict[str, Any]
    ohlc: Any = None  # float32 [n, 105, 4] (zeros where has_ohlc is False) or None if not loaded
    skipped: int = 0  # lines that were not capture records (damaged, another version)

    def __len__(self) -> int:
        return int(len(self.columns["time"]))

    def __getitem__(self, name: str):
        return self.columns[name]

    def select(self, mask) -> CaptureTable:
        """The rows where `mask` (bool array) is True."""
        cols = {k: v[mask] for k, v in self.columns.items()}
        return CaptureTable(cols, None if self.ohlc is None else self.ohlc[mask], self.skipped)

    @classmethod
    def concat(cls, tables: list[CaptureTable]) -> CaptureTable:
        """One table from several (empty list -> empty table)."""
        import numpy as np

        if not tables:
            return empty_table()
        cols = {}
        for name in COLUMNS:
            parts = [t.columns[name] for t in tables]
            cols[name] = np.concatenate(parts) if parts else np.zeros(0)
        ohlc = None
        if all(t.ohlc is not None for t in tables):
            ohlc = np.concatenate([t.ohlc for t in tables])
        return cls(cols, ohlc, sum(t.skipped for t in tables))


def empty_table() -> CaptureTable:
    """A table with every column and no rows."""
    import numpy as np

    cols = {name: np.zeros(0, dtype=(str if dt == "U" else dt)) for name, dt in COLUMNS.items()}
    return CaptureTable(cols, np.zeros((0, WINDOW_LEN, 4), dtype="float32"))


def _record_row(rec: dict) -> tuple | None:
    """One capture record as a tuple in COLUMNS order, or None when it is not a record."""
    if not isinstance(rec, dict) or rec.get("v") != 1:
        return None
    try:
        role = ROLES.index(rec.get("role", "live"))
        out = rec.get("output")
        label, prob, start, end, abstain = -1, float("nan"), -1, -1, False
        if isinstance(out, dict):
            label = LABELS.index(out["label"])
            probs = out.get("probs") or {}
            prob = float(probs.get(LABELS[1], float("nan")))
            start, end = int(out["start"]), int(out["end"])
            abstain = bool(out.get("abstain", False))
        window_id = rec.get("window_id")
        index = rec.get("index")  # null on an error line (the request failed as a whole)
        return (
            str(rec.get("request_id", "")),
            -1 if index is None else int(index),
            "" if window_id is None else str(window_id),
            float(rec["time"]),
            str(rec.get("release", "")),
            role,
            int(rec["status"]),
            float(rec.get("latency_ms", float("nan"))),
            int(rec.get("batch_size") or 0),
            label,
            prob,
            start,
            end,
            abstain,
            rec.get("ohlc") is not None,
        )
    except (KeyError, ValueError, TypeError):
        return None


def parse_lines(data: bytes, *, with_ohlc: bool = True) -> tuple[CaptureTable, int]:
    """Capture bytes -> (table, bytes consumed). Only whole lines (ending in a newline) are read;
    a line that is not a capture record is counted in `table.skipped`, never fatal."""
    import numpy as np

    end = data.rfind(b"\n") + 1
    rows: list[tuple] = []
    ohlc_rows: list = []
    skipped = 0
    for raw in data[:end].splitlines():
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError:
            skipped += 1
            continue
        row = _record_row(rec)
        if row is None:
            skipped += 1
            continue
        rows.append(row)
        if with_ohlc:
            bars = rec.get("ohlc")
            ohlc_rows.append(bars if _is_window(bars) else None)
    if not rows:
        table = empty_table()
        table.skipped = skipped
        return table, end
    cols = {}
    for i, (name, dtype) in enumerate(COLUMNS.items()):
        values = [r[i] for r in rows]
        cols[name] = np.array(values, dtype=str if dtype == "U" else dtype)
    ohlc = None
    if with_ohlc:
        ohlc = np.zeros((len(rows), WINDOW_LEN, 4), dtype="float32")
        for i, bars in enumerate(ohlc_rows):
            if bars is not None:
                ohlc[i] = bars
        cols["has_ohlc"] = np.array([b is not None for b in ohlc_rows], dtype=bool)
    return CaptureTable(cols, ohlc, skipped), end


def _is_window(bars) -> bool:
    return (
        isinstance(bars, list)
        and len(bars) == WINDOW_LEN
        and all(isinstance(b, list) and len(b) == 4 for b in bars)
    )


# --- the local cache -----------------------------------------------------------------------------
#
# <cache>/<host>/raw/<release>/<file>.jsonl   the bytes copied from the host (append-only)
# <cache>/<host>/index/<release>/<file>.npz   its columns, rebuilt when the raw file grew
# <cache>/<host>/index/<release>/<file>.ohlc.npy  its windows, float32 [n, 105, 4]
# <cache>/<host>/state.json                   per file: size, sha256, indexed size


def host_cache(cache: str | os.PathLike, host: str) -> Path:
    """The cache folder of one host."""
    return Path(cache) / host


def _read_state(folder: Path) -> dict:
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return {"files": {}}


def _write_state(folder: Path, state: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, folder / "state.json")


def index_file(raw: Path, index_dir: Path) -> int:
    """Parse one raw capture file into its .npz columns and .ohlc.npy; rows indexed."""
    import numpy as np

    table, _ = parse_lines(raw.read_bytes())
    index_dir.mkdir(parents=True, exist_ok=True)
    stem = raw.name[: -len(".jsonl")]
    tmp = index_dir / f".{stem}.tmp.npz"
    np.savez(tmp, skipped=np.array(table.skipped), **table.columns)
    os.replace(tmp, index_dir / f"{stem}.npz")
    tmp_ohlc = index_dir / f".{stem}.tmp.npy"
    with open(tmp_ohlc, "wb") as fh:
        np.save(fh, table.ohlc)
    os.replace(tmp_ohlc, index_dir / f"{stem}.ohlc.npy")
    return len(table)


def add_local_file(cache: str | os.PathLike, host: str, release: str, path: str | os.PathLike):
    """Copy a capture file into the cache and index it (the host-less path: tests, benchmarks,
    captures copied by hand)."""
    folder = host_cache(cache, host)
    src = Path(path)
    raw = folder / "raw" / release / src.name
    raw.parent.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    raw.write_bytes(data)
    index_file(raw, folder / "index" / release)
    state = _read_state(folder)
    state["files"][f"{release}/{src.name}"] = {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "indexed": len(data),
    }
    _write_state(folder, state)


def load_table(
    cache: str | os.PathLike,
    host: str,
    *,
    since: float | None = None,
    until: float | None = None,
    releases: list[str] | None = None,
    with_ohlc: bool = False,
) -> CaptureTable:
    """Every cached capture row of `host` (optionally in [since, until) and of `releases`)."""
    import numpy as np

    index_root = host_cache(cache, host) / "index"
    tables = []
    if index_root.is_dir():
        for rel_dir in sorted(p for p in index_root.iterdir() if p.is_dir()):
            if releases and rel_dir.name not in releases:
                continue
            for npz in sorted(rel_dir.glob("*.npz")):
                if npz.name.startswith("."):
                    continue
                with np.load(npz, allow_pickle=False) as data:
                    cols = {name: data[name] for name in COLUMNS}
                    skipped = int(data["skipped"])
                ohlc = None
                if with_ohlc:
                    ohlc = np.load(npz.with_name(npz.name[:-4] + ".ohlc.npy"), mmap_mode="r")
                table = CaptureTable(cols, ohlc, skipped)
                if since is not None or until is not None:
                    t = cols["time"]
                    mask = np.ones(len(t), dtype=bool)
                    if since is not None:
                        mask &= t >= since
                    if until is not None:
                        mask &= t < until
                    table = table.select(mask)
                tables.append(table)
    out = CaptureTable.concat(tables)
    if with_ohlc and out.ohlc is not None:
        out.ohlc = np.asarray(out.ohlc)
    return out


def parse_since(value: str, now: float | None = None) -> float | None:
    """`--since`: '' (everything), a duration ('90m', '6h', '2d', '45s') or an ISO time."""
    value = (value or "").strip()
    if not value:
        return None
    now = time.time() if now is None else now
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", value)
    if m:
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return now - float(m.group(1)) * scale
    from datetime import UTC, datetime

    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise MoolaError(
            f"--since {value!r} is neither a duration (30m, 6h, 2d) nor an ISO time "
            "(2026-11-27T17:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def resolve_host(name: str, inventory=None, inventory_path: str | None = None):
    """The one inventory host named `name` (an Inventory may be passed, as the engine does)."""
    from moola_ops.inventory import load_inventory

    inv = inventory if inventory is not None else load_inventory(inventory_path)
    hosts = inv.resolve(name)
    if len(hosts) != 1:
        raise MoolaError(
            f"--host {name!r} names {len(hosts)} hosts; give one host (captures are per host)"
        )
    return hosts[0]


def __getattr__(name: str):
    """The pull half lives in moola_ops/captures_pull.py; `from moola_ops.captures import
    pull_host` keeps working (imported on first use: no import cycle)."""
    if name in ("PullResult", "pull_captures", "pull_host"):
        from moola_ops import captures_pull

        return getattr(captures_pull, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Captured requests: read the server's capture files, index them into columns, cache them locally.

The model server appends one JSON line per answered window to
`captures/<release>/YYYYmmddTHHMMSSZ-<seq>.jsonl` in the host's workspace (the contract is in
docs/serving.md and /work/coord/README.md). `invoke ab`, `invoke monitor` and `invoke report`
read the same lines through this module:

- `parse_stream(fh)` / `parse_lines(data)` turn capture bytes into a `CaptureTable` (numpy
  columns, one row per line; a torn last line is left for the next pull). Nothing on a host is
  trusted: every field is checked for its type and bounds (`LIMITS`), a line longer than
  MAX_LINE_BYTES is read through in pieces and never held, and a line that fails any check is
  skipped and counted (`table.skipped`, shown by `invoke ab`, `invoke monitor`, the pull), never
  fatal,
- `pull_captures(session, host, cache)` (moola_ops/serving/captures_pull.py) copies new bytes from the host over SFTP, incrementally
  (only what grew since the last pull) and checksummed (the host's sha256 of the file prefix must
  equal the local copy's, or the file is fetched again from the start),
- `load_table(cache, host, since=...)` concatenates the cached, indexed columns: the A/B
  analysis of 100,000 request pairs starts from here without parsing JSON again.

Light at import (cron path): numpy is imported inside the functions.
"""

from __future__ import annotations

import binascii
import hashlib
import io
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moola_core.errors import MoolaError
from moola_core.spec import LABELS, WINDOW_LEN

DEFAULT_CACHE = Path(".moola/captures")
# What a capture line may hold (the server writes far less): a compromised or broken host must
# not be able to make the operator's machine allocate without bound or stop reading captures.
MAX_LINE_BYTES = 64 * 1024  # one window's line is ~5 KB (105 bars of 4 prices and the answer)
MAX_TEXT = 128  # characters of request_id, window_id, release (the server takes ids <= 128)
LIMITS = {
    "index": (0, 65535),  # window in its request (the server takes at most 256)
    "batch_size": (0, 1_000_000),
    "status": (100, 599),
    "time": (0.0, 1e11),  # seconds since 1970
    "latency_ms": (0.0, 1e9),
    "start": (-1, WINDOW_LEN),  # int16 columns
    "end": (-1, WINDOW_LEN),
    "price": (-1e12, 1e12),  # OHLC values, stored as float32
}
INDEX_VERSION = (
    3  # cached columns from this parser; older ones are rebuilt from raw/ (3: ohlc_f32le)
)
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


class BadLine(ValueError):
    """A capture line that fails a check (its reason says which)."""


def _text(value, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable():
        raise BadLine(f"{what} is not text of at most {MAX_TEXT} printable characters")
    return value


def _int(value, what: str) -> int:
    lo, hi = LIMITS[what]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadLine(f"{what} is not a whole number in [{lo}, {hi}]")
    return value


def _num(value, what: str) -> float:
    lo, hi = LIMITS[what]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadLine(f"{what} is not a number")
    value = float(value)
    if not (math.isfinite(value) and lo <= value <= hi):
        raise BadLine(f"{what} is not a finite number in [{lo:g}, {hi:g}]")
    return value


F32LE_BYTES = WINDOW_LEN * 4 * 4  # a binary request's window in `ohlc_f32le`: 1680 bytes


def _window(rec: dict):
    """The line's OHLC window as a float array [105, 4] of finite prices within LIMITS, None
    when the line has none. Two forms: `ohlc`, the bars as JSON lists (a JSON request's), or
    `ohlc_f32le`, base64 of the window's float32 little-endian bytes as a binary request sent
    them. numpy reads either once; text, booleans, objects, ragged bars or a wrong byte count
    do not make a numeric array of that shape."""
    bars, packed = rec.get("ohlc"), rec.get("ohlc_f32le")
    if bars is None and packed is None:
        return None
    import numpy as np

    if bars is not None and packed is not None:
        raise BadLine("a line has both ohlc and ohlc_f32le")
    if packed is not None:
        if not isinstance(packed, str) or len(packed) > 2 * F32LE_BYTES:
            raise BadLine("ohlc_f32le is not base64 text")
        try:
            data = binascii.a2b_base64(packed.encode("ascii"), strict_mode=True)
        except (ValueError, binascii.Error):
            raise BadLine("ohlc_f32le is not base64 text") from None
        if len(data) != F32LE_BYTES:
            raise BadLine(f"ohlc_f32le has {len(data)} bytes, not {F32LE_BYTES}")
        bars = np.frombuffer(data, dtype="<f4").reshape(WINDOW_LEN, 4)
    try:
        arr = np.asarray(bars)
    except (ValueError, TypeError):  # ragged
        raise BadLine(f"ohlc is not {WINDOW_LEN} bars of 4 prices") from None
    if arr.shape != (WINDOW_LEN, 4) or arr.dtype.kind not in "fi":
        raise BadLine(f"ohlc is not {WINDOW_LEN} bars of 4 prices")
    lo, hi = LIMITS["price"]
    if not (np.isfinite(arr).all() and (arr >= lo).all() and (arr <= hi).all()):
        raise BadLine("an ohlc price is not a finite number within bounds")
    return arr


def _record_row(rec) -> tuple:
    """One capture record as a tuple in COLUMNS order; BadLine when any field is off."""
    if not isinstance(rec, dict) or rec.get("v") != 1:
        raise BadLine("not a version-1 capture record")
    role = rec.get("role", "live")
    if role not in ROLES:
        raise BadLine("role is neither live nor shadow")
    out = rec.get("output")
    label, prob, start, end, abstain = -1, float("nan"), -1, -1, False
    if out is not None:
        if not isinstance(out, dict) or out.get("label") not in LABELS:
            raise BadLine("output has no known label")
        label = LABELS.index(out["label"])
        probs = out.get("probs")
        if probs is not None and not isinstance(probs, dict):
            raise BadLine("output probs is not a mapping")
        p = (probs or {}).get(LABELS[1])
        prob = float("nan") if p is None else _prob(p)
        start, end = _int(out.get("start"), "start"), _int(out.get("end"), "end")
        abstain = out.get("abstain", False)
        if not isinstance(abstain, bool):
            raise BadLine("output abstain is not true or false")
    index = rec.get("index")  # null on an error line (the request failed as a whole)
    latency = rec.get("latency_ms")
    return (
        _text(rec.get("request_id"), "request_id"),
        -1 if index is None else _int(index, "index"),
        _text(rec.get("window_id"), "window_id"),
        _num(rec.get("time"), "time"),
        _text(rec.get("release"), "release"),
        ROLES.index(role),
        _int(rec.get("status"), "status"),
        float("nan") if latency is None else _num(latency, "latency_ms"),
        _int(rec.get("batch_size") or 0, "batch_size"),
        label,
        prob,
        start,
        end,
        abstain,
        rec.get("ohlc") is not None or rec.get("ohlc_f32le") is not None,
    )


def _prob(value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadLine("a probability is not a number")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise BadLine("a probability is outside [0, 1]")
    return value


def iter_lines(fh):
    """(line, offset after it) for each whole line of a binary file; a line longer than
    MAX_LINE_BYTES is read through in pieces (never held) and given as None. A last line
    without its newline may still be being written: it is not given, nor counted as read."""
    offset = 0
    while True:
        line = fh.readline(MAX_LINE_BYTES + 1)
        if not line.endswith(b"\n"):
            if len(line) <= MAX_LINE_BYTES:
                return  # the end, or a torn last line left for the next pull
            size = len(line)
            while not line.endswith(b"\n"):
                line = fh.readline(1 << 20)
                if not line:
                    return  # too long and torn: read again when it is whole
                size += len(line)
            offset += size
            yield None, offset
            continue
        offset += len(line)
        yield line, offset


def parse_stream(fh, *, with_ohlc: bool = True) -> tuple[CaptureTable, int]:
    """Capture lines from a binary file object -> (table, bytes consumed). Only whole lines
    are read; a line that is not a capture record within LIMITS is counted in
    `table.skipped`, never fatal."""
    import numpy as np

    rows: list[tuple] = []
    ohlc_rows: list = []
    skipped = consumed = 0
    for raw, end in iter_lines(fh):
        consumed = end
        if raw is None:
            skipped += 1
            continue
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
            row = _record_row(rec)
            bars = _window(rec)  # checked either way: the same lines count
        except (ValueError, RecursionError):  # BadLine, bad JSON, JSON nested too deep
            skipped += 1
            continue
        rows.append(row)
        if with_ohlc:
            ohlc_rows.append(bars)
    if not rows:
        table = empty_table()
        table.skipped = skipped
        return table, consumed
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
    return CaptureTable(cols, ohlc, skipped), consumed


def parse_lines(data: bytes, *, with_ohlc: bool = True) -> tuple[CaptureTable, int]:
    """`parse_stream` over bytes in memory (tests, small inputs)."""
    return parse_stream(io.BytesIO(data), with_ohlc=with_ohlc)


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


def index_file(raw: Path, index_dir: Path) -> tuple[int, int]:
    """Parse one raw capture file (streamed, line by line) into its .npz columns and
    .ohlc.npy, each written whole or not at all; -> (rows indexed, lines skipped)."""
    import numpy as np

    with open(raw, "rb") as fh:
        table, _ = parse_stream(fh)
    index_dir.mkdir(parents=True, exist_ok=True)
    stem = raw.name[: -len(".jsonl")]
    tmp_ohlc = index_dir / f".{stem}.tmp.npy"
    with open(tmp_ohlc, "wb") as fh:
        np.save(fh, table.ohlc)
    os.replace(tmp_ohlc, index_dir / f"{stem}.ohlc.npy")
    tmp = index_dir / f".{stem}.tmp.npz"  # last: a folder with the .npz is a finished index
    np.savez(
        tmp,
        skipped=np.array(table.skipped),
        index_version=np.array(INDEX_VERSION),
        **table.columns,
    )
    os.replace(tmp, index_dir / f"{stem}.npz")
    return len(table), table.skipped


def add_local_file(cache: str | os.PathLike, host: str, release: str, path: str | os.PathLike):
    """Copy a capture file into the cache and index it (the host-less path: tests, benchmarks,
    captures copied by hand)."""
    folder = host_cache(cache, host)
    src = Path(path)
    raw = folder / "raw" / release / src.name
    raw.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(raw, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    index_file(raw, folder / "index" / release)
    size = raw.stat().st_size
    state = _read_state(folder)
    state["files"][f"{release}/{src.name}"] = {
        "size": size,
        "sha256": file_sha256(raw),
        "indexed": size,
    }
    _write_state(folder, state)


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
                cols, skipped = _load_index(npz, host_cache(cache, host) / "raw" / rel_dir.name)
                if cols is None:
                    continue
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


def _load_index(npz: Path, raw_dir: Path) -> tuple[dict | None, int]:
    """One cached index's columns and skipped count. An index an older Moola wrote (its
    columns were not bounded: one 200 KB window_id made every later read allocate gigabytes)
    is rebuilt from the raw file first; one that cannot be read is rebuilt or left out."""
    import zipfile

    import numpy as np

    raw = raw_dir / (npz.name[: -len(".npz")] + ".jsonl")
    for attempt in (0, 1):
        try:
            with np.load(npz, allow_pickle=False) as data:
                current = "index_version" in data.files and int(data["index_version"]) == (
                    INDEX_VERSION
                )
                if current:
                    return {name: data[name] for name in COLUMNS}, int(data["skipped"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass
        if attempt or not raw.is_file():
            return None, 0
        index_file(raw, npz.parent)
    return None, 0


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
    from moola_ops.hosts.inventory import load_inventory

    inv = inventory if inventory is not None else load_inventory(inventory_path)
    hosts = inv.resolve(name)
    if len(hosts) != 1:
        raise MoolaError(
            f"--host {name!r} names {len(hosts)} hosts; give one host (captures are per host)"
        )
    return hosts[0]

"""Windows to review: where they come from, which come first, and which are left out.

Three sources, one shape (`Candidates`):

- a labeled parquet in the original schema: its auto-labels are what the reviewer checks;
- captured live windows, pulled from hosts into the capture cache (moola_ops/serving/captures.py);
- among those, windows where a shadow and the live release disagreed (label, or span IoU
  below 0.5) on the same request.

Order: how much a label would teach the model. Disagreements first (two models, or the model
and an auto-label, contradict each other: one of them is wrong), then the least confident
(the selected run's span confidence times its class probability, lowest first).

Left out: exact duplicates (the same bars twice, e.g. live and shadow copies), and windows that
share bars with one already reviewed or sent for review (by content: at least
`moola_core.data.labeled.SHARED_BARS_MIN` identical [o,h,l,c] rows, compared at float32 precision because
captures index the bars as float32).

numpy/pandas are imported inside the functions (moola_ops stays light at import).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from moola_core.errors import MoolaError
from moola_core.spec import LABELS, WINDOW_LEN

SOURCES = ("disagreement", "labeled", "capture")
DISAGREE_IOU = 0.5  # two spans with less overlap than this are a disagreement
SHARED_ROWS_MIN = 3  # = moola_core.data.labeled.SHARED_BARS_MIN


@dataclass
class Candidates:
    """Windows that could be reviewed, in one batch of columns."""

    ohlc: object  # float64 [n, 105, 4]
    window_id: list[str]
    source: list[str]  # one of SOURCES
    origin: list[dict]  # JSON-able facts per window (host, release, request, answers, auto-label)
    start_ts: list = field(default_factory=list)  # ISO text or None (labeled windows only)
    end_ts: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.window_id)

    def take(self, index) -> Candidates:
        index = [int(i) for i in index]
        return Candidates(
            self.ohlc[index],
            [self.window_id[i] for i in index],
            [self.source[i] for i in index],
            [self.origin[i] for i in index],
            [self.start_ts[i] for i in index],
            [self.end_ts[i] for i in index],
        )

    @staticmethod
    def concat(parts: list[Candidates]) -> Candidates:
        import numpy as np

        parts = [p for p in parts if len(p)]
        if not parts:
            return Candidates(np.zeros((0, WINDOW_LEN, 4)), [], [], [], [], [])
        return Candidates(
            np.concatenate([p.ohlc for p in parts]),
            [w for p in parts for w in p.window_id],
            [s for p in parts for s in p.source],
            [o for p in parts for o in p.origin],
            [t for p in parts for t in p.start_ts],
            [t for p in parts for t in p.end_ts],
        )


def from_labeled(path: str | Path) -> Candidates:
    """The windows of a labeled parquet (validated), with their auto-labels as `origin.auto`."""
    import numpy as np

    from moola_core.data.labeled import as_ohlc, read_labeled

    frame = read_labeled(path)
    ohlc = np.stack([as_ohlc(c) for c in frame["features"]]) if len(frame) else None
    has_time = "start_ts" in frame.columns and "end_ts" in frame.columns
    n = len(frame)
    return Candidates(
        ohlc if ohlc is not None else np.zeros((0, WINDOW_LEN, 4)),
        [str(w) for w in frame["window_id"]],
        ["labeled"] * n,
        [
            {
                "file": str(path),
                "auto": {"label": str(lab), "start": int(s), "end": int(e)},
            }
            for lab, s, e in zip(
                frame["label"], frame["expansion_start"], frame["expansion_end"], strict=True
            )
        ],
        [_iso(t) for t in frame["start_ts"]] if has_time else [None] * n,
        [_iso(t) for t in frame["end_ts"]] if has_time else [None] * n,
    )


def _iso(value) -> str | None:
    import pandas as pd

    if value is None or pd.isna(value):
        return None
    return pd.Timestamp(value).tz_convert("UTC").isoformat()


def from_captures(cache: str | Path, host: str) -> Candidates:
    """Every live window captured on `host` (with its bars); those a shadow answered
    differently on the same request are marked `disagreement`."""
    import numpy as np

    from moola_core.metrics import span_iou
    from moola_ops.serving.captures import load_table

    table = load_table(cache, host, with_ohlc=True)
    if len(table) == 0:
        return Candidates.concat([])
    cols = table.columns
    ok = (cols["status"] == 200) & (cols["label"] >= 0) & cols["has_ohlc"]
    live = np.flatnonzero(ok & (cols["role"] == 0))
    shadow_rows = np.flatnonzero(ok & (cols["role"] == 1))
    shadow = {}
    for r in shadow_rows:  # the newest shadow answer for each (request, window)
        key = (str(cols["request_id"][r]), int(cols["index"][r]))
        if key not in shadow or cols["time"][r] >= cols["time"][shadow[key]]:
            shadow[key] = r
    ohlc = np.asarray(table.ohlc, dtype=np.float64)[live]
    ids, sources, origins = [], [], []
    for r in live:
        request, index = str(cols["request_id"][r]), int(cols["index"][r])
        answer = _answer(cols, r)
        origin = {
            "host": host,
            "release": str(cols["release"][r]),
            "request_id": request,
            "index": index,
            "time": float(cols["time"][r]),
            "live": answer,
        }
        source = "capture"
        s = shadow.get((request, index))
        if s is not None:
            other = _answer(cols, s)
            origin["shadow"] = {**other, "release": str(cols["release"][s])}
            iou = float(
                span_iou(
                    np.array([answer["start"]]),
                    np.array([answer["end"]]),
                    np.array([other["start"]]),
                    np.array([other["end"]]),
                )[0]
            )
            origin["shadow_iou"] = round(iou, 4)
            if other["label"] != answer["label"] or iou < DISAGREE_IOU:
                source = "disagreement"
        client_id = str(cols["window_id"][r])
        ids.append(client_id or f"{request}#{index}")
        sources.append(source)
        origins.append(origin)
    # a live window ends at the request: its last bar is the minute it was answered in. The
    # times order captured windows after the data they were served from; windows answered
    # within 105 minutes of each other count as sharing bars (conservative: the splitter keeps
    # them in one split even when they are different instruments)
    ends = [int(cols["time"][r] // 60 * 60) for r in live]
    return Candidates(
        ohlc,
        ids,
        sources,
        origins,
        [_iso_seconds(e - (WINDOW_LEN - 1) * 60) for e in ends],
        [_iso_seconds(e) for e in ends],
    )


def _iso_seconds(seconds: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()


def _answer(cols, r) -> dict:
    return {
        "label": LABELS[int(cols["label"][r])],
        "start": int(cols["start"][r]),
        "end": int(cols["end"][r]),
        "prob": None if cols["prob"][r] != cols["prob"][r] else round(float(cols["prob"][r]), 4),
    }


# --- identity and overlap ----------------------------------------------------------------------


def row_hashes(ohlc):
    """uint64 [n, 105]: one hash per bar row, of its [o,h,l,c] at float32 precision."""
    import numpy as np

    rows = np.ascontiguousarray(np.asarray(ohlc, dtype=np.float32)).reshape(-1, 4)
    words = rows.view(np.uint64).reshape(-1, 2)  # 16 bytes -> two 64-bit words
    mixed = words[:, 0] ^ (words[:, 1] * np.uint64(0x9E3779B97F4A7C15))
    mixed ^= mixed >> np.uint64(29)
    return mixed.reshape(len(ohlc), -1)


def fingerprints(ohlc) -> list[str]:
    """One id per window: sha256 of its bars at float32 precision (16 hex digits)."""
    import numpy as np

    data = np.ascontiguousarray(np.asarray(ohlc, dtype=np.float32))
    return [hashlib.sha256(w.tobytes()).hexdigest()[:16] for w in data]


def overlapping(ohlc, reviewed_rows) -> object:
    """bool [n]: windows holding >= SHARED_ROWS_MIN rows found in `reviewed_rows` (uint64)."""
    import numpy as np

    if len(ohlc) == 0 or len(reviewed_rows) == 0:
        return np.zeros(len(ohlc), dtype=bool)
    hashes = row_hashes(ohlc)
    found = np.isin(hashes, reviewed_rows).sum(axis=1)
    return found >= SHARED_ROWS_MIN


def disagreement_with_auto(cands: Candidates, pre: list) -> None:
    """A labeled window whose auto-label the model contradicts becomes a `disagreement`."""
    import numpy as np

    from moola_core.metrics import span_iou

    for i, origin in enumerate(cands.origin):
        auto = origin.get("auto")
        if cands.source[i] != "labeled" or not auto:
            continue
        p = pre[i]
        iou = float(
            span_iou(
                np.array([auto["start"]]),
                np.array([auto["end"]]),
                np.array([p.start]),
                np.array([p.end]),
            )[0]
        )
        origin["model_iou"] = round(iou, 4)
        if auto["label"] != p.label or iou < DISAGREE_IOU:
            cands.source[i] = "disagreement"


def reason(source: str, origin: dict, pre) -> str:
    """Why this window is worth a reviewer's minute, in a few words."""
    if source == "disagreement" and "shadow" in origin:
        live, other = origin["live"], origin["shadow"]
        return (
            f"live {live['label']} {live['start']}-{live['end']} vs shadow {other['label']} "
            f"{other['start']}-{other['end']}"
        )
    if source == "disagreement":
        auto = origin["auto"]
        return f"model contradicts the auto-label {auto['label']} {auto['start']}-{auto['end']}"
    return f"least confident ({pre.score:.2f})"


def order(cands: Candidates, pre: list) -> list[int]:
    """Indexes, most instructive first: disagreements, then lowest score."""
    return sorted(
        range(len(cands)), key=lambda i: (cands.source[i] != "disagreement", pre[i].score, i)
    )


def require_any(cands: Candidates, what: str) -> None:
    if not len(cands):
        raise MoolaError(f"no windows to review from {what}")

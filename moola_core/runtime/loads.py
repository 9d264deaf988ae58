"""A host's ledger of model loads: WORKSPACE/model-loads.jsonl.

Every process that loads a deployed release's weights (a model server, a runtime check) appends
one JSON line: `{"time", "pid", "release", "by": "serve"|"check", "device"}`. It answers "how
many times was the model loaded, by what" for a deploy, a rollback or a crash loop, from the
host itself: a deploy that serves loads it once (the candidate server is the check), a rollback
to a warm standby never (docs/serving.md "One model load per deploy").

Only releases in a deployed layout (`WORKSPACE/releases/<version>`, also when reached through
`current`) are recorded; a bundle checked elsewhere is not. A write that fails never fails the
load. The file is bounded: past MAX_BYTES its older half is dropped.

Standard library only (this file ships to hosts).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

LEDGER = "model-loads.jsonl"
MAX_BYTES = 1024 * 1024


def ledger_path(release: str | os.PathLike) -> Path | None:
    """WORKSPACE/model-loads.jsonl for a release under WORKSPACE/releases/, else None."""
    try:
        folder = Path(release).resolve()
    except OSError:
        return None
    if folder.parent.name != "releases":
        return None
    return folder.parent.parent / LEDGER


def record(release: str | os.PathLike, by: str, device: str | None) -> None:
    """Append one line for a model load of `release` by this process (never raises)."""
    path = ledger_path(release)
    if path is None:
        return
    line = {
        "time": round(time.time(), 3),
        "pid": os.getpid(),
        "release": Path(release).resolve().name,
        "by": by,
        "device": device,
    }
    with contextlib.suppress(OSError):
        with open(path, "a") as fh:  # one short write in append mode: lines never interleave
            fh.write(json.dumps(line, separators=(",", ":")) + "\n")
        if path.stat().st_size > MAX_BYTES:
            lines = path.read_text().splitlines(keepends=True)
            tmp = path.with_name(f".{LEDGER}.{os.getpid()}")
            tmp.write_text("".join(lines[len(lines) // 2 :]))
            os.replace(tmp, path)


def read(workspace: str | os.PathLike) -> list[dict]:
    """The ledger's lines (oldest first); a torn or foreign line is skipped."""
    out = []
    try:
        text = (Path(workspace) / LEDGER).read_text()
    except OSError:
        return out
    for raw in text.splitlines():
        with contextlib.suppress(ValueError):
            item = json.loads(raw)
            if isinstance(item, dict):
                out.append(item)
    return out

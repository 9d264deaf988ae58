"""The labeling ledger: what was sent to Label Studio and what came back, on local disk.

`.moola/labeling/` (git-ignored; `--state` moves it):

    batches/<batch>.json      the batch: project, run, and per task its window, source, reason
                              and the pre-annotation shown; every import of it (when, into
                              which file, which tasks, with what verdicts)
    batches/<batch>.ohlc.npy  the batch's windows, float64 [n, 105, 4], in task order
    status.json               the last `invoke label status` figures (the report reads it)

The ledger is Moola's memory: the pre-annotation a verdict is judged against, the windows a new
export must not send again, the tasks an import already merged (a second import of the same
batch merges nothing twice). Files are replaced atomically.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

from moola_core.errors import MoolaError

DEFAULT_STATE = Path(".moola/labeling")
BATCH_ID = re.compile(r"^b\d{8}T\d{6}Z(-\d+)?$")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def batches_dir(state: str | os.PathLike = DEFAULT_STATE) -> Path:
    return Path(state) / "batches"


def new_batch_id(state: str | os.PathLike = DEFAULT_STATE) -> str:
    """b<UTC time>, with a counter when two batches start in the same second."""
    base = "b" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = batches_dir(state)
    batch, n = base, 1
    while (folder / f"{batch}.json").exists():
        n += 1
        batch = f"{base}-{n}"
    return batch


def write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def save_batch(batch: dict, ohlc, state: str | os.PathLike = DEFAULT_STATE) -> Path:
    """Write a new batch (its windows first, then the record that names them)."""
    import numpy as np

    folder = batches_dir(state)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{batch['batch']}.ohlc.tmp.npy"
    with open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(ohlc, dtype=np.float64))
    os.replace(tmp, folder / f"{batch['batch']}.ohlc.npy")
    path = folder / f"{batch['batch']}.json"
    write_json(path, batch)
    return path


def update_batch(batch: dict, state: str | os.PathLike = DEFAULT_STATE) -> None:
    write_json(batches_dir(state) / f"{batch['batch']}.json", batch)


def load_batch(batch_id: str, state: str | os.PathLike = DEFAULT_STATE) -> dict:
    """One batch's record, or one sentence naming the batches there are."""
    if not BATCH_ID.match(batch_id or ""):
        raise MoolaError(f"{batch_id!r} is not a batch id; `invoke label.status` lists them")
    path = batches_dir(state) / f"{batch_id}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        known = ", ".join(b["batch"] for b in list_batches(state)[-5:]) or "none yet"
        raise MoolaError(
            f"no batch {batch_id} in {batches_dir(state)} (latest: {known}); "
            "`invoke label.status` lists them"
        ) from None
    except ValueError:
        raise MoolaError(f"{path} is damaged (not JSON); restore it from a backup") from None


def load_windows(batch_id: str, state: str | os.PathLike = DEFAULT_STATE):
    """The batch's windows, float64 [n, 105, 4] in task order."""
    import numpy as np

    return np.load(batches_dir(state) / f"{batch_id}.ohlc.npy", allow_pickle=False)


def list_batches(state: str | os.PathLike = DEFAULT_STATE) -> list[dict]:
    """Every batch record, oldest first."""
    folder = batches_dir(state)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("b*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except ValueError:
            continue
    return out


def reviewed_rows(state: str | os.PathLike = DEFAULT_STATE):
    """uint64 row hashes of every window ever sent for review (moola_ops.labeling.windows)."""
    import numpy as np

    from moola_ops.labeling.windows import row_hashes

    parts = []
    for batch in list_batches(state):
        try:
            parts.append(row_hashes(load_windows(batch["batch"], state)).reshape(-1))
        except OSError:
            continue
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)


def reviewed_fingerprints(state: str | os.PathLike = DEFAULT_STATE) -> dict[str, str]:
    """fingerprint -> batch of every window ever sent for review."""
    out = {}
    for batch in list_batches(state):
        for task in batch["tasks"]:
            out.setdefault(task["fingerprint"], batch["batch"])
    return out


def latest_output(state: str | os.PathLike = DEFAULT_STATE) -> str | None:
    """The newest labeled set written by `invoke label import` (that still exists)."""
    best = None
    for batch in list_batches(state):
        for record in batch.get("imports", []):
            if Path(record["out"]).is_file() and (best is None or record["at"] >= best[0]):
                best = (record["at"], record["out"])
    return best[1] if best else None

"""The model server: `python -m moola_core.runtime serve --release DIR --port P`.

Answers predictions over HTTP from OHLC windows (features computed here, by
`runtime.hostfeatures`, the code tested for parity with the training features), gathers
concurrent requests into one forward pass (Triton's two knobs: largest batch, longest wait),
and exposes liveness, readiness and Prometheus metrics. Every answered window is appended to
`captures/<release>/` (the contract in docs/serving.md), rotated and bounded in size.

    POST /v1/predict   {"windows": [[[o,h,l,c] x 105], ...]}  or  [{"id": "w1", "ohlc": [...]}]
                       or a binary body: Content-Type application/vnd.moola.ohlc-f32le,
                       X-Moola-Windows: N, N*105*4 float32 little-endian (answered in JSON)
    GET  /healthz      alive: release, sha256, device, uptime (200 while the process runs)
    GET  /readyz       200 once the model is loaded and golden parity passed, else 503
    GET  /metrics      Prometheus text format

Bad input never crashes the server and never shows a traceback: it gets a 4xx and one sentence.
SIGTERM drains: the listener closes, requests in flight finish, captures are flushed, exit 0.

Standard library and torch only (this file ships to hosts).
"""

from __future__ import annotations

import argparse
import array
import base64
import collections
import contextlib
import json
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path

from moola_core.agent.http import Front, Request, Response

# imported at start, not on first use: a release folder pruned under a running server must
# not break it later
from moola_core.runtime import hostfeatures, loads
from moola_core.spec import LABELS, WINDOW_LEN

DEFAULT_MAX_BATCH = 64  # windows in one forward pass
DEFAULT_MAX_WAIT_MS = 2.0  # longest a gathered batch waits for requests still arriving
DEFAULT_MAX_WINDOWS = 256  # windows in one request
DEFAULT_MAX_BODY_MB = 4.0
DEFAULT_READ_TIMEOUT_S = 10.0  # a client must send its request within this (slow clients)
DEFAULT_DRAIN_TIMEOUT_S = 30.0
DEFAULT_CAPTURE_MAX_MB = 16.0  # one capture file is closed at this size
DEFAULT_CAPTURE_KEEP_MB = 256.0  # per release; the oldest files go beyond it
DEFAULT_CAPTURE_HOST_MB = 1024.0  # every release's captures on the host together
DEFAULT_CAPTURE_KEEP_DAYS = 7.0  # capture files older than this are deleted
CAPTURE_PRUNE_EVERY_S = 60.0  # retention is applied at least this often, traffic or not
CAPTURE_QUEUE = 20000  # windows waiting to be written; beyond it captures are dropped (counted)
ANSWER_TIMEOUT_S = 60.0  # a request whose batch has not run by then gets a 503
SPARE_AFTER_S = 10.0  # a spare that took over is replaced by its own spare only after this

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class BadRequest(Exception):
    """The client's request is wrong: `status` (4xx) and one sentence."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# --- the model ---------------------------------------------------------------------------------


class Predictor:
    """One release loaded for serving: checksums verified, model on its device, golden parity
    checked for single windows and a batch. `predict_ohlc` is the in-process path the server
    (and benchmarks/serving.py) use."""

    def __init__(self, release: str | os.PathLike, device: str = "auto"):
        self.release = Path(release)
        self.device_name = device
        self.version = "?"
        self.manifest_sha256 = ""
        self.bundle_sha256: str | None = None
        self.device = None
        self.device_facts: dict | None = None
        self.model = None
        self.has_abstain = False
        self.live = False  # a live model: its confidence is P(expansion under way)

    def load(self) -> str:
        """Load and check the release; return one line of what was checked. Raises on failure."""
        import hashlib

        import torch

        from moola_core.agent.archive import verify_directory
        from moola_core.models import build_model
        from moola_core.runtime import devices
        from moola_core.runtime.check import compare_golden, finite_problem

        manifest_bytes = (self.release / "manifest.json").read_bytes()
        manifest = json.loads(manifest_bytes)
        self.version = str(manifest["version"])
        self.manifest_sha256 = hashlib.sha256(manifest_bytes).hexdigest()
        marker = self.release.resolve().parent / (self.release.resolve().name + ".sha256")
        if marker.is_file():
            self.bundle_sha256 = (marker.read_text().split() or [None])[0]
        verify_directory(self.release)  # never load code or weights that are not what was built
        self.device = devices.pick_device(self.device_name)
        gpus, _smi = devices.query_gpus()
        # the device report a deploy logs (the server is its check: docs/serving.md)
        self.device_facts = {
            "device": str(self.device),
            "device_name": devices.device_name(self.device),
            "torch": torch.__version__,
            "gpus": [g.name for g in gpus],
        }
        unused = devices.unused_gpus(self.device, gpus, self.device_name, torch.__version__)
        if unused:
            raise RuntimeError(unused)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        model = build_model(manifest["model"]["config"])
        weights = self.release / manifest["model"].get("weights", "weights.pt")
        model.load_state_dict(torch.load(weights, map_location=self.device, weights_only=True))
        loads.record(self.release, "serve", str(self.device))  # the host's ledger of loads
        self.model = model.to(self.device).eval()
        golden = torch.load(self.release / manifest["golden"]["path"], weights_only=True)
        atol = float(manifest["golden"]["class_probs_atol"])
        # golden parity on the path this server uses: one window at a time and one batch
        single = [
            self.forward(golden["x"][i : i + 1], golden["valid"][i : i + 1])
            for i in range(len(golden["x"]))
        ]
        single = {k: torch.cat([row[k] for row in single]) for k in single[0]}
        batch = self.forward(golden["x"], golden["valid"])
        for name, outputs in (("single-window", single), ("batched", batch)):
            ok, _diff, _labels, _spans, detail = compare_golden(outputs, golden, atol)
            problem = finite_problem(outputs, int(golden["x"].shape[1]))
            if not ok or problem:
                raise RuntimeError(f"golden parity failed ({name}): {problem or detail}")
        self.has_abstain = "abstain" in batch
        self.live = bool(model.config.get("live"))
        return f"{self.version} on {self.device}: golden parity passed (single and batched)"

    def forward(self, x, valid) -> dict:
        """Features [B, T, F] + mask [B, T] (CPU) -> model outputs on the CPU."""
        import torch

        with torch.inference_mode():
            out = self.model.predict(x.to(self.device), valid.to(self.device))
        return {key: value.cpu() for key, value in out.items()}

    def features(self, ohlc):
        """OHLC float64 [B, 105, 4] -> (features [B, 105, 11], valid [B, 105])."""
        return hostfeatures.compute_features(ohlc)

    def predict_ohlc(self, ohlc) -> list[dict]:
        """In-process prediction of OHLC windows [B, 105, 4] -> one output dict per window."""
        x, valid = self.features(ohlc)
        return outputs_to_rows(self.forward(x, valid), live=self.live)


def outputs_to_rows(out: dict, live: bool = False) -> list[dict]:
    """Model outputs (CPU tensors) -> [{"label", "probs", "start", "end", "abstain",
    "confidence"}], plus "p_under_way" for a live model: its confidence is the calibrated
    probability that an expansion is under way at the window's last bar."""
    labels = out["label"].tolist()
    probs = out["class_probs"].tolist()
    starts, ends = out["start"].tolist(), out["end"].tolist()
    abstain = out["abstain"].tolist() if "abstain" in out else [False] * len(labels)
    confidence = out["confidence"].tolist() if "confidence" in out else [None] * len(labels)
    rows = []
    for i in range(len(labels)):
        row = {
            "label": LABELS[labels[i]],
            "probs": {name: round(p, 6) for name, p in zip(LABELS, probs[i], strict=True)},
            "start": starts[i],
            "end": ends[i],
            "abstain": bool(abstain[i]),
            "confidence": None if confidence[i] is None else round(confidence[i], 6),
        }
        if live:
            row["p_under_way"] = row["confidence"]
        rows.append(row)
    return rows


# --- dynamic batching --------------------------------------------------------------------------


class _Pending:
    __slots__ = ("ohlc", "n", "done", "on_done", "rows", "error", "batch_size")

    def __init__(self, ohlc, on_done=None):
        self.ohlc, self.n = ohlc, int(ohlc.shape[0])
        self.done = threading.Event()
        self.on_done = on_done
        self.rows: list[dict] | None = None
        self.error: str | None = None
        self.batch_size = 0


class Batcher:
    """Gathers submitted windows into forward passes of at most `max_batch` windows.

    The first waiting request starts a batch; it waits up to `max_wait_s` for more only while
    other requests are still being read (so a lone request never waits), and what queued up
    while the model was busy goes into the next pass. A request larger than `max_batch` runs
    as its own pass. `max_batch=1` turns batching off: one request per pass. A request the
    front finds alone (no other request in flight or waiting to be read) while nothing is
    queued and no pass runs has its pass run on the front's thread (`run_alone`): there is
    nothing to batch it with, and handing it to this thread and back cost ~0.2 ms of a 2.7 ms
    answer on a CPU host.
    """

    def __init__(
        self, predictor: Predictor, metrics, max_batch: int, max_wait_s: float, hold_dir=None
    ):
        self.predictor, self.metrics = predictor, metrics
        self.max_batch, self.max_wait_s = max(1, max_batch), max(0.0, max_wait_s)
        self.queue: collections.deque[_Pending] = collections.deque()
        self.cond = threading.Condition()
        self.arriving = 0  # requests being read and parsed that will submit soon
        self.running = False  # a pass is being gathered or run (on either thread)
        self.stopping = False
        self.hook_dir = hold_dir  # tests: each pass waits while DIR/hold exists
        self.thread = threading.Thread(target=self._run, name="batcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def arrive(self, delta: int) -> None:
        with self.cond:
            self.arriving += delta
            if delta < 0:
                self.cond.notify_all()

    def submit(self, ohlc, on_done=None) -> _Pending:
        """Queue OHLC windows [k, 105, 4]; features are computed per batch, in one call.
        `on_done(pending)` runs on the batcher's thread once its pass ran (or failed)."""
        pending = _Pending(ohlc, on_done)
        with self.cond:
            self.arriving -= 1
            self.queue.append(pending)
            self.cond.notify_all()
        return pending

    def run_alone(self, ohlc) -> _Pending | None:
        """Run `ohlc`'s pass now, on the caller's thread, when nothing is queued, no pass runs
        and no other request is being read; else None, and nothing was done (submit it). The
        tests' hold hook always goes through the batcher's thread."""
        with self.cond:
            if self.queue or self.running or self.arriving > 1 or self.stopping or self.hook_dir:
                return None
            self.arriving -= 1
            self.running = True
        pending = _Pending(ohlc)
        try:
            self._pass([pending])
        finally:
            with self.cond:
                self.running = False
                self.cond.notify_all()
        return pending

    def stop(self) -> None:
        """Finish what is queued, then stop the thread."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout=DEFAULT_DRAIN_TIMEOUT_S)

    def queued_windows(self) -> int:
        with self.cond:
            return sum(p.n for p in self.queue)

    def _take(self) -> list[_Pending] | None:
        with self.cond:
            while not self.queue:
                if self.stopping:
                    return None
                self.cond.wait()
            self.running = True
            batch = [self.queue.popleft()]
            size = batch[0].n
            if self.max_batch == 1:
                return batch
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_batch:
                if self.queue:
                    if size + self.queue[0].n > self.max_batch:
                        break
                    nxt = self.queue.popleft()
                    batch.append(nxt)
                    size += nxt.n
                    continue
                left = deadline - time.monotonic()
                if self.arriving <= 0 or left <= 0 or self.stopping:
                    break
                self.cond.wait(left)
            return batch

    def _hold(self) -> None:
        hold = Path(self.hook_dir, "hold")
        Path(self.hook_dir, "in-forward").touch()
        while hold.exists():
            time.sleep(0.005)

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if self.hook_dir:
                self._hold()
            try:
                self._pass(batch)
            finally:
                with self.cond:
                    self.running = False
            for p in batch:
                if p.on_done is not None:
                    try:
                        p.on_done(p)
                    except Exception:  # one answer's hand-over must not stop the batcher
                        traceback.print_exc(file=sys.stderr)

    def _pass(self, batch: list[_Pending]) -> None:
        """One forward pass; each request gets its rows or an error (never an exception)."""
        import torch

        size = sum(p.n for p in batch)
        try:
            ohlc = torch.cat([p.ohlc for p in batch]) if len(batch) > 1 else batch[0].ohlc
            rows = self.predictor.predict_ohlc(ohlc)
            offset = 0
            for p in batch:
                p.rows, p.batch_size = rows[offset : offset + p.n], size
                offset += p.n
        except Exception as exc:  # a failed pass answers its requests with a 500, no crash
            print(f"moola serve: forward pass failed: {exc!r}", file=sys.stderr, flush=True)
            for p in batch:
                p.error = f"the model failed on this batch ({type(exc).__name__})"
        self.metrics.observe_batch(size)
        for p in batch:
            p.done.set()


# --- metrics -----------------------------------------------------------------------------------


class Metrics:
    """Counters and histograms, rendered in the Prometheus text format."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[str, int] = collections.Counter()
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.batch_counts = [0] * (len(BATCH_BUCKETS) + 1)
        self.batch_sum = 0
        self.predictions: dict[str, int] = collections.Counter({label: 0 for label in LABELS})
        self.captures_dropped = 0
        self.captures_deleted = {"size": [0, 0], "age": [0, 0]}  # reason -> [files, bytes]

    @staticmethod
    def _bucket(buckets, value) -> int:
        for i, bound in enumerate(buckets):
            if value <= bound:
                return i
        return len(buckets)

    def observe_request(self, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[str(status)] += 1
            self.latency_counts[self._bucket(LATENCY_BUCKETS, seconds)] += 1
            self.latency_sum += seconds

    def observe_batch(self, size: int) -> None:
        with self.lock:
            self.batch_counts[self._bucket(BATCH_BUCKETS, size)] += 1
            self.batch_sum += size

    def observe_labels(self, rows: list[dict]) -> None:
        with self.lock:
            for row in rows:
                self.predictions[row["label"]] += 1

    def dropped(self, n: int) -> None:
        with self.lock:
            self.captures_dropped += n

    def deleted(self, reason: str, size: int) -> None:
        with self.lock:
            self.captures_deleted[reason][0] += 1
            self.captures_deleted[reason][1] += size

    def render(self, info: dict, gauges: dict) -> str:
        lines = []

        def histogram(name, help_text, buckets, counts, total):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} histogram")
            running = 0
            for bound, count in zip((*buckets, "+Inf"), counts, strict=True):
                running += count
                lines.append(f'{name}_bucket{{le="{bound}"}} {running}')
            lines.append(f"{name}_sum {total}")
            lines.append(f"{name}_count {running}")

        with self.lock:
            lines += [
                "# HELP moola_serve_info The release this server answers with.",
                "# TYPE moola_serve_info gauge",
            ]
            labels = ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(info.items()))
            lines.append(f"moola_serve_info{{{labels}}} 1")
            lines += [
                "# HELP moola_serve_requests_total Requests answered, by HTTP status.",
                "# TYPE moola_serve_requests_total counter",
            ]
            for status, count in sorted(self.requests.items()):
                lines.append(f'moola_serve_requests_total{{status="{status}"}} {count}')
            histogram(
                "moola_serve_request_duration_seconds",
                "Request wall time on the server.",
                LATENCY_BUCKETS,
                self.latency_counts,
                round(self.latency_sum, 6),
            )
            histogram(
                "moola_serve_batch_size",
                "Windows per forward pass.",
                BATCH_BUCKETS,
                self.batch_counts,
                self.batch_sum,
            )
            lines += [
                "# HELP moola_serve_predictions_total Windows answered, by predicted label.",
                "# TYPE moola_serve_predictions_total counter",
            ]
            for label, count in sorted(self.predictions.items()):
                lines.append(f'moola_serve_predictions_total{{label="{label}"}} {count}')
            lines += [
                "# HELP moola_serve_captures_dropped_total Capture lines dropped (queue full).",
                "# TYPE moola_serve_captures_dropped_total counter",
                f"moola_serve_captures_dropped_total {self.captures_dropped}",
                "# HELP moola_serve_captures_deleted_files_total Capture files this server "
                "deleted, oldest first: over a size cap (size) or past the retention (age).",
                "# TYPE moola_serve_captures_deleted_files_total counter",
            ]
            for reason, (files, _size) in sorted(self.captures_deleted.items()):
                lines.append(
                    f'moola_serve_captures_deleted_files_total{{reason="{reason}"}} {files}'
                )
            lines += [
                "# HELP moola_serve_captures_deleted_bytes_total Bytes of those files.",
                "# TYPE moola_serve_captures_deleted_bytes_total counter",
            ]
            for reason, (_files, size) in sorted(self.captures_deleted.items()):
                lines.append(
                    f'moola_serve_captures_deleted_bytes_total{{reason="{reason}"}} {size}'
                )
        for name, (help_text, value) in sorted(gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"


def _label_value(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


# --- captures ----------------------------------------------------------------------------------


class Captures:
    """Appends one JSON line per answered window (and per error) to captures/<release>/.

    A background thread encodes and writes, so a live answer never waits on the disk; when more
    than CAPTURE_QUEUE windows wait, new lines are dropped and counted in the metrics. A file is
    closed at `max_mb`; beyond `keep_mb` per release the oldest files are deleted.
    """

    def __init__(
        self,
        root: Path,
        release: str,
        role: str,
        max_mb: float,
        keep_mb: float,
        metrics: Metrics,
        host_mb: float = DEFAULT_CAPTURE_HOST_MB,
        keep_days: float = DEFAULT_CAPTURE_KEEP_DAYS,
    ):
        self.root = Path(root)
        self.host_bytes = int(host_mb * 1024 * 1024)
        self.keep_s = keep_days * 86400.0
        self.pruned_at = 0.0
        self.dir = Path(root) / release
        self.release, self.role, self.metrics = release, role, metrics
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.keep_bytes = int(keep_mb * 1024 * 1024)
        self.items: collections.deque = collections.deque()
        self.cond = threading.Condition()
        self.queued = 0
        self.unwritten = 0  # windows put and not yet written (queued + being written)
        self.closing = False
        self.file = None
        self.file_path: Path | None = None
        self.written = 0
        self.seq = 0
        self.thread = threading.Thread(target=self._run, name="captures", daemon=True)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.thread.start()

    def put(self, item: dict, windows: int = 1) -> None:
        with self.cond:
            if self.closing or self.queued + windows > CAPTURE_QUEUE:
                self.metrics.dropped(windows)
                return
            self.items.append(item)
            self.queued += windows
            self.unwritten += windows
            self.cond.notify()

    def close(self) -> None:
        """Write what is queued, then close the file."""
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join(timeout=DEFAULT_DRAIN_TIMEOUT_S)

    def _lines(self, item: dict) -> list[str]:
        base = {
            "v": 1,
            "request_id": item["request_id"],
            "time": item["time"],
            "release": self.release,
            "role": self.role,
            "status": item["status"],
            "latency_ms": item["latency_ms"],
        }
        if "error" in item:
            return [
                json.dumps(
                    {
                        **base,
                        "index": None,
                        "window_id": None,
                        "batch_size": 0,
                        "error": item["error"],
                    }
                )
            ]
        out = []
        raws = item.get("raw") or [None] * len(item["rows"])
        for index, (window_id, ohlc, raw, output) in enumerate(
            zip(item["ids"], item["ohlc"], raws, item["rows"], strict=True)
        ):
            line = {
                **base,
                "index": index,
                "window_id": window_id,
                "batch_size": item["batch_size"],
                "output": output,
            }
            text = json.dumps(line, separators=(",", ":"))
            if isinstance(raw, bytes):  # a binary request's window: its own 1680 bytes
                out.append(f'{text[:-1]},"ohlc_f32le":"{base64.b64encode(raw).decode()}"}}')
                continue
            if raw is None or "\n" in raw or "\r" in raw:  # one line per window, always
                raw = json.dumps(ohlc, separators=(",", ":"))
            out.append(f'{text[:-1]},"ohlc":{raw}}}')
        return out

    def _open(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        while True:
            self.seq += 1
            path = self.dir / f"{stamp}-{self.seq:04d}.jsonl"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            self.file, self.file_path, self.written = os.fdopen(fd, "w"), path, 0
            self._prune()
            return

    def _prune(self) -> None:
        """Oldest first: files past the retention (age), then beyond this release's cap and
        the host's cap over every release (size). The file this server writes and the newest
        file of every release (another server may be writing it) are never deleted."""
        self.pruned_at = time.monotonic()
        files, total, own = [], 0, 0
        for folder in self.root.iterdir() if self.root.is_dir() else ():
            found = []
            for path in folder.glob("*.jsonl") if folder.is_dir() else ():
                try:
                    st = path.stat()
                except OSError:
                    continue
                found.append((st.st_mtime, path.name, path, st.st_size))
            found.sort()
            files += found[:-1]  # the newest of each release stays (and counts)
            total += sum(f[3] for f in found)
            own += sum(f[3] for f in found) if folder == self.dir else 0
        files.sort()
        old_before = time.time() - self.keep_s
        for mtime, _name, path, size in files:
            if path == self.file_path:
                continue
            if mtime < old_before:
                reason = "age"
            elif total > self.host_bytes or (path.parent == self.dir and own > self.keep_bytes):
                reason = "size"
            else:
                continue
            try:
                path.unlink()
            except OSError:
                continue
            self.metrics.deleted(reason, size)
            total -= size
            if path.parent == self.dir:
                own -= size

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.items and not self.closing:
                    if time.monotonic() - self.pruned_at >= CAPTURE_PRUNE_EVERY_S:
                        break
                    self.cond.wait(CAPTURE_PRUNE_EVERY_S)
                if time.monotonic() - self.pruned_at >= CAPTURE_PRUNE_EVERY_S:
                    with contextlib.suppress(OSError):
                        self._prune()  # retention applies while traffic is low, too
                items = list(self.items)
                self.items.clear()
                taken, self.queued = self.queued, 0
                closing = self.closing
            try:
                for item in items:
                    for line in self._lines(item):
                        if self.file is None or self.written >= self.max_bytes:
                            if self.file is not None:
                                self.file.close()
                            self._open()
                        self.file.write(line + "\n")
                        self.written += len(line) + 1
                if self.file is not None:
                    self.file.flush()
            except OSError as exc:  # a full disk loses captures, never answers
                print(f"moola serve: capture write failed: {exc}", file=sys.stderr, flush=True)
                self.metrics.dropped(len(items))
                self.file = None
            with self.cond:
                self.unwritten -= taken
            if closing:
                if self.file is not None:
                    self.file.close()
                return


# --- request parsing ---------------------------------------------------------------------------


def _reject_constant(name: str):
    raise BadRequest(400, f"{name} is not a number: send finite prices only")


_WINDOWS_HEAD = re.compile(r'\s*\{\s*"windows"\s*:\s*\[\s*')
_BLANK = re.compile(r"\s*")


def split_windows(text: str):
    """(payload, raw JSON text of each window) when the body is exactly {"windows": [...]},
    else None. The captures reuse each window's own text instead of encoding 420 floats again
    (on a CPU that encoding cost as much as the batched forward pass)."""
    head = _WINDOWS_HEAD.match(text)
    if head is None:
        return None
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    windows, raws, pos = [], [], head.end()
    try:
        while not text.startswith("]", pos):
            window, end = decoder.raw_decode(text, pos)
            windows.append(window)
            raws.append(text[pos:end])
            pos = _BLANK.match(text, end).end()
            if text.startswith(",", pos):
                pos = _BLANK.match(text, pos + 1).end()
            elif not text.startswith("]", pos):
                return None
    except ValueError:
        return None  # json.loads says what is wrong
    rest = text[pos + 1 :].strip()
    if rest != "}":
        return None
    return {"windows": windows}, raws


def parse_windows(body: bytes, max_windows: int):
    """Request body -> (ohlc float64 [N, 105, 4], ids, rows as lists, raw window texts or
    None per window); BadRequest when wrong."""
    import torch

    split = None
    try:
        text = body.decode("utf-8")
        split = split_windows(text)
        payload = split[0] if split else json.loads(text, parse_constant=_reject_constant)
    except BadRequest:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"the body is not valid JSON ({_short(exc)})") from None
    except RecursionError:  # json's decoder recurses per level: [[[[... runs out of stack
        raise BadRequest(400, "the body is JSON nested too deeply: send windows of bars") from None
    if not isinstance(payload, dict) or "windows" not in payload:
        raise BadRequest(400, 'the body must be a JSON object with "windows": a list of windows')
    windows = payload["windows"]
    if not isinstance(windows, list) or not windows:
        raise BadRequest(400, '"windows" must be a non-empty list of windows')
    if len(windows) > max_windows:
        raise BadRequest(
            413, f"{len(windows)} windows in one request, at most {max_windows} are accepted"
        )
    ids, grids = [], []
    for i, window in enumerate(windows):
        window_id = None
        if isinstance(window, dict):
            window_id = window.get("id")
            if window_id is not None and not (isinstance(window_id, str) and len(window_id) <= 128):
                raise BadRequest(400, f"window {i}: id must be a string of at most 128 characters")
            window = window.get("ohlc")
        if not isinstance(window, list) or len(window) != WINDOW_LEN:
            got = len(window) if isinstance(window, list) else type(window).__name__
            raise BadRequest(
                400,
                f"window {i}: expected {WINDOW_LEN} bars of [open, high, low, close], got {got}",
            )
        ids.append(window_id)
        grids.append(window)
    try:
        if b"true" in body or b"false" in body:
            raise TypeError("booleans possible")  # torch would read true as 1.0: check slowly
        ohlc = torch.tensor(grids, dtype=torch.float64)
        if ohlc.shape != (len(grids), WINDOW_LEN, 4):
            raise ValueError("shape")
    except (TypeError, ValueError, RuntimeError):
        _explain_grid(grids)  # raises BadRequest naming the first bad bar
        ohlc = torch.tensor(grids, dtype=torch.float64)
    check_prices(ohlc)
    raws = [None] * len(grids)
    if split:  # the raw text of a bare window is its ohlc; a {"id", "ohlc"} object's is not
        raws = [
            raw if isinstance(w, list) else None for w, raw in zip(windows, split[1], strict=True)
        ]
    return ohlc, ids, grids, raws


def check_prices(ohlc) -> None:
    """BadRequest naming the first bar that is not finite, not positive, or whose high and low
    do not contain its open and close."""
    import torch

    finite = torch.isfinite(ohlc)
    if not bool(finite.all()):
        w, b, _ = (~finite).nonzero()[0].tolist()
        raise BadRequest(400, f"window {w} bar {b}: prices must be finite numbers")
    if not bool((ohlc > 0).all()):
        w, b, _ = (ohlc <= 0).nonzero()[0].tolist()
        raise BadRequest(400, f"window {w} bar {b}: prices must be positive")
    o, h, lo, c = ohlc.unbind(2)
    broken = (h < torch.maximum(o, c)) | (lo > torch.minimum(o, c))
    if bool(broken.any()):
        w, b = broken.nonzero()[0].tolist()
        raise BadRequest(
            400,
            f"window {w} bar {b}: high and low must contain open and close "
            f"(got {ohlc[w, b].tolist()})",
        )


BINARY_TYPE = "application/vnd.moola.ohlc-f32le"  # float32 little-endian [N, 105, 4], C order
WINDOWS_HEADER = "x-moola-windows"  # N, the number of windows in a binary body
BINARY_WINDOW_BYTES = WINDOW_LEN * 4 * 4


def is_binary(headers: dict) -> bool:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower() == BINARY_TYPE


def parse_binary(body: bytes, headers: dict, max_windows: int):
    """A binary body (BINARY_TYPE, N in X-Moola-Windows) -> what parse_windows returns; the
    windows stay a float32 tensor (no list of floats is ever built on the request path)."""
    import torch

    text = headers.get(WINDOWS_HEADER, "").strip()
    if not (text.isdigit() and text.isascii()) or int(text) < 1:
        raise BadRequest(
            400, f"a {BINARY_TYPE} body needs the header X-Moola-Windows: N (a whole number >= 1)"
        )
    n = int(text)
    if n > max_windows:
        raise BadRequest(413, f"{n} windows in one request, at most {max_windows} are accepted")
    if len(body) != n * BINARY_WINDOW_BYTES:
        raise BadRequest(
            400,
            f"the body has {len(body)} bytes but X-Moola-Windows: {n} needs "
            f"{n * BINARY_WINDOW_BYTES} (float32 little-endian [{n}, {WINDOW_LEN}, 4])",
        )
    data = bytearray(body)
    if sys.byteorder != "little":  # the wire is little-endian whatever the host is
        swapped = array.array("f", bytes(data))
        swapped.byteswap()
        data = bytearray(swapped.tobytes())
    ohlc = torch.frombuffer(data, dtype=torch.float32).reshape(n, WINDOW_LEN, 4).double()
    check_prices(ohlc)
    # the captures keep each window's own wire bytes (base64 in the line): no number is turned
    # into text on the server, and a reader gets the very float32 values the model saw
    raws = [body[i * BINARY_WINDOW_BYTES : (i + 1) * BINARY_WINDOW_BYTES] for i in range(n)]
    return ohlc, [None] * n, [None] * n, raws


def _explain_grid(grids: list) -> None:
    for w, window in enumerate(grids):
        for b, bar in enumerate(window):
            if not isinstance(bar, list) or len(bar) != 4:
                raise BadRequest(400, f"window {w} bar {b}: expected [open, high, low, close]")
            for value in bar:
                if type(value) not in (int, float):
                    raise BadRequest(
                        400, f"window {w} bar {b}: {json.dumps(value)[:40]} is not a number"
                    )
                if not math.isfinite(value):
                    raise BadRequest(400, f"window {w} bar {b}: prices must be finite numbers")


def _short(exc: Exception) -> str:
    return str(exc).split("\n")[0][:120]


# --- HTTP --------------------------------------------------------------------------------------


class ServerState:
    """What the handlers share: the predictor, batcher, metrics, captures and the flags."""

    def __init__(self, args, predictor: Predictor):
        self.args = args
        self.predictor = predictor
        self.metrics = Metrics()
        self.batcher = Batcher(
            predictor, self.metrics, args.max_batch, args.max_wait_ms / 1e3, args.test_hold_dir
        )
        self.captures: Captures | None = None
        self.ready = False
        self.not_ready_reason = "loading the model"
        self.draining = False
        self.started = time.time()
        self.inflight = 0  # predict requests being answered (the front's thread only)
        self.inflight_lock = threading.Lock()
        self.spare = None  # Lifetime's Spare, once forked
        self.generation = 0  # takeovers since the host agent started this server

    def enter(self) -> None:
        with self.inflight_lock:
            self.inflight += 1

    def leave(self) -> None:
        with self.inflight_lock:
            self.inflight -= 1

    def health(self) -> dict:
        p = self.predictor
        return {
            "status": "draining" if self.draining else "alive",
            "release": p.version,
            "sha256": p.bundle_sha256 or p.manifest_sha256,
            "manifest_sha256": p.manifest_sha256,
            "device": str(p.device) if p.device is not None else None,
            "uptime_s": round(time.time() - self.started, 3),
            "pid": os.getpid(),
            "port": self.args.port,
            "ready": self.ready and not self.draining,
            "role": self.args.role,
            "max_batch": self.args.max_batch,
            "max_wait_ms": self.args.max_wait_ms,
            "captures": self.captures is not None,
            "spare": {"pid": self.spare.pid, "waiting": self.spare.alive()} if self.spare else None,
            "generation": self.generation,
        }


_NOT_ALLOWED = ("PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")


class App:
    """What the server answers (the agent's http.Front asks it): routes, the predict path through the
    batcher, one-sentence JSON errors, metrics and captures of every answer."""

    def __init__(self, state: ServerState):
        self.state = state
        # token -> (request, request id, reply): answers still due. Whoever pops a token first
        # answers (the batcher's _done or tick()'s 503); it is entered before the submit, so a
        # pass that ends before the front's thread runs again still finds it
        self.waiting: dict = {}

    # -- the front's calls ----------------------------------------------------------------------

    def head(self, request: Request):
        """The body length to read for `request`, or the Response that refuses it first."""
        method, path = request.method, request.path
        if method == "GET":
            return self._length(request, allow_missing=True)
        if method in _NOT_ALLOWED:
            return self.error(request, 405, f"method {method} is not allowed here")
        if method != "POST":
            return self.error(request, 501, f"method {method[:20]!r} is not supported")
        if path != "/v1/predict":
            return self.error(
                request, 404, f"no such path {request.target[:80]!r}: POST /v1/predict"
            )
        if "chunked" in request.headers.get("transfer-encoding", "").lower():
            return self.error(request, 411, "send the body with a Content-Length, not chunked")
        return self._length(request, allow_missing=False)

    def request(self, request: Request, body: bytes, reply, alone: bool = False):
        """Answer `request` now (a Response), or return None and later call `reply(make)` (from
        any thread) with a function that builds the Response on the front's thread. `alone`
        (the front saw nothing else to do) lets an idle batcher's pass run here at once."""
        state = self.state
        if request.method == "GET":
            return self._get(request)
        state.enter()
        request_id = self._request_id(request)
        try:
            if not state.ready:  # a draining server still answers what reaches it
                raise BadRequest(503, f"the server is not ready: {state.not_ready_reason}")
            state.batcher.arrive(1)
            try:
                if is_binary(request.headers):
                    ohlc, ids, grids, raws = parse_binary(
                        body, request.headers, state.args.max_windows
                    )
                else:
                    ohlc, ids, grids, raws = parse_windows(body, state.args.max_windows)
            except BaseException:
                state.batcher.arrive(-1)
                raise
            if alone:
                ran = state.batcher.run_alone(ohlc)
                if ran is not None:
                    return self._answer(ran, request, request_id, ids, grids, raws)
            token = object()
            self.waiting[token] = (request, request_id, reply)
            state.batcher.submit(
                ohlc,
                on_done=lambda p: self._done(
                    token, p, request, request_id, ids, grids, raws, reply
                ),
            )
            return None
        except BadRequest as exc:
            return self._finish(request, request_id, exc.status, {"error": str(exc)})
        except Exception as exc:  # never a traceback to the client; the log keeps it
            traceback.print_exc(file=sys.stderr)
            error = f"internal error ({type(exc).__name__}); see the server log"
            return self._finish(request, request_id, 500, {"error": error})

    def error(self, request: Request | None, status: int, sentence: str) -> Response:
        """The answer to what the front refused (malformed head, too large, too slow)."""
        if request is not None and request.method == "POST":
            self.state.enter()
            return self._finish(request, self._request_id(request), status, {"error": sentence})
        self.state.metrics.observe_request(status, 0.0)
        return self._json(status, {"error": sentence, "status": status}, close=True)

    def tick(self, now: float) -> None:
        """Requests whose batch has not run within ANSWER_TIMEOUT_S get a 503."""
        late = time.perf_counter() - ANSWER_TIMEOUT_S
        for token, (request, request_id, reply) in list(self.waiting.items()):
            if request.started < late and self.waiting.pop(token, None) is not None:
                sentence = f"no answer within {ANSWER_TIMEOUT_S:g}s: the server is overloaded"
                reply(
                    lambda r=request, i=request_id, s=sentence: self._finish(
                        r, i, 503, {"error": s}
                    )
                )

    # -- helpers ----------------------------------------------------------------------------------

    def _length(self, request: Request, allow_missing: bool):
        text = request.headers.get("content-length")
        if text is None:
            if allow_missing:
                return 0
            return self.error(request, 411, "a Content-Length header is required")
        if not (text.isdigit() and text.isascii()):  # int() would take "+5", " 5" and "5_0"
            return self.error(request, 400, "the Content-Length header is not a whole number")
        length = int(text)
        limit = int(self.state.args.max_body_mb * 1024 * 1024)
        if length > limit or length < 0:
            return self.error(
                request, 413, f"the body has {length} bytes, at most {limit} are accepted"
            )
        return length

    def _done(self, token, pending, request, request_id, ids, grids, raws, reply) -> None:
        """Batcher thread: the pass ran. The answer (JSON, captures) is built on the front's
        thread, leaving this one to the model."""
        if self.waiting.pop(token, None) is None:
            return  # already answered 503 by tick()
        reply(lambda: self._answer(pending, request, request_id, ids, grids, raws))

    def _answer(self, pending, request, request_id, ids, grids, raws) -> Response:
        if pending.error:
            print(f"moola serve: {pending.error}", file=sys.stderr, flush=True)
            error = "internal error (RuntimeError); see the server log"
            return self._finish(request, request_id, 500, {"error": error})
        return self._predicted(request, request_id, pending, ids, grids, raws)

    def _predicted(self, request, request_id, pending, ids, grids, raws) -> Response:
        state = self.state
        rows = pending.rows
        state.metrics.observe_labels(rows)
        release = state.predictor.version
        latency_ms = round((time.perf_counter() - request.started) * 1e3, 3)
        if state.captures is not None:
            state.captures.put(
                {
                    "request_id": request_id,
                    "time": time.time(),
                    "status": 200,
                    "latency_ms": latency_ms,
                    "batch_size": pending.batch_size,
                    "ids": ids,
                    "ohlc": grids,
                    "raw": raws,
                    "rows": rows,
                },
                windows=len(rows),
            )
        predictions = [
            {"index": i, "id": ids[i], **row, "release": release} for i, row in enumerate(rows)
        ]
        payload = {"release": release, "request_id": request_id, "predictions": predictions}
        return self._finish(request, request_id, 200, payload)

    def _finish(self, request: Request, request_id: str, status: int, payload: dict) -> Response:
        """A predict request's answer: errors carry the request id and are captured; metrics
        count it; the in-flight count drops."""
        state = self.state
        seconds = time.perf_counter() - request.started
        if status != 200:
            payload["status"] = status
            payload["request_id"] = request_id
            if state.captures is not None and status != 404:
                state.captures.put(
                    {
                        "request_id": request_id,
                        "time": time.time(),
                        "status": status,
                        "latency_ms": round(seconds * 1e3, 3),
                        "error": payload["error"],
                    }
                )
        state.metrics.observe_request(status, seconds)
        state.leave()
        response = self._json(status, payload, close=status in (408, 411, 413))
        response.headers["X-Moola-Request-Id"] = request_id
        return response

    def _get(self, request: Request) -> Response:
        state = self.state
        path = request.path
        if path == "/healthz":
            return self._json(200, state.health())
        if path == "/readyz":
            ready = state.ready and not state.draining
            reason = "draining" if state.draining else state.not_ready_reason
            body = {"ready": ready, "release": state.predictor.version}
            if not ready:
                body["reason"] = reason
            return self._json(200 if ready else 503, body)
        if path == "/metrics":
            text = state.metrics.render(*_metric_context(state))
            return Response(
                200, text.encode(), "text/plain; version=0.0.4; charset=utf-8", self._release()
            )
        return self._json(404, {"error": f"no such path {path!r}", "status": 404})

    def _json(self, status: int, payload: dict, close: bool = False) -> Response:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return Response(status, body, "application/json", self._release(), close)

    def _release(self) -> dict:
        return {"X-Moola-Release": self.state.predictor.version}

    @staticmethod
    def _request_id(request: Request) -> str:
        given = request.headers.get("x-moola-request-id", "")
        return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _metric_context(state: ServerState) -> tuple[dict, dict]:
    p = state.predictor
    info = {
        "release": p.version,
        "sha256": p.bundle_sha256 or p.manifest_sha256,
        "device": str(p.device),
        "role": state.args.role,
    }
    gauges = {
        "moola_serve_ready": ("1 when the server answers predictions.", int(state.ready)),
        "moola_serve_queue_windows": (
            "Windows waiting for a forward pass.",
            state.batcher.queued_windows(),
        ),
        "moola_serve_inflight_requests": ("Requests being handled.", state.inflight),
        "moola_serve_captures_unwritten_windows": (
            "Captured windows not written to disk yet (queued or being written).",
            state.captures.unwritten if state.captures is not None else 0,
        ),
        "moola_serve_uptime_seconds": (
            "Seconds since start.",
            round(time.time() - state.started, 3),
        ),
        "moola_serve_spare_waiting": (
            "1 when a spare waits to take over if this server dies (docs/serving.md).",
            int(state.spare is not None and state.spare.alive()),
        ),
        "moola_serve_takeovers": (
            "Spares that took over before this server (0: started by the host agent).",
            state.generation,
        ),
    }
    return info, gauges


# --- the process -------------------------------------------------------------------------------


def _write_state(path: str | None, payload: dict) -> None:
    if not path:
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(payload, fh)
    os.replace(tmp, path)


def add_parser(sub) -> None:
    """The `serve` subcommand's flags (see docs/serving.md)."""
    p = sub.add_parser("serve", help="answer predictions over HTTP for a release")
    p.add_argument("--release", required=True, help="extracted bundle folder (releases/<v>)")
    p.add_argument("--port", type=int, required=True, help="TCP port; 0 picks a free one")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help="largest forward pass in windows (1: batching off)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=DEFAULT_MAX_WAIT_MS,
        help="longest a batch waits for requests still arriving",
    )
    p.add_argument("--max-windows", type=int, default=DEFAULT_MAX_WINDOWS)
    p.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_MB)
    p.add_argument("--read-timeout-s", type=float, default=DEFAULT_READ_TIMEOUT_S)
    p.add_argument("--drain-timeout-s", type=float, default=DEFAULT_DRAIN_TIMEOUT_S)
    p.add_argument(
        "--capture-dir",
        default=None,
        help="captures root (default: WORKSPACE/captures when the release is in "
        "WORKSPACE/releases/)",
    )
    p.add_argument("--no-capture", action="store_true", help="do not write captures")
    p.add_argument("--capture-max-mb", type=float, default=DEFAULT_CAPTURE_MAX_MB)
    p.add_argument(
        "--capture-keep-mb",
        type=float,
        default=DEFAULT_CAPTURE_KEEP_MB,
        help="this release's captures beyond this are deleted, oldest first",
    )
    p.add_argument(
        "--capture-host-mb",
        type=float,
        default=DEFAULT_CAPTURE_HOST_MB,
        help="every release's captures on the host beyond this are deleted, oldest first",
    )
    p.add_argument(
        "--capture-keep-days",
        type=float,
        default=DEFAULT_CAPTURE_KEEP_DAYS,
        help="capture files older than this are deleted",
    )
    p.add_argument("--role", default="live", choices=("live", "shadow"))
    p.add_argument(
        "--spare",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="keep a forked copy that takes over if this server dies (CPU, live role; the "
        "host agent turns it on)",
    )
    p.add_argument(
        "--spare-after-s",
        type=float,
        default=SPARE_AFTER_S,
        help="a spare that took over is itself replaced by its spare only after serving this "
        "long (a faster death is left to the supervisor's back-off)",
    )
    p.add_argument(
        "--test-hold-dir",
        default=None,
        help="tests only: before each forward pass touch DIR/in-forward, wait while DIR/hold exists",
    )
    p.add_argument(
        "--state-file",
        default=None,
        help="write {pid, port, release, ready} here (the host's process manager)",
    )


def default_capture_dir(release: Path) -> Path | None:
    """WORKSPACE/captures for a release at WORKSPACE/releases/<v> (or reached via current)."""
    resolved = release.resolve()
    if resolved.parent.name == "releases":
        return resolved.parent.parent / "captures"
    return None


def yield_to_live(role: str) -> bool:
    """A shadow's answers are never waited for, so it must not take CPU from the live server on
    the same host: the calling thread (the main one, before any other starts, so every thread
    of the server inherits it) goes to nice 19 and SCHED_IDLE (Linux: runs only on CPU time no
    normal task wants), and torch computes on one thread, leaving the other cores to the live
    server. Returns whether anything changed (False for the live role)."""
    if role != "shadow":
        return False
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, 0, 19)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # only before the first inter-op parallel work
        torch.set_num_interop_threads(1)
    return True


def serve(args) -> int:
    """Run the server until SIGTERM/SIGINT; exit 0 after a drain, 3 when the release failed
    to load or pass golden parity (the reason is in the log and the state file)."""
    release = Path(args.release)
    if not (release / "manifest.json").is_file():
        print(f"moola serve: {release} has no manifest.json: check --release", file=sys.stderr)
        return 2
    yield_to_live(args.role)
    predictor = Predictor(release, args.device)
    state = ServerState(args, predictor)
    try:
        front = Front(args.host, args.port, App(state), args.read_timeout_s)
    except OSError as exc:
        print(f"moola serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    args.port = front.port
    return Lifetime(state, front).run()


class Spare:
    """The server's end of its spare: a copy of the server process, forked once the model is
    loaded and checked and before the batcher and captures start, that waits on a pipe.

    A server that ends on purpose (SIGTERM, SIGINT, a drain) writes "q" first and the spare
    exits. A server that dies without a word (SIGKILL, the OOM killer, a crash) closes the
    pipe with its death: the spare reads end-of-file, takes over the same listening socket
    (the connections queued meanwhile are answered) and serves within milliseconds, with no
    second model load. It then forks a spare of its own.

    CPU only: a CUDA context does not survive a fork. The model is loaded and checked on one
    torch thread and the thread count is set back after the fork: an OpenMP pool made before a
    fork hangs the copy's first parallel forward (GNU libgomp)."""

    def __init__(self, pid: int, pipe_w: int):
        self.pid = pid
        self._pipe_w: int | None = pipe_w

    def alive(self) -> bool:
        """Whether the spare still waits (an exited one is reaped here: no zombie)."""
        try:
            done, _status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return done == 0

    def reap(self, wait_s: float) -> bool:
        """Wait up to `wait_s` for a dismissed spare to exit; True once it has (and is reaped)."""
        deadline = time.monotonic() + wait_s
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def dismiss(self) -> None:
        """This server ends on purpose: the spare exits instead of taking over (idempotent)."""
        if self._pipe_w is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._pipe_w, b"q")
        with contextlib.suppress(OSError):
            os.close(self._pipe_w)
        self._pipe_w = None


class Lifetime:
    """One server process from its listener to its exit: the load (or, for a spare that took
    over, the takeover), the spare it forks, the signals, the drain, the state file."""

    def __init__(self, state: ServerState, front: Front, generation: int = 0, took_over=None):
        self.state, self.front, self.args = state, front, state.args
        self.predictor = state.predictor
        state.generation = generation  # 0: started by the host agent; n: the n-th takeover
        self.took_over = took_over  # {"from": pid, "at": time} for a spare that took over
        # when this process began (for a spare that took over: its takeover); its own spare,
        # forked before it serves, reads it for the --spare-after-s rule
        self.since = time.time()
        # the fork and the goodbye never cross; re-entrant: a signal handled on the thread that
        # is forking (a spare that took over forks on its main thread) takes it again
        self._spare_lock = threading.RLock()
        self.stop_reason: list[str] = []
        self.failed: list[str] = []
        self.threads: int | None = None  # torch's thread count while the model loads on one
        self.record: dict = {
            "pid": os.getpid(),
            "port": self.args.port,
            "release": None,
            "path": str(self.args.release),
            "ready": False,
            "started": time.time(),
        }

    # -- the spare ------------------------------------------------------------------------------

    def wants_spare(self) -> bool:
        return bool(getattr(self.args, "spare", False)) and self.args.role == "live"

    def fork_spare(self) -> None:
        """Fork the spare (see Spare) unless this server is already stopping or not on CPU."""
        device = getattr(self.predictor.device, "type", None)
        if not self.wants_spare() or device != "cpu":
            if self.wants_spare():
                print(
                    f"moola serve: no spare on {device}: a CUDA context does not survive fork",
                    file=sys.stderr,
                )
            return
        with self._spare_lock:
            if self.stop_reason:
                return
            sys.stdout.flush()
            sys.stderr.flush()
            pipe_r, pipe_w = os.pipe()
            try:
                pid = os.fork()
            except OSError as exc:  # out of memory or processes: serve on, without a spare
                os.close(pipe_r)
                os.close(pipe_w)
                print(f"moola serve: no spare: fork failed ({exc})", file=sys.stderr, flush=True)
                return
            if pid:
                os.close(pipe_r)
                self.state.spare = Spare(pid, pipe_w)
                return
        # the spare (this branch never returns)
        code = 1
        try:
            os.close(pipe_w)
            code = self._wait_then_take_over(pipe_r, self.front.abandon())
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _wait_then_take_over(self, pipe_r: int, listener) -> int:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a spare asked to stop just stops
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        server = os.getppid()
        word = os.read(pipe_r, 1)
        os.close(pipe_r)
        if word:
            return 0  # the server ended on purpose
        lived = time.time() - self.since
        me = f"moola serve: spare {os.getpid()}"
        if self.state.generation and lived < self.args.spare_after_s:
            print(
                f"{me}: the server (pid {server}) died {lived:.1f}s after it took over itself: "
                "not taking over again (the supervisor starts a server, with back-off)",
                file=sys.stderr,
                flush=True,
            )
            return 0
        print(
            f"{me}: the server (pid {server}) died: taking over {self.args.host}:{self.args.port}",
            file=sys.stderr,
            flush=True,
        )
        state = ServerState(self.args, self.predictor)
        front = Front(
            self.args.host, self.args.port, App(state), self.args.read_timeout_s, listener=listener
        )
        heir = Lifetime(
            state,
            front,
            self.state.generation + 1,
            {"from": server, "at": round(time.time(), 3)},
        )
        heir.threads = self.threads
        return heir.run()

    # -- becoming ready ------------------------------------------------------------------------

    def load(self) -> None:
        """The first server's load (on its own thread, while the front answers /healthz)."""
        predictor = self.predictor
        if self.wants_spare():
            import torch

            self.threads = torch.get_num_threads()
            torch.set_num_threads(1)  # no OpenMP pool before the fork (see Spare)
        try:
            detail = predictor.load()
        except Exception as exc:
            self.failed.append(f"{type(exc).__name__}: {_short(exc)}")
            self.state.not_ready_reason = f"the release failed to load: {self.failed[0]}"
            print(
                f"moola serve: not ready: {self.state.not_ready_reason}",
                file=sys.stderr,
                flush=True,
            )
            self._write({"failed": self.state.not_ready_reason})
            self.front.stop()
            return
        self.fork_spare()
        self.start_serving()
        print(
            f"moola serve: ready on {self.args.host}:{self.args.port}: {detail}"
            + (f"; spare pid {self.state.spare.pid}" if self.state.spare else ""),
            file=sys.stderr,
            flush=True,
        )

    def start_serving(self) -> None:
        """Captures and the batcher start, torch gets its threads back, the record says ready."""
        args, state = self.args, self.state
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
        capture_dir = args.capture_dir or default_capture_dir(Path(args.release))
        if not args.no_capture and capture_dir:
            state.captures = Captures(
                Path(capture_dir),
                self.predictor.version,
                args.role,
                args.capture_max_mb,
                args.capture_keep_mb,
                state.metrics,
                args.capture_host_mb,
                args.capture_keep_days,
            )
            state.captures.start()
        state.batcher.start()
        state.ready = True
        self.record.update(
            release=self.predictor.version,
            ready=True,
            device=self.predictor.device_facts,
            spare_pid=self.state.spare.pid if self.state.spare else None,
            generation=self.state.generation,
        )
        if self.took_over:
            self.record["took_over"] = self.took_over
        self._write({})

    def _write(self, extra: dict) -> None:
        """The state file: the host agent's record of this server. A spare that took over
        keeps what the agent added to it (how to start the server again)."""
        payload = {**self.record, **extra}
        if self.took_over and self.args.state_file:
            with contextlib.suppress(OSError, ValueError), open(self.args.state_file) as fh:
                payload = {**json.load(fh), **payload}
        _write_state(self.args.state_file, payload)

    # -- the process -----------------------------------------------------------------------------

    def _on_signal(self, signum, _frame) -> None:
        if not self.stop_reason:
            self.stop_reason.append(signal.Signals(signum).name)
            self.state.draining = True
            self.goodbye()
            self.front.stop()

    def goodbye(self) -> None:
        with self._spare_lock:
            if self.state.spare is not None:
                self.state.spare.dismiss()

    def run(self) -> int:
        args = self.args
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if self.took_over:
            # one thread here (the fork copied only the loader's): fork the next spare first
            self.fork_spare()
            self.start_serving()
            print(
                f"moola serve: serving {self.predictor.version} on {args.host}:{args.port} "
                f"(took over from pid {self.took_over['from']}; takeover {self.state.generation})"
                + (f"; spare pid {self.state.spare.pid}" if self.state.spare else ""),
                file=sys.stderr,
                flush=True,
            )
        else:
            self._write({})
            threading.Thread(target=self.load, name="load", daemon=True).start()
            print(
                f"moola serve: listening on {args.host}:{args.port} for {args.release}",
                file=sys.stderr,
                flush=True,
            )
        # the listener closes on stop(); what is in flight is answered within the drain timeout
        try:
            drained = self.front.run(args.drain_timeout_s)
        finally:
            self.goodbye()  # whatever ended the loop, it was not a death: no takeover
        if self.failed:
            return 3
        if self.state.ready:
            self.state.batcher.stop()
        if self.state.captures is not None:
            self.state.captures.close()
        if self.state.spare is not None:
            self.state.spare.reap(2.0)  # it exits on the goodbye; reaped here, no zombie left
        print(
            f"moola serve: stopped ({self.stop_reason[0] if self.stop_reason else 'shutdown'}); "
            f"{'drained' if drained else 'drain timed out'}",
            file=sys.stderr,
            flush=True,
        )
        if args.state_file:
            with contextlib.suppress(OSError):
                os.unlink(args.state_file)
        return 0 if drained else 1

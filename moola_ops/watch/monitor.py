"""Production monitoring from the captures (phase 8): traffic, errors, latency, labels, drift.

`monitor(table, reference, ...)` looks at the live answers in a window of time and reports:

- request rate and error rate, overall and per time bin,
- latency p50/p99 per time bin and overall (server-side wall time of each request),
- the mix of predicted labels (overall and per bin),
- drift of the inputs: the 11 features are computed from each captured window's OHLC exactly
  as in training (`moola_core.data.features`) and compared with the training data's
  distribution by the population stability index per feature,
  PSI = sum over bins (a - e) * ln(a / e), bins = deciles of the training values.
  Thresholds (the usual credit-scoring convention): < 0.1 stable, 0.1-0.25 moderate shift
  (WARNING), >= 0.25 major shift (CRITICAL).

The result is a Nagios state with perfdata and a Prometheus textfile, like `healthcheck`
(its atomic writer is reused). Time is bounded: at most `max_windows` captured windows (the
newest) have their features computed for PSI.

Light at import: numpy is imported inside the functions.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from moola_core.errors import MoolaError
from moola_core.spec import FEATURE_NAMES, LABELS
from moola_ops.serving.control import release_manifest
from moola_ops.watch.drift import (
    PSI_BINS,
    PSI_FLOOR,
    psi,
    reference_bins,
    reference_from_labeled,
    reference_from_run,
    window_features,
)
from moola_ops.watch.health import CRITICAL, OK, STATE_NAMES, UNKNOWN, WARNING, worst
from moola_ops.watch.health_output import _num as health_num
from moola_ops.watch.health_output import gauge_text

__all__ = [
    "PSI_BINS",
    "PSI_FLOOR",
    "Check",
    "MonitorPolicy",
    "MonitorResult",
    "monitor",
    "perfdata",
    "prometheus_text",
    "psi",
    "reference_bins",
    "reference_from_labeled",
    "reference_from_run",
    "render_text",
    "run_monitor",
    "save",
    "status_line",
    "window_features",
]

MAX_WINDOWS = 2000  # windows whose features are computed for PSI (the newest ones)
MIN_WINDOWS = 30  # fewer captured windows than this: PSI is not judged (too noisy)


@dataclass(frozen=True)
class MonitorPolicy:
    """Thresholds; the defaults are documented in docs/monitoring.md."""

    error_warn: float = 0.01
    error_crit: float = 0.05
    psi_warn: float = 0.10
    psi_crit: float = 0.25
    latency_warn_fraction: float = 0.8  # of the SLA, as healthcheck
    min_windows: int = MIN_WINDOWS


@dataclass
class Check:
    name: str
    state: int
    message: str


@dataclass
class MonitorResult:
    """What `invoke monitor` reports for one host."""

    host: str
    since: float
    until: float
    n_requests: int = 0  # live answered windows and error lines
    n_errors: int = 0
    rate_per_min: float = 0.0
    error_rate: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    sla_p99_ms: float | None = None
    releases: list[str] = field(default_factory=list)
    labels: dict[str, float] = field(default_factory=dict)
    series: dict[str, list] = field(default_factory=dict)  # per time bin
    psi: dict[str, float] = field(default_factory=dict)
    psi_windows: int = 0
    reference: str = ""
    checks: list[Check] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def state(self) -> int:
        return worst([c.state for c in self.checks]) if self.checks else UNKNOWN

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = STATE_NAMES[self.state]
        data["exit_code"] = self.state
        data["status_line"] = status_line(self)
        for c in data["checks"]:
            c["state"] = STATE_NAMES[c["state"]]
        return data


# --- the report --------------------------------------------------------------------------------


def _bin_seconds(span: float) -> float:
    """A readable time bin giving 20-120 points over the window."""
    for seconds in (1, 2, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400):
        if span / seconds <= 120:
            return float(seconds)
    return 86400.0


def monitor(
    table,
    reference: dict | None,
    *,
    host: str = "",
    since: float | None = None,
    until: float | None = None,
    sla_p99_ms: float | None = None,
    policy: MonitorPolicy | None = None,
    max_windows: int = MAX_WINDOWS,
    reference_name: str = "",
) -> MonitorResult:
    """Monitor figures and checks of the live rows of a CaptureTable (with OHLC for PSI)."""
    import numpy as np

    started = time.monotonic()
    policy = policy or MonitorPolicy()
    live = table.select(table["role"] == 0)
    t = live["time"]
    until = float(until if until is not None else (t.max() if len(t) else time.time()))
    since = float(since if since is not None else (t.min() if len(t) else until - 3600))
    result = MonitorResult(host, since, until, sla_p99_ms=sla_p99_ms, reference=reference_name)
    if table.skipped:  # a host writing lines its server never would: worth a look
        result.checks.append(
            Check(
                "captures",
                WARNING,
                f"{table.skipped} capture lines were damaged, too long or out of range and "
                "were skipped (in no figure): check the host's captures/",
            )
        )
    n = len(live)
    result.n_requests = n
    if n == 0:
        result.checks.append(Check("traffic", UNKNOWN, "no live requests captured in the window"))
        result.duration_s = time.monotonic() - started
        return result
    ok = live["status"] == 200
    result.n_errors = int((~ok).sum())
    result.error_rate = result.n_errors / n
    span = max(until - since, 1.0)
    result.rate_per_min = n / span * 60.0
    result.releases = sorted(set(live["release"].tolist()))
    lat = live["latency_ms"][ok]
    lat = lat[np.isfinite(lat)]
    if len(lat):
        result.p50_ms = float(np.percentile(lat, 50))
        result.p99_ms = float(np.percentile(lat, 99))
    labels = live["label"][ok]
    counts = np.bincount(labels[labels >= 0].astype(int), minlength=len(LABELS))
    result.labels = {name: float(counts[i] / max(1, counts.sum())) for i, name in enumerate(LABELS)}

    # per time bin
    width = _bin_seconds(span)
    edges = np.arange(since, until + width, width)
    which = np.clip(((t - since) // width).astype(int), 0, len(edges) - 2)
    series: dict[str, list] = {"t": edges[:-1].tolist(), "bin_s": [width] * (len(edges) - 1)}
    series.update(requests=[], errors=[], p50_ms=[], p99_ms=[])
    series.update({f"label_{name}": [] for name in LABELS})
    for b in range(len(edges) - 1):
        in_bin = which == b
        good = in_bin & ok
        series["requests"].append(int(in_bin.sum()))
        series["errors"].append(int((in_bin & ~ok).sum()))
        lb = live["latency_ms"][good]
        series["p50_ms"].append(float(np.percentile(lb, 50)) if len(lb) else None)
        series["p99_ms"].append(float(np.percentile(lb, 99)) if len(lb) else None)
        lab = live["label"][good]
        for i, name in enumerate(LABELS):
            series[f"label_{name}"].append(int((lab == i).sum()))
    series["bin_s"][-1] = max(1.0, min(width, until - edges[-2]))  # the last bin may be partial
    result.series = series

    # checks
    if result.error_rate >= policy.error_crit:
        state = CRITICAL
    elif result.error_rate >= policy.error_warn:
        state = WARNING
    else:
        state = OK
    result.checks.append(
        Check(
            "errors",
            state,
            f"{100 * result.error_rate:.2f}% of {n} requests "
            f"failed ({result.rate_per_min:.1f}/min)",
        )
    )
    if result.p99_ms is not None:
        if sla_p99_ms:
            if result.p99_ms > sla_p99_ms:
                state = CRITICAL
            elif result.p99_ms > policy.latency_warn_fraction * sla_p99_ms:
                state = WARNING
            else:
                state = OK
            msg = f"p99 {result.p99_ms:.1f} ms (SLA {sla_p99_ms:g} ms)"
        else:
            state, msg = OK, f"p99 {result.p99_ms:.1f} ms (no SLA known)"
        result.checks.append(Check("latency", state, msg))

    if reference is not None and live.ohlc is not None:
        have = np.flatnonzero(ok & live["has_ohlc"])
        chosen = have[np.argsort(t[have])[-max_windows:]]
        result.psi_windows = int(len(chosen))
        if len(chosen):
            xs, valid = window_features(live.ohlc[chosen])
            for j, name in enumerate(FEATURE_NAMES):
                values = xs[..., j][valid]
                result.psi[name] = psi(reference[name], values) if len(values) else math.nan
        if result.psi_windows < policy.min_windows:
            result.checks.append(
                Check(
                    "drift",
                    OK,
                    f"only {result.psi_windows} windows; PSI is judged from {policy.min_windows}",
                )
            )
        elif not any(math.isfinite(v) for v in result.psi.values()):
            result.checks.append(
                Check(
                    "drift",
                    WARNING,
                    f"none of {result.psi_windows} windows "
                    "has a bar with valid features (no swings): the inputs "
                    "look unlike the training data",
                )
            )
        else:
            finite = {k: v for k, v in result.psi.items() if math.isfinite(v)}
            top = max(finite, key=lambda k: finite[k])
            value = finite[top]
            if value >= policy.psi_crit:
                state = CRITICAL
            elif value >= policy.psi_warn:
                state = WARNING
            else:
                state = OK
            shifted = [k for k, v in result.psi.items() if v >= policy.psi_warn]
            msg = f"max PSI {value:.3f} ({top}) over {result.psi_windows} windows"
            if shifted:
                msg += f"; shifted: {', '.join(shifted)}"
            result.checks.append(Check("drift", state, msg))
    result.duration_s = time.monotonic() - started
    return result


def save(result: MonitorResult, cache: str | os.PathLike) -> Path:
    """Keep the latest result per host for the report: <cache>/<host>/monitor.json."""
    path = Path(cache) / result.host / "monitor.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_dict()))
    os.replace(tmp, path)
    return path


# --- the task's flow: pull (bounded), reference, compute, save ---------------------------------


def _resolve_reference(spec: str, release: str | None, manifest: dict | None, runs_dir, cache):
    """(reference bins, name): --reference FILE.parquet or RUN_ID, else the release's run."""
    cache = Path(cache)
    if spec:
        if spec.endswith(".parquet") or Path(spec).is_file():
            if not Path(spec).is_file():
                raise MoolaError(f"--reference {spec} does not exist; give a labeled parquet")
            from moola_core.data.labeled import read_labeled

            return reference_from_labeled(read_labeled(spec)), spec
        return reference_from_run(spec, runs_dir, cache), f"run {spec}"
    if release is None:
        return None, ""
    by_release = cache / "reference" / f"release-{release}.json"
    if by_release.is_file():
        saved = json.loads(by_release.read_text())
        return saved["bins"], saved["name"]
    if manifest is None:
        return None, ""
    run_id = manifest.get("run_id", "")
    bins = reference_from_run(run_id, runs_dir, cache)
    name = f"run {run_id} (training data of {release})"
    by_release.parent.mkdir(parents=True, exist_ok=True)
    by_release.write_text(json.dumps({"bins": bins, "name": name}))
    return bins, name


PULL_CANCEL_WAIT_S = 2.0  # after its cancel, how long the pull may take to let go
FIGURES_RESERVE_S = 5.0  # of --timeout, kept for the figures (at most half of it)


def run_monitor(
    host_name: str,
    *,
    since: str = "1h",
    reference: str = "",
    runs_dir: str | os.PathLike = "runs",
    inventory=None,
    inventory_path: str | None = None,
    cache=None,
    timeout_s: float = 60.0,
    pull: bool = True,
    policy: MonitorPolicy | None = None,
    save_result: bool = True,
) -> MonitorResult:
    """`invoke monitor`: pull, compute over [since, now], save for the report; all of it within
    `timeout_s`.

    The pull gets what the figures do not need; a host that has not sent its captures by then
    has its session cancelled (the listing is killed on the host, a transfer cut: nothing of
    the pull runs on) and the figures come from the local cache, with an UNKNOWN check saying
    so. Figures not computed by the deadline (a new release's training reference is built
    once) are an UNKNOWN result, not saved over the last complete one. A cron run always ends
    in time and always prints one status line; the threads used are daemons, so nothing left
    behind holds the interpreter.
    """
    import threading

    from moola_ops.serving.captures import DEFAULT_CACHE, parse_since, resolve_host
    from moola_ops.transport import HostSession

    started = time.monotonic()
    deadline = started + timeout_s
    cache = Path(cache) if cache is not None else DEFAULT_CACHE
    now = time.time()
    start = parse_since(since, now)
    host = resolve_host(host_name, inventory, inventory_path)
    box: dict[str, Any] = {}
    session = HostSession(host)

    def work() -> None:
        try:
            box.update(_pull(session, host, cache, start))
        except Exception as exc:  # reported as a check, never a traceback in cron
            box["error"] = str(exc) or type(exc).__name__

    extra: list[Check] = []
    if pull:
        thread = threading.Thread(target=work, daemon=True, name=f"monitor-pull-{host.name}")
        thread.start()
        reserve = min(FIGURES_RESERVE_S, timeout_s / 2)
        thread.join(max(0.5, deadline - reserve - time.monotonic()))
        if thread.is_alive():
            session.cancel()  # kills what runs on the host, cuts a read: the pull lets go
            thread.join(PULL_CANCEL_WAIT_S)
            extra.append(
                Check(
                    "pull",
                    UNKNOWN,
                    f"{host.name} did not send its captures within "
                    f"{timeout_s:g} s; figures are from the local cache",
                )
            )
        elif "error" in box:
            extra.append(
                Check(
                    "pull",
                    UNKNOWN,
                    f"captures not pulled ({box['error']}); figures are from the local cache",
                )
            )
    figures: dict[str, Any] = {}

    def compute() -> None:
        try:
            figures["result"] = _figures(
                host, cache, start, now, reference, runs_dir, box, policy=policy
            )
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            figures["error"] = exc

    thread = threading.Thread(target=compute, daemon=True, name=f"monitor-figures-{host.name}")
    thread.start()
    thread.join(max(0.5, deadline - time.monotonic()))
    if thread.is_alive():
        result = MonitorResult(host=host.name, since=start, until=now)
        result.checks = extra + [
            Check(
                "figures",
                UNKNOWN,
                f"not computed within --timeout {timeout_s:g} s (a new release's training "
                f"reference is built once, then cached): run `invoke monitor --host {host.name} "
                "--timeout 600` once",
            )
        ]
        result.duration_s = time.monotonic() - started
        return result
    if "error" in figures:
        raise figures["error"]
    result = figures["result"]
    result.checks = extra + result.checks
    result.duration_s = time.monotonic() - started
    if save_result:
        save(result, cache)
    return result


def _pull(session, host, cache: Path, start: float) -> dict[str, Any]:
    """Pull the host's captures into the cache; the release serving most live requests since
    `start` and its manifest (one SSH connection)."""
    from moola_ops.serving.captures import load_table
    from moola_ops.serving.captures_pull import pull_captures

    out: dict[str, Any] = {}
    with session:
        out["pull"] = pull_captures(session, host, cache)
        live = load_table(cache, host.name, since=start)
        live = live.select(live["role"] == 0)
        if len(live):
            import numpy as np

            names, counts = np.unique(live["release"], return_counts=True)
            out["release"] = str(names[int(np.argmax(counts))])
            out["manifest"] = release_manifest(session, host, out["release"])
    return out


def _figures(host, cache, start, now, reference, runs_dir, pulled, *, policy) -> MonitorResult:
    """The monitor's figures from the local cache (and what the pull learnt)."""
    from moola_ops.serving.captures import load_table

    table = load_table(cache, host.name, since=start, with_ohlc=True)
    release = pulled.get("release")
    if release is None:
        live = table["release"][table["role"] == 0]
        release = str(live[-1]) if len(live) else None
    bins, name = _resolve_reference(reference, release, pulled.get("manifest"), runs_dir, cache)
    sla = host.latency_sla_ms or (pulled.get("manifest") or {}).get("latency_sla_p99_ms")
    result = monitor(
        table,
        bins,
        host=host.name,
        since=start,
        until=now,
        sla_p99_ms=sla,
        policy=policy,
        reference_name=name,
    )
    if bins is None and len(table):
        result.checks.append(
            Check(
                "drift",
                UNKNOWN,
                f"no training reference for {release}: pass --reference FILE|RUN_ID",
            )
        )
    return result


# --- the result as Nagios plugin output (status line + perfdata), long text and a Prometheus
# textfile document, as `healthcheck` writes them (moola_ops/watch/health_output.py) ---------


def _num(value: float) -> str:
    return health_num(value)


def perfdata(result: MonitorResult, policy: MonitorPolicy | None = None) -> str:
    """Nagios perfdata: rate, error rate, p50/p99, max PSI and PSI per feature."""
    if policy is None:
        policy = MonitorPolicy()
    parts = [
        f"'rate_per_min'={_num(round(result.rate_per_min, 3))};;;0",
        f"'error_rate'={_num(round(result.error_rate, 6))};{policy.error_warn:g};"
        f"{policy.error_crit:g};0;1",
    ]
    if result.p50_ms is not None:
        parts.append(f"'p50_ms'={_num(round(result.p50_ms, 3))}ms;;;0")
    if result.p99_ms is not None:
        sla = result.sla_p99_ms
        warn = f"{policy.latency_warn_fraction * sla:g}" if sla else ""
        crit = f"{sla:g}" if sla else ""
        parts.append(f"'p99_ms'={_num(round(result.p99_ms, 3))}ms;{warn};{crit};0")
    finite = {k: v for k, v in result.psi.items() if math.isfinite(v)}
    if finite:
        parts.append(
            f"'psi_max'={_num(round(max(finite.values()), 4))};{policy.psi_warn:g};"
            f"{policy.psi_crit:g};0"
        )
        parts += [f"'psi_{k}'={_num(round(v, 4))};;;0" for k, v in finite.items()]
    parts.append(f"'requests'={result.n_requests};;;0")
    return " ".join(parts)


def status_line(result: MonitorResult) -> str:
    """MOOLA-MONITOR STATE - summary | perfdata (one line, Nagios plugin output)."""
    bad = [c for c in result.checks if c.state != OK]
    if bad:
        text = "; ".join(f"{c.name} {STATE_NAMES[c.state]}: {c.message}" for c in bad)
    else:
        text = "; ".join(c.message for c in result.checks)
    text = f"{result.host}: {text}" if result.host else text
    text = " ".join(text.replace("|", "/").split())
    return f"MOOLA-MONITOR {STATE_NAMES[result.state]} - {text} | {perfdata(result)}"


def prometheus_text(result: MonitorResult, now: float | None = None) -> str:
    """The result as a Prometheus textfile-collector document."""
    now = time.time() if now is None else now
    h = {"host": result.host}
    finite = {k: v for k, v in result.psi.items() if math.isfinite(v)}
    families = [
        (
            "moola_monitor_state",
            "Nagios state of the monitor (0 OK .. 3 UNKNOWN).",
            [(h, result.state)],
        ),
        (
            "moola_monitor_requests_per_minute",
            "Live requests per minute in the window.",
            [(h, result.rate_per_min)],
        ),
        (
            "moola_monitor_error_ratio",
            "Share of live requests that failed.",
            [(h, result.error_rate)],
        ),
        (
            "moola_monitor_latency_seconds",
            "Server-side latency quantiles in the window.",
            [
                ({**h, "quantile": q}, v / 1000)
                for q, v in (("0.5", result.p50_ms), ("0.99", result.p99_ms))
                if v is not None
            ],
        ),
        (
            "moola_monitor_label_ratio",
            "Share of each predicted label.",
            [({**h, "label": k}, v) for k, v in result.labels.items()],
        ),
        (
            "moola_monitor_feature_psi",
            "Population stability index per input feature.",
            [({**h, "feature": k}, v) for k, v in finite.items()],
        ),
        (
            "moola_monitor_last_run_timestamp_seconds",
            "When the monitor last ran (unix time).",
            [(h, round(now, 3))],
        ),
    ]
    # every value rounded to 6 decimals before it is printed
    rounded = [
        (name, text, [(lab, round(float(v), 6)) for lab, v in s]) for name, text, s in families
    ]
    return gauge_text(rounded)


def render_text(result: MonitorResult) -> list[str]:
    """Long output lines after the status line."""
    lines = [
        f"window {_iso(result.since)} .. {_iso(result.until)}; releases "
        f"{', '.join(result.releases) or '-'}",
        f"requests {result.n_requests} ({result.rate_per_min:.1f}/min), errors "
        f"{result.n_errors} ({100 * result.error_rate:.2f}%)",
    ]
    if result.p99_ms is not None:
        lines.append(f"latency p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms")
    if result.labels:
        lines.append("labels " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in result.labels.items()))
    if result.psi:
        lines.append(f"PSI vs {result.reference or 'training'} ({result.psi_windows} windows):")
        lines += [f"  {k:<20} {v:.3f}" for k, v in result.psi.items()]
    for c in result.checks:
        lines.append(f"[{STATE_NAMES[c.state]}] {c.name}: {c.message}")
    return lines


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")

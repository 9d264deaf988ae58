"""Gather what the project knows (runs, the deployment log, captures, A/B and monitor results)
and write one self-contained HTML page: inline SVG figures, inline CSS, no script, no network.

Every section is optional: a section whose inputs do not exist yet says so in one line instead
of failing the report, so `invoke report` is useful from the first training run onwards.
"""

from __future__ import annotations

import html
import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moola_core.errors import MoolaError

DEFAULT_OUT = Path("reports/moola-report.html")
N_SPAN_WINDOWS = 3  # best and worst test windows shown each
N_REAL_WINDOWS = 6
DEPLOY_PHASES = ("deploy", "rollback", "drill", "restore")


@dataclass
class Section:
    id: str
    title: str
    body: list[str] = field(default_factory=list)  # HTML fragments
    figures: list[str] = field(default_factory=list)  # figure ids
    missing: str = ""  # one line: why the section has no figure yet


@dataclass
class ReportResult:
    path: Path
    sections: list[Section]
    seconds: float

    @property
    def figures(self) -> list[str]:
        return [f for s in self.sections for f in s.figures]

    def summary(self) -> str:
        empty = [s.title for s in self.sections if s.missing]
        note = f"; without data yet: {', '.join(empty)}" if empty else ""
        return f"{self.path} ({len(self.figures)} figures, {self.seconds:.1f} s){note}"


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _figure(section: Section, fig_id: str, svg: str, caption: str) -> None:
    section.figures.append(fig_id)
    section.body.append(
        f'<figure class="fig" id="fig-{fig_id}">{svg}<figcaption>{_esc(caption)}</figcaption>'
        "</figure>"
    )


def _table(head: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _parse_time(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


# --- sections ----------------------------------------------------------------------------------


def _candidates(runs_dir: Path) -> Section:
    from moola_core.train import runs as R

    section = Section("candidates", "Candidates: training curves and comparison")
    found = R.list_runs(runs_dir)
    if not found:
        section.missing = f"no finished training runs in {runs_dir} (train with `invoke train`)"
        return section
    from moola_ops.report import figures

    histories = {}
    for run in found:
        path = run.path / R.HISTORY
        if path.is_file():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if rows:
                histories[run.run_id] = rows
    if histories:
        _figure(section, "curves", figures.training_curves(histories, "curves"),
                "Training (dashed) and validation (solid) loss per epoch, and validation span IoU; "
                "the star marks the epoch whose weights were kept (early stopping).")  # fmt: skip
    from moola_core.train.compare import compare_runs

    selected = _selected(runs_dir)
    for split, note in (("val", "the split the choice is made on"),
                        ("test", "reported once, after the choice")):  # fmt: skip
        try:
            comparison = compare_runs(runs_dir, split=split, n_boot=500)
        except MoolaError as exc:
            section.body.append(f"<p class='note'>{_esc(exc)}</p>")
            continue
        metrics = ("span_iou", "accuracy")
        _figure(section, f"compare-{split}",
                figures.comparison(comparison.rows, metrics, split, f"compare-{split}"),
                f"Candidates and baselines on {split} ({note}), 95% bootstrap CIs over "
                "windows.")  # fmt: skip
        rows = []
        for r in comparison.rows:
            mark = (
                " (selected)"
                if selected and selected in r["run_ids"] and r["kind"] == "model"
                else ""
            )
            rows.append([r["variant"] + mark, r["kind"], r["n"]]
                        + [_fmt(r["metrics"][m]) for m in ("span_iou", "accuracy", "start_hit3",
                                                           "end_hit3", "boundary_mae")])  # fmt: skip
        section.body.append(_table(["variant", "kind", "windows", "span IoU", "accuracy",
                                    "start ±3", "end ±3", "boundary MAE"], rows))  # fmt: skip
    return section


def _fmt(m: dict) -> str:
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def _selected(runs_dir: Path) -> str | None:
    try:
        return json.loads((runs_dir / "selected.json").read_text()).get("run_id")
    except (OSError, ValueError):
        return None


def _chosen_run(runs_dir: Path):
    from moola_core.train import runs as R

    found = [r for r in R.list_runs(runs_dir) if (r.path / R.PREDICTIONS).is_file()]
    if not found:
        return None
    selected = _selected(runs_dir)
    for run in found:
        if run.run_id == selected:
            return run
    return max(found, key=lambda r: r.metrics.get("val", {}).get("span_iou", {}).get("value", 0))


def _spans(runs_dir: Path, real: bool) -> Section:
    section = Section("spans", "Predicted vs true spans")
    run = _chosen_run(runs_dir)
    if run is None:
        section.missing = "no run with predictions to draw"
        return section
    import numpy as np

    from moola_core.metrics import span_iou
    from moola_core.spec import LABELS
    from moola_core.train import runs as R
    from moola_ops.report import figures

    predictions = json.loads((run.path / R.PREDICTIONS).read_text())
    test = predictions["test"]
    truth = test["truth"]
    iou = span_iou(test["start"], test["end"], truth["start"], truth["end"])
    order = np.argsort(iou, kind="stable")
    picks = [(int(i), "best") for i in order[::-1][:N_SPAN_WINDOWS]]
    picks += [(int(i), "worst") for i in order[:N_SPAN_WINDOWS]]
    frame = _labeled_frame(run)
    if frame is None:
        section.body.append("<p class='note'>the run's labeled data cannot be loaded, so its test "
                            "windows cannot be drawn</p>")  # fmt: skip
    else:
        by_id = {str(w): i for i, w in enumerate(frame["window_id"])}
        windows = []
        for i, kind in picks:
            row = by_id.get(str(test["window_id"][i]))
            if row is None:
                continue
            ohlc = np.asarray(frame["features"].iloc[row].tolist(), dtype=float).reshape(-1, 4)
            right = "right" if test["label"][i] == truth["label"][i] else "wrong"
            windows.append({
                "ohlc": ohlc,
                "true_span": (truth["start"][i], truth["end"][i]),
                "pred_span": (test["start"][i], test["end"][i]),
                "title": f"{kind}: {test['window_id'][i]}  IoU {iou[i]:.2f}\n"
                         f"true {LABELS[truth['label'][i]]}, predicted "
                         f"{LABELS[test['label'][i]]} ({right})",
            })  # fmt: skip
        if windows:
            _figure(section, "spans-test", figures.span_grid(windows, "spans-test"),
                    f"Test windows of {run.run_id}: the {N_SPAN_WINDOWS} best and "
                    f"{N_SPAN_WINDOWS} worst by span IoU. Green band: true span; hatched "
                    "orange: predicted span.")  # fmt: skip
    if real:
        try:
            windows = _real_windows(run, runs_dir)
        except MoolaError as exc:
            section.body.append(f"<p class='note'>real-bar sample: {_esc(exc)}</p>")
        else:
            _figure(section, "spans-real", figures.span_grid(windows, "spans-real"),
                    "The same model on the real 1-minute sample (moola_core.data.real, one US "
                    "stock): real bars have no labels, so only the predicted span is drawn.")  # fmt: skip
    return section


def _labeled_frame(run):
    from moola_core.train.config import load_config
    from moola_core.train.data import load_labeled_frame
    from moola_core.train.runs import CONFIG

    try:
        return load_labeled_frame(load_config(run.path / CONFIG))
    except (MoolaError, OSError):
        return None


def _real_windows(run, runs_dir: Path) -> list[dict]:
    import numpy as np
    import torch

    from moola_core.data.bars import session_bounds
    from moola_core.data.real import load_real_sample
    from moola_core.spec import LABELS, WINDOW_LEN
    from moola_core.train.runs import load_model
    from moola_ops.monitor import window_features

    bars = load_real_sample()
    ohlc = bars[["open", "high", "low", "close"]].to_numpy(dtype=float)
    starts = []
    for a, b in session_bounds(bars["timestamp"], 5.0):
        starts += list(range(int(a), int(b) - WINDOW_LEN + 1, WINDOW_LEN))
    step = max(1, len(starts) // N_REAL_WINDOWS)
    starts = starts[::step][:N_REAL_WINDOWS]
    windows = np.stack([ohlc[s : s + WINDOW_LEN] for s in starts])
    x, valid = window_features(windows)
    model = load_model(run.run_id, runs_dir)
    with torch.no_grad():
        pred = model.predict(torch.from_numpy(x), torch.from_numpy(valid))
    out = []
    for i, s in enumerate(starts):
        label = int(pred["label"][i])
        p = float(pred["class_probs"][i][label])
        stamp = bars["timestamp"].iloc[s].strftime("%m-%d %H:%M")
        out.append({
            "ohlc": windows[i],
            "pred_span": (int(pred["start"][i]), int(pred["end"][i])),
            "title": f"real bars from {stamp} UTC\npredicted {LABELS[label]} (p {p:.2f})",
        })  # fmt: skip
    return out


def _hosts_section(events: list[dict], hosts: list[str], cache: Path) -> Section:
    from moola_ops.report import figures

    section = Section("hosts", "Hosts: deployments, health and served latency")
    timeline: dict[str, list[dict]] = {h: [] for h in hosts}
    runs: dict[tuple, list[dict]] = {}
    for e in events:
        if e.get("host") in timeline and e.get("phase") in DEPLOY_PHASES:
            runs.setdefault((e["deployment"], e["host"], e["phase"]), []).append(e)
    for (_deployment, host, phase), lines in runs.items():
        failed = any(e["status"] in ("failed", "aborted", "refused") for e in lines)
        last = max(lines, key=lambda e: e["time"])
        timeline[host].append({"time": _parse_time(last["time"]), "kind": phase,
                               "status": "failed" if failed else "ok",
                               "text": last.get("bundle") or ""})  # fmt: skip
    for e in events:
        if e.get("host") in timeline and e.get("phase") == "ab":
            decision = (e.get("detail") or {}).get("decision", "")
            timeline[e["host"]].append({"time": _parse_time(e["time"]), "kind": "ab",
                                        "status": e["status"], "text": f"A/B: {decision}"})  # fmt: skip
    if any(timeline.values()):
        _figure(section, "timeline", figures.timeline(timeline, "timeline"),
                "Every deploy, rollback and A/B decision in the deployment log, per host; the "
                "label is the bundle version the run moved to.")  # fmt: skip
        rows = []
        for host in hosts:
            for item in sorted(timeline[host], key=lambda x: x["time"]):
                rows.append([host, item["time"].strftime("%Y-%m-%d %H:%M:%S"), item["kind"],
                             item["status"], item["text"]])  # fmt: skip
        section.body.append(_table(["host", "time (UTC)", "what", "status", "bundle"], rows))
    else:
        section.body.append("<p class='note'>no deploy or rollback in the log yet</p>")
    health: dict[str, list[dict]] = {}
    for e in events:
        if e.get("host") in timeline and e.get("phase") == "healthcheck":
            d = e.get("detail") or {}
            health.setdefault(e["host"], []).append({
                "time": _parse_time(e["time"]), "p99_ms": d.get("p99_ms"),
                "state": d.get("state") or ("OK" if e["status"] == "ok" else "CRITICAL"),
            })  # fmt: skip
    if health:
        _figure(section, "health", figures.health_history(health, "health"),
                "Health checks from the log: p99 latency measured by deep checks, and the "
                "Nagios state of every check.")  # fmt: skip
    else:
        section.body.append("<p class='note'>no health checks in the log yet</p>")
    latencies = {}
    from moola_ops.captures import load_table

    for host in hosts:
        table = load_table(cache, host)
        if len(table):
            ok = (table["role"] == 0) & (table["status"] == 200)
            latencies[host] = table["latency_ms"][ok]
    if latencies:
        _figure(section, "latency", figures.latency_histogram(latencies, "latency"),
                "Server-side latency of every captured live request (pulled by `invoke ab` or "
                "`invoke monitor`); dotted lines mark each host's p99.")  # fmt: skip
    else:
        section.body.append("<p class='note'>no captured requests in the local cache yet "
                            "(`invoke monitor --host H` pulls them)</p>")  # fmt: skip
    if not section.figures:
        section.missing = "no deployments, health checks or captures yet"
    return section


def ab_hosts(hosts: list[str], events: list[dict], bundle: str | None) -> list[str]:
    """The report's hosts, then every host where an A/B judged `bundle` as the candidate (the
    evidence a promote acted on: it ran on one host, the promote may have deployed elsewhere)."""
    out = list(hosts)
    for e in events:
        host = e.get("host")
        if e.get("phase") == "ab" and bundle and e.get("bundle") == bundle and host not in out:
            out.append(host)
    return out


def _ab_section(hosts: list[str], cache: Path) -> Section:
    from moola_ops.report import figures

    section = Section("ab", "A/B: shadow against live")
    for host in hosts:
        path = cache / host / "ab.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        when = f", until {_iso(result['until'])}" if result.get("until") else ""
        _figure(section, f"ab-{host}", figures.ab_figure(result, f"ab-{host}"),
                f"{host}: the shadow {result['shadow_release']} and the live release "
                f"{result['live_release']} on the same requests{when}.")  # fmt: skip
        section.body.append(f"<p class='decision {result['decision']}'>{_esc(host)}: "
                            f"{_esc(result['sentence'])}</p>")  # fmt: skip
    if not section.figures:
        section.missing = "no A/B result yet (`invoke shadow start`, then `invoke ab`)"
    return section


def _drift_section(hosts: list[str], cache: Path) -> Section:
    from moola_ops.report import figures

    section = Section("drift", "Monitoring and input drift")
    for host in hosts:
        path = cache / host / "monitor.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        if not result.get("n_requests"):  # nothing to draw: the status line says why
            section.body.append(f"<p class='status {result['state']}'>{_esc(result['status_line'].split(' | ')[0])}</p>")  # fmt: skip
            continue
        _figure(section, f"drift-{host}", figures.drift_figure(result, f"drift-{host}"),
                f"{host}, {_iso(result['since'])} to {_iso(result['until'])}: PSI of each "
                "input feature against the training data (dashed: 0.1 warning, 0.25 "
                "critical), and live traffic over time.")  # fmt: skip
        section.body.append(f"<p class='status {result['state']}'>{_esc(result['status_line'].split(' | ')[0])}</p>")  # fmt: skip
    if not section.figures:
        section.missing = "no monitor result yet (`invoke monitor --host H`)"
    return section


def _checklist_section(events: list[dict], deployment: str | None) -> tuple[Section, Any]:
    from moola_ops.checklist import checklist_states, load_checklist

    section = Section("checklist", "The checklist")
    try:
        spec = load_checklist()
        report = checklist_states(spec, events, deployment)
    except MoolaError as exc:
        if deployment:
            raise
        section.missing = str(exc)
        return section, None
    rows = [[s.phase, s.step, s.state, s.by, s.at.replace("T", " ")[:19], s.detail[:140]]
            for s in report.steps]  # fmt: skip
    section.body.append(_table(["phase", "step", "state", "by", "when (UTC)", "detail"], rows))
    return section, report


# --- the page ----------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;
background:#fafafa}
header{background:#1f2d3d;color:#fff;padding:16px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#cfd8e3;font-size:13px}
nav{padding:8px 32px;background:#eef2f6;font-size:13px}nav a{margin-right:16px;color:#1f4e79}
main{padding:8px 32px 48px;max-width:1180px}
section{background:#fff;border:1px solid #e3e7ec;border-radius:6px;padding:8px 20px 16px;margin:16px 0}
h2{font-size:18px;border-bottom:1px solid #eee;padding-bottom:6px}
figure{margin:12px 0}figure svg{max-width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#555;margin-top:4px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border-bottom:1px solid #eee;padding:3px 10px;text-align:left}th{background:#f3f5f8}
.note{color:#777;font-style:italic;font-size:13px}
.decision{font-weight:600;padding:6px 10px;border-radius:4px;background:#f3f5f8}
.decision.promote{background:#e6f4ea}.decision.keep{background:#fdecea}
.status{font-family:monospace;font-size:12px}.status.CRITICAL{color:#b71c1c}
.status.WARNING{color:#e65100}.status.OK{color:#1b5e20}
"""


def render_page(title: str, subtitle: str, sections: list[Section]) -> str:
    """The whole page as one HTML string (no script, no external resource)."""
    nav = "".join(f'<a href="#{s.id}">{_esc(s.title)}</a>' for s in sections)
    parts = []
    for s in sections:
        body = "".join(s.body)
        if s.missing:
            body += f"<p class='note'>{_esc(s.missing)}</p>"
        parts.append(f'<section id="{s.id}"><h2>{_esc(s.title)}</h2>{body}</section>')
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{_esc(title)}</h1><p>{_esc(subtitle)}</p></header><nav>{nav}</nav>"
        f"<main>{''.join(parts)}</main></body></html>\n"
    )


def build_report(
    out: str | os.PathLike | None = None,
    *,
    deployment: str | None = None,
    runs_dir: str | os.PathLike = "runs",
    log: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    hosts: list[str] | None = None,
    real: bool = True,
) -> ReportResult:
    """Write the report page and return where it is and what it holds."""
    from moola_ops.captures import DEFAULT_CACHE
    from moola_ops.journal import log_path, read_events

    started = time.monotonic()
    runs_dir = Path(runs_dir)
    cache = Path(cache) if cache is not None else DEFAULT_CACHE
    out = Path(out) if out else DEFAULT_OUT
    events = read_events(log)
    checklist, state = _checklist_section(events, deployment)
    if hosts is None:
        # --deployment: its hosts. Else every host the log or the cache knows: a promote
        # deploys host by host, so the newest deployment alone would hide the others
        hosts = list(state.hosts) if deployment and state is not None and state.hosts else []
        if not hosts:
            seen = {e["host"] for e in events if e.get("host")}
            if cache.is_dir():
                seen |= {p.name for p in cache.iterdir() if p.is_dir() and p.name != "reference"}
            hosts = sorted(seen)
    bundle = state.bundle if state is not None else None
    sections = [
        _candidates(runs_dir),
        _spans(runs_dir, real),
        _hosts_section(events, hosts, cache),
        _ab_section(ab_hosts(hosts, events, bundle), cache),
        _drift_section(hosts, cache),
        checklist,
    ]
    what = f"deployment {state.deployment} (bundle {state.bundle or '-'})" if (
        state is not None and state.deployment) else "no deployment yet"  # fmt: skip
    subtitle = (f"{what}; hosts {', '.join(hosts) or '-'}; log {log_path(log)}; written "
                f"{_iso(time.time())}")  # fmt: skip
    page = render_page("Moola report", subtitle, sections)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return ReportResult(out, sections, time.monotonic() - started)

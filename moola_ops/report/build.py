"""Gather what the project knows (runs, the deployment log, captures, A/B and monitor results)
and write one self-contained HTML page: inline SVG figures, inline CSS, no script, no network.

Every section is optional: a section whose inputs do not exist yet says so in one line instead
of failing the report, so `invoke report` is useful from the first training run onwards. The
report never fails on its data either: a figure or section that odd data (a NaN, a CI equal to
its value, a torn ab.json) cannot draw says why on the page, and the rest is written.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moola_core.errors import MoolaError
from moola_ops.log import steps
from moola_ops.report.labeling import labeling_section
from moola_ops.report.models import _candidates, _reliability, _spans
from moola_ops.report.page import (
    Section,
    _esc,
    _figure,
    _iso,
    _parse_time,
    _reason,
    _table,
    draw_figure,
    drawing,
    render_page,
)

DEFAULT_OUT = Path("reports/moola-report.html")
DEPLOY_PHASES = ("deploy", "rollback", "drill", "restore")


@dataclass
class ReportResult:
    path: Path
    sections: list[Section]
    seconds: float

    @property
    def figures(self) -> list[str]:
        return [f for s in self.sections for f in s.figures]

    @property
    def problems(self) -> list[str]:
        return [p for s in self.sections for p in s.problems]

    def summary(self) -> str:
        empty = [s.title for s in self.sections if s.missing]
        note = f"; without data yet: {', '.join(empty)}" if empty else ""
        if self.problems:
            note += f"; not drawn: {'; '.join(self.problems)}"
        return f"{self.path} ({len(self.figures)} figures, {self.seconds:.1f} s){note}"


# --- sections ----------------------------------------------------------------------------------


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
        timeline[host].append(
            {
                "time": _parse_time(last["time"]),
                "kind": phase,
                "status": "failed" if failed else "ok",
                "text": last.get("bundle") or "",
            }
        )
    for e in events:
        if e.get("host") in timeline and e.get("phase") == steps.AB:
            decision = (e.get("detail") or {}).get("decision", "")
            timeline[e["host"]].append(
                {
                    "time": _parse_time(e["time"]),
                    "kind": "ab",
                    "status": e["status"],
                    "text": f"A/B: {decision}",
                }
            )
    if any(timeline.values()):
        draw_figure(
            section,
            "the timeline",
            "timeline",
            lambda: figures.timeline(timeline, "timeline"),
            "Every deploy, rollback and A/B decision in the deployment log, per host; the "
            "label is the bundle version the run moved to.",
        )
        rows = []
        for host in hosts:
            for item in sorted(timeline[host], key=lambda x: x["time"]):
                rows.append(
                    [
                        host,
                        item["time"].strftime("%Y-%m-%d %H:%M:%S"),
                        item["kind"],
                        item["status"],
                        item["text"],
                    ]
                )
        section.body.append(_table(["host", "time (UTC)", "what", "status", "bundle"], rows))
    else:
        section.body.append("<p class='note'>no deploy or rollback in the log yet</p>")
    health: dict[str, list[dict]] = {}
    for e in events:
        if e.get("host") in timeline and e.get("phase") == steps.HEALTHCHECK:
            d = e.get("detail") or {}
            health.setdefault(e["host"], []).append(
                {
                    "time": _parse_time(e["time"]),
                    "p99_ms": d.get("p99_ms"),
                    "state": d.get("state") or ("OK" if e["status"] == "ok" else "CRITICAL"),
                }
            )
    if health:
        draw_figure(
            section,
            "the health history",
            "health",
            lambda: figures.health_history(health, "health"),
            "Health checks from the log: p99 latency measured by deep checks, and the "
            "Nagios state of every check.",
        )
    else:
        section.body.append("<p class='note'>no health checks in the log yet</p>")
    latencies = {}
    from moola_ops.serving.captures import load_table

    for host in hosts:
        with drawing(section, f"{host}'s captured latencies"):
            table = load_table(cache, host)
            if len(table):
                ok = (table["role"] == 0) & (table["status"] == 200)
                latencies[host] = table["latency_ms"][ok]
    if latencies:
        draw_figure(
            section,
            "the latency histogram",
            "latency",
            lambda: figures.latency_histogram(latencies, "latency"),
            "Server-side latency of every captured live request (pulled by `invoke ab` or "
            "`invoke monitor`); dotted lines mark each host's p99.",
        )
    else:
        section.body.append(
            "<p class='note'>no captured requests in the local cache yet "
            "(`invoke monitor --host H` pulls them)</p>"
        )
    if not section.figures:
        section.missing = "no deployments, health checks or captures yet"
    return section


def ab_hosts(hosts: list[str], events: list[dict], bundle: str | None) -> list[str]:
    """The report's hosts, then every host where an A/B judged `bundle` as the candidate (the
    evidence a promote acted on: it ran on one host, the promote may have deployed elsewhere)."""
    out = list(hosts)
    for e in events:
        host = e.get("host")
        if e.get("phase") == steps.AB and bundle and e.get("bundle") == bundle and host not in out:
            out.append(host)
    return out


def _cached(hosts: list[str], cache: Path, name: str):
    """(host, path) for each host whose capture cache holds `name` (what `invoke ab` and
    `invoke monitor` leave there), in the hosts' order."""
    for host in hosts:
        path = cache / host / name
        if path.is_file():
            yield host, path


def _read_result(path: Path) -> dict:
    result = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(result, dict):
        raise ValueError(f"{path} holds {type(result).__name__}, not an object")
    return result


def _ab_section(hosts: list[str], cache: Path) -> Section:
    from moola_ops.report import figures

    section = Section("ab", "A/B: shadow against live")
    for host, path in _cached(hosts, cache, "ab.json"):
        with drawing(section, f"{host}'s A/B ({path})"):
            result = _read_result(path)
            when = f", until {_iso(result['until'])}" if result.get("until") else ""
            _figure(
                section,
                f"ab-{host}",
                figures.ab_figure(result, f"ab-{host}"),
                f"{host}: the shadow {result['shadow_release']} and the live release "
                f"{result['live_release']} on the same requests{when}.",
            )
            section.body.append(
                f"<p class='decision {_esc(result['decision'])}'>{_esc(host)}: "
                f"{_esc(result['sentence'])}</p>"
            )
    if not section.figures and not section.problems:
        section.missing = "no A/B result yet (`invoke shadow start`, then `invoke ab`)"
    return section


def _drift_section(hosts: list[str], cache: Path) -> Section:
    from moola_ops.report import figures

    section = Section("drift", "Monitoring and input drift")
    for host, path in _cached(hosts, cache, "monitor.json"):
        with drawing(section, f"{host}'s monitor result ({path})"):
            result = _read_result(path)
            status = (
                f"<p class='status {_esc(result['state'])}'>"
                f"{_esc(str(result['status_line']).split(' | ')[0])}</p>"
            )
            if not result.get("n_requests"):  # nothing to draw: the status line says why
                section.body.append(status)
                continue
            _figure(
                section,
                f"drift-{host}",
                figures.drift_figure(result, f"drift-{host}"),
                f"{host}, {_iso(result['since'])} to {_iso(result['until'])}: PSI of each "
                "input feature against the training data (dashed: 0.1 warning, 0.25 "
                "critical), and live traffic over time.",
            )
            section.body.append(status)
    if not section.figures and not section.problems:
        section.missing = "no monitor result yet (`invoke monitor --host H`)"
    return section


def _guarded(section_id: str, title: str, build) -> Section:
    """`build()`, or, when its data breaks it, the section saying why (the page goes on)."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - any data fault; the page names it
        section = Section(section_id, title)
        section.problems.append(f"this section could not be drawn ({_reason(exc)})")
        return section


def _checklist_section(events: list[dict], deployment: str | None) -> tuple[Section, Any]:
    from moola_ops.checklist.spec import load_checklist
    from moola_ops.checklist.states import checklist_states

    section = Section("checklist", "The checklist")
    try:
        spec = load_checklist()
        report = checklist_states(spec, events, deployment)
    except MoolaError as exc:
        if deployment:
            raise
        section.missing = str(exc)
        return section, None
    rows = [
        [
            s.phase,
            s.step,
            "OVERRIDDEN" if s.state == "overridden" else s.state,
            s.by,
            s.at.replace("T", " ")[:19],
            s.detail[:140],
        ]
        for s in report.steps
    ]
    section.body.append(_table(["phase", "step", "state", "by", "when (UTC)", "detail"], rows))
    overrides = [s for s in report.steps if s.state == "overridden"]
    if overrides:
        listed = "; ".join(f"{s.phase}/{s.step} by {s.by or '?'}: {s.detail}" for s in overrides)
        section.body.append(
            f"<p class='note'>Overridden, not passed: a person shipped past these checks with "
            f"a recorded reason ({_esc(listed)}).</p>"
        )
    return section, report


def build_report(
    out: str | os.PathLike | None = None,
    *,
    deployment: str | None = None,
    runs_dir: str | os.PathLike = "runs",
    log: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    hosts: list[str] | None = None,
    real: bool = True,
    labeling: str | os.PathLike | None = None,
) -> ReportResult:
    """Write the report page and return where it is and what it holds."""
    from moola_ops.log.journal import log_path, read_events
    from moola_ops.serving.captures import DEFAULT_CACHE

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
        _guarded("candidates", "Candidates", lambda: _candidates(runs_dir)),
        _guarded(
            "reliability",
            "Reliability: is the stated probability right?",
            lambda: _reliability(runs_dir),
        ),
        _guarded("spans", "Predicted vs true spans", lambda: _spans(runs_dir, real)),
        _guarded("hosts", "Hosts", lambda: _hosts_section(events, hosts, cache)),
        _guarded("ab", "A/B", lambda: _ab_section(ab_hosts(hosts, events, bundle), cache)),
        _guarded("drift", "Monitoring", lambda: _drift_section(hosts, cache)),
        _guarded("labeling", "Labeling", lambda: labeling_section(labeling)),
        checklist,
    ]
    what = (
        f"deployment {state.deployment} (bundle {state.bundle or '-'})"
        if (state is not None and state.deployment)
        else "no deployment yet"
    )
    subtitle = (
        f"{what}; hosts {', '.join(hosts) or '-'}; log {log_path(log)}; written {_iso(time.time())}"
    )
    page = render_page("Moola report", subtitle, sections)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return ReportResult(out, sections, time.monotonic() - started)

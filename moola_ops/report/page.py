"""The report page's parts: a section, its figures and tables, and the whole page (inline CSS,
no script, no external resource)."""

from __future__ import annotations

import contextlib
import html
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass
class Section:
    id: str
    title: str
    body: list[str] = field(default_factory=list)  # HTML fragments
    figures: list[str] = field(default_factory=list)  # figure ids
    missing: str = ""  # one line: why the section has no figure yet
    problems: list[str] = field(default_factory=list)  # parts that could not be drawn, and why


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no detail"
    return f"{type(exc).__name__}: {text[:200]}"


@contextlib.contextmanager
def drawing(section: Section, what: str) -> Iterator[None]:
    """Draw one part of a section; if its data breaks the drawing, the section says so on the
    page (and in `problems`) and the report goes on: the report never fails on its data."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - any data fault; the page names it
        section.problems.append(f"{what} could not be drawn ({_reason(exc)})")
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:  # the half-drawn figure is never saved: free it
            plt.close("all")


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _figure(section: Section, fig_id: str, svg: str, caption: str) -> None:
    section.figures.append(fig_id)
    section.body.append(
        f'<figure class="fig" id="fig-{fig_id}">{svg}<figcaption>{_esc(caption)}</figcaption>'
        "</figure>"
    )


def draw_figure(section: Section, what: str, fig_id: str, make_svg, caption: str) -> None:
    """`_figure` with the svg from `make_svg()`; a drawing its data breaks is named instead."""
    with drawing(section, what):
        _figure(section, fig_id, make_svg(), caption)


def _table(head: list[str], rows: list[list[Any]]) -> str:
    cells = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _parse_time(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


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
.problem{color:#b71c1c;font-size:13px}
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
        body += "".join(f"<p class='problem'>{_esc(p)}</p>" for p in s.problems)
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

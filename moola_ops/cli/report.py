"""`invoke report`: one self-contained HTML page with the figures people look at."""

from __future__ import annotations

from invoke.exceptions import Exit

from moola_ops.cli._common import task, user_errors
from moola_ops.terminal import print_json


@task(
    help={
        "deployment": "deployment id the page is about (default: the newest in the log)",
        "out": "where to write the page (default reports/moola-report.html)",
        "runs_dir": "where training runs live (default runs)",
        "cache": "local capture cache with A/B and monitor results (default .moola/captures)",
        "no_real": "leave out the real-bar sample figure (it loads the model with torch)",
        "check": "open the page in headless Chromium: no console error, every figure drawn, "
        "a screenshot next to it",
        "json": "print one JSON document",
    },
    dry="report writes an HTML page; give --out a scratch path instead",
)
@user_errors
def report(
    c, deployment="", out="", runs_dir="runs", cache="", no_real=False, check=False, json=False
):
    """Write the HTML report: candidates, spans, per-host timeline and health, A/B, drift."""
    from moola_ops.report import build_report

    result = build_report(
        out or None,
        deployment=deployment or None,
        runs_dir=runs_dir,
        cache=cache or None,
        real=not no_real,
    )
    payload = {
        "path": str(result.path),
        "figures": result.figures,
        "seconds": round(result.seconds, 2),
        "missing": {s.id: s.missing for s in result.sections if s.missing},
        "not_drawn": result.problems,
    }
    bad = []
    if check:
        from moola_ops.report.browser import check_page

        shot = result.path.with_suffix(".png")
        seen = check_page(result.path, shot)
        small = [f["id"] for f in seen.figures if f["width"] < 100 or f["height"] < 50]
        bad = seen.console_errors + [f"network: {u}" for u in seen.network]
        bad += [f"figure not drawn: {f}" for f in small]
        payload.update(
            screenshot=str(shot),
            console_errors=seen.console_errors,
            network=seen.network,
            problems=bad,
        )
    if json:
        print_json(payload)
    else:
        print(f"report: {result.summary()}")
        if check:
            print(
                f"checked in Chromium: {'ok' if not bad else '; '.join(bad)}; screenshot "
                f"{payload['screenshot']}"
            )
    if bad:
        raise Exit(code=1)


EXPORTS = [report]

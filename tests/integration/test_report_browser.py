"""The HTML report in a real headless Chromium: no console error, no network, every figure drawn.

Needs Debian's `chromium` (scripts/setup.sh installs it); without it the test fails with the
install hint, it is never skipped.
"""

from __future__ import annotations

import re
import struct

import pytest

from moola_ops.report import build_report
from moola_ops.report.browser import check_page
from tests.report_fixture import make_report_inputs

EXPECTED = {
    "curves",
    "compare-oof",
    "compare-calibration_split",
    "reliability",
    "spans-test",
    "spans-real",
    "timeline",
    "health",
    "latency",
    "ab-local-1",
    "drift-local-1",
    "drift-local-2",
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_report_inputs(tmp_path_factory.mktemp("report-inputs"))


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "the screenshot is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_report_renders_in_chromium(inputs, tmp_path):
    out = tmp_path / "report.html"
    result = build_report(
        out,
        deployment=inputs["deployment"],
        runs_dir=inputs["runs_dir"],
        log=inputs["log"],
        cache=inputs["cache"],
    )
    assert set(result.figures) == EXPECTED
    page = out.read_text()
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)

    shot = tmp_path / "report.png"
    check = check_page(out, shot)
    assert check.console_errors == []
    assert check.network == []
    assert check.title == "Moola report"
    drawn = {f["id"].removeprefix("fig-"): f for f in check.figures}
    assert set(drawn) == EXPECTED
    for fig_id, f in drawn.items():
        assert f["width"] >= 400 and f["height"] >= 150, f"{fig_id} rendered at {f}"
        assert f["shapes"] >= 20, f"{fig_id} drew only {f['shapes']} shapes"
    width, height = _png_size(shot)
    assert width == 1280 and height == pytest.approx(check.page_height, abs=2)
    assert height > 3000 and shot.stat().st_size > 50_000


def test_the_ab_decision_and_monitor_state_are_on_the_page(inputs, tmp_path):
    out = build_report(
        tmp_path / "r.html",
        runs_dir=inputs["runs_dir"],
        log=inputs["log"],
        cache=inputs["cache"],
        real=False,
    ).path
    page = out.read_text()
    assert "local-1: promote v0.2" in page
    assert "MOOLA-MONITOR OK - local-2" in page


def test_an_empty_project_still_gets_a_page_that_says_what_is_missing(tmp_path):
    result = build_report(
        tmp_path / "empty.html",
        runs_dir=tmp_path / "runs",
        log=tmp_path / "none.jsonl",
        cache=tmp_path / "cache",
    )
    assert result.figures == []
    page = result.path.read_text()
    assert "no finished training runs" in page and "no A/B result yet" in page
    check = check_page(result.path)
    assert check.console_errors == [] and check.figures == []

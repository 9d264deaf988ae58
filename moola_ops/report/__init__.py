"""The HTML report: `build_report(out, deployment=...)` writes one self-contained page.

Figures are matplotlib rendered to inline SVG (docs/report.md says why); `browser` opens a page
in headless Chromium over the DevTools pipe to check it (the tests and `invoke report --check`).
"""

from moola_ops.report.build import DEFAULT_OUT, ReportResult, build_report

__all__ = ["DEFAULT_OUT", "ReportResult", "build_report"]

"""House rules that keep moola_ops readable at a glance (issue #13): no module over 400 lines.

A module that outgrows the limit is split by concept (a name that says what it holds), not
into numbered parts; the old module re-exports what callers import. There is no allowlist.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parents[2]
MAX_LINES = 400


def _line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_no_module_in_moola_ops_is_over_400_lines():
    modules = sorted((ROOT / "moola_ops").rglob("*.py"))
    assert len(modules) > 60, "moola_ops was not found where this test looks"
    sizes = {str(p.relative_to(ROOT)): _line_count(p) for p in modules}
    too_long = {
        name: n for name, n in sorted(sizes.items(), key=lambda kv: -kv[1]) if n > MAX_LINES
    }
    listed = "\n".join(f"  {name}: {n} lines" for name, n in too_long.items())
    assert not too_long, (
        f"{len(too_long)} module(s) over {MAX_LINES} lines; split each by concept:\n{listed}"
    )


def test_the_line_count_is_what_an_editor_shows(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("a = 1\n\nb = 2\n")  # three lines, the last one ending in a newline
    assert _line_count(sample) == 3
    sample.write_text("a = 1\nb = 2")  # no newline at the end: still two lines
    assert _line_count(sample) == 2

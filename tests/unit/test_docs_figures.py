"""Figures and settings quoted in the docs stay true to their sources (#24 item 7).

The convention (docs/architecture.md, "Figures in the docs"): a measured figure is written as a
link to the benchmark page it comes from, `[0.69 s](benchmarks/serving.md)`, and a setting of a
shipped file as a link to that file, `` [`latency_sla_ms: 1000`](../inventory/hosts.yaml) ``.
This test reads every such link in README.md and docs/*.md:

- a link to a page under docs/benchmarks/: every number in the link's text appears, as a
  number, on that page (rerun a benchmark and change its page, and the docs quoting it fail
  here until they quote the new figures);
- a link to a YAML file with the text `key: value`: the file sets `key` to that value
  somewhere (the shipped inventory changes, the README follows).

Prose around a figure is free; only what the link claims is checked, so rewording never breaks
the test, and a figure without a link is simply not a quoted measurement.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s#]+)(?:#[^)\s]*)?\)")
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
SETTING = re.compile(r"^`?\s*([A-Za-z_][\w.-]*)\s*:\s*(.+?)\s*`?$")


def links(kind: str) -> list[tuple[str, int, str, Path]]:
    """(page, line, text, target) of every link from the docs to a `kind` file."""
    found = []
    for page in PAGES:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for text, target in LINK.findall(line):
                if "/" in text or text.endswith(".md"):
                    continue  # the link names the page itself: no figure quoted
                path = (page.parent / target).resolve()
                if kind == "benchmark" and path.parent == (ROOT / "docs" / "benchmarks"):
                    found.append((page.relative_to(ROOT).as_posix(), number, text, path))
                if kind == "yaml" and path.suffix in (".yaml", ".yml"):
                    found.append((page.relative_to(ROOT).as_posix(), number, text, path))
    return found


def numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in NUMBER.findall(text)}


def pairs(node, out=None) -> set[tuple[str, str]]:
    """Every (key, scalar value as text) in a YAML document, at any depth."""
    out = set() if out is None else out
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict | list):
                pairs(value, out)
            else:
                out.add((str(key), str(value)))
    elif isinstance(node, list):
        for item in node:
            pairs(item, out)
    return out


BENCHMARK_LINKS = [pytest.param(*link, id=f"{link[0]}:{link[1]}") for link in links("benchmark")]
YAML_LINKS = [pytest.param(*link, id=f"{link[0]}:{link[1]}") for link in links("yaml")]


@pytest.mark.parametrize("page, line, text, target", BENCHMARK_LINKS)
def test_a_quoted_figure_is_on_the_benchmark_page_it_links(page, line, text, target):
    assert target.is_file(), f"{page}:{line} links {target.name}, which does not exist"
    on_page = numbers(target.read_text(encoding="utf-8"))
    missing = sorted(numbers(text) - on_page)
    assert not missing, (
        f"{page}:{line} quotes [{text}] from {target.relative_to(ROOT)}, whose page does not "
        f"show {', '.join(missing)}: quote the figures the page has now (or rerun and update it)"
    )


@pytest.mark.parametrize("page, line, text, target", YAML_LINKS)
def test_a_quoted_setting_is_what_the_linked_file_sets(page, line, text, target):
    assert target.is_file(), f"{page}:{line} links {target.name}, which does not exist"
    setting = SETTING.match(text.strip())
    if setting is None:
        return  # a plain link to the file, no setting quoted
    key, value = setting.group(1), setting.group(2).strip().strip("`")
    found = pairs(yaml.safe_load(target.read_text(encoding="utf-8")))
    values = sorted(v for k, v in found if k == key)
    assert (key, value) in found, (
        f"{page}:{line} says `{key}: {value}`, but {target.relative_to(ROOT)} sets {key} to "
        f"{', '.join(values) or 'nothing'}"
    )


def test_the_figures_this_issue_found_wrong_are_quoted_from_their_sources():
    """The claims #24 found drifting are links now (a link, once there, is checked above)."""
    quoted = {(page, text) for page, _line, text, _t in links("benchmark") + links("yaml")}
    pages = {page for page, _text in quoted}
    assert any(p == "README.md" and "latency_sla_ms" in t for p, t in quoted)
    assert any(p == "docs/inventory.md" and "latency_sla_ms" in t for p, t in quoted)
    assert {"docs/runbook.md", "docs/serving.md"} <= pages
    runbook = (ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")
    assert "a few seconds per host" not in runbook


def test_the_convention_catches_a_figure_that_drifted(tmp_path):
    """The checks themselves: a figure or a setting that differs from its source is named."""
    bench = tmp_path / "bench.md"
    bench.write_text("| rollback | 0.69 s (0.68-0.73) |\n")
    assert numbers("0.65-0.73 s") - numbers(bench.read_text()) == {"0.65"}
    assert not numbers("[0.68-0.73 s]") - numbers(bench.read_text())
    found = pairs(yaml.safe_load("hosts: {local-1: {latency_sla_ms: 1000}}"))
    assert ("latency_sla_ms", "1000") in found and ("latency_sla_ms", "200") not in found

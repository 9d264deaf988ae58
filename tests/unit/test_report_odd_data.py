"""The report never fails on its data (#24 item 1).

The base inputs are real: captured traffic in the server's format, analysed by `ab.analyze` and
`monitor.monitor` into the ab.json and monitor.json that `invoke ab` and `invoke monitor` leave
in the cache. Then they are made odd in every way a real run produced or could produce: a CI
equal to its value up to float noise (the crash that was reported), NaN and infinite figures,
missing or mistyped fields, torn files, empty captures, a host with no data, a single pair.
Whatever the data, `build_report` writes the page; a part it cannot draw says why on the page,
and float noise in a CI never costs a figure.
"""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import pytest

from moola_ops.report import build_report
from moola_ops.report.build import _ab_section, _drift_section

pytest.importorskip("matplotlib")

HOST = "odd-1"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """ab.json and monitor.json computed from real captured traffic."""
    from moola_core.data import synthetic
    from moola_ops.serving.captures import add_local_file, load_table
    from moola_ops.shadow import ab
    from moola_ops.watch import monitor
    from tests.unit.capture_factory import ab_traffic, write_lines

    root = tmp_path_factory.mktemp("odd-base")
    frame = synthetic.make_labeled_set(n_windows=60, seed=5)
    raw = write_lines(root / "raw.jsonl", ab_traffic(frame, 40, seed=1))
    add_local_file(root / "cache", HOST, "v0.1", raw)
    table = load_table(root / "cache", HOST, with_ohlc=True)
    one = write_lines(root / "one.jsonl", ab_traffic(frame, 1, seed=2))
    add_local_file(root / "one", HOST, "v0.1", one)
    single = load_table(root / "one", HOST, with_ohlc=True)
    reference = monitor.reference_from_labeled(frame)
    return {
        "ab": json.loads(json.dumps(ab.analyze(table, frame).to_dict())),
        "ab_single": json.loads(json.dumps(ab.analyze(single, frame).to_dict())),
        "monitor": json.loads(json.dumps(monitor.monitor(table, reference, host=HOST).to_dict())),
        "raw": raw,
    }


def _write(cache: Path, name: str, value) -> None:
    folder = cache / HOST
    folder.mkdir(parents=True, exist_ok=True)
    text = value if isinstance(value, str) else json.dumps(value)
    (folder / name).write_text(text)


def _estimates(node, path=()):
    """Every {value, ci_low, ci_high} dict inside a result, with its path."""
    if isinstance(node, dict):
        if {"value", "ci_low", "ci_high"} <= node.keys():
            yield path, node
        for key, child in node.items():
            yield from _estimates(child, (*path, key))


def _leaves(node, path=()):
    """Every field that is not an object (a list counts as one field), with its path."""
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _leaves(child, (*path, key))
    else:
        yield path, node


def _set(node, path, value) -> None:
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _drop(node, path) -> None:
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]


ODD_VALUES = [math.nan, math.inf, -math.inf, None, "", "text", [], {}, -1, 0, 10**30, True]


def _mutate(result: dict, rng: random.Random) -> tuple[dict, str]:
    """One odd version of a result: a few leaves made odd, or fields dropped."""
    out = copy.deepcopy(result)
    leaves = list(_leaves(out))
    what = []
    for _ in range(rng.randint(1, 3)):
        path, _old = rng.choice(leaves)
        if not path:
            continue
        if rng.random() < 0.2:
            try:
                _drop(out, path)
            except (KeyError, TypeError, IndexError):
                continue
            what.append(f"drop {'.'.join(map(str, path))}")
        else:
            odd = rng.choice(ODD_VALUES)
            try:
                _set(out, path, odd)
            except (KeyError, TypeError, IndexError):
                continue
            what.append(f"{'.'.join(map(str, path))}={odd!r}")
    return out, "; ".join(what)


def _noisy(result: dict, rng: random.Random) -> dict:
    """Every CI collapsed onto its value, the value a float's noise off it (either side)."""
    out = copy.deepcopy(result)
    for _path, e in _estimates(out):
        if isinstance(e["value"], float) and math.isfinite(e["value"]):
            point = e["value"]
            e["ci_low"] = e["ci_high"] = point
            e["value"] = point + rng.choice((1, -1)) * max(abs(point), 1.0) * 2.0**-52
    return out


def test_the_reported_crash_a_ci_equal_to_its_value_up_to_float_noise(base, tmp_path):
    result = copy.deepcopy(base["ab"])
    result["span_iou"] = {"value": 0.20000000000000004, "ci_low": 0.2, "ci_high": 0.2}
    cache = tmp_path / "cache"
    _write(cache, "ab.json", result)
    report = build_report(tmp_path / "r.html", cache=cache, runs_dir=tmp_path, hosts=[HOST])
    assert f"ab-{HOST}" in report.figures and not report.problems, report.problems


def test_float_noise_in_any_ci_never_costs_a_figure(base):
    rng = random.Random(0)
    for name, result in (("ab", base["ab"]), ("monitor", base["monitor"])):
        for _ in range(5):
            noisy = _noisy(result, rng)
            with _cache_holding(f"{name}.json", noisy) as cache:
                section = (_ab_section if name == "ab" else _drift_section)([HOST], cache)
                assert section.figures and not section.problems, section.problems


def test_a_single_pair_is_drawn(base, tmp_path):
    assert base["ab_single"]["n_pairs"] == 1
    cache = tmp_path / "cache"
    _write(cache, "ab.json", base["ab_single"])
    section = _ab_section([HOST], cache)
    assert section.figures and not section.problems, section.problems


@pytest.mark.parametrize("name", ["ab.json", "monitor.json"])
def test_many_odd_results_each_either_draw_or_say_why_on_the_page(base, name):
    rng = random.Random(hash(name) % 1000)
    result = base["ab" if name == "ab.json" else "monitor"]
    build = _ab_section if name == "ab.json" else _drift_section
    for case in range(40):
        odd, what = _mutate(result, rng)
        with _cache_holding(name, odd) as cache:
            section = build([HOST], cache)  # never raises
        said = section.figures or section.problems or section.body
        assert said, f"case {case} ({what}): the section shows nothing and says nothing"
        for problem in section.problems:
            assert HOST in problem and "could not be drawn" in problem, problem


@pytest.mark.parametrize(
    "text",
    ["", "{", "[1, 2]", "null", '{"decision": "keep"}', "\x00\xff", "NaN"],
    ids=["empty", "torn", "a-list", "null", "fields-missing", "binary", "nan"],
)
def test_a_torn_or_foreign_result_file_is_named_and_the_page_is_written(tmp_path, text):
    cache = tmp_path / "cache"
    _write(cache, "ab.json", text)
    _write(cache, "monitor.json", text)
    report = build_report(
        tmp_path / "r.html", cache=cache, runs_dir=tmp_path, hosts=[HOST], real=False
    )
    page = report.path.read_text()
    assert len(report.problems) == 2, report.problems
    assert all(HOST in p and "could not be drawn" in p for p in report.problems)
    for section in ("candidates", "hosts", "ab", "drift", "checklist"):
        assert f'<section id="{section}">' in page
    assert "not drawn:" in report.summary()


def test_empty_captures_and_a_host_with_no_data(base, tmp_path):
    from moola_ops.serving.captures import add_local_file

    cache = tmp_path / "cache"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('not json\n{"v": 1}\n' + "\n" * 3)
    add_local_file(cache, HOST, "v0.1", empty)
    add_local_file(cache, HOST, "v0.2", garbage)
    (cache / "silent-2").mkdir()  # a host the cache knows, with nothing in it
    report = build_report(
        tmp_path / "r.html", cache=cache, runs_dir=tmp_path, hosts=[HOST, "silent-2"], real=False
    )
    assert not report.problems, report.problems
    assert "no captured requests" in report.path.read_text()


def test_one_section_that_breaks_leaves_the_others_on_the_page(base, tmp_path, monkeypatch):
    from moola_ops.report import build

    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("a bug in one section")

    monkeypatch.setattr(build, "_hosts_section", broken)
    cache = tmp_path / "cache"
    _write(cache, "ab.json", base["ab"])
    report = build_report(
        tmp_path / "r.html", cache=cache, runs_dir=tmp_path, hosts=[HOST], real=False
    )
    assert f"ab-{HOST}" in report.figures
    assert any("ZeroDivisionError" in p for p in report.problems), report.problems


class _cache_holding:
    """A temporary cache with one result file for HOST."""

    def __init__(self, name: str, value):
        self.name, self.value = name, value

    def __enter__(self) -> Path:
        import tempfile

        self._dir = tempfile.TemporaryDirectory(prefix="moola-odd-")
        cache = Path(self._dir.name)
        _write(cache, self.name, self.value)
        return cache

    def __exit__(self, *exc) -> None:
        self._dir.cleanup()

"""The report shows the A/B evidence a promote acted on, even when the promote's newest
deployment ran on another host (the demo: A/B on local-1, promote host by host)."""

from __future__ import annotations

import json

import pytest

from moola_core.data import synthetic
from moola_ops.log.journal import Journal
from moola_ops.report import build_report
from moola_ops.report.build import ab_hosts
from moola_ops.serving.captures import add_local_file, load_table
from moola_ops.shadow import ab
from tests.unit.capture_factory import ab_traffic, write_lines


@pytest.fixture
def promoted(tmp_path, monkeypatch):
    """v0.1 live on h1 and h2; an A/B of v0.2 on h1 says promote; v0.2 deployed to h1, then h2."""
    monkeypatch.setenv("MOOLA_LOG", str(tmp_path / "log.jsonl"))
    frame = synthetic.make_labeled_set(n_windows=60, seed=3)
    cache = tmp_path / "cache"
    records = ab_traffic(frame, 200, live_acc=0.5, shadow_acc=0.95, seed=1)
    add_local_file(cache, "h1", "v0.1", write_lines(tmp_path / "raw" / "1.jsonl", records))
    first = Journal("deploy", bundle="v0.1")
    for host in ("h1", "h2"):
        first.record(host, "switch", "ok")
    result = ab.analyze(load_table(cache, "h1"), frame)
    assert result.decision == "promote"
    ab.record(result, "h1")
    (cache / "h1" / "ab.json").write_text(json.dumps(result.to_dict()))
    deployments = []
    for host in ("h1", "h2"):  # `invoke promote` deploys through the engine, one host each
        journal = Journal("deploy", bundle="v0.2")
        journal.record(host, "switch", "ok")
        deployments.append(journal.deployment)
    return {"cache": cache, "log": tmp_path / "log.jsonl", "last": deployments[-1], "tmp": tmp_path}


def test_the_latest_report_shows_the_ab_that_led_to_the_promote(promoted):
    result = build_report(
        promoted["tmp"] / "r.html",
        runs_dir=promoted["tmp"] / "no-runs",
        log=promoted["log"],
        cache=promoted["cache"],
        real=False,
    )
    assert "ab-h1" in result.figures
    assert "A/B" not in result.summary().split("without data yet:")[-1]
    page = result.path.read_text()
    assert "h1: promote v0.2" in page


def test_a_deployment_on_another_host_still_shows_its_candidate_ab(promoted):
    result = build_report(
        promoted["tmp"] / "r.html",
        deployment=promoted["last"],
        runs_dir=promoted["tmp"] / "no-runs",
        log=promoted["log"],
        cache=promoted["cache"],
        real=False,
    )
    assert "ab-h1" in result.figures
    assert "v0.2" in result.path.read_text().split('id="ab"')[1]


def test_ab_hosts_adds_only_the_hosts_that_judged_this_bundle():
    events = [
        {"phase": "ab", "host": "h1", "bundle": "v0.2"},
        {"phase": "ab", "host": "h3", "bundle": "v0.3"},
        {"phase": "deploy", "host": "h4", "bundle": "v0.2"},
    ]
    assert ab_hosts(["h2"], events, "v0.2") == ["h2", "h1"]
    assert ab_hosts(["h2"], events, None) == ["h2"]

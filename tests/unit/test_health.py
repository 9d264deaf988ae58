"""Health assessment and its renderings: Nagios states, status line, perfdata, Prometheus."""

from __future__ import annotations

import os
import re
import threading
import time

import pytest

from moola_ops.deploy.commands import facts as cmd
from moola_ops.watch import health as hc
from moola_ops.watch import health_output, health_run


def _facts(**over) -> cmd.HostFacts:
    base = dict(
        workspace_exists=True,
        link=cmd.CurrentLink("releases/v0.1", "/ws/releases/v0.1", "/ws", True),
        current="v0.1",
        checksums=cmd.ChecksumFact(problems=[], version="v0.1"),
        gpu=cmd.GpuReport(present=False),
        disk=cmd.DiskFact(total_bytes=100 * 1024**3, free_bytes=50 * 1024**3),
        lock=None,
        complete=True,
    )
    base.update(over)
    return cmd.HostFacts(**base)


def _assess(facts, expect_gpu=None) -> hc.HostHealth:
    host = hc.HostHealth(host="h1")
    hc.assess_light(host, facts, expect_gpu=expect_gpu)
    return host


def test_worst_orders_critical_warning_unknown_ok():
    assert hc.worst([hc.OK, hc.UNKNOWN]) == hc.UNKNOWN
    assert hc.worst([hc.UNKNOWN, hc.WARNING]) == hc.WARNING
    assert hc.worst([hc.WARNING, hc.CRITICAL, hc.UNKNOWN]) == hc.CRITICAL
    assert hc.worst([]) == hc.OK


def test_healthy_host_is_ok():
    host = _assess(_facts())
    assert host.state == hc.OK and host.release == "v0.1"
    assert {c.name for c in host.checks} == {"current", "checksums", "gpu", "disk", "lock"}


@pytest.mark.parametrize(
    "over, expect_gpu, check, state",
    [
        (dict(link=cmd.CurrentLink(), current=None, checksums=None), None, "current", 2),
        (
            dict(
                link=cmd.CurrentLink("releases/v9", None, "/ws", False),
                current=None,
                current_problem="current -> releases/v9 does not resolve",
            ),
            None,
            "current",
            2,
        ),
        (
            dict(
                link=cmd.CurrentLink("/etc", "/etc", "/ws", True),
                current=None,
                current_problem="current -> /etc is not a release",
            ),
            None,
            "current",
            2,
        ),
        (
            dict(checksums=cmd.ChecksumFact(problems=["weights.pt: sha256 mismatch"])),
            None,
            "checksums",
            2,
        ),
        (dict(checksums=None), None, "checksums", 2),
        (dict(disk=cmd.DiskFact(10 * 1024**3, 3 * 1024**3)), None, "disk", 1),
        (dict(disk=cmd.DiskFact(10 * 1024**3, 100 * 1024**2)), None, "disk", 2),
        (dict(disk=None), None, "disk", 3),
        (dict(lock=cmd.LockFact({"actor": "ana"}, age_s=7200)), None, "lock", 1),
        (dict(lock=cmd.LockFact({"actor": "ana"}, age_s=60)), None, "lock", 0),
        ({}, True, "gpu", 2),  # GPU expected, no nvidia-smi
        (dict(gpu=cmd.GpuReport(True, error="NVIDIA-SMI has failed")), "H100", "gpu", 2),
        (
            dict(gpu=cmd.GpuReport(True, [cmd.GpuFact(0, "NVIDIA A40", 1, 2, 3, 4)])),
            "H100",
            "gpu",
            1,
        ),
        (
            dict(gpu=cmd.GpuReport(True, [cmd.GpuFact(0, "NVIDIA H100 80GB HBM3", 1, 2, 3, 4)])),
            "h100",
            "gpu",
            0,
        ),
    ],
)
def test_each_problem_sets_its_check_state(over, expect_gpu, check, state):
    host = _assess(_facts(**over), expect_gpu)
    assert {c.name: c.state for c in host.checks}[check] == state
    assert host.state == hc.worst([state, hc.OK])


def test_lock_age_counts_from_the_holders_recorded_start_not_the_folders_mtime():
    # recorded on a host: holder "since 16:33", the host's clock at 19:33, the folder's mtime
    # 20 s old (anything touching deploy.lock renews it)
    import json
    from pathlib import Path

    case = json.loads(
        (Path(__file__).parents[1] / "data/facts/lock-old-holder-fresh-mtime.json").read_text()
    )
    lock = cmd.parse_lock(case["output"])
    assert lock.age_s == 3 * 3600 and lock.aged_from == "since"
    check = {c.name: c for c in _assess(_facts(lock=lock)).checks}["lock"]
    assert check.state == hc.WARNING and "STALE" in check.message and "180 min" in check.message


@pytest.mark.parametrize(
    "since, aged_from, age_s",
    [
        (None, "mtime", 20),  # a holder from before `since` was recorded
        ("not a time", "mtime", 20),
        ("2025-11-27T19:40:00Z", "mtime", 20),  # 7 min ahead of the host: a skewed clock
        ("2025-11-27T19:35:00Z", "since", 0),  # 2 min ahead: within the skew allowed
        ("2025-11-27T19:03:00+00:00", "since", 1800),
    ],
)
def test_lock_age_falls_back_to_the_mtime_only_without_a_believable_start(since, aged_from, age_s):
    import json

    holder = {"actor": "ana@laptop"} if since is None else {"actor": "ana", "since": since}
    lock = cmd.parse_lock(["1764271980 1764271960", json.dumps(holder)])  # 19:33:00Z
    assert (lock.aged_from, lock.age_s) == (aged_from, age_s)


def test_a_copy_outside_releases_gets_no_ok_for_its_checksums():
    copy = cmd.CurrentLink("/tmp/copy-of-v0.1", "/tmp/copy-of-v0.1", "/ws", True)
    facts = _facts(
        link=copy,
        current=None,
        current_problem="current -> /tmp/copy-of-v0.1 is not a release in this workspace",
        checksums=cmd.ChecksumFact(problems=[], version="v0.1"),  # the copy matches itself
    )
    checks = {c.name: c for c in _assess(facts).checks}
    assert checks["current"].state == hc.CRITICAL
    assert checks["checksums"].state == hc.UNKNOWN and "not judged" in checks["checksums"].message


@pytest.mark.parametrize(
    "lock, state",
    [
        (None, hc.WARNING),  # left by an interrupted run: `invoke prune` removes it
        (cmd.LockFact({"actor": "ana", "since": "x"}, age_s=60), hc.OK),  # being checked now
        (cmd.LockFact({"actor": "ana"}, age_s=7200), hc.WARNING),  # a stale lock checks nothing
    ],
)
def test_a_release_that_never_passed_its_check_warns_unless_a_live_deploy_is_checking_it(
    lock, state
):
    facts = _facts(
        releases={"v0.1": "a", "v0.4": "b"},
        unchecked=["v0.4"],
        revisions=[{"action": "deploy", "version": "v0.1"}],
        lock=lock,
        asked=("releases", "revisions", "unchecked", "lock"),
    )
    check = {c.name: c for c in _assess(facts).checks}["releases"]
    assert check.state == state, check
    assert "v0.4" in check.message
    if state == hc.WARNING:
        assert "invoke prune --host h1" in check.message
    clean = _facts(releases={"v0.1": "a"}, asked=("releases", "unchecked"))
    assert {c.name: c.state for c in _assess(clean).checks}["releases"] == hc.OK


def test_stale_lock_message_says_how_to_break_it():
    host = _assess(_facts(lock=cmd.LockFact({"actor": "ana@laptop"}, age_s=7200)))
    assert "invoke lock --host h1 --break" in host.summary()


def _report(p99=2.0, sla=10.0, ok=True):
    return {
        "ok": ok,
        "checks": [{"name": "golden", "ok": ok}],
        "latency": {"p50_ms": p99 / 2, "p99_ms": p99, "sla_p99_ms": sla},
    }


def test_runtime_report_latency_against_sla():
    def state(report, code=0):
        host = hc.HostHealth(host="h1")
        hc.assess_runtime(host, report, code)
        return {c.name: c.state for c in host.checks}

    assert state(_report(2.0)) == {"model": 0, "latency": 0}
    assert state(_report(9.0))["latency"] == hc.WARNING  # above 80% of the SLA
    assert state(_report(12.0))["latency"] == hc.CRITICAL
    assert state(_report(ok=False), code=1)["model"] == hc.CRITICAL
    assert state(None, code=2) == {"model": hc.CRITICAL}


def _run(*hosts, deep=False) -> hc.HealthRun:
    return hc.HealthRun(hosts=list(hosts), deep=deep, started=0.0, duration_s=1.25)


def _host(name, p99=None, sla=None, state=hc.OK, release="v0.1") -> hc.HostHealth:
    host = hc.HostHealth(
        host=name, release=release, p99_ms=p99, sla_p99_ms=sla, free_bytes=2 * 1024**3
    )
    host.checks.append(hc.CheckResult("current", state, "x"))
    return host


# A perfdata item: 'label'=value[UOM];[warn];[crit];[min];[max] (Nagios plugin guidelines)
PERF = re.compile(r"^'[^'=]+'=-?[0-9.]+(ms|s|B|%|c)?(;[0-9.]*){0,4}$")


def test_status_line_and_perfdata_follow_the_plugin_format():
    run = _run(_host("local-1", 1.5, 10.0), _host("local-2", 3.25, 10.0), deep=True)
    line = health_output.status_line(run)
    assert "\n" not in line
    text, perf = line.split(" | ")
    assert text == "MOOLA OK - 2/2 hosts OK (deep), serving v0.1"
    items = perf.split(" ")
    assert items[0] == "'p99_ms'=3.25ms;8;10;0"  # the slowest host, warn 80% and crit = SLA
    assert all(PERF.match(item) for item in items), items
    assert "'local-1_p99_ms'=1.5ms;;;0" in items


def test_status_line_names_problem_hosts():
    bad = _host("local-2", state=hc.CRITICAL)
    bad.checks.append(hc.CheckResult("checksums", hc.CRITICAL, "weights.pt | sha256 mismatch"))
    line = health_output.status_line(_run(_host("local-1"), bad))
    assert line.startswith("MOOLA CRITICAL - 1/2 hosts OK (fast); local-2 CRITICAL ")
    assert line.count("|") == 1  # a '|' in a message must not start the perfdata early


def test_prometheus_text_is_parseable_exposition_format():
    run = _run(_host("local-1", 1.5, 10.0), _host('we"ird', state=hc.WARNING), deep=True)
    text = health_output.prometheus_text(run, now=1700000000.0)
    samples = [ln for ln in text.splitlines() if not ln.startswith("#")]
    sample = re.compile(r'^[a-z0-9_]+\{([a-z]+="([^"\\]|\\.)*",?)*\} -?[0-9.e+-]+$')
    assert all(sample.match(s) for s in samples), samples
    assert 'moola_health_state{host="local-1"} 0' in samples
    assert 'moola_health_state{host="we\\"ird"} 1' in samples
    assert 'moola_health_latency_p99_seconds{host="local-1"} 0.0015' in samples
    assert "# TYPE moola_health_state gauge" in text


def test_write_textfile_is_atomic_and_readable(tmp_path):
    target = tmp_path / "textfile" / "moola.prom"
    health_output.write_textfile(target, "a 1\n")
    assert target.read_text() == "a 1\n"
    assert oct(target.stat().st_mode & 0o777) == "0o644"

    # a reader polling during many rewrites only ever sees a whole old or new document
    seen = set()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            seen.add(target.read_text())

    t = threading.Thread(target=reader)
    t.start()
    docs = [f"metric {i}\n" * 2000 for i in range(50)]
    for doc in docs:
        health_output.write_textfile(target, doc)
    stop.set()
    t.join()
    assert seen <= set(docs) | {"a 1\n"}
    assert os.listdir(target.parent) == ["moola.prom"]  # no temp files left behind


def test_run_parallel_bounds_a_hanging_host():
    release = threading.Event()

    def probe(name, deadline):
        if name == "hangs":
            release.wait(30)  # a host that never answers
        host = hc.HostHealth(host=name)
        host.checks.append(hc.CheckResult("current", hc.OK, "fine"))
        return host

    def fails(name, deadline):
        raise OSError("Connection refused")

    started = time.monotonic()
    results = health_run.run_parallel(["a", "hangs", "b"], probe, timeout_s=0.5)
    assert time.monotonic() - started < 2.0
    assert [h.host for h in results] == ["a", "hangs", "b"]
    assert [h.state for h in results] == [hc.OK, hc.CRITICAL, hc.OK]
    assert "timeout" in results[1].summary()
    release.set()

    [refused] = health_run.run_parallel(["c"], fails, timeout_s=5)
    assert refused.state == hc.CRITICAL and "Connection refused" in refused.summary()


@pytest.mark.parametrize("parallel", [1, 3])
def test_run_parallel_bounds_concurrency(parallel):
    active, peak = [0], [0]
    lock = threading.Lock()
    together = threading.Barrier(parallel, timeout=5)  # forces overlap up to the bound

    def probe(name, deadline):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        if parallel > 1:
            together.wait()
        time.sleep(0.01)
        with lock:
            active[0] -= 1
        host = hc.HostHealth(host=name)
        host.checks.append(hc.CheckResult("current", hc.OK, "fine"))
        return host

    results = health_run.run_parallel(["a", "b", "c"], probe, timeout_s=10, parallel=parallel)
    assert [h.state for h in results] == [hc.OK] * 3
    assert peak[0] == parallel


def test_a_damaged_release_names_the_fact_and_one_fix():
    problem = (
        "releases/v0.1: weights.pt has sha256 ab12... but the manifest says cd34...; "
        "the file is damaged: upload or rebuild the bundle."
    )
    host = _assess(_facts(checksums=cmd.ChecksumFact(problems=[problem])))
    message = {c.name: c.message for c in host.checks}["checksums"]
    assert message == (
        "releases/v0.1: weights.pt has sha256 ab12... but the manifest says "
        "cd34...; the file is damaged: roll back or redeploy the release"
    )

"""Nagios threshold ranges (moola_ops.nagios) and how the health check applies them."""

from __future__ import annotations

import math

import pytest

from moola_core.errors import MoolaError
from moola_ops import nagios
from moola_ops.deploy.commands import facts as cmd
from moola_ops.hosts.inventory import Host
from moola_ops.watch import health as hc
from moola_ops.watch import health_output


@pytest.mark.parametrize(
    "text, alerts, quiet",
    [
        ("10", [-1, 10.5, 11], [0, 5, 10]),
        ("10:", [9.99, -3], [10, 1e9]),
        ("~:10", [10.01, 1e9], [-1e9, 10]),
        ("10:20", [9, 21], [10, 15, 20]),
        ("@10:20", [10, 15, 20], [9, 21]),
        ("0.5:1.5", [0.4, 1.6], [0.5, 1.5]),
    ],
)
def test_ranges_follow_the_plugin_guidelines(text, alerts, quiet):
    r = nagios.parse_range(text)
    assert all(r.alerts(v) for v in alerts), text
    assert not any(r.alerts(v) for v in quiet), text
    assert str(r) == text


def test_unbounded_ends():
    assert nagios.parse_range("~:5").start == -math.inf
    assert nagios.parse_range("5:").end == math.inf


@pytest.mark.parametrize(
    "text, message",
    [
        ("abc", "'abc' is not a number"),
        ("20:10", "starts above its end"),
        ("@", "is empty"),
        ("1:x", "'x' is not a number"),
    ],
)
def test_a_bad_range_is_one_sentence(text, message):
    with pytest.raises(MoolaError, match=message):
        nagios.parse_range(text)


def test_thresholds_name_figures_and_a_bare_range_is_the_p99():
    got = nagios.parse_thresholds("40, free_gib=10:,lock_min=@0:5", "--warning")
    assert {k: str(v) for k, v in got.items()} == {
        "p99_ms": "40",
        "free_gib": "10:",
        "lock_min": "@0:5",
    }
    with pytest.raises(MoolaError, match="--critical: unknown figure 'disk'"):
        nagios.parse_thresholds("disk=1:", "--critical")
    with pytest.raises(MoolaError, match="--warning: threshold range 'x'"):
        nagios.parse_thresholds("p99_ms=x", "--warning")


def test_judge_prefers_critical():
    w, c = nagios.parse_range("10"), nagios.parse_range("20")
    assert nagios.judge(5, w, c) == nagios.OK
    assert nagios.judge(15, w, c) == nagios.WARNING
    assert nagios.judge(25, w, c) == nagios.CRITICAL
    assert nagios.judge(25, None, None) == nagios.OK


def _facts(free_gib: float, lock_age_s: float | None = None):
    return cmd.HostFacts(
        workspace_exists=True,
        link=cmd.CurrentLink("releases/v0.1", "/ws/releases/v0.1", "/ws", True),
        current="v0.1",
        checksums=cmd.ChecksumFact(problems=[], version="v0.1"),
        gpu=cmd.GpuReport(present=False),
        disk=cmd.DiskFact(total_bytes=100 * 1024**3, free_bytes=int(free_gib * 1024**3)),
        lock=None
        if lock_age_s is None
        else cmd.LockFact(age_s=lock_age_s, holder={"actor": "ana"}),
        complete=True,
    )


def _disk_state(facts, policy=None, host=None) -> dict:
    policy = policy or hc.HealthPolicy()
    h = hc.HostHealth(host="h1")
    hc.assess_light(h, facts, expect_gpu=None, policy=policy, inventory_host=host)
    return {c.name: c.state for c in h.checks}


def test_flags_beat_the_hosts_inventory_fields_which_beat_the_defaults():
    facts = _facts(free_gib=8)
    assert _disk_state(facts)["disk"] == hc.OK  # default warning below 5 GiB
    host = Host(name="h1", hostname="x", warning=(("free_gib", "10:"),))
    assert _disk_state(facts, host=host)["disk"] == hc.WARNING
    flags = hc.HealthPolicy(warning=nagios.parse_thresholds("free_gib=2:"))
    assert _disk_state(facts, flags, host)["disk"] == hc.OK
    strict = hc.HealthPolicy(critical=nagios.parse_thresholds("free_gib=50:"))
    assert _disk_state(facts, strict, host)["disk"] == hc.CRITICAL
    # a lock: the default warns after 30 minutes; a host may make it critical sooner
    assert _disk_state(_facts(8, lock_age_s=600))["lock"] == hc.OK
    fussy = Host(name="h1", hostname="x", critical=(("lock_min", "5"),))
    assert _disk_state(_facts(8, lock_age_s=600), host=fussy)["lock"] == hc.CRITICAL


def test_latency_ranges_replace_the_sla_defaults():
    report = {"ok": True, "checks": [], "latency": {"p50_ms": 5, "p99_ms": 30, "sla_p99_ms": 50}}

    def latency(policy=None, host=None):
        policy = policy or hc.HealthPolicy()
        h = hc.HostHealth(host="h1")
        hc.assess_runtime(h, report, 0, policy=policy, inventory_host=host)
        return next(c for c in h.checks if c.name == "latency"), h

    check, h = latency()
    assert check.state == hc.OK and str(h.p99_critical) == "50" and str(h.p99_warning) == "40"
    check, _ = latency(hc.HealthPolicy(warning=nagios.parse_thresholds("25")))
    assert check.state == hc.WARNING and "warning range 25" in check.message
    check, h = latency(host=Host(name="h1", hostname="x", critical=(("p99_ms", "~:20"),)))
    assert check.state == hc.CRITICAL and "critical range ~:20" in check.message
    run = hc.HealthRun([h], deep=True, started=0, duration_s=1)
    assert "'p99_ms'=30ms;40;~:20;0" in health_output.status_line(
        run
    )  # perfdata names the ranges used

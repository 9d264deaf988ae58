"""The checklist file validates on load, and step states follow from the deployment log."""

from __future__ import annotations

import copy

import pytest
import yaml

from moola_core.errors import ValidationError
from moola_ops.checklist import spec
from moola_ops.checklist import states as cl
from moola_ops.log.journal import Journal, read_events


def test_shipped_checklist_has_eight_phases_and_known_checks():
    checklist = spec.load_checklist()
    assert [p.number for p in checklist.phases] == list(range(1, 9))
    names = [p.name for p in checklist.phases]
    assert names[0] == "pre-deployment" and names[-1] == "monitoring"
    steps = [s for p in checklist.phases for s in p.steps]
    assert all(s.check in cl.CHECKS for s in steps)
    assert {s.id for s in checklist.phase(6).steps if s.manual} == {"signoff", "documentation"}
    assert all(s.optional for s in checklist.phase(7).steps)


def _shipped() -> dict:
    return yaml.safe_load(open(spec.DEFAULT_CHECKLIST).read())


def test_typo_in_a_check_name_is_an_error():
    data = _shipped()
    data["phases"][4]["steps"][1]["check"] = "verify.latncy"
    with pytest.raises(ValidationError, match=r"unknown check 'verify.latncy'.*verify.latency"):
        spec.parse_checklist(data)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["phases"].pop(), "it must have the eight phases"),
        (lambda d: d["phases"][2].update(number=7), "must have `number: 3`"),
        (lambda d: d["phases"][0]["steps"][0].update(manul=True), "unknown keys"),
        (lambda d: d["phases"][0]["steps"][0].update(optional="yes"), "must be true or false"),
        (lambda d: d["phases"][1].update(steps=[]), "has no steps"),
        (lambda d: d["phases"][0]["steps"].append(d["phases"][0]["steps"][0]), "duplicate"),
        (lambda d: d.update(extra=1), "exactly one key"),
    ],
)
def test_malformed_checklists_are_refused(edit, message):
    data = copy.deepcopy(_shipped())
    edit(data)
    with pytest.raises(ValidationError, match=message):
        spec.parse_checklist(data)


def test_bad_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("phases:\n  - number: 1\n   name: x\n")
    with pytest.raises(ValidationError, match="line"):
        spec.load_checklist(path)


def _by_check(report) -> dict[str, cl.StepState]:
    return {s.check: s for s in report.steps}


def test_states_follow_the_log(tmp_path):
    log = tmp_path / "deployments.jsonl"
    checklist = spec.load_checklist()

    pre = Journal("preflight", actor="ana", path=log)
    for step in ("lint", "tests", "data", "model", "doctor"):
        pre.record("", step, "ok")
    select = Journal("select", actor="ana", path=log)
    select.record("", "choice", "ok", run_id="r1")
    select.record("", "gate", "ok", run_id="r1")
    Journal("bundle", bundle="v0.1", actor="ana", path=log).record("", "build", "ok")

    # no deployment yet: phases 1-3 done, the rest pending
    report = cl.checklist_states(checklist, read_events(log))
    assert report.deployment is None
    assert report.phase_states()[1] == "done" and report.phase_states()[4] == "pending"

    dep = Journal("deploy", bundle="v0.1", actor="bob", path=log)
    for host in ("local-1", "local-2"):
        for step in ("upload", "promote", "check", "switch", "post-check"):
            dep.record(host, step, "ok")
    verify = Journal("verify", bundle="v0.1", deployment=dep.deployment, actor="bob", path=log)
    verify.record("local-1", "sanity", "ok")
    verify.record("local-1", "latency", "ok")
    verify.record("local-2", "sanity", "failed", summary="golden outputs differ")

    report = cl.checklist_states(checklist, read_events(log))
    states = _by_check(report)
    assert report.deployment == dep.deployment and report.hosts == ["local-1", "local-2"]
    assert report.bundle == "v0.1"
    assert states["deploy.switch"].state == "done" and states["deploy.switch"].by == "bob"
    assert states["verify.sanity"].state == "failed"
    assert states["verify.sanity"].hosts == {"local-1": "done", "local-2": "failed"}
    assert states["verify.sanity"].detail == "golden outputs differ"
    assert states["accept.signoff"].state == "pending"
    assert states["rollback.switch"].state == "skipped"  # optional and not needed
    assert report.phase_states()[5] == "failed"

    # verify again on local-2: the newest line per host decides
    verify.record("local-2", "sanity", "ok")
    verify.record("local-2", "latency", "ok")
    report = cl.checklist_states(checklist, read_events(log), dep.deployment)
    assert report.phase_states()[5] == "done"

    # a later deployment to the same hosts starts a new window for "after" checks
    later = Journal("deploy", bundle="v0.2", actor="bob", path=log)
    later.record("local-1", "upload", "ok")
    report = cl.checklist_states(checklist, read_events(log))
    assert report.deployment == later.deployment
    assert _by_check(report)["verify.sanity"].state == "pending"
    assert _by_check(report)["bundle.build"].state == "pending"  # v0.2 was never built


def test_unknown_deployment_lists_recent_ones(tmp_path):
    log = tmp_path / "deployments.jsonl"
    dep = Journal("deploy", path=log)
    dep.record("local-1", "switch", "ok")
    with pytest.raises(Exception, match=dep.deployment):
        cl.checklist_states(spec.load_checklist(), read_events(log), "nope")


def test_accept_is_refused_until_phases_1_to_5_pass(tmp_path, monkeypatch):
    from moola_core.errors import MoolaError
    from moola_ops.checklist.phases import run_accept

    log = tmp_path / "deployments.jsonl"
    monkeypatch.setenv("MOOLA_LOG", str(log))
    for phase, steps in (
        ("preflight", ("lint", "tests", "data", "model")),
        ("select", ("choice", "gate")),
    ):
        journal = Journal(phase, actor="ana")
        for step in steps:
            journal.record("", step, "ok")
    Journal("preflight", actor="ana").record("", "doctor", "skipped")  # skipped counts as passed
    Journal("bundle", bundle="v0.3").record("", "build", "ok")
    dep = Journal("deploy", bundle="v0.3")
    for step in ("promote", "check", "post-check"):
        dep.record("runpod-1", step, "ok")

    with pytest.raises(MoolaError, match=r"cannot be accepted.*5/sanity pending"):
        run_accept(dep.deployment, "ana")
    assert read_events(log)[-1]["status"] == "refused"  # the refusal is recorded too

    verify = Journal("verify", bundle="v0.3", deployment=dep.deployment)
    verify.record("runpod-1", "sanity", "ok")
    verify.record("runpod-1", "latency", "ok")
    with pytest.raises(MoolaError, match="--by must name"):
        run_accept(dep.deployment, "  ")
    report = run_accept(dep.deployment, "Ana Lima", "first release of the pointer model")
    assert report.ok and report.facts["by"] == "Ana Lima"

    states = _by_check(cl.checklist_states(spec.load_checklist(), read_events(log), dep.deployment))
    assert states["accept.signoff"].state == "done" and states["accept.signoff"].by == "Ana Lima"
    assert states["accept.notes"].detail == "first release of the pointer model"


def _released(log, version: str, run: str, sha: str, hosts=("h1",), ok=True) -> Journal:
    """A bundle build of `run` and a deploy of it (its post-switch check ok or failed)."""
    Journal("bundle", bundle=version, path=log).record("", "build", "ok", run_id=run, sha256=sha)
    dep = Journal("deploy", bundle=version, path=log)
    dep.record("", "open", "started", hosts=list(hosts), sha256=sha)
    for host in hosts:
        dep.record(host, "promote", "ok", sha256=sha)
        dep.record(host, "check", "ok" if ok else "failed", error="" if ok else "p99 over SLA")
        if ok:
            dep.record(host, "post-check", "ok")
    return dep


def test_verify_after_a_failed_deploy_does_not_credit_the_failed_release(tmp_path, monkeypatch):
    from moola_ops.checklist import phases
    from moola_ops.watch.health import CheckResult, HealthRun, HostHealth

    log = tmp_path / "deployments.jsonl"
    monkeypatch.setenv("MOOLA_LOG", str(log))
    Journal("select", path=log).record("", "choice", "ok", facts={"run_id": "r1"})
    v02 = _released(log, "v0.2", "r1", "aa" * 32)
    v03 = _released(log, "v0.3", "r1", "bb" * 32, ok=False)  # failed before its switch

    # `invoke verify` now checks what is live: v0.2 (a real run_verify, its probe replaced)
    live = HostHealth(host="h1", release="v0.2", p99_ms=1.0, sla_p99_ms=5.0)
    live.checks += [CheckResult(n, 0, "fine") for n in ("ssh", "current", "checksums", "model")]
    live.checks.append(CheckResult("latency", 0, "p99 1.00 ms within 5 ms"))
    monkeypatch.setattr(
        "moola_ops.watch.health_run.run_healthcheck",
        lambda *a, **k: HealthRun([live], True, 0.0, 1.0),
    )
    assert phases.run_verify("h1").ok

    checklist = spec.load_checklist()
    failed = cl.checklist_states(checklist, read_events(log), v03.deployment)
    assert failed.phase_states()[5] == "pending", _by_check(failed)["verify.sanity"]
    assert failed.phase_states()[4] == "failed"
    serving = cl.checklist_states(checklist, read_events(log), v02.deployment)
    assert serving.phase_states()[5] == "done"  # recorded under the deploy that made v0.2 live
    assert _by_check(serving)["verify.sanity"].detail == "v0.2: model loads, golden outputs match"


def test_phase_7_is_not_needed_when_no_rollback_happened(tmp_path):
    log = tmp_path / "deployments.jsonl"
    dep = _released(log, "v0.1", "r1", "cc" * 32)
    report = cl.checklist_states(spec.load_checklist(), read_events(log), dep.deployment)
    assert _by_check(report)["rollback.switch"].state == "skipped"
    assert report.phase_states()[7] == "not needed"
    Journal("rollback", bundle="v0.0", path=log).record("h1", "post-check-runtime", "ok")
    report = cl.checklist_states(spec.load_checklist(), read_events(log), dep.deployment)
    assert report.phase_states()[7] == "done"


def test_phases_2_and_3_are_tied_to_the_bundles_run_and_sha256(tmp_path):
    log = tmp_path / "deployments.jsonl"
    checklist = spec.load_checklist()
    Journal("select", path=log).record("", "choice", "ok", facts={"run_id": "seed-17"})
    # a bundle built from another seed than the selected one
    other = _released(log, "v0.3", "seed-13", "dd" * 32)
    states = _by_check(cl.checklist_states(checklist, read_events(log), other.deployment))
    assert states["select.choice"].state == "failed"
    assert "built from run seed-13, which no selection chose (last: seed-17)" in (
        states["select.choice"].detail
    )
    # the same, with an override recorded at build time
    Journal("bundle", bundle="v0.4", path=log).record(
        "", "build", "ok", run_id="seed-13", sha256="ee" * 32, override="hotfix for session gaps"
    )
    dep = Journal("deploy", bundle="v0.4", path=log)
    dep.record("", "open", "started", sha256="ee" * 32)
    states = _by_check(cl.checklist_states(checklist, read_events(log), dep.deployment))
    # an override is its own state, never a check mark
    assert states["select.choice"].state == "overridden"
    assert states["select.choice"].detail.endswith("override: hotfix for session gaps")
    # its own recorded selection counts too
    Journal("select", path=log).record("", "choice", "ok", facts={"run_id": "seed-13"})
    again = _released(log, "v0.5", "seed-13", "ff" * 32)
    states = _by_check(cl.checklist_states(checklist, read_events(log), again.deployment))
    assert states["select.choice"].state == "done"
    # a rebuilt archive (another sha256) under a deployed version breaks phase 3
    rebuilt = Journal("deploy", bundle="v0.5", path=log)
    rebuilt.record("", "open", "started", sha256="99" * 32)
    states = _by_check(cl.checklist_states(checklist, read_events(log), rebuilt.deployment))
    assert states["bundle.build"].state == "failed"
    assert "is not the one built and verified as v0.5" in states["bundle.build"].detail


def test_a_deploy_past_the_gate_shows_as_an_override_on_phase_2_and_accept_names_it(
    tmp_path, monkeypatch
):
    """A bundle whose run was never judged, deployed with --override-gate: phase 2 of that
    deployment is "overridden" (who and why), not failed and not done; accepting it works and
    its sign-off line lists the overridden steps."""
    from moola_ops.checklist.phases import run_accept

    log = tmp_path / "deployments.jsonl"
    monkeypatch.setenv("MOOLA_LOG", str(log))
    checklist = spec.load_checklist()
    for step in ("lint", "tests", "data", "model", "doctor"):
        Journal("preflight", path=log).record("", step, "ok")
    dep = _released(log, "v0.7", "never-judged", "ab" * 32)
    dep.record(
        "h1",
        "gate",
        "overridden",
        override="data fix, approved by Ana",
        summary="OVERRIDDEN at deploy: data fix, approved by Ana; never-judged carries no "
        "quality-gate result",
    )
    report = cl.checklist_states(checklist, read_events(log), dep.deployment)
    states = _by_check(report)
    assert states["select.gate"].state == "overridden"
    assert states["select.choice"].state == "overridden"
    assert "data fix, approved by Ana" in states["select.gate"].detail
    assert report.phase_states()[2] == "overridden"
    for step in ("sanity", "latency"):
        Journal("verify", bundle="v0.7", deployment=dep.deployment, path=log).record(
            "h1", step, "ok"
        )
    accepted = run_accept(dep.deployment, "ana")
    assert accepted.ok
    signoff = read_events(log)[-2]
    assert signoff["step"] == "signoff" and signoff["detail"]["overridden"] == [
        "2/choice",
        "2/gate",
    ]
    assert "with overridden steps 2/choice, 2/gate" in signoff["detail"]["summary"]

"""The deploy engine against real OpenSSH stand-in hosts: the flow, rollback, and the faults.

After every fault: `current` points to a verified release, nothing is half-switched, the lock
is released and the deployment log says what happened.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tarfile
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from moola_core.agent.archive import write_archive
from moola_core.errors import MoolaError
from moola_ops import deploy as engine
from moola_ops.deploy.commands import lock as lock_cmd
from moola_ops.hosts.inventory import Inventory
from moola_ops.hosts.layout import Layout
from moola_ops.log.journal import read_events
from moola_ops.transport import HostSession

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

FAST = engine.Options(check_runs=3, check_warmup=1, check_backend="eager", keep_releases=2)


def current_of(host) -> str | None:
    link = Path(host.workspace) / "current"
    return os.readlink(link) if link.is_symlink() else None


def revisions(host) -> list[dict]:
    path = Path(host.workspace) / "revisions.log"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def assert_settled(host, version: str) -> None:
    """current -> releases/<version>, which verifies; no lock, no temp link, no staging."""
    assert current_of(host) == f"releases/{version}"
    ws = Path(host.workspace)
    assert not (ws / "deploy.lock").exists()
    assert not list(ws.glob(".current-*"))
    check = engine.verify_current(host)
    assert check.ok and check.version == version, check.problems


def steps(journal_file, host, deployment=None) -> dict[str, str]:
    events = read_events(journal_file, host=host.name, deployment=deployment)
    return {e["step"]: e["status"] for e in events}


def test_deploy_noop_redeploy_and_rollback_from_history(fleet, bundles, journal_file):
    _, inventory = fleet
    (host,) = inventory.resolve("dep-1")
    v10, v11 = (
        engine.resolve_bundle(str(bundles["v1.0"])),
        engine.resolve_bundle(str(bundles["v1.1"])),
    )

    first = engine.deploy([host], v10, FAST)
    assert first.ok, first.outcomes
    assert_settled(host, "v1.0")
    second = engine.deploy([host], v11, FAST)
    assert second.ok and second.outcomes[0].previous == "v1.0", second.outcomes
    assert_settled(host, "v1.1")
    # the release being left was snapshotted before the switch
    assert any(b["version"] == "v1.0" for b in engine.list_backups(host))

    again = engine.deploy([host], v11, FAST)
    assert again.outcomes[0].status == "noop" and "already current" in again.outcomes[0].message
    assert "check" not in steps(journal_file, host, again.deployment)  # fast: no runtime check

    back = engine.rollback([host], None, FAST)
    assert back.ok, back.outcomes
    assert back.outcomes[0].current == "v1.0" and back.outcomes[0].previous == "v1.1"
    assert_settled(host, "v1.0")
    assert [r["action"] for r in revisions(host)] == ["deploy", "deploy", "rollback"]

    # every step of every run is in the log, with the fields the schema promises
    events = read_events(journal_file)
    assert {e["deployment"] for e in events} >= {first.deployment, back.deployment}
    for field in ("deployment", "time", "actor", "host", "bundle", "phase", "step", "status"):
        assert all(field in e for e in events)
    deploy_steps = steps(journal_file, host, second.deployment)
    for step in ("lock", "upload", "promote", "check", "switch", "post-check", "prune", "unlock"):
        assert deploy_steps[step] == "ok", (step, deploy_steps)


def test_rollback_restores_a_damaged_target_from_its_snapshot(fleet, bundles, journal_file):
    _, inventory = fleet
    (host,) = inventory.resolve("dep-1")  # continues from the test above: current v1.0, prev v1.1
    v11 = engine.resolve_bundle(str(bundles["v1.1"]))
    assert engine.deploy([host], v11, FAST).ok  # current v1.1, previous v1.0 (snapshotted)
    weights = Path(host.workspace) / "releases" / "v1.0" / "weights.pt"
    weights.write_bytes(b"damaged")
    result = engine.rollback([host], None, FAST)
    assert result.ok, result.outcomes
    assert steps(journal_file, host, result.deployment)["restore"] == "ok"
    assert_settled(host, "v1.0")


@pytest.mark.parametrize(
    ("serve", "words", "step"),
    [
        (False, "runtime check of v9.0-slow", "check"),  # files only: the runtime check
        (True, "the server for v9.0-slow on dep-2 failed its HTTP check", "serve-check"),
    ],
)
def test_failing_pre_switch_check_switches_nothing(
    fleet, bundles, journal_file, serve, words, step
):
    _, inventory = fleet
    (host,) = inventory.resolve("dep-2")
    opts = replace(FAST, serve=serve)
    assert engine.deploy([host], engine.resolve_bundle(str(bundles["v1.0"])), opts).ok
    slow = engine.resolve_bundle(str(bundles["v9.0-slow"]))
    result = engine.deploy([host], slow, opts)
    outcome = result.outcomes[0]
    assert outcome.status == "failed" and words in outcome.message, outcome.message
    assert result.exit_code == 1
    assert_settled(host, "v1.0")
    assert not (Path(host.workspace) / "releases" / "v9.0-slow").exists()
    assert steps(journal_file, host, result.deployment)[step] == "failed"


def test_failing_post_switch_check_switches_back_at_once(fleet, bundles, journal_file):
    sandbox, _ = fleet
    # the operator's smoke command (inventory `smoke:`) fails once the new release is current
    smoky = Inventory.from_sandbox(
        sandbox, smoke='test "$(basename "$(pwd -P)")" != v1.1', connect_timeout_s=5
    )
    (host,) = smoky.resolve("dep-2")  # current v1.0 from the test above
    result = engine.deploy([host], engine.resolve_bundle(str(bundles["v1.1"])), FAST)
    outcome = result.outcomes[0]
    assert outcome.status == "failed"
    assert "smoke command failed" in outcome.message and "switched back to v1.0" in outcome.message
    assert_settled(host, "v1.0")
    assert [r["action"] for r in revisions(host)][-2:] == ["deploy", "auto-rollback"]
    logged = steps(journal_file, host, result.deployment)
    assert logged["post-check"] == "failed" and logged["auto-rollback-check"] == "ok"


def test_two_deploys_at_once_one_is_refused_naming_the_holder(fleet, bundles, journal_file):
    _, inventory = fleet
    (host,) = inventory.resolve("dep-3")
    bundle = engine.resolve_bundle(str(bundles["v1.2"]))
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(engine.deploy([host], bundle, FAST)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    statuses = sorted(r.outcomes[0].status for r in results)
    assert statuses == ["ok", "refused"], [r.outcomes for r in results]
    refused = next(r for r in results if r.outcomes[0].status == "refused").outcomes[0]
    winner = next(r for r in results if r.outcomes[0].status == "ok")
    assert f"deployment {winner.deployment}" in refused.message and "--break" in refused.message
    assert_settled(host, "v1.2")


def test_stale_lock_is_shown_refuses_deploys_and_can_be_broken(fleet, bundles, journal_file):
    _, inventory = fleet
    (host,) = inventory.resolve("dep-3")
    stale = {
        "deployment": "20200101T000000Z-dead00",
        "actor": "ghost@gone",
        "what": "deploy v0",
        "since": "2020-01-01T00:00:00Z",
        "pid": 1,
    }
    with HostSession(host) as ssh:
        ssh.run(lock_cmd.acquire(Layout(host.workspace), stale))
    assert engine.lock_status(host)["actor"] == "ghost@gone"
    refused = engine.deploy([host], engine.resolve_bundle(str(bundles["v1.2"])), FAST)
    assert refused.outcomes[0].status == "refused" and "ghost@gone" in refused.outcomes[0].message
    with pytest.raises(MoolaError, match="belongs to ghost@gone"):
        engine.release_lock(host)  # not ours: --release refuses, --break is the way
    assert engine.break_lock(host)["actor"] == "ghost@gone"
    assert engine.lock_status(host) is None
    broke = [e for e in read_events(journal_file, host=host.name) if e["step"] == "break"]
    assert broke and broke[-1]["detail"]["holder"]["actor"] == "ghost@gone"
    assert engine.deploy([host], engine.resolve_bundle(str(bundles["v1.2"])), FAST).ok


def test_corrupted_upload_is_refused_before_promotion(fleet, bundles, journal_file, tmp_path):
    _, inventory = fleet
    (host,) = inventory.resolve("dep-3")  # current v1.2
    archive = tmp_path / "moola-v1.1.tar.gz"
    shutil.copy(bundles["v1.1"], archive)
    good = engine.resolve_bundle(str(archive))
    # the original may change now: Moola ships its private copy (the bytes it verified) ...
    archive.write_bytes(b"swapped")
    # ... so corrupt that copy after its full verification, as a bad disk or link would: the
    # host's sha256 check still refuses it
    good.verify()
    data = bytearray(good.path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the bytes that travel differ from the ones we hashed
    good.path.write_bytes(bytes(data))
    result = engine.deploy([host], good, FAST)
    assert result.outcomes[0].status == "failed"
    assert "failed verification" in result.outcomes[0].message
    assert "sha256" in result.outcomes[0].message
    assert_settled(host, "v1.2")
    assert not (Path(host.workspace) / "releases" / "v1.1").exists()
    assert not list((Path(host.workspace) / "incoming").iterdir())


def test_a_file_missing_from_the_manifest_is_refused_before_promotion(
    fleet, bundles, journal_file, tmp_path
):
    """A planted code/torch.py would shadow torch: the runtime runs with PYTHONPATH=REL/code."""
    _, inventory = fleet
    (host,) = inventory.resolve("dep-3")  # current v1.2, no v1.1 (the test above)
    with tarfile.open(bundles["v1.1"]) as tar:
        entries = {
            m.name.split("/", 1)[1]: tar.extractfile(m).read()
            for m in tar.getmembers()
            if m.isfile()
        }
    entries["code/torch.py"] = b"raise SystemExit('planted')\n"
    planted = write_archive(entries, "v1.1", tmp_path / "moola-v1.1.tar.gz", mtime=0)
    result = engine.deploy([host], engine.resolve_bundle(str(planted)), FAST)
    assert result.outcomes[0].status == "failed"
    assert "failed verification" in result.outcomes[0].message
    assert "code/torch.py is not listed in the manifest" in result.outcomes[0].message
    # the same full verification as `invoke bundle.verify`, here, before any upload (#15.5)
    assert steps(journal_file, host, result.deployment)["bundle-verify"] == "failed"
    assert "upload" not in steps(journal_file, host, result.deployment)
    assert_settled(host, "v1.2")
    assert not (Path(host.workspace) / "releases" / "v1.1").exists()
    assert not list((Path(host.workspace) / "incoming").iterdir())


def test_shell_metacharacters_are_refused_before_any_remote_command(fleet, journal_file):
    _, inventory = fleet
    for bad in ("v1;rm -rf /", "v1 && reboot", "$(id)", "v1/../../etc"):
        with pytest.raises(MoolaError, match="invalid"):
            engine.resolve_bundle(bad)
    for bad in ("dep-1;id", "dep-1 dep-2", "`id`"):
        with pytest.raises(MoolaError, match="invalid host name"):
            inventory.resolve(bad)
    with pytest.raises(MoolaError, match="invalid version"):
        engine.rollback(inventory.resolve("dep-1"), "v1|id", FAST)
    assert read_events(journal_file) == []  # nothing ran, nothing to log


def test_unknown_host_key_is_refused_and_can_be_pinned_explicitly(fleet, journal_file, tmp_path):
    _, inventory = fleet
    (host,) = inventory.resolve("dep-1")
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    stranger = replace(host, known_hosts=str(empty))
    result = engine.rollback([stranger], None, FAST)
    assert result.outcomes[0].status == "failed"
    assert "not in known_hosts" in result.outcomes[0].message
    assert steps(journal_file, host, result.deployment) == {"connect": "failed"}
    assert not (Path(host.workspace) / "deploy.lock").exists()

    facts_opts = replace(FAST)
    facts_opts.accept_new_host_key = True
    pinned = engine.rollback([stranger], "v1.0", facts_opts)  # v1.0 is current: a no-op
    assert pinned.outcomes[0].status == "noop", pinned.outcomes
    connect = [
        e for e in read_events(journal_file, deployment=pinned.deployment) if e["step"] == "connect"
    ][0]
    assert connect["detail"]["accepted_new_host_key"].startswith("ssh-ed25519 SHA256:")
    assert "ssh-ed25519" in empty.read_text()


def test_unreachable_host_fails_within_its_timeout_without_stopping_the_fleet(
    fleet, bundles, journal_file
):
    _, inventory = fleet
    silent = socket.socket()  # accepts TCP (backlog) but never speaks SSH
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        (good,) = inventory.resolve("dep-3")
        dead = replace(good, name="dead-1", port=silent.getsockname()[1], connect_timeout_s=1.0)
        result = engine.deploy([dead, good], engine.resolve_bundle(str(bundles["v1.2"])), FAST)
    finally:
        silent.close()
    by_host = {o.host: o for o in result.outcomes}
    assert (
        by_host["dead-1"].status == "failed" and "cannot reach dead-1" in by_host["dead-1"].message
    )
    assert by_host["dead-1"].duration_s < 10
    assert by_host["dep-3"].ok
    assert result.exit_code == 1


def test_canary_failure_stops_the_rest(fleet, bundles, journal_file):
    _, inventory = fleet
    hosts = inventory.resolve("dep-2,dep-3")
    opts = replace(FAST, canary=1)
    result = engine.deploy(hosts, engine.resolve_bundle(str(bundles["v9.0-slow"])), opts)
    by_host = {o.host: o.status for o in result.outcomes}
    assert by_host == {"dep-2": "failed", "dep-3": "skipped"}
    assert result.exit_code == 1


def test_ssh_config_aliases_work_with_strict_keys(fleet, journal_file):
    sandbox, inventory = fleet
    from moola_ops.hosts.inventory import Host

    # only the alias: address, port, user, key and known_hosts all come from the ssh_config
    alias = Host(
        name="dep-1",
        hostname="dep-1",
        ssh_config=str(sandbox.ssh_config_path),
        workspace=inventory.hosts["dep-1"].workspace,
    )
    facts = engine.host_facts(alias)
    assert facts.current == current_of(inventory.hosts["dep-1"]).split("/")[-1]


def test_drill_rehearses_a_rollback_and_restore_puts_a_snapshot_back(fleet, bundles, journal_file):
    _, inventory = fleet
    (host,) = inventory.resolve("dep-1")  # current v1.0 after the tests above
    assert engine.deploy([host], engine.resolve_bundle(str(bundles["v1.2"])), FAST).ok
    result = engine.drill([host], FAST)
    assert result.ok, result.outcomes
    assert "rolled back to v1.0" in result.outcomes[0].message
    assert_settled(host, "v1.2")  # forward again
    assert [r["action"] for r in revisions(host)][-2:] == ["drill-back", "drill-forward"]
    drill_line = [
        e for e in read_events(journal_file, deployment=result.deployment) if e["step"] == "drill"
    ][0]
    assert drill_line["status"] == "ok" and drill_line["detail"]["rollback_s"] > 0

    snapshot = next(b["name"] for b in engine.list_backups(host) if b["version"] == "v1.0")
    (Path(host.workspace) / "releases" / "v1.0" / "model.json").write_text("{}")
    restored = engine.restore([host], snapshot)
    assert restored.ok, restored.outcomes
    assert engine.rollback([host], "v1.0", FAST).ok  # the restored release verifies and serves
    assert_settled(host, "v1.0")


def test_batches_stop_after_a_failed_wave(fleet, bundles, journal_file):
    _, inventory = fleet
    (good,) = inventory.resolve("dep-3")
    refused_port = socket.socket()  # bound, never listening: connection refused at once
    refused_port.bind(("127.0.0.1", 0))
    try:
        dead = replace(good, name="dead-2", port=refused_port.getsockname()[1])
        opts = replace(FAST, batch=1)
        result = engine.deploy([dead, good], engine.resolve_bundle(str(bundles["v1.2"])), opts)
    finally:
        refused_port.close()
    by_host = {o.host: o for o in result.outcomes}
    assert by_host["dead-2"].status == "failed" and "cannot reach" in by_host["dead-2"].message
    assert by_host["dep-3"].status == "skipped" and "batch" in by_host["dep-3"].message
    assert not steps(journal_file, good, result.deployment).get("lock")  # never touched


def test_a_host_with_allowed_signers_takes_only_signed_bundles(
    sandbox_factory, bundles, journal_file, tmp_path
):
    import subprocess

    from moola_core.bundle.build import build_bundle
    from tests.unit.tiny_runs import make_tiny_run

    key = tmp_path / "release_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"release@moola {key.with_suffix('.pub').read_text()}")
    make_tiny_run(tmp_path / "runs", "run-signed", seed=3)
    signed = build_bundle(  # the stand-in hosts' SLA, as make_bundle's: a CPU shared by many
        "v2.0",
        "run-signed",
        runs_dir=tmp_path / "runs",
        out_dir=tmp_path / "b",
        sign_key=key,
        sla_p99_ms=60000.0,
    )

    sandbox = sandbox_factory(["sig-1"])
    inventory = Inventory.from_sandbox(sandbox, allowed_signers=str(allowed))
    (host,) = inventory.resolve("sig-1")

    unsigned = engine.deploy([host], engine.resolve_bundle(str(bundles["v1.0"])), FAST)
    assert unsigned.outcomes[0].status == "failed"
    assert "refused for sig-1, nothing changed" in unsigned.outcomes[0].message
    assert steps(journal_file, host, unsigned.deployment)["signature"] == "failed"
    assert current_of(host) is None and not (Path(host.workspace) / "releases").exists()

    ok = engine.deploy([host], engine.resolve_bundle(str(signed.path)), FAST)
    assert ok.outcomes[0].status == "ok", ok.outcomes[0].message
    assert steps(journal_file, host, ok.deployment)["signature"] == "ok"
    assert_settled(host, "v2.0")

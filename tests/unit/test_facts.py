"""Light health facts: each parser against recorded output, and the fact script run for real.

The fact script is plain POSIX sh + the host's python3; running it here with `sh -c` on a real
workspace directory exercises exactly what a host runs, minus SSH.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from moola_core.errors import MoolaError
from moola_ops.deploy.commands import facts as cmd
from moola_ops.hosts.layout import Layout
from tests.agent_shell import with_agent

NVIDIA_SMI_TWO_GPUS = """\
NVIDIA H100 80GB HBM3, 1024, 81559, 3, 34
NVIDIA H100 80GB HBM3, [N/A], 81559, 0, 31
"""


def test_split_sections_keeps_order_and_text():
    out = "### lock\n1700000000 1699999000\n### current\nreleases/v0.1\nresolves\n### end\n"
    assert cmd.split_sections(out) == {
        "lock": ["1700000000 1699999000"],
        "current": ["releases/v0.1", "resolves"],
        "end": [],
    }


def test_parse_current_link_release_and_dangling():
    assert cmd.parse_current([]) == cmd.CurrentLink(None, None, None, False)
    lines = ["link releases/v0.3", "resolved /ws/releases/v0.3", "root /ws", "state resolves"]
    fact = cmd.parse_current(lines)
    assert (fact.link, fact.resolved, fact.resolves) == ("releases/v0.3", "/ws/releases/v0.3", True)
    dangling = ["link releases/v0.2", "resolved /ws/releases/v0.2", "root /ws", "state dangling"]
    assert cmd.parse_current(dangling).resolves is False


def test_parse_gpus_from_recorded_nvidia_smi():
    report = cmd.parse_gpus(NVIDIA_SMI_TWO_GPUS.splitlines())
    assert report.present and report.error is None
    assert [g.name for g in report.gpus] == ["NVIDIA H100 80GB HBM3"] * 2
    assert report.gpus[0].memory_used_mib == 1024.0
    assert report.gpus[1].memory_used_mib is None  # "[N/A]" is no number, not a crash
    assert report.gpus[0].temperature_c == 34.0
    assert cmd.parse_gpus(["absent"]).present is False
    failed = cmd.parse_gpus(
        ["NVIDIA-SMI has failed because it couldn't communicate", "nvidia-smi failed"]
    )
    assert failed.present and failed.error and not failed.gpus


def test_parse_free_disk_from_df():
    text = "/dev/vda   264212084 24080980  82309932      23% /"
    disk = cmd.parse_disk([text])
    assert disk.total_bytes == 264212084 * 1024
    assert disk.free_bytes == 82309932 * 1024
    assert cmd.parse_disk([]) is None
    assert cmd.parse_disk(["garbage"]) is None


def test_parse_lock_names_holder_and_age():
    holder = {
        "actor": "ana@laptop",
        "since": "2026-01-01T00:00:00Z",
        "what": "deploy v0.3",
        "pid": 42,
        "deployment": "20260101T000000Z-abc123",
    }
    lock = cmd.parse_lock(["1600 1000", json.dumps(holder)])
    assert lock.age_s == 600
    assert lock.holder["actor"] == "ana@laptop" and lock.holder["what"] == "deploy v0.3"
    assert cmd.parse_lock([]) is None
    assert cmd.parse_lock(["1000 1000"]).holder == {}  # a lock without a holder file


def test_parse_checksums_problems_and_version():
    ok = cmd.parse_checksums(['{"ok": true, "problems": [], "version": "v0.1"}'])
    assert ok.ok and ok.version == "v0.1"
    bad = cmd.parse_checksums(['{"ok": false, "problems": ["weights.pt: sha256 mismatch"]}'])
    assert not bad.ok and bad.problems == ["weights.pt: sha256 mismatch"]
    assert cmd.parse_checksums([]) is None
    assert not cmd.parse_checksums(["Traceback (most recent call last):"]).ok


def _release(ws, version: str, files: dict[str, bytes]) -> None:
    rel = ws / "releases" / version
    rel.mkdir(parents=True)
    entries = []
    for name, data in sorted(files.items()):
        (rel / name).write_bytes(data)
        entries.append(
            {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
    (rel / "manifest.json").write_text(json.dumps({"version": version, "files": entries}))


def _run_script(ws) -> cmd.HostFacts:
    script = cmd.gather(Layout(str(ws)), sys.executable, cmd.HEALTH_FACTS)
    out = subprocess.run(
        ["sh", "-c", with_agent(script)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return cmd.parse(out.stdout)


def test_fact_script_on_a_real_workspace(tmp_path):
    ws = tmp_path / "moola"
    ws.mkdir()
    _release(ws, "v0.1", {"weights.pt": b"\x00" * 100, "golden.pt": b"golden"})
    os.symlink("releases/v0.1", ws / "current")
    (ws / "revisions.log").write_text('{"action": "deploy", "version": "v0.1"}\n')

    facts = _run_script(ws)
    assert facts.complete and facts.workspace_exists
    assert facts.current == "v0.1" and facts.link.resolves
    assert facts.checksums.ok and facts.checksums.version == "v0.1"
    assert facts.disk.free_bytes > 0
    assert facts.lock is None

    # one flipped byte in the weights: the checksum fact names the file
    (ws / "releases/v0.1/weights.pt").write_bytes(b"\x01" + b"\x00" * 99)
    (ws / "deploy.lock").mkdir()
    (ws / "deploy.lock/holder.json").write_text('{"actor": "cron@box", "what": "deploy v0.2"}')
    facts = _run_script(ws)
    assert not facts.checksums.ok
    assert any("weights.pt" in p for p in facts.checksums.problems)
    assert facts.lock is not None and facts.lock.holder["actor"] == "cron@box"


def test_fact_script_without_workspace_or_current(tmp_path):
    # the agent's folder (installed on the way) is not a workspace: nothing deployed there
    assert _run_script(tmp_path / "absent").workspace_exists is False
    assert (tmp_path / "absent" / ".moola" / "agent").is_dir()
    ws = tmp_path / "empty"
    (ws / "releases").mkdir(parents=True)  # made by a deploy that stopped before its upload
    facts = _run_script(ws)
    assert facts.workspace_exists and facts.link.link is None and facts.checksums is None
    os.symlink("releases/v9", ws / "current")  # dangling: the release was deleted
    facts = _run_script(ws)
    assert facts.link.link == "releases/v9" and not facts.link.resolves
    assert facts.current is None and "does not resolve" in facts.current_problem


def test_odd_workspace_paths_are_refused_before_any_command():
    for bad in ("/ws/with space;touch pwned", "relative/ws", "/ws/../etc"):
        with pytest.raises(MoolaError, match="invalid workspace"):
            cmd.gather(Layout(bad), "python3")


def test_runtime_check_command_runs_through_current():
    from moola_ops.deploy.commands import release

    line = release.runtime_check(
        Layout("/workspace/moola"), "python3", "current", through_current=True
    )
    assert line == (
        "cd /workspace/moola/current && PYTHONPATH=/workspace/moola/current/code python3 -m "
        "moola_core.runtime check --release /workspace/moola/current --json"
    )

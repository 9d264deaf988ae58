"""Pure command builders compared as strings, and fact parsers fed recorded host output."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from moola_core.agent import archive as bundle_archive
from moola_core.errors import MoolaError
from moola_ops.deploy.commands import decisions, facts, lock, release
from moola_ops.hosts.layout import Layout, check_name, check_workspace
from moola_ops.transport import agent
from tests.agent_shell import with_agent

WS = Layout("/workspace/moola")
DEP = "20261125T170000Z-abc123"


# --- names and layout ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["v0.3", "v1.2.0-rc1", "runpod-1", "local_2", "a+b"])
def test_safe_names_pass(name):
    assert check_name(name, "version") == name


@pytest.mark.parametrize(
    "name",
    ["", "v1;rm -rf /", "v1 v2", "$(id)", "`id`", "../etc", "v1/..", "a|b", "-rf", ".hidden"],
)
def test_names_with_shell_or_path_characters_are_refused(name):
    with pytest.raises(MoolaError, match="invalid version"):
        check_name(name, "version")


@pytest.mark.parametrize("path", ["relative/ws", "/ws/../etc", "/ws; rm -rf /", "/", "~", ""])
def test_bad_workspaces_are_refused(path):
    with pytest.raises(MoolaError, match="invalid workspace"):
        check_workspace(path)


def test_layout_paths_are_quoted_and_home_stays_expandable():
    assert WS.current == "/workspace/moola/current"
    assert Layout("/work space/x".replace(" ", "_")).lock == "/work_space/x/deploy.lock"
    assert Layout("~/moola").releases == '"$HOME"/moola/releases'
    with pytest.raises(MoolaError):
        WS.release("v1;id")


# --- lock ------------------------------------------------------------------------------------


def test_lock_acquire_is_one_mkdir_with_a_quoted_holder():
    holder = {"deployment": DEP, "actor": "o'brien@box", "what": "deploy v0.3"}
    cmd = lock.acquire(WS, holder)
    # the lock appears whole (holder.json inside) by one rename, never as an empty folder
    assert (
        f"mv -T /workspace/moola/.deploy.lock-{DEP} /workspace/moola/deploy.lock 2>/dev/null" in cmd
    )
    assert shlex.quote(lock.holder_json(holder)) in cmd  # a quote in the actor stays data
    assert cmd.startswith("mkdir -p /workspace/moola/releases /workspace/moola/incoming")


def test_lock_parsers_read_recorded_outputs():
    assert lock.parse_acquire("MOOLA-LOCK-ACQUIRED\n### workspace\npresent\n") == (True, None)
    held = 'MOOLA-LOCK-HELD\n{"actor":"alice@laptop","deployment":"X","pid":7}\n### workspace\n'
    acquired, holder = lock.parse_acquire(held)
    assert not acquired and holder["actor"] == "alice@laptop"
    assert "alice@laptop" in lock.describe_holder(holder)
    assert lock.parse_acquire("MOOLA-LOCK-HELD\n{}\n")[1] == {}
    with pytest.raises(ValueError):
        lock.parse_acquire("bash: mkdir: command not found\n")
    assert lock.parse_release("MOOLA-LOCK-RELEASED\n") is True
    assert lock.parse_release("MOOLA-LOCK-NOT-OURS\n") is False
    assert lock.parse_break('{"actor":"ghost"}\n\nMOOLA-LOCK-BROKEN\n') == (
        True,
        {"actor": "ghost"},
    )
    assert lock.parse_break("MOOLA-LOCK-FREE\n") == (False, None)


def test_lock_release_only_removes_our_own_lock():
    cmd = lock.release(WS, DEP)
    assert shlex.quote(f'"deployment":"{DEP}"') in cmd
    assert f"mv -T /workspace/moola/deploy.lock /workspace/moola/deploy.lock.released-{DEP}" in cmd


def test_lock_commands_run_in_a_real_shell(tmp_path):
    """The strings are valid shell: run them against a temp workspace with /bin/sh."""
    layout = Layout(str(tmp_path / "ws"))

    def sh(cmd: str) -> str:
        return subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True).stdout

    assert lock.parse_acquire(sh(lock.acquire(layout, {"deployment": DEP})))[0]
    acquired, holder = lock.parse_acquire(sh(lock.acquire(layout, {"deployment": "other-1"})))
    assert not acquired and holder["deployment"] == DEP
    assert not lock.parse_release(sh(lock.release(layout, "other-1")))
    assert lock.parse_release(sh(lock.release(layout, DEP)))
    assert not (tmp_path / "ws" / "deploy.lock").exists()


# --- release ---------------------------------------------------------------------------------


def test_switch_is_a_temp_link_renamed_over_current_and_a_revision_line():
    revision = {"action": "deploy", "version": "v0.3", "previous": "v0.2"}
    cmd = release.switch(WS, "v0.3", DEP, revision)
    # only while this deployment still holds the lock (checked under flock), then the rename
    guard = cmd.index(f'grep -qF \'"deployment":"{DEP}"\' /workspace/moola/deploy.lock/')
    assert guard < cmd.index(
        f"ln -sfn releases/v0.3 /workspace/moola/.current-{DEP} && "
        f"mv -T /workspace/moola/.current-{DEP} /workspace/moola/current"
    )
    assert "flock -w 10 9" in cmd
    assert shlex.quote(release.revision_line(**revision)) in cmd
    assert cmd.endswith("readlink /workspace/moola/current; exit $rc")


def test_switch_and_snapshot_really_work_in_a_shell(tmp_path):
    ws = tmp_path / "ws"
    (ws / "releases" / "v1").mkdir(parents=True)
    (ws / "releases" / "v2").mkdir(parents=True)
    (ws / "backups").mkdir()
    (ws / "releases" / "v1" / "a.txt").write_text("one")
    layout = Layout(str(ws))
    refused = subprocess.run(
        ["sh", "-c", release.switch(layout, "v1", DEP, {"version": "v1"})],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 3 and release.LOCK_NOT_OURS in refused.stdout  # no lock held
    assert not (ws / "current").exists()
    holder = {"deployment": DEP, "actor": "t"}
    subprocess.run(["sh", "-c", lock.acquire(layout, holder)], check=True, capture_output=True)
    subprocess.run(["sh", "-c", release.switch(layout, "v1", DEP, {"version": "v1"})], check=True)
    cmd = release.snapshot_and_switch(
        layout,
        "v2",
        DEP,
        {"version": "v2"},
        snapshot_of="v1",
        snapshot_as="20260101T000000Z-v1.tar",
    )
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "releases/v2"
    assert (ws / "backups" / "20260101T000000Z-v1.tar").is_file()
    assert [json.loads(x)["version"] for x in (ws / "revisions.log").read_text().splitlines()] == [
        "v1",
        "v2",
    ]


def test_promote_and_check_builders_quote_every_argument():
    sha = "a" * 64
    cmd = release.promote(WS, "python3", DEP, "v0.3", sha)
    assert cmd.startswith(
        f"python3 -S /workspace/moola/.moola/agent/{agent.HASH}/agent.py release "
    )
    assert cmd.endswith(
        f"promote /workspace/moola/incoming/{DEP}/bundle.tar.gz {sha} v0.3 "
        f"/workspace/moola/incoming/{DEP} /workspace/moola/releases/v0.3"
    )
    with pytest.raises(ValueError):
        release.promote(WS, "python3", DEP, "v0.3", "not-a-sha; rm -rf /")
    check = release.runtime_check(WS, "/opt/py env/python3", "v0.3", runs=5, sla_p99_ms=20)
    assert check == (
        "cd /workspace/moola/releases/v0.3 && PYTHONPATH=/workspace/moola/releases/v0.3/code "
        "'/opt/py env/python3' -m moola_core.runtime check --release "
        "/workspace/moola/releases/v0.3 --json --runs 5 --sla-p99-ms 20.0"
    )


def test_prune_removes_releases_with_their_markers_and_staging():
    cmd = release.prune(WS, ["v0.1"], ["20260101T000000Z-v0.1.tar"])
    assert cmd == (
        "rm -rf -- /workspace/moola/releases/v0.1 /workspace/moola/releases/v0.1.sha256 "
        "/workspace/moola/releases/v0.1.checked "
        "/workspace/moola/backups/20260101T000000Z-v0.1.tar; gone=$?; "
        'for f in /workspace/moola/incoming/*.pid; do p=$(cat "$f" 2>/dev/null); '
        'case "$p" in ""|*[!0-9]*|0|1) false;; *) true;; esac && kill -KILL -"$p" 2>/dev/null; '
        "done; "
        "rm -rf -- /workspace/moola/incoming/* /workspace/moola/.current-* && [ $gone -eq 0 ]"
    )


def test_snapshot_names_round_trip():
    name = release.snapshot_name("20261125T170000123456Z", "v1.2.0-rc1")
    assert release.parse_snapshot_name(name) == ("20261125T170000123456Z", "v1.2.0-rc1")
    assert release.parse_snapshot_name(".partial-x.tar") is None
    assert release.parse_snapshot_name("notes.txt") is None


def test_hostside_report_parser_tolerates_noise():
    assert release.parse_report('warning: x\n{"ok": true, "files": 3}\n')["files"] == 3
    assert release.parse_report("Traceback ...")["ok"] is False


# --- the host-side program, run for real by a bare interpreter --------------------------------


def bundle_file(path: Path, version: str, files: dict[str, bytes], planted=None) -> str:
    """A bundle archive whose manifest lists `files`; `planted` entries ride along unlisted."""
    manifest = {
        "version": version,
        "files": [
            {"path": name, "size": len(data), "sha256": bundle_archive.sha256_bytes(data)}
            for name, data in sorted(files.items())
        ],
    }
    entries = {**files, "manifest.json": json.dumps(manifest).encode(), **(planted or {})}
    bundle_archive.write_archive(entries, version, path, mtime=0)
    return bundle_archive.sha256_file(path)


def run_on_host(command: str, cwd: Path) -> tuple[int, dict]:
    """Run a built command as a host would: a shell, no PYTHONPATH, nothing of the repo nearby,
    the agent installed the way a session installs it (moola_ops/transport/agent.py)."""
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd)}
    workspace = agent.named_workspace(command)
    if workspace is not None:
        command = (
            f"{{ {agent.install_command(workspace, sys.executable)}; }} >/dev/null && {command}"
        )
    proc = subprocess.run(
        ["sh", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    return proc.returncode, release.parse_report(proc.stdout)


def upload(layout: Layout, path: Path) -> None:
    staged = Path(release.staged_archive(layout, DEP))
    staged.parent.mkdir(parents=True)
    Path(layout.releases).mkdir(exist_ok=True)  # the lock step makes it on a real host
    shutil.copy(path, staged)


CODE = {"code/moola_core/spec.py": b"SPEC = 1\n", "model.json": b"{}"}


def test_release_commands_carry_no_program_source():
    """The agent runs from its folder on the host: a command is a short line, no `-c` source."""
    cmd = release.promote(WS, "python3", DEP, "v0.3", "a" * 64)
    assert len(cmd) < 400 and " -c " not in cmd


def test_host_promote_refuses_a_file_missing_from_the_manifest(tmp_path):
    """A planted code/torch.py would shadow torch (the runtime runs with PYTHONPATH=REL/code)."""
    layout = Layout(str(tmp_path / "ws"))
    planted = {"code/torch.py": b"import os; os.system('id')\n"}
    sha = bundle_file(tmp_path / "moola-v0.3.tar.gz", "v0.3", CODE, planted)
    upload(layout, tmp_path / "moola-v0.3.tar.gz")
    code, report = run_on_host(release.promote(layout, sys.executable, DEP, "v0.3", sha), tmp_path)
    assert (code, report["ok"]) == (1, False)
    assert "code/torch.py is not listed in the manifest" in report["problems"][0]
    assert not (tmp_path / "ws" / "releases" / "v0.3").exists()
    assert not (tmp_path / "ws" / "incoming" / DEP).exists()  # staging cleaned


def test_host_promote_verify_snapshot_and_restore_round_trip(tmp_path):
    layout = Layout(str(tmp_path / "ws"))
    releases = tmp_path / "ws" / "releases"
    sha = bundle_file(tmp_path / "moola-v0.3.tar.gz", "v0.3", CODE)
    upload(layout, tmp_path / "moola-v0.3.tar.gz")
    assert run_on_host(release.promote(layout, sys.executable, DEP, "v0.4", sha), tmp_path)[1][
        "problems"
    ] == ["bundle.tar.gz holds version v0.3, not v0.4: upload the right archive."]
    upload(layout, tmp_path / "moola-v0.3.tar.gz")
    code, report = run_on_host(release.promote(layout, sys.executable, DEP, "v0.3", sha), tmp_path)
    assert (code, report) == (0, {"ok": True, "promoted": True, "files": 2})
    assert (releases / "v0.3.sha256").read_text() == sha + "\n"
    assert run_on_host(release.verify(layout, sys.executable, "v0.3"), tmp_path)[0] == 0

    (tmp_path / "ws" / "backups").mkdir()
    pycache = releases / "v0.3" / "code" / "moola_core" / "__pycache__"
    pycache.mkdir()
    (pycache / "spec.cpython-311.pyc").write_bytes(b"cache")  # the runtime check leaves these
    subprocess.run(["sh", "-c", release.snapshot(layout, "v0.3", "s1.tar")], check=True)
    (releases / "v0.3" / "code" / "torch.py").write_text("planted")
    code, report = run_on_host(release.verify(layout, sys.executable, "v0.3"), tmp_path)
    assert code == 1 and "code/torch.py is not listed in the manifest" in report["problems"][0]

    code, report = run_on_host(
        release.restore(layout, sys.executable, DEP, "s1.tar", "v0.3"), tmp_path
    )
    assert (code, report) == (0, {"ok": True, "restored": "v0.3", "files": 2})
    assert not (releases / "v0.3" / "code" / "torch.py").exists()
    assert not pycache.exists()  # caches in a snapshot are never written back
    assert run_on_host(release.verify(layout, sys.executable, "v0.3"), tmp_path)[0] == 0
    code, report = run_on_host(
        release.restore(layout, sys.executable, DEP, "s1.tar", "v0.2"), tmp_path
    )
    assert code == 1 and "holds version v0.3, not v0.2" in report["problems"][0]


# --- facts -----------------------------------------------------------------------------------

RECORDED = """### workspace
present
### current
link releases/v0.3
resolved /workspace/moola/releases/v0.3
root /workspace/moola
state resolves
### releases
v0.2 1111111111111111111111111111111111111111111111111111111111111111
v0.3 2222222222222222222222222222222222222222222222222222222222222222
v0.1 -
### backups
20261125T160000000000Z-v0.1.tar
20261125T170000000000Z-v0.2.tar
.partial-20261125T180000000000Z-v0.3.tar
### lock
{"actor":"alice@laptop","deployment":"X","pid":7}
### disk
/dev/vda         264212084 24083404  82307508      23% /
### python
{"python": "3.10.12", "torch": "2.4.1+cu121"}
### gpus
NVIDIA H100 80GB HBM3, 1234, 81559, 7, 41
### revisions
{"action":"deploy","version":"v0.1"}
{"action":"deploy","version":"v0.2","previous":"v0.1"}
{"action":"deploy","version":"v0.3","previous":"v0.2"}
### end
"""


def test_facts_parse_a_recorded_gpu_host():
    f = facts.parse(RECORDED)
    assert f.workspace_exists and f.current == "v0.3"
    assert f.releases == {"v0.2": "1" * 64, "v0.3": "2" * 64, "v0.1": None}
    assert f.backups == ["20261125T160000000000Z-v0.1.tar", "20261125T170000000000Z-v0.2.tar"]
    assert f.locked and f.lock_holder["actor"] == "alice@laptop"
    assert f.disk_free_bytes == 82307508 * 1024
    assert (f.python, f.torch) == ("3.10.12", "2.4.1+cu121")
    assert f.gpus == [
        {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "memory_used_mib": 1234.0,
            "memory_total_mib": 81559.0,
            "utilization_pct": 7.0,
            "temperature_c": 41.0,
        }
    ]
    assert decisions.rollback_target(f) == "v0.2"


def test_facts_of_a_bare_host_and_a_cut_answer():
    bare = facts.parse(
        "### workspace\nmissing\n### current\n### releases\n### backups\n### lock\n"
        "### disk\n/dev/x 100 10 90 10% /\n### python\nmissing\n### gpus\nabsent\n### revisions\n"
        "### end\n"
    )
    assert not bare.workspace_exists and bare.current is None and not bare.locked
    assert bare.python is None and bare.torch is None and bare.gpus == []
    with pytest.raises(ValueError, match="cut short"):
        facts.parse(RECORDED.split("### gpu")[0])


def test_gpu_parser_handles_not_available_fields():
    t4 = facts.parse_gpus(["Tesla T4, [N/A], 15360, [N/A], 40"])
    assert t4.gpus[0].memory_used_mib is None
    assert facts.parse_gpus(["NVIDIA-SMI has failed because it couldn't communicate"]).gpus == []


def test_gather_is_one_command_with_every_section():
    cmd = facts.gather(WS, "python3")
    for section in (
        "workspace",
        "current",
        "releases",
        "backups",
        "lock",
        "disk",
        "python",
        "gpus",
        "revisions",
        "end",
    ):
        assert f"echo '### {section}'" in cmd


def test_gather_runs_in_a_real_shell(tmp_path):
    ws = tmp_path / "ws"
    (ws / "releases" / "v1").mkdir(parents=True)
    (ws / "releases" / "v1.sha256").write_text("f" * 64 + "\n")
    (ws / "current").symlink_to("releases/v1")
    (ws / "revisions.log").write_text(
        '{"action":"deploy","version":"v1","sha256":"' + "f" * 64 + '"}\n'
    )
    out = subprocess.run(
        ["sh", "-c", with_agent(facts.gather(Layout(str(ws)), "python3"))],
        capture_output=True,
        text=True,
    ).stdout
    f = facts.parse(out)
    assert f.current == "v1" and f.releases == {"v1": "f" * 64} and f.python


# --- decisions -------------------------------------------------------------------------------


def rev(action, version):
    return {"action": action, "version": version}


def test_history_pops_on_rollback_so_a_second_rollback_goes_further_back():
    lines = [rev("deploy", "v1"), rev("deploy", "v2"), rev("deploy", "v3"), rev("rollback", "v2")]
    assert decisions.release_history(lines) == ["v1", "v2"]
    f = facts.HostFacts(current="v2", revisions=lines)
    assert decisions.rollback_target(f) == "v1"


def test_rollback_target_after_a_redeploy_and_an_auto_rollback():
    lines = [
        rev("deploy", "v1"),
        rev("deploy", "v2"),
        rev("deploy", "v3"),
        rev("auto-rollback", "v2"),
        rev("deploy", "v1"),
    ]
    f = facts.HostFacts(current="v1", revisions=lines)
    assert decisions.rollback_target(f) == "v2"
    assert decisions.rollback_target(facts.HostFacts(current="v1", revisions=[])) is None


def test_prune_keeps_current_previous_and_newest_by_history_not_name():
    lines = [rev("deploy", v) for v in ("v9", "v1", "v2", "v3", "v4")]
    f = facts.HostFacts(
        current="v4",
        releases={v: None for v in ("v9", "v1", "v2", "v3", "v4", "v0-never")},
        backups=[f"2026010{i}T000000Z-{v}.tar" for i, v in enumerate(("v9", "v1", "v2", "v3"))],
        revisions=lines,
    )
    releases, backups = decisions.plan_prune(f, keep_releases=2, keep_backups=1)
    assert releases == ["v0-never", "v1", "v2", "v9"]  # kept: v4 (current), v3 (previous)
    assert backups == [
        "20260100T000000Z-v9.tar",
        "20260101T000000Z-v1.tar",
        "20260102T000000Z-v2.tar",
    ]
    # never current or previous, whatever N says
    releases, _ = decisions.plan_prune(f, keep_releases=0, keep_backups=0)
    assert "v4" not in releases and "v3" not in releases


def test_prune_leaves_odd_entries_alone_and_still_prunes_the_rest():
    from moola_ops.deploy.commands import decisions

    lines = [rev("deploy", v) for v in ("v1", "v2", "v3")]
    odd = ["-rf", "not a version; rm -rf", "..", "$(reboot)"]
    f = facts.HostFacts(
        current="v3", releases={v: None for v in ("v1", "v2", "v3", *odd)}, revisions=lines
    )
    releases, _ = decisions.plan_prune(f, keep_releases=1, keep_backups=1)
    assert releases == ["v1"]  # kept: v3 (current), v2 (previous); odd names never reach rm
    assert decisions.odd_releases(f) == sorted(odd)
    release.prune(WS, releases, [])  # builds: no name in the plan fails check_name


def test_a_release_that_never_passed_its_check_is_pruned_whatever_n_says():
    from moola_ops.deploy.commands import decisions

    lines = [rev("deploy", v) for v in ("v1", "v2")]
    f = facts.HostFacts(
        current="v2",
        releases={v: None for v in ("v1", "v2", "v3-cut", "v4-shadow", "v5-target")},
        revisions=lines,
        unchecked=["v3-cut", "v4-shadow", "v5-target", "v2", "-rf"],
        server={"live": {"release": "v2", "port": 1}, "shadow": {"release": "v4-shadow"}},
    )
    # never current (v2), previous (v1), what a server runs (v4-shadow), the run's own
    # target (protected) or an odd name
    assert decisions.unchecked_releases(f, ("v5-target",)) == ["v3-cut"]
    releases, _ = decisions.plan_prune(f, keep_releases=10, keep_backups=10, protect=("v5-target",))
    assert releases == ["v3-cut"]
    releases, _ = decisions.plan_prune(f, keep_releases=0, keep_backups=0)
    assert "v4-shadow" not in releases and "v2" not in releases and "v1" not in releases


def test_the_check_marker_is_written_only_after_the_check_passed():
    from moola_ops.deploy.results import Options
    from moola_ops.deploy.stages import bounded_check
    from moola_ops.hosts.inventory import Host

    host = Host(name="h1", hostname="127.0.0.1", workspace="/workspace/moola")
    before = bounded_check(WS, host, Options(), "v0.3", "D1", 60, through_current=False)
    check, _, mark = before.partition(" && { ")
    assert "moola_core.runtime check" in check and "v0.3.checked" not in check
    assert mark.startswith("{ printf ") and "/workspace/moola/releases/v0.3.checked" in mark
    # through `current` (rollback, drill, deep health): no marker is written
    after = bounded_check(WS, host, Options(), "v0.3", "D1", 60, through_current=True)
    assert ".checked" not in after
    for removes in (
        release.remove_release(WS, "v0.3"),
        release.set_aside(WS, "v0.3", "D1"),
        release.prune(WS, ["v0.3"], []),
    ):
        assert "/workspace/moola/releases/v0.3.checked" in removes


def test_prune_never_removes_a_release_a_server_runs_from():
    # a shadow's release never served (not in revisions.log) used to count as the oldest
    f = facts.HostFacts(
        current="v4",
        releases={v: None for v in ("v1", "v3", "v4", "v5-shadow", "v0-standby")},
        revisions=[rev("deploy", v) for v in ("v1", "v3", "v4")],
        server={
            "live": {"release": "v4", "port": 1},
            "standby": {"release": "v0-standby", "port": 2},
            "shadow": {"release": "v5-shadow", "port": 3},
        },
    )
    releases, _ = decisions.plan_prune(f, keep_releases=0, keep_backups=0)
    assert releases == ["v1"]


def test_resolve_bundle_checks_the_archive_as_the_host_will(tmp_path):
    from moola_ops import deploy as engine

    sha = bundle_file(tmp_path / "moola-v0.3.tar.gz", "v0.3", CODE)
    local = engine.resolve_bundle(str(tmp_path / "moola-v0.3.tar.gz"))
    assert (local.version, local.sha256) == ("v0.3", sha)
    link = tarfile.TarInfo("moola-v0.3/code/torch.py")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with tarfile.open(tmp_path / "linked.tar.gz", "w:gz") as tar:
        tar.addfile(link)
    with pytest.raises(MoolaError, match="holds the link 'moola-v0.3/code/torch.py'"):
        engine.resolve_bundle(str(tmp_path / "linked.tar.gz"))
    manifest = json.dumps({"version": "v0.4", "files": []}).encode()
    bundle_archive.write_archive({"manifest.json": manifest}, "v0.3", tmp_path / "odd.tar.gz", 0)
    with pytest.raises(MoolaError, match="folder moola-v0.3/ but its manifest says 'v0.4'"):
        engine.resolve_bundle(str(tmp_path / "odd.tar.gz"))

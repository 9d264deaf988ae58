"""The host agent (moola_core/agent/): one Python floor, standard library only, one entry point,
shipped as one content-addressed folder (moola_ops/transport/agent.py)."""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from moola_ops.hosts.layout import Layout
from moola_ops.transport import agent

AGENT = Path(agent.__file__).resolve().parents[2] / "moola_core" / "agent"
HEAVY = ("numpy", "pandas", "pydantic", "yaml", "torch")


def _extract(dest: Path) -> Path:
    """The uploaded folder, as the install command lays it out."""
    with tarfile.open(fileobj=io.BytesIO(agent.packed()), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest


def _run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)


def test_every_agent_module_parses_with_the_floor_grammar():
    modules = sorted(AGENT.glob("*.py"))
    assert {p.name for p in modules} >= {"control.py", "proxy.py", "http.py", "release.py"}
    for path in modules:
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))
    # the launcher must parse on Python 3.6+ so an old one can say why it will not run
    ast.parse((AGENT / "__main__.py").read_text(), feature_version=(3, 6))


def test_the_uploaded_folder_imports_with_only_the_standard_library(tmp_path):
    """Every module imports from the uploaded folder alone, with the heavy libraries and every
    other moola_core module made unimportable (the agent carries nothing else to a host)."""
    root = _extract(tmp_path / "h")
    names = [f"moola_core.agent.{p.stem}" for p in AGENT.glob("*.py") if p.stem != "__main__"]
    program = (
        f"import importlib.abc, sys\nsys.path.insert(0, {str(root)!r})\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {HEAVY!r} or (name.startswith('moola_core.')\n"
        "                and not name.startswith('moola_core.agent')):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for name in {names!r}:\n"
        "    __import__(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('moola_core')))\n"
    )
    out = _run([sys.executable, "-S", "-I", "-c", program], cwd=root)
    assert out.returncode == 0, out.stderr
    assert "'moola_core.agent.proxy'" in out.stdout and "moola_core.errors" not in out.stdout


def test_one_entry_point_answers_json_for_every_outcome(tmp_path):
    launcher = _extract(tmp_path / "h") / "agent.py"
    facts = _run([sys.executable, "-S", str(launcher), "facts", "python"])
    assert facts.returncode == 0
    assert json.loads(facts.stdout)["python"] == sys.version.split()[0]
    unknown = _run([sys.executable, "-S", str(launcher), "reboot"])
    assert (
        unknown.returncode == 2 and "unknown action 'reboot'" in json.loads(unknown.stdout)["error"]
    )
    (tmp_path / "cap" / "2026-12-07").mkdir(parents=True)
    (tmp_path / "cap" / "2026-12-07" / "a.jsonl").write_bytes(b'{"x": 1}\n')
    listed = _run(
        [sys.executable, "-S", str(launcher), "captures", "list", str(tmp_path / "cap"), "{}"]
    )
    files = json.loads(listed.stdout)["files"]
    assert [(f["key"], f["size"]) for f in files] == [("2026-12-07/a.jsonl", 9)]
    assert len(files[0]["sha256"]) == 64
    # the same launcher runs from a release's code/ (a pod's start command after a restart),
    # where its own folder must not shadow the standard library (agent/http.py vs http)
    ws = tmp_path / "ws"
    ws.mkdir()
    for launch in (launcher, AGENT / "__main__.py"):
        status = _run(
            [sys.executable, "-S", str(launch), "serve", "status", "--workspace", str(ws)]
        )
        said = json.loads(status.stdout)
        assert "proxy" in said and "Traceback" not in status.stderr, status


def test_an_interpreter_below_the_floor_gets_one_json_line(tmp_path):
    launcher = _extract(tmp_path / "h") / "agent.py"
    program = (
        "import runpy, sys\n"
        "sys.version_info = (3, 8, 10, 'final', 0)\n"
        f"runpy.run_path({str(launcher)!r}, run_name='__main__')\n"
    )
    out = _run([sys.executable, "-S", "-c", program, "facts", "python"])
    assert out.returncode == 2
    said = json.loads(out.stdout)
    assert said["ok"] is False and "needs Python 3.10 or newer" in said["error"]


def test_the_folder_is_named_by_its_content():
    again = agent._files()
    assert agent._digest(again) == agent.HASH and len(agent.HASH) == agent.HASH_CHARS
    changed = [(n, d + b"\n# edited\n" if n.endswith("proxy.py") else d) for n, d in again]
    assert agent._digest(changed) != agent.HASH
    with tarfile.open(fileobj=io.BytesIO(agent.packed()), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == sorted(n for n, _ in again)
    assert agent._pack(again) == agent.packed()  # reproducible bytes


def test_commands_name_the_folder_and_carry_no_source():
    cmd = agent.command(Layout("~/ws"), "/opt/py 3/python", "facts", "python")
    assert (
        cmd == f"'/opt/py 3/python' -S \"$HOME\"/ws/.moola/agent/{agent.HASH}/agent.py facts python"
    )
    assert agent.named_workspace(cmd) == '"$HOME"/ws'
    assert agent.named_workspace("python3 -S /ws/.moola/agent/0123/agent.py facts") is None
    # Linux caps one argument (the `sh -c` command sshd runs) at 128 KiB
    assert len(agent.install_command("/workspace/moola")) < 100_000


def _install(ws: Path) -> subprocess.CompletedProcess:
    return _run(["sh", "-c", agent.install_command(str(ws), sys.executable)])


def test_two_installs_at_once_leave_one_whole_folder(tmp_path):
    ws = tmp_path / "ws"
    procs = [
        subprocess.Popen(
            ["sh", "-c", agent.install_command(str(ws), sys.executable)], stdout=subprocess.PIPE
        )
        for _ in range(2)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out.decode().strip().endswith(agent.HASH)
    agents = ws / ".moola" / "agent"
    assert sorted(p.name for p in agents.iterdir()) == [agent.HASH]  # no temp folder left
    installed = sorted(
        str(p.relative_to(agents / agent.HASH)) for p in (agents / agent.HASH).rglob("*.py")
    )
    assert installed == sorted(n for n, _ in agent._files())


def test_a_new_agent_prunes_old_folders_no_process_runs_from(tmp_path):
    agents = tmp_path / "ws" / ".moola" / "agent"
    old, busy = agents / "00000000000000aa", agents / "00000000000000bb"
    for folder in (old, busy):
        (folder / "moola_core").mkdir(parents=True)
    (agents / ".install.stale").mkdir()
    past = time.time() - 3600
    os.utime(agents / ".install.stale", (past, past))
    (agents / ".install.fresh").mkdir()  # another session may be extracting into it
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", str(busy / "agent.py")]
    )
    try:
        assert _install(tmp_path / "ws").returncode == 0
        left = sorted(p.name for p in agents.iterdir())
        assert left == sorted([agent.HASH, busy.name, ".install.fresh"])
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)


@pytest.mark.parametrize("python", ["python3-that-is-not-there"])
def test_a_failed_install_says_so(tmp_path, python):
    """Installing needs no python (the prune after it is best effort); a read-only parent fails
    the whole command, and the session turns that into one sentence (TransportError)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    assert _run(["sh", "-c", agent.install_command(str(ws), python)]).returncode == 0
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.geteuid() == 0:  # root ignores the mode: make the parent a file instead
            locked.chmod(0o755)
            locked.rmdir()
            locked.write_text("not a folder")
        assert _run(["sh", "-c", agent.install_command(str(locked / "ws"))]).returncode != 0
    finally:
        if locked.is_dir():
            locked.chmod(0o755)


def test_the_python_fact_sees_the_interpreters_site_packages(tmp_path):
    """torch lives in site-packages (a venv's too): the probe runs without -S, or a host with
    torch installed would read as one without it."""
    import torch

    from moola_ops.deploy.commands import facts
    from tests.agent_shell import with_agent

    probe = facts.FACTS["python"].command(Layout(str(tmp_path / "ws")), sys.executable)
    out = _run(["sh", "-c", with_agent(probe)])
    assert facts.parse_python(out.stdout.splitlines()).torch == torch.__version__


def test_a_release_whose_server_predates_the_spare_is_started_without_the_flag(tmp_path):
    from moola_core.agent import control

    serve_py = tmp_path / "new" / "code" / "moola_core" / "runtime" / "serve.py"
    serve_py.parent.mkdir(parents=True)
    serve_py.write_text(Path(control.__file__).parents[1].joinpath("runtime/serve.py").read_text())
    old = tmp_path / "old" / "code" / "moola_core" / "runtime" / "serve.py"
    old.parent.mkdir(parents=True)
    old.write_text('p.add_argument("--role", default="live")\n')  # argparse would refuse --spare
    assert control.has_spare(str(tmp_path / "new"))
    assert not control.has_spare(str(tmp_path / "old"))
    assert not control.has_spare(str(tmp_path / "missing"))

"""The stand-in hosts are real OpenSSH servers with strictly checked host keys."""

from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest

from moola_core.errors import MoolaError

pytestmark = pytest.mark.ssh


def ssh(sandbox, name: str, command: str, **kw) -> subprocess.CompletedProcess:
    """Run `command` on a stand-in host with the system OpenSSH client."""
    return subprocess.run(
        ["ssh", "-F", str(sandbox.ssh_config_path), "-o", "BatchMode=yes", name, command],
        capture_output=True,
        text=True,
        timeout=30,
        **kw,
    )


def test_command_upload_readback_and_exit_code(sandbox2):
    host = sandbox2.hosts["local-1"]
    assert ssh(sandbox2, "local-1", "echo hello").stdout == "hello\n"

    # Upload with paramiko over SFTP, strict host key checking from the generated known_hosts.
    client = paramiko.SSHClient()
    client.load_host_keys(host.known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        host.hostname,
        port=host.port,
        username=host.user,
        key_filename=host.identity_file,
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    try:
        payload = b"moola \x00\xff bytes\n" * 1000
        remote = f"{host.workspace}/upload.bin"
        with client.open_sftp() as sftp, sftp.file(remote, "wb") as fh:
            fh.write(payload)
        _, stdout, _ = client.exec_command(f"sha256sum {remote}")
        import hashlib

        assert stdout.read().decode().split()[0] == hashlib.sha256(payload).hexdigest()
        assert Path(remote).read_bytes() == payload  # the workspace is a real directory here
    finally:
        client.close()

    failed = ssh(sandbox2, "local-1", "exit 7")
    assert failed.returncode == 7


def test_hosts_are_distinct_and_remote_python_is_the_project_env(sandbox2):
    one, two = sandbox2.hosts["local-1"], sandbox2.hosts["local-2"]
    assert one.port != two.port and one.workspace != two.workspace
    command = f'echo "$MOOLA_SANDBOX_HOST" && {two.python} -c "import torch; print(1)"'
    out = ssh(sandbox2, "local-2", command)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["local-2", "1"]


def test_unknown_host_key_is_refused(sandbox2, tmp_path):
    host = sandbox2.hosts["local-1"]
    (tmp_path / "known_hosts").write_text("")  # nothing pinned: the key is unknown
    out = subprocess.run(
        ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
        + ["-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}", "-i", host.identity_file]
        + ["-p", str(host.port), f"{host.user}@127.0.0.1", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 255
    assert "Host key verification failed" in out.stderr


def test_stop_ends_every_sshd(sandbox_factory):
    sandbox = sandbox_factory(["a-1", "a-2"])
    pids = [h.pid for h in sandbox.hosts.values()]
    assert all(h.alive() for h in sandbox.hosts.values())
    sandbox.stop()
    assert not any(h.alive() for h in sandbox.hosts.values())
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}/cmdline").exists()
            or b"sshd" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        )


def test_a_serve_stop_that_fails_is_raised_naming_the_workspace_after_every_sshd_stops(
    sandbox_factory,
):
    # it once crashed unnoticed and left ~300 model servers running across test runs
    sandbox = sandbox_factory(["b-1", "b-2"])
    broken = sandbox.hosts["b-1"]
    state = Path(broken.workspace) / "serve" / "state.json"
    state.mkdir(parents=True)  # a folder: the agent's stop cannot write the state, exits 1
    with pytest.raises(MoolaError) as caught:
        sandbox.stop()
    message = str(caught.value)
    assert message.startswith("stand-in host b-1: ") and broken.workspace in message
    assert "IsADirectoryError" in message  # the agent's own words
    assert not list(state.parent.glob("state.json.tmp-*"))  # its failed write left no half file
    assert sandbox.hosts["b-2"].workspace not in message
    assert not any(h.alive() for h in sandbox.hosts.values())  # every sshd stopped all the same
    assert (Path(sandbox.root) / "state.json").exists()  # kept: `sandbox down` can try again
    state.rmdir()
    sandbox.stop()  # the retry passes, and forgets the sandbox
    assert not (Path(sandbox.root) / "state.json").exists()


def test_file_size_limit_makes_uploads_fail(sandbox_factory):
    sandbox = sandbox_factory(["small-1"], fsize_limit_kb=64)
    ws = sandbox.hosts["small-1"].workspace
    out = ssh(sandbox, "small-1", f"head -c 200000 /dev/zero > {ws}/big")
    assert out.returncode != 0
    assert "File too large" in out.stderr

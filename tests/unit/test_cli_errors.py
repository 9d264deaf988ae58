"""Errors reach a person as one sentence and a non-zero exit, never a traceback: every OSError,
a file that is not UTF-8, an inventory that is a folder, a deployment log that cannot be
written (real Invoke running the real tasks of tasks.py)."""

from __future__ import annotations

import errno

from moola_core.errors import os_error_sentence
from tests.unit.test_cli_flags import all_tasks, invoke


def one_sentence(done) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_every_task_is_wrapped_by_user_errors():
    # the Nagios plugins map their own failures to UNKNOWN (exit 3) instead
    plugins = {"healthcheck", "monitor"}
    unwrapped = [
        name
        for name, t in all_tasks()
        if name not in plugins and not getattr(t.body, "user_errors", False)
    ]
    assert not unwrapped, f"wrap these tasks with moola_ops.cli._common.user_errors: {unwrapped}"


def test_an_os_error_inside_a_task_is_one_sentence(tmp_path):
    log = tmp_path / "log.jsonl"
    log.mkdir()  # the deployment log is a folder: reading it is an IsADirectoryError
    line = one_sentence(invoke(tmp_path, "log"))
    assert line == (
        f"error: could not read the deployment log {log} (Is a directory): it is a folder: "
        "give a file instead"
    )


def test_an_inventory_that_is_a_folder_or_not_utf8_is_one_sentence(tmp_path):
    folder = tmp_path / "hosts"
    folder.mkdir()
    line = one_sentence(invoke(tmp_path, "lock", "--host", "a", "--inventory", str(folder)))
    assert "is a folder, not a file" in line
    latin = tmp_path / "hosts.yaml"
    latin.write_bytes("hosts:\n  a:\n    hostname: caf\xe9\n".encode("latin-1"))
    line = one_sentence(invoke(tmp_path, "lock", "--host", "a", "--inventory", str(latin)))
    assert "is not UTF-8 text (byte 0xe9 on line 3)" in line


def test_a_deployment_log_that_cannot_be_written_stops_a_deploy_at_its_start(tmp_path):
    from moola_core.agent import archive

    manifest = b'{"version": "v1.0", "files": []}'
    bundle = archive.write_archive({"manifest.json": manifest}, "v1.0", tmp_path / "b.tar.gz", 0)
    inventory = tmp_path / "hosts.yaml"  # never contacted: the log fails first
    inventory.write_text("hosts:\n  a:\n    hostname: 127.0.0.1\n    port: 9\n")
    blocker = tmp_path / "blocked"
    blocker.write_text("")  # a file where the log's folder should be
    args = ["deploy", "--host", "a", "--bundle", str(bundle), "--inventory", str(inventory)]
    line = one_sentence(invoke_with_log(blocker / "deployments.jsonl", *args))
    log = blocker / "deployments.jsonl"
    assert line.startswith(
        f"error: could not write the deployment log {log} (Not a directory: {blocker} is a file)"
    )
    assert "a file is in the way of a folder" in line


def invoke_with_log(log, *args):
    """A task run from the project root (accept reads checklists/) with MOOLA_LOG=log."""
    import os
    import subprocess
    import sys

    from moola_core.bundle.build import REPO_ROOT

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MOOLA_LOG": str(log)}
    return subprocess.run(
        [sys.executable, "-m", "invoke", "-r", str(REPO_ROOT), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_os_error_sentences_say_what_to_do():
    full = OSError(errno.ENOSPC, "No space left on device", "/data/x")
    assert os_error_sentence(full, "write the snapshot") == (
        "could not write the snapshot /data/x (No space left on device): free disk space"
    )
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert os_error_sentence(refused) == (
        "a system call failed (Connection refused): check the address and that the service is up"
    )

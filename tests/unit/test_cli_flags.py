"""Every task's flags as a person meets them: help for each, sane short flags, bad values refused
in one sentence (real Invoke parsing the real task collection of tasks.py)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading

from invoke import Task

from moola_core.bundle.build import REPO_ROOT
from moola_ops.cli.lock import lock_line


def all_tasks():
    sys.path.insert(0, str(REPO_ROOT))
    import tasks

    def walk(collection, prefix=""):
        for name, t in collection.tasks.items():
            yield prefix + name, t
        for name, sub in collection.collections.items():
            yield from walk(sub, f"{prefix}{name}.")

    return list(walk(tasks.ns))


def arguments(t) -> list:
    """t.get_arguments() without losing t.help (Invoke pops each flag's help as it reads it)."""
    saved = dict(t.help)
    try:
        return t.get_arguments()
    finally:
        t.help = saved


def invoke(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MOOLA_LOG": str(tmp_path / "log.jsonl")}
    return subprocess.run(
        [sys.executable, "-m", "invoke", "-r", str(REPO_ROOT), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_task_has_help_for_each_flag_and_no_short_flags():
    # one letter meant --batch in deploy, --accept-new-host-key in rollback, --parallel in
    # healthcheck: no task has automatic short flags, so a letter can never mean two things
    found = all_tasks()
    assert len(found) > 20
    for name, t in found:
        assert isinstance(t, Task) and t.auto_shortflags is False, name
        for arg in arguments(t):
            assert arg.help, f"{name} --{arg.name} has no help"
            assert all(len(n) > 1 for n in arg.names), f"{name} --{arg.name}: {arg.names}"
            assert arg.kind not in (int, float), f"{name} --{arg.name}: parsed by Invoke"
            default = str(arg.default)
            if default.lstrip("-").replace(".", "", 1).isdigit() and arg.kind is str:
                assert "NUMBER" in arg.help, f"{name} --{arg.name} does not say it is a number"


def test_a_bad_number_is_one_sentence_not_a_traceback(tmp_path):
    for args, flag, code in [
        # the Nagios plugin could not even run: UNKNOWN
        (("healthcheck", "--timeout", "abc"), "--timeout takes a number, not 'abc'", 3),
        (("log", "--last", "x"), "--last takes a whole number, not 'x'", 1),
        (("deploy", "--host", "h", "--bundle", "v1", "--parallel", "two"), "--parallel", 1),
    ]:
        done = invoke(tmp_path, *args)
        assert done.returncode == code, done.stderr
        assert "Traceback" not in done.stderr and flag in done.stdout + done.stderr


def test_output_piped_into_head_ends_quietly(tmp_path):
    line = {
        "time": "2026-01-01T00:00:00.000Z",
        "deployment": "d1",
        "actor": "me",
        "host": "h",
        "bundle": "v0.1",
        "phase": "deploy",
        "step": "switch",
        "status": "ok",
        "duration_s": 0.1,
        "detail": {},
    }
    (tmp_path / "log.jsonl").write_text((json.dumps(line) + "\n") * 3000)  # ~300 KB of output
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MOOLA_LOG": str(tmp_path / "log.jsonl")}
    reader = subprocess.Popen(
        [sys.executable, "-m", "invoke", "-r", str(REPO_ROOT), "log", "--last", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout.readline().split()[:2] == [b"time", b"deployment"]  # the header
    assert b"d1" in reader.stdout.readline()  # what `head -2` reads, then it goes away
    reader.stdout.close()
    stderr = reader.stderr.read().decode()
    assert reader.wait(timeout=60) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_usage_errors_of_the_nagios_tasks_are_unknown_and_other_tasks_keep_invokes(tmp_path):
    # Nagios reads exit 1 as WARNING: a plugin that could not even parse its flags is UNKNOWN
    for args, line in [
        (("healthcheck", "--bad-flag"), "MOOLA UNKNOWN - invoke healthcheck: No idea what "),
        (("healthcheck", "--timeout"), "MOOLA UNKNOWN - invoke healthcheck: --timeout needs a "),
        (("monitor", "--bad-flag"), "MOOLA-MONITOR UNKNOWN - invoke monitor: No idea what "),
        (("monitor",), "MOOLA-MONITOR UNKNOWN - --host is required (add -h after the task"),
        (("monitor", "--host", "h", "--timeout", "x"), "MOOLA-MONITOR UNKNOWN - --timeout takes"),
    ]:
        done = invoke(tmp_path, *args)
        assert done.returncode == 3, (args, done.stdout, done.stderr)
        assert done.stdout.startswith(line), (args, done.stdout)
        assert "Traceback" not in done.stderr
    for args in (("deploy", "--bad-flag"), ("log", "--bad-flag"), ("--bad-flag",)):
        done = invoke(tmp_path, *args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stderr.strip() == "No idea what '--bad-flag' is!"
    done = invoke(tmp_path, "healthcheck", "--host", "local-1", "deploy", "--bad-flag")
    assert done.returncode == 1  # the error is deploy's: Invoke's own answer


def test_a_flag_given_no_value_is_named_as_typed(tmp_path):
    done = invoke(tmp_path, "accept", "--by", "me", "--deployment")
    assert done.returncode == 1
    assert done.stderr.strip() == "error: --deployment needs a value"


def test_a_host_that_drops_the_handshake_is_one_line_on_stderr(tmp_path):
    # a port that accepts and hangs up at once: Paramiko's thread used to print a traceback
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def hang_up():
        with contextlib.suppress(OSError):
            while True:
                server.accept()[0].close()

    threading.Thread(target=hang_up, daemon=True).start()
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(f"hosts:\n  mute:\n    hostname: 127.0.0.1\n    port: {port}\n")
    done = invoke(tmp_path, "lock", "--host", "mute", "--inventory", str(inventory))
    server.close()
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot reach mute"), done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_timeout_that_is_not_positive_is_refused(tmp_path):
    health = invoke(tmp_path, "healthcheck", "--host", "local-1", "--timeout", "-5")
    assert health.returncode == 3  # Nagios UNKNOWN: the plugin could not run
    assert health.stdout.startswith("MOOLA UNKNOWN - --timeout -5 is not a positive number")
    verify = invoke(tmp_path, "verify", "--host", "local-1", "--timeout", "0")
    assert verify.returncode == 1 and "Traceback" not in verify.stderr
    assert "--timeout 0 is not a positive number of seconds" in verify.stdout + verify.stderr


def test_a_number_flag_defaulting_to_0_says_what_0_means():
    # `--epochs 0` silently trained the config's 60 epochs: the help must say 0 means "unset"
    for name, t in all_tasks():
        for arg in arguments(t):
            if arg.kind in (int, float) and arg.default == 0:
                assert re.search(r"\b0\b", arg.help), f"{name} --{arg.name}: {arg.help}"
    backups = dict(all_tasks())["backups"]
    assert "groups" in next(a.help for a in arguments(backups) if a.name == "host")


def test_a_lock_without_holder_file_is_reported_as_a_lock():
    # {}: deploy.lock exists but holder.json does not (a run died between mkdir and write)
    assert lock_line({"locked": True, "holder": {}}).startswith("locked by an unknown holder")
    assert lock_line({"broken": True, "holder": {}}).startswith("broke the lock of an unknown")
    assert lock_line({"locked": False, "holder": None}) == "free"
    assert lock_line({"broken": False, "holder": None}) == "was not locked"


def test_verify_reads_the_inventory_it_is_given(tmp_path):
    inventory = tmp_path / "fleet.yaml"
    inventory.write_text("hosts:\n  gpu-7:\n    hostname: 127.0.0.1\n")
    done = invoke(tmp_path, "verify", "--host", "gpu-9", "--inventory", str(inventory))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"unknown host or group 'gpu-9' in {inventory}; known hosts: gpu-7" in done.stderr


def test_dash_h_after_a_task_is_its_help(tmp_path):
    # required flags are flags, not positionals, so Invoke reaches -h before it checks them
    for name in ("healthcheck", "log", "checklist", "deploy", "accept", "lock", "restore"):
        done = invoke(tmp_path, name, "-h")
        assert done.returncode == 0 and f"[--core-opts] {name} [--options]" in done.stdout


def test_dash_h_is_help_for_tasks_with_a_positional_action_too(tmp_path):
    # Invoke hands `-h` to a positional argument; serve and shadow show their help all the same
    for name in ("serve", "shadow"):
        for flag in ("-h", "--help"):
            done = invoke(tmp_path, name, flag)
            assert done.returncode == 0, done.stderr
            assert f"[--core-opts] {name} [--options]" in done.stdout
            assert "unknown" not in done.stderr and "required" not in done.stderr


def test_a_missing_required_flag_is_named(tmp_path):
    done = invoke(tmp_path, "deploy", "--host", "local-1")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip() == "error: --bundle is required (add -h after the task for its flags)"
    )
    done = invoke(tmp_path, "accept")
    assert "--deployment, --by are required" in done.stderr


def test_help_piped_into_head_ends_quietly(tmp_path):
    # `invoke deploy -h | head -3`: Invoke prints the help, head leaves after three lines
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for name in ("deploy", "healthcheck", "log"):
        reader = subprocess.Popen(
            [sys.executable, "-m", "invoke", "-r", str(REPO_ROOT), name, "-h"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        assert reader.stdout.readline().startswith(b"Usage: ")
        reader.stdout.close()  # the reader is gone before the rest is written
        stderr = reader.stderr.read().decode()
        assert reader.wait(timeout=60) == 0, stderr
        assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_train_says_what_it_does_from_its_first_second(tmp_path):
    done = invoke(tmp_path, "train", "--config", "missing.yaml")
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == "train: loading torch and the training code"


def test_a_task_that_does_not_say_what_dry_does_is_refused_under_dry():
    # safe by default: a new task without task(dry=...) acts on nothing under --dry (and fails
    # tests/integration/test_dry_run.py until it says)
    import pytest
    from invoke import Config, Context
    from invoke.exceptions import Exit

    from moola_ops.cli._common import task

    ran = []

    @task(help={"host": "a host"})
    def touch_things(c, host=""):
        """Acts on hosts."""
        ran.append(host)

    dry = Context(Config(overrides={"run": {"dry": True}}))
    with pytest.raises(Exit) as refused:
        touch_things(dry, host="h")
    assert refused.value.code == 1 and ran == []
    assert refused.value.message == (
        "error: --dry: touch-things has no dry run; `invoke -h touch-things` says what it does; "
        "nothing was done"
    )
    touch_things(Context(Config()), host="h")
    assert ran == ["h"]

"""serve/state.json has one writer on a host (the agent's `write_state` in control.py, under an
flock on serve/state.lock): the host-side control program run as it runs on a host, in a workspace on
this machine. The test holds the lock itself, so "another command is changing it" is a fact,
not a race to win; and the clients' token file it makes is the host's alone (mode 0600)."""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from moola_core.agent import control as serve_ctl

AGENT = Path(serve_ctl.__file__).with_name("__main__.py")
LIVE = {"release": "v1", "port": 1, "pid": 1}


def ctl(ws: Path, *args: str, wait_s: float = 30.0) -> tuple[int, dict]:
    env = dict(os.environ, MOOLA_STATE_LOCK_WAIT_S=str(wait_s))
    out = subprocess.run(
        [sys.executable, "-S", str(AGENT), "serve", args[0], "--workspace", str(ws), *args[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    return out.returncode, json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def ws(tmp_path):
    (tmp_path / "serve").mkdir()
    (tmp_path / "serve" / "state.json").write_text(json.dumps({"v": 1, "live": LIVE}))
    return tmp_path


def state(ws: Path) -> dict:
    return json.loads((ws / "serve" / "state.json").read_text())


@pytest.mark.parametrize(
    "action",
    [
        ("stop", "--wait", "1"),
        ("shadow", "--set", json.dumps({"release": "v2", "port": 2, "fraction": 1.0})),
        ("shadow", "--clear"),
        ("token", "--rotate"),
    ],
)
def test_no_change_is_written_while_another_command_holds_the_state_lock(ws, action):
    before = state(ws)
    with open(ws / "serve" / "state.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        code, answer = ctl(ws, *action, wait_s=0.3)
        assert code == 1 and "another serving command" in answer["error"], answer
        assert state(ws) == before and not (ws / "serve" / "token").exists()
    code, answer = ctl(ws, *action)  # the lock is free again: it goes through
    assert code == 0, answer


def test_the_shadow_key_is_set_and_cleared_by_the_one_writer(ws):
    shadow = {"release": "v2", "port": 2, "pid": None, "fraction": 0.5, "since": 7.0}
    code, answer = ctl(ws, "shadow", "--set", json.dumps(shadow))
    assert code == 0 and answer["old"] is None and state(ws)["shadow"] == shadow
    assert state(ws)["live"] == LIVE  # the rest of the state is kept
    for bad in ({"release": "v2", "port": "2", "fraction": 1}, {"release": "v2", "port": 2}):
        code, answer = ctl(ws, "shadow", "--set", json.dumps(bad))
        assert code == 1 and "fraction" in answer["error"]
    code, answer = ctl(ws, "shadow", "--clear")
    assert code == 0 and answer["old"] == shadow and state(ws)["shadow"] is None
    (ws / "serve" / "state.json").write_text(json.dumps({"v": 1, "live": None}))
    code, answer = ctl(ws, "shadow", "--set", json.dumps(shadow))
    assert code == 1 and answer["error"] == "nothing is live on this host"


def test_the_clients_token_is_the_hosts_alone_and_rotates(ws):
    code, first = ctl(ws, "token")
    path = ws / "serve" / "token"
    assert code == 0 and path.read_text().strip() == first["token"] and len(first["token"]) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first["fingerprint"] == serve_ctl.token_fingerprint(first["token"])
    assert ctl(ws, "token")[1]["token"] == first["token"]  # kept until rotated
    code, rotated = ctl(ws, "token", "--rotate")
    assert code == 0 and rotated["rotated"] and rotated["token"] != first["token"]
    assert path.read_text().strip() == rotated["token"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_state_is_never_written_outside_the_lock(ws):
    with pytest.raises(RuntimeError, match="outside state_lock"):
        serve_ctl.write_state(str(ws), {"live": None})
    with serve_ctl.state_lock(str(ws)):
        serve_ctl.write_state(str(ws), {"live": None})
    assert state(ws)["live"] is None

"""Serving builders compared as strings, parsers fed recorded host output, and the server's
pure parts (request parsing, capture rotation) without a network."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from moola_core.errors import MoolaError
from moola_ops.hosts.inventory import Host
from moola_ops.hosts.layout import Layout
from moola_ops.serving import commands as serve
from moola_ops.transport import agent

WS = Layout("/workspace/moola")


def args_of(command: str) -> list[str]:
    """The words after the agent: `python3 -S WS/.moola/agent/<hash>/agent.py serve ACTION ...`."""
    words = shlex.split(command)
    assert words[1] == "-S" and words[2].endswith(f"/.moola/agent/{agent.HASH}/agent.py")
    assert words[3] == "serve"
    return [words[0], *words[4:]]


def test_builders_quote_everything_and_check_names():
    assert args_of(serve.start(WS, "/opt/py 3/python", "v1.0")) == [
        "/opt/py 3/python",
        "start",
        "--workspace",
        "/workspace/moola",
        "--release",
        "v1.0",
        "--device",
        "auto",
        "--timeout",
        "180.0",
    ]
    assert args_of(serve.start(WS, "python3", "v1", server_args=("--role", "shadow")))[-2:] == [
        "--server-arg=--role",
        "--server-arg=shadow",
    ]
    assert args_of(serve.switch(WS, "python3", "v1.1", port=4000, keep_standby=False)) == [
        "python3",
        "switch",
        "--workspace",
        "/workspace/moola",
        "--release",
        "v1.1",
        "--port",
        "4000",
        "--no-standby",
    ]
    home = serve.proxy(Layout("~/ws"), "python3", 8080, "0.0.0.0")
    assert ' --workspace "$HOME"/ws --port 8080 --bind 0.0.0.0' in home  # ~ stays expandable
    assert args_of(serve.probe(WS, "python3", port=0, requests=5, concurrency=2))[1:] == [
        "probe",
        "--workspace",
        "/workspace/moola",
        "--port",
        "0",
        "--requests",
        "5",
        "--concurrency",
        "2",
        "--windows",
        "1",
        "--warmup",
        "0",
    ]
    assert args_of(serve.health(WS, "python3", burst=50))[1:] == [
        "health",
        "--workspace",
        "/workspace/moola",
        "--burst",
        "50",
        "--concurrency",
        "4",
    ]
    # rollback's one round trip: probe the standby, then move traffic; a deploy's cleanup
    assert args_of(serve.standby_switch(WS, "python3", "v1.0", keep_standby=False))[1:] == [
        "standby-switch",
        "--workspace",
        "/workspace/moola",
        "--release",
        "v1.0",
        "--requests",
        "1",
        "--no-standby",
    ]
    assert args_of(serve.stop_candidates(WS, "python3", "v1.2"))[1:] == [
        "stop-candidates",
        "--workspace",
        "/workspace/moola",
        "--release",
        "v1.2",
    ]
    for bad in (
        lambda: serve.standby_switch(WS, "python3", "v1;id"),
        lambda: serve.standby_switch(WS, "python3", "v1", requests=0),
        lambda: serve.stop_candidates(WS, "python3", "../v1"),
        lambda: serve.start(WS, "python3", "v1;rm -rf /"),
        lambda: serve.switch(WS, "python3", "$(id)"),
        lambda: serve.start(WS, "python3", "v1", device="tpu"),
        lambda: serve.proxy(WS, "python3", 70000),
        lambda: serve.proxy(WS, "python3", 8080, "0.0.0.0; id"),
        lambda: serve.drain(WS, "python3", 1),
        lambda: serve.probe(WS, "python3", requests=0),
        lambda: serve.proxy(WS, "python3", 8080, auth="never"),
        lambda: serve.shadow_route(WS, "python3", {"release": "v1;id", "port": 1}),
    ):
        with pytest.raises(MoolaError):
            bad()


@pytest.mark.default_port  # the default itself; nothing binds
def test_public_port_and_pod_start_line():
    assert serve.public_port(Host("h", "x")) == serve.DEFAULT_PORT == 8080
    assert serve.public_port(Host("h", "x", serve_port=9000)) == 9000
    line = serve.start_command_line("/workspace/moola", port=8080, bind="0.0.0.0")
    assert line == (
        "python3 -S /workspace/moola/current/code/moola_core/agent/__main__.py serve ensure "
        "--workspace /workspace/moola --port 8080 --bind 0.0.0.0"
    )
    assert serve.start_command_line("/w", auth="always").endswith("--bind 127.0.0.1 --auth always")


RECORDED_STATUS = json.dumps(
    {
        "ok": True,
        "current": "v1.1",
        "workspace": "/workspace/moola",
        "proxy": {"running": True, "port": 8080, "pid": 40},
        "live": {"release": "v1.1", "port": 41000, "pid": 41, "record": "v1.1-1.json"},
        "standby": {"release": "v1.0", "port": 42000, "pid": 42, "record": "v1.0-1.json"},
        "shadow": None,
        "live_alive": True,
        "live_ready": True,
        "served_release": "v1.1",
        "servers": [
            {
                "release": "v1.0",
                "pid": 42,
                "port": 42000,
                "alive": True,
                "ready": True,
                "ready_now": True,
            },
            {
                "release": "v1.1",
                "pid": 41,
                "port": 41000,
                "alive": True,
                "ready": True,
                "ready_now": True,
            },
        ],
    }
)


def test_parse_status_from_recorded_output():
    status = serve.parse_status("noise before\n" + RECORDED_STATUS + "\n")
    assert status.serving and status.standby_ready and status.problem() is None
    assert (status.proxy_port, status.live["port"], status.standby["release"]) == (
        8080,
        41000,
        "v1.0",
    )
    wrong = json.loads(RECORDED_STATUS)
    wrong["served_release"] = "v1.0"
    assert serve.parse_status(json.dumps(wrong)).problem() == "serving v1.0, but current is v1.1"
    down = json.loads(RECORDED_STATUS)
    down["live_alive"] = False
    assert "is not running" in serve.parse_status(json.dumps(down)).problem()
    assert not serve.parse_status("").ok
    assert "no answer from the host" in serve.parse_status("Traceback ...").problem()
    failed = serve.parse_status('{"ok": false, "error": "workspace /x does not exist"}')
    assert failed.problem() == "workspace /x does not exist"


# --- the server's pure parts ------------------------------------------------------------------


def window(price: float = 10.0) -> list[list[float]]:
    return [[price, price * 1.01, price * 0.99, price]] * 105


def test_parse_windows_accepts_both_forms_and_names_the_first_bad_bar():
    from moola_core.runtime.serve import BadRequest, parse_windows

    body = json.dumps({"windows": [window(), {"id": "a", "ohlc": window(20.0)}]}).encode()
    ohlc, ids, grids, raws = parse_windows(body, 10)
    assert tuple(ohlc.shape) == (2, 105, 4) and ids == [None, "a"] and grids[1] == window(20.0)
    assert json.loads(raws[0]) == window() and raws[1] is None  # the object form is re-encoded
    bad = window()
    bad = bad[:7] + [[1, 2, 0.5, "x"]] + bad[8:]
    with pytest.raises(BadRequest, match='window 1 bar 7: "x" is not a number'):
        parse_windows(json.dumps({"windows": [window(), bad]}).encode(), 10)
    with pytest.raises(BadRequest) as too_many:
        parse_windows(json.dumps({"windows": [window()] * 3}).encode(), 2)
    assert too_many.value.status == 413


def test_capture_lines_reuse_the_window_text_and_stay_one_line(tmp_path):
    from moola_core.runtime.serve import Captures, Metrics, parse_windows

    pretty = json.dumps({"windows": [window(11.0)]}, indent=1).encode()  # newlines inside
    compact = json.dumps({"windows": [window(12.0)], "extra": 1}).encode()  # not the plain form
    plain = b' {"windows" : [ ' + json.dumps(window(13.0)).encode() + b" ] } "
    captures = Captures(tmp_path, "v1", "live", 16, 256, Metrics())
    captures.start()
    for i, data in enumerate((pretty, compact, plain)):
        _ohlc, ids, grids, raws = parse_windows(data, 10)
        rows = [{"label": "retracement", "probs": {}, "start": 0, "end": 1, "abstain": False}]
        captures.put(
            {
                "request_id": f"r{i}",
                "time": 1.0,
                "status": 200,
                "latency_ms": 1.0,
                "batch_size": 1,
                "ids": ids,
                "ohlc": grids,
                "raw": raws,
                "rows": rows,
            }
        )
    captures.close()
    (path,) = (tmp_path / "v1").glob("*.jsonl")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["ohlc"] for x in lines] == [window(11.0), window(12.0), window(13.0)]
    assert all(x["output"]["label"] == "retracement" for x in lines)


def test_captures_rotate_at_max_and_keep_the_newest_within_the_budget(tmp_path):
    from moola_core.runtime.serve import Captures, Metrics

    metrics = Metrics()
    captures = Captures(tmp_path, "v1.0", "live", max_mb=0.01, keep_mb=0.03, metrics=metrics)
    captures.start()
    rows = [
        {
            "label": "consolidation",
            "probs": {"consolidation": 0.6, "retracement": 0.4},
            "start": 3,
            "end": 9,
            "abstain": False,
        }
    ]
    for i in range(40):
        captures.put(
            {
                "request_id": f"r{i}",
                "time": 1.0,
                "status": 200,
                "latency_ms": 1.0,
                "batch_size": 1,
                "ids": [None],
                "ohlc": [window()],
                "rows": rows,
            }
        )
    captures.put(
        {
            "request_id": "bad",
            "time": 1.0,
            "status": 400,
            "latency_ms": 0.1,
            "error": "the body is not valid JSON",
        }
    )
    captures.close()
    files = sorted((tmp_path / "v1.0").glob("*.jsonl"))
    assert len(files) >= 2  # rotated
    total = sum(f.stat().st_size for f in files)
    assert total <= 0.03 * 1024 * 1024 + 0.01 * 1024 * 1024 + 8192  # keep + the open file
    lines = [json.loads(x) for f in files for x in f.read_text().splitlines()]
    assert lines[-1]["request_id"] == "bad" and lines[-1]["status"] == 400
    assert "output" not in lines[-1] and "ohlc" not in lines[-1]
    assert lines[0]["request_id"] != "r0"  # the oldest went first
    assert all(x["v"] == 1 and x["release"] == "v1.0" for x in lines)


def test_a_full_capture_queue_drops_and_counts_instead_of_blocking(tmp_path, monkeypatch):
    from moola_core.runtime import serve as server

    monkeypatch.setattr(server, "CAPTURE_QUEUE", 2)
    metrics = server.Metrics()
    captures = server.Captures(tmp_path, "v1", "live", 16, 256, metrics)
    # not started: nothing drains the queue, as when the disk is slower than the traffic
    item = {"request_id": "r", "time": 1.0, "status": 400, "latency_ms": 0.1, "error": "x"}
    for _ in range(5):
        captures.put(item)
    assert metrics.captures_dropped == 3
    assert "moola_serve_captures_dropped_total 3" in metrics.render({"release": "v1"}, {})
    assert not any(Path(tmp_path).rglob("*.jsonl"))


def test_a_warm_standby_is_read_from_the_serving_fact():
    state = {
        "live": {"release": "v1.1", "port": 40101, "pid": 41},
        "standby": {"release": "v1.0", "port": 40007, "pid": 37},
    }
    assert serve.standby_of(state, "v1.0") == state["standby"]
    assert serve.standby_of(state, "v1.1") is None  # live, not a standby
    assert serve.standby_of({"standby": None}, "v1.0") is None
    assert serve.standby_of(None, "v1.0") is None  # the host never served


def test_every_serving_command_fits_in_the_one_argument_sshd_gives_the_shell():
    # sshd runs `$SHELL -c WRAPPED`: Linux refuses one argument over MAX_ARG_STRLEN (128 KiB)
    # with E2BIG, which reads as "no answer from the host"
    from moola_ops.transport.process import wrap_command

    max_arg_strlen = 32 * 4096
    for command in (
        serve.proxy(WS, "python3", 8080),
        serve.ensure(WS, "python3", 8080),
        serve.status(WS, "python3"),
    ):
        assert len(wrap_command(command, 600).encode()) < max_arg_strlen * 0.75


def test_probe_timeouts_derive_from_the_latency_sla(tmp_path):
    from moola_core.agent import control as serve_ctl

    ws = tmp_path / "ws"
    (ws / "releases" / "v1").mkdir(parents=True)
    (ws / "releases" / "v1" / "manifest.json").write_text('{"latency_sla_p99_ms": 250}')
    (ws / "serve").mkdir()
    (ws / "serve" / "state.json").write_text('{"live": {"release": "v1", "port": 1}}')
    # 20x the p99 SLA: the inventory's when given, else the release's manifest, else the live one
    assert serve_ctl.probe_timeout(str(ws), sla_ms=500) == 10.0
    assert serve_ctl.probe_timeout(str(ws), "v1") == 5.0
    assert serve_ctl.probe_timeout(str(ws)) == 5.0
    assert serve_ctl.probe_timeout(str(ws), sla_ms=5) == serve_ctl.PROBE_TIMEOUT_MIN_S
    assert serve_ctl.probe_timeout(str(ws), sla_ms=60_000) == serve_ctl.PROBE_TIMEOUT_MAX_S
    # no SLA anywhere (or a name that is not a release): the documented default
    assert serve_ctl.probe_timeout(str(ws), "../etc") == serve_ctl.PROBE_TIMEOUT_DEFAULT_S
    assert serve_ctl.probe_timeout(str(tmp_path / "empty")) == serve_ctl.PROBE_TIMEOUT_DEFAULT_S

"""Binary prediction requests (issue #23): a real server process for a tiny release answers a
float32 little-endian [N, 105, 4] body exactly as it answers the same windows sent as JSON,
refuses a body whose size does not match its X-Moola-Windows header with one sentence, and
captures the windows it answered in the shared JSON-lines contract."""

from __future__ import annotations

import base64
import http.client
import json
import struct
from pathlib import Path

import pytest

from moola_ops.serving.captures import parse_lines
from tests.integration.helpers import release_server, wait_for, window
from tests.unit.test_runtime import make_release

BINARY = "application/vnd.moola.ohlc-f32le"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("binary")
    release = make_release(root, "v0.9", sla_p99_ms=10_000.0)
    captures = root / "captures"
    flags = ("--capture-dir", str(captures), "--max-windows", "8")
    with release_server(release, root / "state.json", *flags) as (port, _proc):
        yield port, captures


def f32(windows) -> list:
    """The windows as float32 would carry them (so the JSON twin sends the same numbers)."""
    return [
        [[struct.unpack("<f", struct.pack("<f", v))[0] for v in bar] for bar in w] for w in windows
    ]


def pack(windows) -> bytes:
    return b"".join(struct.pack("<4f", *bar) for w in windows for bar in w)


def post(port, body: bytes, headers: dict):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/v1/predict", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def binary(port, windows, n=None, extra=b"", request_id="bin-1"):
    headers = {"Content-Type": BINARY, "X-Moola-Request-Id": request_id}
    if n is not False:
        headers["X-Moola-Windows"] = str(len(windows) if n is None else n)
    return post(port, pack(windows) + extra, headers)


def test_a_binary_body_is_answered_as_its_json_twin_and_captured(server):
    port, captures = server
    windows = f32([window(i) for i in range(1, 4)])
    status, answer = binary(port, windows)
    assert status == 200, answer
    twin_status, twin = post(
        port,
        json.dumps({"windows": windows}).encode(),
        {"Content-Type": "application/json", "X-Moola-Request-Id": "json-1"},
    )
    assert twin_status == 200
    assert len(answer["predictions"]) == 3 and answer["request_id"] == "bin-1"
    for got, want in zip(answer["predictions"], twin["predictions"], strict=True):
        assert got == want  # the same numbers in, the same answer out

    def lines(request_id):
        texts = [f.read_bytes() for f in sorted(Path(captures).rglob("*.jsonl"))]
        found = [x for data in texts for x in data.splitlines(keepends=True)]
        return [x for x in found if json.loads(x)["request_id"] == request_id]

    captured = wait_for(lambda: len(lines("bin-1")) == 3 and lines("bin-1"), "three lines")
    twin_lines = wait_for(lambda: len(lines("json-1")) == 3 and lines("json-1"), "the twin's")
    records = [json.loads(x) for x in captured]
    # a binary window is kept as the very bytes it came in (base64), not turned into text
    assert [base64.b64decode(r["ohlc_f32le"]) for r in records] == [pack([w]) for w in windows]
    assert all("ohlc" not in r for r in records)
    assert records[0]["output"]["label"] == answer["predictions"][0]["label"]
    # the readers (ab, monitor, report, labeling) get the same float32 windows from both forms
    table, _ = parse_lines(b"".join(captured))
    twin_table, _ = parse_lines(b"".join(twin_lines))
    assert table.skipped == twin_table.skipped == 0
    assert table["has_ohlc"].all() and twin_table["has_ohlc"].all()
    assert table.ohlc.tolist() == twin_table.ohlc.tolist() == windows


@pytest.mark.parametrize(
    ("n", "extra", "status", "words"),
    [
        (3, b"", 400, "the body has 3360 bytes but X-Moola-Windows: 3 needs 5040"),
        (2, b"\0", 400, "the body has 3361 bytes but X-Moola-Windows: 2 needs 3360"),
        (False, b"", 400, "needs the header X-Moola-Windows: N"),
        (0, b"", 400, "needs the header X-Moola-Windows: N"),
        (9, b"", 413, "9 windows in one request, at most 8"),
    ],
)
def test_a_binary_body_that_does_not_match_its_header_gets_one_sentence(
    server, n, extra, status, words
):
    port, _ = server
    got, answer = binary(port, f32([window(1), window(2)]), n=n, extra=extra)
    assert got == status and words in answer["error"], answer
    assert "\n" not in answer["error"] and "Traceback" not in answer["error"]
    assert binary(port, f32([window(3)]))[0] == 200  # still serving


def test_bad_prices_in_a_binary_body_name_the_bar(server):
    port, _ = server
    bad = f32([window(1)])
    bad[0][7] = [float("nan"), 1.0, 1.0, 1.0]
    status, answer = binary(port, bad)
    assert status == 400 and "window 0 bar 7: prices must be finite" in answer["error"]
    bad = f32([window(1)])
    bad[0][3] = [1.0, 0.5, 2.0, 1.0]
    status, answer = binary(port, bad)
    assert status == 400 and "window 0 bar 3: high and low must contain" in answer["error"]

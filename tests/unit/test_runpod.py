"""RunPod pods by id: the stdlib GraphQL client, the endpoint rules, the cache, the inventory hook.

Every test talks HTTP to the local stand-in of RunPod's API (tests/runpod_standin.py, fixture
`runpod_api`), the test double for the real service; nothing is mocked inside the client.
"""

from __future__ import annotations

import json
import os
import stat

import pytest

from moola_core.errors import MoolaError
from moola_ops.hosts import runpod
from moola_ops.hosts.inventory import load_inventory
from tests.integration.helpers import in_thread
from tests.runpod_standin import _Parser


def client(api, **kw) -> runpod.Client:
    waits: list[float] = []
    c = runpod.Client(api.key, api.url, sleep=waits.append, **kw)
    c.waits = waits
    return c


# --- wire format and the stand-in's fidelity ----------------------------------------------------


def test_list_and_get_read_the_documented_fields(runpod_api):
    runpod_api.add("ldl1dxirsim64n", "trainer", ssh_port=40122, gpu_count=2, cost=5.98)
    c = client(runpod_api)
    (pod,) = c.list_pods()
    assert (pod.id, pod.name, pod.desired_status) == ("ldl1dxirsim64n", "trainer", "RUNNING")
    assert (pod.gpu_count, pod.gpu_name, pod.cost_per_hr) == (2, "H100 80GB HBM3", 5.98)
    assert pod.uptime_s == 3931
    assert pod.ssh_endpoint() == ("127.0.0.1", 40122)
    assert c.get_pod("ldl1dxirsim64n") == pod
    assert c.get_pod("nosuchpod") is None
    # the key travels as a Bearer header, never in the URL
    sent = runpod_api.requests[-1]
    assert sent["auth"] == f"Bearer {runpod_api.key}" and sent["url_query"] == ""
    assert sent["path"] == "/graphql"


def test_the_stand_in_refuses_a_field_runpod_does_not_have(runpod_api):
    c = client(runpod_api)
    with pytest.raises(runpod.RunPodError, match='Cannot query field "sshPort" on type "Pod"'):
        c.call('query { pod(input: {podId: "a1"}) { id sshPort } }', read=True)


def test_queries_parse_as_graphql_documents():
    kind, fields = _Parser(runpod.LIST_QUERY).document()
    assert kind == "query" and fields[0].name == "myself"
    pods = fields[0].selection[0]
    runtime = next(f for f in pods.selection if f.name == "runtime")
    ports = next(f for f in runtime.selection if f.name == "ports")
    assert [f.name for f in ports.selection] == [
        "ip",
        "isIpPublic",
        "privatePort",
        "publicPort",
        "type",
    ]


def test_stop_resume_terminate(runpod_api):
    runpod_api.add("abc123", "trainer")
    runpod_api.resume_port["abc123"] = 40555
    c = client(runpod_api)
    assert c.stop_pod("abc123") == "EXITED"
    assert c.get_pod("abc123").desired_status == "EXITED"
    assert c.resume_pod("abc123", 1) == "RUNNING"
    assert c.get_pod("abc123").ssh_endpoint() == ("127.0.0.1", 40555)
    c.terminate_pod("abc123")
    assert c.get_pod("abc123") is None


def test_a_pod_id_with_other_characters_is_refused_before_any_request(runpod_api):
    c = client(runpod_api)
    with pytest.raises(MoolaError, match="is not a RunPod pod id"):
        c.get_pod('a"){ myself { id } }')
    assert runpod_api.requests == []


# --- the endpoint rules -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (
            lambda api: api.stop("p1"),
            "is stopped (EXITED): resume it with `invoke pods.resume --pod p1`",
        ),
        (
            lambda api: api.drop_tcp22("p1"),
            "exposes no TCP port for 22: expose TCP port 22 in the pod's template",
        ),
        (
            lambda api: api.add("p1", "trainer", tcp22=False),
            "exposes no TCP port for 22 (only over HTTP)",
        ),
        (lambda api: api.add("p1", "trainer", public=False), "has no public IP for port 22"),
        (lambda api: api.add("p1", "trainer", status="TERMINATED"), "was terminated"),
    ],
)
def test_an_unreachable_pod_says_why_and_how_to_fix_it(runpod_api, setup, expected):
    runpod_api.add("p1", "trainer")
    setup(runpod_api)
    pod = client(runpod_api).get_pod("p1")
    with pytest.raises(runpod.PodUnavailable) as err:
        pod.ssh_endpoint()
    assert expected in str(err.value)
    assert err.value.nagios_state == 2 and err.value.check == "pod"
    assert "\n" not in str(err.value)


# --- failures: bounded, retried where safe, one sentence, never the key -----------------------


def test_a_bad_key_is_one_sentence_and_not_retried(runpod_api):
    c = runpod.Client("rpa_WRONG", runpod_api.url, sleep=lambda s: None)
    with pytest.raises(runpod.RunPodError) as err:
        c.list_pods()
    assert "refused the API key (HTTP 401)" in str(err.value)
    assert "rpa_WRONG" not in str(err.value)
    assert len(runpod_api.requests) == 1


def test_rate_limit_is_retried_after_the_servers_wait(runpod_api):
    runpod_api.add("p1")
    runpod_api.fail(429, times=2, retry_after=0.25)
    c = client(runpod_api)
    assert [p.id for p in c.list_pods()] == ["p1"]
    assert len(runpod_api.requests) == 3
    assert c.waits == [0.25, 0.25]  # Retry-After honoured


def test_server_errors_on_a_read_back_off_then_give_up_in_one_sentence(runpod_api):
    runpod_api.fail(503, times=10)
    c = client(runpod_api, attempts=4)
    with pytest.raises(runpod.RunPodError) as err:
        c.list_pods()
    assert "did not read within 25 s (HTTP 503)" in str(err.value)
    assert len(runpod_api.requests) == 4
    assert len(c.waits) == 3 and c.waits[0] < c.waits[1] < c.waits[2]  # exponential


def test_a_proxy_error_page_is_retried_on_a_read(runpod_api):
    runpod_api.add("p1")
    runpod_api.garbage(times=1)
    c = client(runpod_api)
    assert [p.id for p in c.list_pods()] == ["p1"]
    assert len(runpod_api.requests) == 2


def test_a_server_error_on_a_change_is_not_retried(runpod_api):
    runpod_api.add("p1")
    runpod_api.fail(502, times=1)
    c = client(runpod_api)
    with pytest.raises(runpod.RunPodError, match="whether the change happened is unknown"):
        c.stop_pod("p1")
    assert len(runpod_api.requests) == 1
    assert runpod_api.pods["p1"]["desiredStatus"] == "RUNNING"


def test_a_rate_limited_change_is_retried(runpod_api):
    runpod_api.add("p1")
    runpod_api.fail(429, times=1, retry_after=0)
    assert client(runpod_api).stop_pod("p1") == "EXITED"
    assert len(runpod_api.requests) == 2


def test_no_answer_is_bounded_per_request_and_reads_are_retried(runpod_api):
    runpod_api.add("p1")
    runpod_api.hang(times=1)  # the first request never gets an answer
    c = client(runpod_api, timeout_s=0.3)
    assert [p.id for p in c.list_pods()] == ["p1"]
    assert len(runpod_api.requests) == 2


def test_no_answer_to_a_change_is_not_retried(runpod_api):
    runpod_api.add("p1")
    runpod_api.hang(times=1)
    c = client(runpod_api, timeout_s=0.3)
    with pytest.raises(runpod.RunPodError, match="did not answer within 0.3 s"):
        c.resume_pod("p1", 1)
    assert len(runpod_api.requests) == 1


def test_an_unreachable_api_is_one_sentence(runpod_api):
    url = runpod_api.url
    runpod_api.close()
    c = runpod.Client(runpod_api.key, url, sleep=lambda s: None, attempts=2)
    with pytest.raises(runpod.RunPodError, match="did not read within 25 s \\(cannot connect"):
        c.list_pods()


# --- key and base URL ---------------------------------------------------------------------------


def test_the_key_comes_from_the_environment_first_then_the_file(tmp_path, monkeypatch):
    key_file = tmp_path / "runpod.key"
    key_file.write_text("rpa_FROMFILE\n")
    key_file.chmod(0o600)
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_FROMENV")
    assert runpod.api_key(key_file) == "rpa_FROMENV"
    monkeypatch.delenv("RUNPOD_API_KEY")
    assert runpod.api_key(key_file) == "rpa_FROMFILE"
    key_file.chmod(0o644)
    with pytest.raises(runpod.RunPodError, match="can be read by other users: chmod 600") as err:
        runpod.api_key(key_file)
    assert "rpa_FROMFILE" not in str(err.value)
    with pytest.raises(runpod.RunPodError, match="does not exist"):
        runpod.api_key(tmp_path / "missing.key")
    with pytest.raises(runpod.RunPodError, match="set RUNPOD_API_KEY or name a key file"):
        runpod.api_key(None)


def test_the_base_url_must_be_https_or_this_machine(monkeypatch):
    monkeypatch.setenv("RUNPOD_API_BASE_URL", "http://api.example.com")
    with pytest.raises(runpod.RunPodError, match="must be an https:// URL"):
        runpod.api_base()
    monkeypatch.setenv("RUNPOD_API_BASE_URL", "https://api.runpod.io/?api_key=x")
    with pytest.raises(runpod.RunPodError, match="bare URL"):
        runpod.api_base()
    monkeypatch.setenv("RUNPOD_API_BASE_URL", "http://127.0.0.1:8080/")
    assert runpod.api_base() == "http://127.0.0.1:8080"
    monkeypatch.delenv("RUNPOD_API_BASE_URL")
    assert runpod.api_base() == "https://api.runpod.io"


# --- the cache ----------------------------------------------------------------------------------


def test_one_request_serves_every_pod_until_the_cache_ages(runpod_api, tmp_path):
    runpod_api.add("p1", ssh_port=40001)
    runpod_api.add("p2", ssh_port=40002)
    assert runpod.find_pod("p1").ssh_endpoint() == ("127.0.0.1", 40001)
    assert runpod.find_pod("p2").ssh_endpoint() == ("127.0.0.1", 40002)
    assert len(runpod_api.requests) == 1  # one list for the fleet
    runpod_api.set_ssh("p1", 40011)  # a restart: the cache still says 40001
    assert runpod.find_pod("p1").ssh_endpoint() == ("127.0.0.1", 40001)
    assert runpod.find_pod("p1", refresh=True).ssh_endpoint() == ("127.0.0.1", 40011)
    assert runpod.find_pod("p1", max_age_s=0).ssh_endpoint() == ("127.0.0.1", 40011)
    assert len(runpod_api.requests) == 3
    cache = (tmp_path / "runpod-pods.json").read_text()
    assert runpod_api.key not in cache and "40011" in cache


def test_refresh_flag_makes_the_next_look_up_ask_once(runpod_api):
    runpod_api.add("p1")
    runpod.find_pod("p1")
    runpod.refresh_cache()
    runpod.find_pod("p1")
    runpod.find_pod("p1")
    assert len(runpod_api.requests) == 2


def test_a_cache_of_another_key_is_not_used(runpod_api, monkeypatch):
    runpod_api.add("p1")
    runpod.find_pod("p1")
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_OTHER")
    with pytest.raises(runpod.RunPodError, match="refused the API key"):
        runpod.find_pod("p1")


def test_a_pod_the_account_does_not_have(runpod_api):
    runpod_api.add("p1")
    with pytest.raises(runpod.PodUnavailable, match="has no pod zz9: check `runpod_pod_id:`"):
        runpod.find_pod("zz9")


def test_forget_drops_one_pod_from_the_cache(runpod_api):
    runpod_api.add("p1")
    runpod.find_pod("p1")
    runpod.forget("p1")
    runpod.find_pod("p1")
    assert len(runpod_api.requests) == 2


# --- the inventory hook -------------------------------------------------------------------------


def write(tmp_path, text: str):
    path = tmp_path / "hosts.yaml"
    path.write_text(text)
    return path


def test_a_pod_host_is_resolved_only_when_used(runpod_api, tmp_path):
    runpod_api.add("abc123", "trainer", ssh_port=40122)
    path = write(
        tmp_path,
        "hosts:\n  gpu-1:\n    runpod_pod_id: abc123\n  plain:\n    hostname: 10.0.0.5\n",
    )
    inv = load_inventory(path)
    plain, gpu = inv.resolve("plain")[0], inv.resolve("gpu-1")[0]
    assert runpod_api.requests == []  # loading and resolving names asks nothing
    assert plain.endpoint() is plain and runpod_api.requests == []
    assert gpu.hostname == "" and gpu.address == "pod abc123"
    now = gpu.endpoint()
    assert (now.hostname, now.port, now.user) == ("127.0.0.1", 40122, "root")
    assert now.address == "root@127.0.0.1:40122 (pod abc123)"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("runpod_pod_id: abc123\n    hostname: 1.2.3.4", "runpod_pod_id and hostname both given"),
        ("runpod_pod_id: abc123\n    port: 40122", "runpod_pod_id and port both given"),
        ("runpod_pod_id: 'abc 123'", "is not a RunPod pod id"),
    ],
)
def test_pod_entries_are_checked(tmp_path, entry, message):
    path = write(tmp_path, f"hosts:\n  gpu-1:\n    {entry}\n")
    with pytest.raises(MoolaError, match=message):
        load_inventory(path)


def test_the_inventory_refuses_a_key_and_never_echoes_it(tmp_path):
    path = write(
        tmp_path, "defaults:\n  runpod_api_key: rpa_SECRET123\nhosts:\n  a:\n    hostname: h\n"
    )
    with pytest.raises(MoolaError) as err:
        load_inventory(path)
    assert "must not hold the RunPod API key" in str(err.value)
    assert "rpa_SECRET123" not in str(err.value)


def test_the_key_file_named_in_the_defaults_is_used(runpod_api, tmp_path, monkeypatch):
    runpod_api.add("abc123", ssh_port=40122)
    key_file = tmp_path / "runpod.key"
    key_file.write_text(runpod_api.key)
    os.chmod(key_file, stat.S_IRUSR | stat.S_IWUSR)
    monkeypatch.delenv("RUNPOD_API_KEY")
    path = write(
        tmp_path,
        f"defaults:\n  runpod_api_key_file: {key_file}\nhosts:\n  g:\n    runpod_pod_id: abc123\n",
    )
    (host,) = load_inventory(path).resolve("g")
    assert host.endpoint().port == 40122
    assert json.loads((tmp_path / "runpod-pods.json").read_text())["pods"]["abc123"]


# --- host keys of pods --------------------------------------------------------------------------


def test_pin_replaces_only_the_pods_alias_and_compare_prefers_it(tmp_path):
    import base64

    from moola_ops.hosts import hostkeys

    def key(seed: bytes) -> hostkeys.ScannedKey:
        blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + seed * 32
        return hostkeys.ScannedKey("ssh-ed25519", base64.b64encode(blob).decode())

    old, new, other = key(b"a"), key(b"b"), key(b"c")
    known = tmp_path / "known_hosts"
    known.write_text(
        f"runpod-p1 ssh-ed25519 {old.blob}\n"
        f"[127.0.0.1]:4000 ssh-ed25519 {other.blob}\n"  # that address served another pod once
        f"elsewhere ssh-ed25519 {other.blob}\n"
    )
    report = hostkeys.compare("runpod-p1", "127.0.0.1", 4000, [new], [known])
    assert report.state == "differs" and report.pinned[0]["as"] == "runpod-p1"
    assert "DIFFERS" in report.sentence("p1") and "--pin" in report.sentence("p1")
    assert hostkeys.compare("runpod-p1", "127.0.0.1", 4000, [old], [known]).state == "match"
    assert hostkeys.compare("runpod-p2", "10.0.0.1", 22, [new], [known]).state == "unpinned"

    hostkeys.pin("runpod-p1", [new], known)
    lines = known.read_text().splitlines()
    assert lines == [
        f"[127.0.0.1]:4000 ssh-ed25519 {other.blob}",
        f"elsewhere ssh-ed25519 {other.blob}",
        f"runpod-p1 ssh-ed25519 {new.blob}",
    ]
    assert hostkeys.compare("runpod-p1", "127.0.0.1", 4000, [new], [known]).state == "match"
    assert new.fingerprint.startswith("SHA256:") and new.fingerprint != old.fingerprint


# --- a whole-call deadline, Ctrl-C, and the key's echoes (issue #24) ---------------------------


HANG_S = 120  # far past every budget below: only a call without a deadline gets near it


@pytest.mark.parametrize("part", ["head", "body"])
def test_an_answer_that_trickles_ends_by_the_calls_deadline(runpod_api, part):
    # one byte every 0.1 s: each read is well within the per-read timeout, so only a deadline
    # on the whole call can end it (before: `invoke pods` ran past 10 minutes)
    runpod_api.trickle(part, times=10)
    c = client(runpod_api, timeout_s=1.0, budget_s=1.5)
    thread, box = in_thread(c.list_pods)
    thread.join(HANG_S)
    assert not thread.is_alive(), "a trickling answer kept the call running"
    assert isinstance(box.get("error"), runpod.RunPodError), box
    assert "did not read within 1.5 s (no whole answer within 1.5 s)" in str(box["error"])
    assert len(runpod_api.requests) == 1  # the deadline is the whole call's: no second try


def test_a_change_whose_answer_trickles_says_its_outcome_is_unknown(runpod_api):
    runpod_api.add("p1")
    runpod_api.trickle("body")
    c = client(runpod_api, timeout_s=1.0, budget_s=1.5)
    thread, box = in_thread(lambda: c.stop_pod("p1"))
    thread.join(HANG_S)
    assert not thread.is_alive()
    assert "did not answer within 1.5 s while changing the pod; whether the change happened " in (
        str(box.get("error"))
    )


def test_cancel_ends_a_call_at_once(runpod_api):
    import threading

    runpod_api.trickle("body")
    cancel = threading.Event()
    c = client(runpod_api, budget_s=3600, cancel=cancel)  # only the cancel can end it in time
    thread, box = in_thread(c.list_pods)
    assert runpod_api.trickling.wait(60)
    cancel.set()
    thread.join(HANG_S)
    assert not thread.is_alive(), "cancel did not end the call"
    assert str(box.get("error")) == "the RunPod look-up was stopped (Ctrl-C)"


def test_a_host_session_cancelled_while_its_pod_is_looked_up_stops_at_once(runpod_api, tmp_path):
    # a deploy's Ctrl-C cancels each host's session; before, a slow API held the deploy 180 s
    from moola_ops.hosts.inventory import Host
    from moola_ops.transport import Aborted, HostSession

    runpod_api.trickle("body")
    session = HostSession(Host("pod-1", "", runpod_pod_id="abc123"))
    thread, box = in_thread(session.open)
    assert runpod_api.trickling.wait(60)
    session.cancel()
    thread.join(HANG_S)
    assert not thread.is_alive(), "cancel did not end the pod look-up"
    assert isinstance(box.get("error"), Aborted), box


KEY_WITH_A_LINE_BREAK = "rpa_7F3K9QW2MZ\nXV8B1N4C6D0E"


def leaked(text: str, key: str) -> list[str]:
    """Pieces of `key` (8 characters or more, also URL-encoded or base64) found in `text`."""
    import base64
    import urllib.parse

    forms = {key, urllib.parse.quote(key, safe=""), base64.b64encode(key.encode()).decode()}
    found = []
    for form in forms:
        for i in range(len(form) - 7):
            if form[i : i + 8].lower() in text.lower():
                found.append(form[i : i + 8])
    return found


def test_a_key_that_is_not_one_word_is_refused_without_showing_it(monkeypatch, tmp_path):
    monkeypatch.setenv("RUNPOD_API_KEY", KEY_WITH_A_LINE_BREAK)
    with pytest.raises(runpod.RunPodError) as err:
        runpod.api_key(None)
    assert str(err.value) == (
        "RUNPOD_API_KEY does not hold an API key: it holds a line break; copy the key again "
        "from RunPod's console (Settings, API Keys)"
    )
    for bad, why in (("rpa_ABC DEFGHIJ", "a space or a tab"), ("rpa_ABCDÉFGHIJ", "outside")):
        monkeypatch.setenv("RUNPOD_API_KEY", bad)
        with pytest.raises(runpod.RunPodError, match=why) as err:
            runpod.api_key(None)
        assert not leaked(str(err.value), bad)
    monkeypatch.delenv("RUNPOD_API_KEY")
    key_file = tmp_path / "runpod.key"
    key_file.write_text("rpa_ABCDEFGH\x07IJKL\n")
    key_file.chmod(0o600)
    with pytest.raises(runpod.RunPodError, match="outside printable ASCII") as err:
        runpod.api_key(key_file)
    assert not leaked(str(err.value), "rpa_ABCDEFGH\x07IJKL")


def _echoes(key: str) -> str:
    """What an API that quotes the key in its error looks like: truncated, URL-encoded, base64,
    upper-cased, its tail."""
    import base64
    import urllib.parse

    return (
        f"invalid api key {key[:12]}... (sent as {urllib.parse.quote(key, safe='')}, "
        f"token {base64.b64encode(key.encode()).decode()}, {key.upper()[4:20]}, ...{key[-9:]})"
    )


def test_echoes_of_the_key_in_an_answer_never_reach_a_message(runpod_api):
    runpod_api.answer(400, _echoes(runpod_api.key), times=2)
    c = client(runpod_api)
    for call in (c.list_pods, lambda: c.stop_pod("p1")):
        with pytest.raises(runpod.RunPodError) as err:
            call()
        message = str(err.value)
        assert message.startswith("the RunPod API refused the request: invalid api key ***")
        assert not leaked(message, runpod_api.key), message


def test_echoes_of_the_key_never_reach_the_log(runpod_api, tmp_path, monkeypatch):
    # the health check of a pod host records the look-up's failure in the deployment log
    from moola_ops.watch.health_run import run_healthcheck

    log = tmp_path / "deployments.jsonl"
    monkeypatch.setenv("MOOLA_LOG", str(log))
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text("hosts:\n  pod-1:\n    runpod_pod_id: abc123\n")
    runpod_api.answer(400, _echoes(runpod_api.key))
    run = run_healthcheck("pod-1", inventory_path=str(inventory), timeout_s=20)
    (check,) = run.hosts[0].checks
    assert check.message.startswith("the RunPod API refused the request: invalid api key ***")
    assert not leaked(check.message, runpod_api.key)
    assert "refused the request: invalid api key ***" in log.read_text()
    assert not leaked(log.read_text(), runpod_api.key)


def test_redact_blanks_the_key_and_leaves_the_rest():
    key = "rpa_7F3K9QW2MZXV8B1N4C6D0E"
    assert runpod.redact(f"pod abc123 key={key}.", key) == "pod abc123 key=***."
    assert (
        runpod.redact("pod ldl1dxirsim64n RUNNING rpa_", key) == "pod ldl1dxirsim64n RUNNING rpa_"
    )
    assert runpod.redact(f"head {key[:8]} tail {key[-8:]}", key) == "head *** tail ***"
    assert runpod.redact("short", key) == "short"


def test_invoke_pods_with_a_key_holding_a_line_break_says_so_in_one_sentence(runpod_api):
    # before: a traceback that printed the key (http.client refused the header)
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "RUNPOD_API_KEY": KEY_WITH_A_LINE_BREAK}
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(repo), "pods"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: RUNPOD_API_KEY does not hold an API key: it holds a line break; copy the key "
        "again from RunPod's console (Settings, API Keys)"
    ]
    assert not leaked(proc.stdout + proc.stderr, KEY_WITH_A_LINE_BREAK)
    assert runpod_api.requests == []

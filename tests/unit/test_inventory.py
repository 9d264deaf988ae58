"""Inventory: validation that names the field and line, groups, unknown names, sandbox hosts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moola_core.errors import MoolaError
from moola_ops.hosts.inventory import Inventory, load_inventory

GOOD = """\
defaults:
  workspace: /workspace/moola
  user: root
hosts:
  runpod-1:
    hostname: 203.0.113.10
    port: 40122
    identity_file: ~/.ssh/id_ed25519
    gpu: H100
    latency_sla_ms: 25
    groups: [prod, gpu]
  runpod-2:
    groups: [prod]
  local-1:
    sandbox: true
    groups: [local]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hosts.yaml"
    path.write_text(text)
    return path


def test_hosts_groups_and_defaults(tmp_path):
    inv = load_inventory(write(tmp_path, GOOD))
    assert inv.groups == {
        "prod": ["runpod-1", "runpod-2"],
        "gpu": ["runpod-1"],
        "local": ["local-1"],
    }
    (one,) = inv.resolve("runpod-1")
    assert (one.hostname, one.port, one.user, one.gpu, one.latency_sla_ms) == (
        "203.0.113.10",
        40122,
        "root",
        "H100",
        25.0,
    )
    assert one.identity_file == str(Path("~/.ssh/id_ed25519").expanduser())
    assert one.workspace == "/workspace/moola" and one.python == "python3"
    # a host without hostname is an ~/.ssh/config alias: its name is what ssh looks up
    (two,) = inv.resolve("runpod-2")
    assert two.hostname == "runpod-2" and two.port is None
    # names and groups mix, duplicates collapse, order is kept
    assert [h.name for h in inv.resolve("runpod-2,prod")] == ["runpod-2", "runpod-1"]


def test_unknown_names_list_the_known_ones(tmp_path):
    inv = load_inventory(write(tmp_path, GOOD))
    with pytest.raises(MoolaError) as err:
        inv.resolve("runpod-9")
    assert "runpod-1, runpod-2, local-1" in str(err.value) and "prod" in str(err.value)
    with pytest.raises(MoolaError, match="invalid host name"):
        inv.resolve("runpod-1;reboot")
    with pytest.raises(MoolaError, match="no host given"):
        inv.resolve("")


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD.replace("port: 40122", "port: 99999"), "line 7: hosts.runpod-1.port"),
        (GOOD.replace("gpu: H100", "gpus: H100"), "line 9: hosts.runpod-1.gpus"),
        (GOOD.replace("latency_sla_ms: 25", "latency_sla_ms: fast"), "line 10: hosts.runpod-1"),
        (GOOD.replace("  runpod-2:", "  bad;name:"), "invalid host name"),
        (GOOD.replace("workspace: /workspace/moola", "workspace: relative"), "invalid workspace"),
        ("hosts: [1, 2", "not valid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_malformed_files_name_the_field_and_line(tmp_path, text, expected):
    with pytest.raises(MoolaError, match="hosts.yaml") as err:
        load_inventory(write(tmp_path, text))
    assert expected in str(err.value)


def test_missing_file_says_how_to_fix(tmp_path, monkeypatch):
    with pytest.raises(MoolaError, match="not found: create it"):
        load_inventory(tmp_path / "nope.yaml")
    # run from the wrong folder (cron without `cd`, `invoke -r`): say where it looked
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MOOLA_INVENTORY", raising=False)
    with pytest.raises(MoolaError, match=re.escape(f"relative to {tmp_path}: cd to the project")):
        load_inventory()


def test_sandbox_hosts_need_the_running_sandbox(tmp_path):
    inv = load_inventory(write(tmp_path, GOOD), sandbox_root=tmp_path / "no-sandbox")
    with pytest.raises(MoolaError, match="invoke sandbox up"):
        inv.resolve("local")
    assert inv.resolve("runpod-1")  # real hosts do not need it


def test_the_shipped_inventory_is_valid():
    inv = load_inventory(Path(__file__).parents[2] / "inventory" / "hosts.yaml")
    assert "local" in inv.groups and all(h.sandbox for h in inv.hosts.values())


def test_inventory_from_a_sandbox_object():
    class Running:  # the fields of moola_ops.hosts.standin.SandboxHost the inventory reads
        hostname, port, user = "127.0.0.1", 2222, "me"
        identity_file, known_hosts, workspace = "/k/id", "/k/known_hosts", "/w/one"
        python = "/sbx/remote-bin/python3"

    class FakeSandbox:
        root = "/tmp/x"
        hosts = {"one": Running()}

    inv = Inventory.from_sandbox(FakeSandbox(), connect_timeout_s=2)
    (host,) = inv.resolve("local")
    assert (host.port, host.workspace, host.known_hosts, host.connect_timeout_s) == (
        2222,
        "/w/one",
        "/k/known_hosts",
        2,
    )
    assert host.python == "/sbx/remote-bin/python3"


def test_a_home_relative_workspace_is_refused_with_the_line(tmp_path):
    # `~/moola` reached the shell expanded but SFTP uploads literally: "No such file" on upload
    text = GOOD.replace("  runpod-2:\n", "  runpod-2:\n    workspace: ~/moola\n")
    with pytest.raises(MoolaError) as err:
        load_inventory(write(tmp_path, text))
    message = str(err.value)
    assert "line 13: hosts.runpod-2.workspace: workspace '~/moola' starts with '~'" in message
    assert "write the absolute path on the host" in message and "Value error" not in message
    with pytest.raises(MoolaError, match="defaults.workspace: workspace '~/' starts with"):
        load_inventory(
            write(tmp_path, GOOD.replace("workspace: /workspace/moola", "workspace: ~/"))
        )


def test_an_inventory_that_is_not_utf8_text_or_is_a_folder_is_one_sentence(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(
        GOOD.replace("runpod-2:", "runpod-2:\n    gpu: A100 \xe9t\xe9").encode("latin-1")
    )
    with pytest.raises(MoolaError, match=r"is not UTF-8 text \(byte 0xe9 on line 13\): save it"):
        load_inventory(path)
    folder = tmp_path / "inventory"
    folder.mkdir()
    with pytest.raises(MoolaError, match="is a folder, not a file"):
        load_inventory(folder)


def test_keepalive_and_connect_retries_come_from_the_inventory(tmp_path):
    text = GOOD.replace("  user: root\n", "  user: root\n  keepalive_s: 2\n  connect_retries: 0\n")
    text = text.replace("    port: 40122\n", "    port: 40122\n    keepalive_s: 0\n")
    inv = load_inventory(write(tmp_path, text))
    one, two = inv.resolve("runpod-1,runpod-2")
    assert (one.keepalive_s, one.connect_retries) == (0, 0)  # 0 is a choice: keepalives off
    assert (two.keepalive_s, two.connect_retries) == (2, 0)
    bad = GOOD.replace("  user: root\n", "  user: root\n  connect_retries: -1\n")
    with pytest.raises(MoolaError, match="defaults.connect_retries"):
        load_inventory(write(tmp_path, bad))


def test_serve_auth_is_auto_unless_set_and_only_auto_or_always(tmp_path):
    inv = load_inventory(write(tmp_path, GOOD))
    assert {h.serve_auth for h in inv.hosts.values()} == {"auto"}
    text = GOOD.replace("latency_sla_ms: 25", "latency_sla_ms: 25\n    serve_auth: always")
    assert load_inventory(write(tmp_path, text)).resolve("runpod-1")[0].serve_auth == "always"
    with pytest.raises(MoolaError, match="serve_auth"):
        load_inventory(write(tmp_path, text.replace("serve_auth: always", "serve_auth: never")))

"""The bytes verified are the bytes uploaded (issue 15, item 4): swapping the archive on disk
after Moola resolved and checked it changes nothing that reaches the host."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from moola_ops import deploy as engine
from moola_ops.hosts.inventory import Inventory
from tests.integration.conftest import running_hosts

pytestmark = [pytest.mark.ssh, pytest.mark.slow]

FAST = engine.Options(check_runs=3, check_warmup=1, check_backend="eager", serve=False)


@pytest.fixture(scope="module")
def bytes_host():
    with running_hosts(["bytes-1"]) as (sandbox, _root):
        yield Inventory.from_sandbox(sandbox, connect_timeout_s=5).resolve("bytes-1")[0]


def test_a_swap_of_the_archive_after_it_was_checked_never_reaches_the_host(
    bytes_host, bundles, tmp_path, journal_file
):
    archive = tmp_path / "moola-v1.1.tar.gz"
    shutil.copy(bundles["v1.1"], archive)
    local = engine.resolve_bundle(str(archive))  # hashed: now the file is replaced on disk
    shutil.copy(bundles["v1.2"], archive)

    result = engine.deploy([bytes_host], local, FAST)

    assert result.ok, result.outcomes
    workspace = Path(bytes_host.workspace)
    assert os.readlink(workspace / "current") == "releases/v1.1"
    marker = (workspace / "releases" / "v1.1.sha256").read_text().split()[0]
    assert marker == local.sha256
    shipped = json.loads((workspace / "releases" / "v1.1" / "manifest.json").read_text())
    assert shipped["version"] == "v1.1"

"""Deploy fixtures: real bundles built from a tiny real model, stand-in hosts shared per module.

The stand-in hosts are real OpenSSH servers (moola_ops.hosts.standin). Building a bundle trains
nothing: a tiny randomly initialised model is enough for the runtime check to load it, compare
its golden outputs and time it on the host.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import pytest

from moola_ops.hosts.inventory import Inventory
from moola_ops.hosts.standin import start_sandbox
from tests.unit.tiny_runs import PASSED_GATE, make_tiny_run

VERSIONS = ("v1.0", "v1.1", "v1.2")


def start_hosts(names: list[str], **options):
    """Start stand-in hosts in a fresh world-readable root; returns (sandbox, root)."""
    root = Path(tempfile.mkdtemp(prefix="moola-deploy-"))
    root.chmod(0o755)
    # the same remote python3 as `invoke sandbox up`: torch reachable, one OpenMP thread per host
    sandbox = start_sandbox(root, names, **options)
    return sandbox, root


@contextlib.contextmanager
def running_hosts(names: list[str], **options):
    """`start_hosts` for a with-block: yields (sandbox, root); stops the hosts and removes the
    root on the way out, whatever happened inside."""
    sandbox, root = start_hosts(names, **options)
    try:
        yield sandbox, root
    finally:
        sandbox.stop()
        shutil.rmtree(root, ignore_errors=True)


def make_bundle(
    out_dir: Path,
    version: str,
    *,
    seed: int = 0,
    sla_p99_ms: float = 60000.0,
    model_config: dict | None = None,
    metrics: dict | None = None,
) -> Path:
    """A real bundle archive of a random model (tiny unless `model_config` says otherwise;
    runtime code frozen from this checkout). benchmarks/deploy.py builds its bundles here too."""
    import torch

    from moola_core.bundle.build import build_bundle

    torch.set_num_threads(1)
    runs = out_dir / "runs"
    run = make_tiny_run(
        runs,
        f"run-{version}",
        seed=seed,
        metrics=metrics or {"oof": {"accuracy": 0.5}, "fingerprint": "ab", "gate": PASSED_GATE},
        model_config=model_config,
    )
    (run / "config.yaml").write_text(f"seed: {seed}\n")
    built = build_bundle(
        version, run.name, runs_dir=runs, out_dir=out_dir / "bundles", sla_p99_ms=sla_p99_ms
    )
    return Path(built.path)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """Real bundles: v1.0, v1.1, v1.2 (pass their check) and v9.0-slow (fails its latency SLA)."""
    out = tmp_path_factory.mktemp("bundles")
    made = {v: make_bundle(out, v, seed=i) for i, v in enumerate(VERSIONS)}
    made["v9.0-slow"] = make_bundle(out, "v9.0-slow", seed=9, sla_p99_ms=1e-6)
    return made


@pytest.fixture(scope="module")
def fleet():
    """Three stand-in hosts shared by a module's tests: (sandbox, Inventory)."""
    with running_hosts(["dep-1", "dep-2", "dep-3"]) as (sandbox, _root):
        yield sandbox, Inventory.from_sandbox(sandbox, connect_timeout_s=5)


@pytest.fixture
def journal_file(tmp_path, monkeypatch) -> Path:
    """A private deployment log for one test (env MOOLA_LOG)."""
    path = tmp_path / "deployments.jsonl"
    monkeypatch.setenv("MOOLA_LOG", str(path))
    return path

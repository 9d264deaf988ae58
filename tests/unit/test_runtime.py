"""The remote runtime check, run as a host runs it: build -> extract -> check, in a subprocess
whose interpreter cannot import numpy, pandas, pydantic or yaml."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moola_core.agent.archive import sha256_bytes
from moola_core.bundle import safe_extract
from moola_core.bundle.build import build_bundle
from moola_core.runtime.check import percentile, run_check
from moola_core.runtime.report import EXIT_ERROR, EXIT_FAIL, EXIT_PASS, parse_report
from tests.unit.tiny_runs import make_tiny_run

BLOCKED = ("numpy", "pandas", "pydantic", "pydantic_core", "yaml")
# Runs before the runtime: a None entry in sys.modules makes `import numpy` raise ImportError,
# exactly as on a host where it is not installed (torch itself copes without numpy).
PRELUDE = (
    "import sys, runpy\n"
    f"for name in {BLOCKED!r}: sys.modules[name] = None\n"
    "sys.argv = ['moola_core.runtime'] + sys.argv[1:]\n"
    "runpy.run_module('moola_core.runtime', run_name='__main__', alter_sys=True)\n"
)


def make_release(root: Path, version: str = "v0.3", **build) -> Path:
    """A real run (tiny JadeModel, random weights) -> bundle -> extracted release folder."""
    make_tiny_run(root / "runs", "run-1")
    built = build_bundle(
        version, "run-1", runs_dir=root / "runs", out_dir=root / "bundles", **build
    )
    return safe_extract(built.path, root / "releases" / version)


def host_check(release: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    """`cd REL && PYTHONPATH=REL/code python3 -m moola_core.runtime check ...`, modules blocked."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(release / "code"), OMP_NUM_THREADS="1")
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [sys.executable, "-c", PRELUDE, "check", "--release", str(release), *args],
        cwd=release,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    torch.set_num_threads(1)
    return make_release(tmp_path_factory.mktemp("runtime"), sla_p99_ms=10_000.0)


def test_host_check_passes_with_only_python_and_torch(release):
    proc = host_check(release, "--json", "--runs", "20", "--warmup", "2")
    assert proc.returncode == EXIT_PASS, proc.stdout + proc.stderr
    report = parse_report(proc.stdout)  # stdout is exactly one JSON document
    assert report.ok and report.status == "pass" and report.version == "v0.3"
    # the code that ran is the bundle's own, not the repository's
    assert Path(report.code_path) == (release / "code").resolve()
    assert [c.name for c in report.checks] == [
        "checksums",
        "device",
        "load",
        "golden_parity",
        "finite",
        "latency_sla",
    ]
    assert all(c.ok for c in report.checks)
    assert report.device.device == "cpu" and report.device.nvidia_smi in ("absent", "ok")
    by_name = {b.name: b for b in report.backends}
    assert by_name["eager"].parity_ok and by_name["torchscript"].parity_ok
    assert not by_name["cuda_graph"].available  # no GPU here
    (chosen,) = [b for b in report.backends if b.chosen]
    assert chosen.trial_p50_ms == min(b.trial_p50_ms for b in report.backends if b.parity_ok)
    assert report.golden.backend == chosen.name and report.golden.max_abs_diff <= 1e-4
    assert report.latency.backend == chosen.name and report.latency.runs == 20
    assert report.latency.threads == chosen.threads == 1  # OMP_NUM_THREADS=1 leaves one choice
    assert 0 < report.latency.p50_ms <= report.latency.p99_ms <= report.latency.max_ms
    # the blocked modules really were unavailable to the runtime
    probe = subprocess.run(
        [sys.executable, "-c", PRELUDE.replace("runpy.run_module", "import numpy; print")],
        capture_output=True,
        text=True,
    )
    assert "ImportError" in probe.stderr or "ModuleNotFoundError" in probe.stderr


def test_host_check_text_output_and_usage_error(release):
    proc = host_check(release, "--runs", "5", "--warmup", "0", "--backend", "eager")
    assert proc.returncode == EXIT_PASS, proc.stdout + proc.stderr
    assert proc.stdout.startswith("PASS: all checks passed for v0.3")
    assert "[ok] golden_parity: eager:" in proc.stdout
    proc = host_check(release, "--runs", "many")
    assert proc.returncode == EXIT_ERROR and "invalid int value" in proc.stderr


def test_damaged_release_fails_the_checksum_check(tmp_path):
    release = make_release(tmp_path)
    weights = release / "weights.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    proc = host_check(release, "--json")
    assert proc.returncode == EXIT_FAIL
    report = parse_report(proc.stdout)
    assert report.status == "fail" and [c.name for c in report.checks] == ["checksums"]
    assert "weights.pt has sha256" in report.checks[0].detail
    assert report.summary.startswith("checksums failed for v0.3")


def test_golden_mismatch_fails_parity_and_names_the_difference(tmp_path):
    """A model that no longer reproduces its golden outputs (simulated by changing the recorded
    outputs and re-listing the file, so checksums still pass) fails golden_parity."""
    release = make_release(tmp_path)
    golden = torch.load(release / "golden.pt", weights_only=True)
    golden["class_probs"] = golden["class_probs"] + 0.01
    buffer = io.BytesIO()
    torch.save(golden, buffer)
    data = buffer.getvalue()
    (release / "golden.pt").write_bytes(data)
    manifest = json.loads((release / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == "golden.pt":
            entry.update(size=len(data), sha256=sha256_bytes(data))
    (release / "manifest.json").write_text(json.dumps(manifest))
    report = run_check(release, runs=5, warmup=0, backend="eager")
    assert report.exit_code == EXIT_FAIL and report.latency is None
    parity = next(c for c in report.checks if c.name == "golden_parity")
    assert (
        not parity.ok and "max |class_probs - golden| 1.00e-02 (tolerance 1e-04)" in parity.detail
    )
    assert report.golden.max_abs_diff == pytest.approx(0.01, abs=1e-4)


def test_latency_over_sla_fails(release):
    report = run_check(release, runs=5, warmup=1, sla_p99_ms=1e-6, backend="eager")
    assert report.exit_code == EXIT_FAIL
    assert report.checks[-1].name == "latency_sla" and not report.checks[-1].ok
    assert "> SLA 1e-06 ms" in report.checks[-1].detail


def test_could_not_run_is_exit_2_with_a_report(tmp_path):
    report = run_check(tmp_path / "missing")
    assert report.exit_code == EXIT_ERROR and report.status == "error"
    assert "does not exist: check --release" in report.error
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    report = run_check(tmp_path / "bad")
    assert report.exit_code == EXIT_ERROR and "cannot be read" in report.summary
    assert parse_report(report.to_json()) == report


def test_percentile_is_nearest_rank():
    values = sorted(float(v) for v in range(1, 101))
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_check_through_the_current_symlink(release, tmp_path):
    """The deep health check runs on `current`, a symlink to releases/<version>."""
    current = tmp_path / "current"
    current.symlink_to(release)
    report = run_check(current, runs=3, warmup=0, backend="eager")
    assert report.exit_code == EXIT_PASS, report.summary
    assert report.release == str(current) and report.version == "v0.3"


def test_gpus_that_torch_cannot_use_fail_the_device_check(release, tmp_path):
    """A GPU host with a CPU-only torch would serve on the CPU unnoticed. This machine has no
    GPU, so an `nvidia-smi` stand-in on PATH prints output recorded on an H100 pod."""
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 1, 81559, 0, 31'\n")
    fake.chmod(0o755)
    path = f"{fake.parent}{os.pathsep}{os.environ['PATH']}"
    proc = host_check(release, "--json", "--runs", "3", "--warmup", "0", path=path)
    assert proc.returncode == EXIT_FAIL, proc.stdout + proc.stderr
    report = parse_report(proc.stdout)
    assert report.device.nvidia_smi == "ok"
    assert report.device.gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert report.device.gpus[0].memory_total_mib == 81559.0
    device = next(c for c in report.checks if c.name == "device")
    assert not device.ok and "install a CUDA build of torch" in device.detail
    assert report.summary.startswith("device failed for v0.3")
    # the other checks still ran, so the report says everything else about the release
    assert [c.ok for c in report.checks if c.name != "device"] == [True] * 5
    # accepting CPU serving explicitly passes
    proc = host_check(
        release, "--json", "--runs", "3", "--warmup", "0", "--device", "cpu", path=path
    )
    assert proc.returncode == EXIT_PASS, proc.stdout


def test_the_server_refuses_gpus_torch_cannot_use_as_the_check_does(release, tmp_path, monkeypatch):
    """The server is a deploy's check (docs/serving.md): it applies the device rule too and
    reports what it runs on."""
    from moola_core.runtime.serve import Predictor

    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 1, 81559, 0, 31'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(RuntimeError, match="install a CUDA build of torch"):
        Predictor(release, "auto").load()
    accepted = Predictor(release, "cpu")
    accepted.load()
    assert accepted.device_facts["device"] == "cpu"
    assert accepted.device_facts["gpus"] == ["NVIDIA H100 80GB HBM3"]


def test_the_server_answers_with_the_confidence_and_a_live_models_p_under_way(tmp_path):
    """What /v1/predict returns per window comes from Predictor.predict_ohlc: every answer
    carries its confidence; a live model's also names it P(expansion under way)."""
    import numpy as np

    from moola_core.runtime.serve import Predictor

    ohlc = 100.0 + np.cumsum(np.random.default_rng(0).normal(0, 0.05, (3, 105, 1)), axis=1)
    ohlc = torch.from_numpy(np.concatenate([ohlc, ohlc + 0.1, ohlc - 0.1, ohlc + 0.02], axis=2))
    for live in (True, False):
        root = tmp_path / f"live-{live}"
        config = {"hidden": 8, "layers": 1, "live": live, "object_bias": -2.0}
        make_tiny_run(root / "runs", "run-1", model_config=config)
        built = build_bundle("v1.0", "run-1", runs_dir=root / "runs", out_dir=root / "b")
        predictor = Predictor(safe_extract(built.path, root / "rel" / "v1.0"), "cpu")
        predictor.load()
        rows = predictor.predict_ohlc(ohlc)
        x, valid = predictor.features(ohlc)
        confidence = predictor.forward(x, valid)["confidence"]
        assert [r["confidence"] for r in rows] == [round(c, 6) for c in confidence.tolist()]
        assert all(0.0 <= r["confidence"] <= 1.0 for r in rows)
        assert predictor.live is live
        if live:
            assert [r["p_under_way"] for r in rows] == [r["confidence"] for r in rows]
        else:
            assert all("p_under_way" not in r for r in rows)


@pytest.mark.parametrize("threshold, expected", [(0.0, False), (1.01, True)])
def test_the_server_answers_the_models_own_abstain_flag(threshold, expected):
    # docs/serving.md: `abstain` is the model's flag (confidence below its fitted threshold);
    # it used to say the field was always false
    import torch

    from moola_core.models import build_model
    from moola_core.runtime.serve import outputs_to_rows

    torch.manual_seed(0)
    model = build_model({"hidden": 8, "layers": 1, "abstain_threshold": threshold}).eval()
    x = torch.randn(3, 105, 11)
    with torch.no_grad():
        out = model.predict(x, torch.ones(3, 105, dtype=torch.bool))
    assert [row["abstain"] for row in outputs_to_rows(out)] == [expected] * 3

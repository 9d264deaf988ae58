"""The runtime's pure parts: the nvidia-smi fact parser (from recorded output), the JSON report
schema (stdlib parse and pydantic's view of the same dataclasses), device choice."""

from __future__ import annotations

import json

import pytest
import torch

from moola_core.runtime.devices import NVIDIA_SMI_QUERY, parse_nvidia_smi, pick_device
from moola_core.runtime.report import (
    BackendResult,
    Check,
    DeviceFacts,
    GoldenResult,
    GpuFact,
    Latency,
    RuntimeReport,
    parse_report,
)

# Recorded from `nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu,
# temperature.gpu --format=csv,noheader,nounits` on a RunPod H100 pod and a 2-GPU A40 box.
RECORDED = [
    {
        "output": "NVIDIA H100 80GB HBM3, 1, 81559, 0, 31\n",
        "fact": [GpuFact(0, "NVIDIA H100 80GB HBM3", 1.0, 81559.0, 0.0, 31.0)],
    },
    {
        "output": "NVIDIA A40, 20123, 46068, 87, 64\nNVIDIA A40, 3, 46068, [N/A], [Not Supported]\n",
        "fact": [
            GpuFact(0, "NVIDIA A40", 20123.0, 46068.0, 87.0, 64.0),
            GpuFact(1, "NVIDIA A40", 3.0, 46068.0, None, None),
        ],
    },
    {"output": "", "fact": []},
    {
        "output": "Graphics Device, rev 2, 10, 100, 5, 40\n",  # a comma inside the name
        "fact": [GpuFact(0, "Graphics Device, rev 2", 10.0, 100.0, 5.0, 40.0)],
    },
]


def test_nvidia_smi_query_is_the_documented_command():
    assert " ".join(NVIDIA_SMI_QUERY) == (
        "nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu,temperature.gpu "
        "--format=csv,noheader,nounits"
    )


@pytest.mark.parametrize("case", RECORDED, ids=["h100", "two-a40-na", "none", "comma-name"])
def test_parse_nvidia_smi_from_recorded_output(case):
    assert parse_nvidia_smi(case["output"]) == case["fact"]


def test_parse_nvidia_smi_refuses_a_short_line():
    with pytest.raises(ValueError, match="unexpected nvidia-smi line"):
        parse_nvidia_smi("NVIDIA H100, 1, 2\n")


def full_report() -> RuntimeReport:
    return RuntimeReport(
        status="pass",
        exit_code=0,
        summary="all checks passed",
        release="/workspace/moola/releases/v0.3",
        version="v0.3",
        checked_at="2026-01-01T00:00:00Z",
        duration_s=2.5,
        code_path="/workspace/moola/releases/v0.3/code",
        checks=[Check("checksums", True, "19 files match manifest")],
        device=DeviceFacts(
            "cuda:0", "NVIDIA H100", "2.5.0", "12.4", "3.11.7", 16, "ok", RECORDED[0]["fact"]
        ),
        backends=[BackendResult("eager", True, True, 1e-7, 0.9, True, "ok")],
        golden=GoldenResult("eager", 8, 1e-4, 1e-7, 0, 0),
        latency=Latency("eager", 200, 20, 0.8, 0.95, 0.82, 1.3, 5.0),
    )


def test_report_round_trips_through_json():
    report = full_report()
    assert parse_report(report.to_json()) == report
    assert json.loads(report.to_json())["device"]["gpus"][0]["memory_total_mib"] == 81559.0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(schema_version=2), "schema_version 2 is not 1"),
        (lambda d: d.update(extra=1), r"report has unknown field\(s\) \['extra'\]"),
        (lambda d: d.pop("status"), r"report is missing field\(s\) \['status'\]"),
        (lambda d: d["latency"].update(p99_ms="fast"), "report.latency.p99_ms should be float"),
        (lambda d: d["checks"][0].update(ok=1), r"report.checks\[0\].ok should be bool"),
    ],
)
def test_parse_report_is_strict(edit, message):
    data = json.loads(full_report().to_json())
    edit(data)
    with pytest.raises(ValueError, match=message):
        parse_report(json.dumps(data))


def test_pydantic_reads_the_same_dataclasses():
    """moola_ops validates reports with pydantic's TypeAdapter over these stdlib dataclasses."""
    from pydantic import TypeAdapter

    report = full_report()
    assert TypeAdapter(RuntimeReport).validate_json(report.to_json()) == report


def test_device_choice_prefers_cuda_only_when_present():
    assert pick_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert pick_device("auto").type == "cuda"
    else:
        assert pick_device("auto") == torch.device("cpu")
        with pytest.raises(RuntimeError, match="torch sees no CUDA GPU"):
            pick_device("cuda")

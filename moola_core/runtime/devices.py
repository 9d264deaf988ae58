"""Device facts on a host: torch's best device and what nvidia-smi says about the GPUs.

Like a pyinfra fact: a command (NVIDIA_SMI_QUERY) plus a pure parser (parse_nvidia_smi) tested
from recorded output. Standard library only at import time; torch is imported where used.
"""

from __future__ import annotations

import shutil
import subprocess

from moola_core.runtime.report import GpuFact

NVIDIA_SMI_FIELDS = ("name", "memory.used", "memory.total", "utilization.gpu", "temperature.gpu")
NVIDIA_SMI_QUERY = (
    "nvidia-smi",
    "--query-gpu=" + ",".join(NVIDIA_SMI_FIELDS),
    "--format=csv,noheader,nounits",
)
# The same query as one shell command, for the deploy engine's and health check's fact scripts.
NVIDIA_SMI_COMMAND = " ".join(NVIDIA_SMI_QUERY)


def _number(text: str) -> float | None:
    # nvidia-smi writes "[N/A]" or "[Not Supported]" for what a GPU cannot report
    try:
        return float(text)
    except ValueError:
        return None


def parse_nvidia_smi(output: str) -> list[GpuFact]:
    """Parse `nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu,
    temperature.gpu --format=csv,noheader,nounits` output into one GpuFact per line.

    Raises ValueError on a line without the five fields.
    """
    gpus = []
    for line in output.splitlines():
        if not line.strip():
            continue
        # split from the right: the four numbers never hold commas, a GPU name might
        parts = [p.strip() for p in line.rsplit(",", len(NVIDIA_SMI_FIELDS) - 1)]
        if len(parts) != len(NVIDIA_SMI_FIELDS) or not parts[0]:
            raise ValueError(f"unexpected nvidia-smi line: {line!r}")
        name, used, total, util, temp = parts
        gpus.append(
            GpuFact(
                index=len(gpus),
                name=name,
                memory_used_mib=_number(used),
                memory_total_mib=_number(total),
                utilization_pct=_number(util),
                temperature_c=_number(temp),
            )
        )
    return gpus


def query_gpus(timeout_s: float = 20.0) -> tuple[list[GpuFact], str]:
    """Run nvidia-smi when it is installed -> (gpus, "ok" | "absent" | "failed: reason")."""
    if shutil.which(NVIDIA_SMI_QUERY[0]) is None:
        return [], "absent"
    try:
        proc = subprocess.run(
            NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"failed: {exc}"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return [], f"failed: exit {proc.returncode}: {lines[-1] if lines else 'no output'}"
    try:
        return parse_nvidia_smi(proc.stdout), "ok"
    except ValueError as exc:
        return [], f"failed: {exc}"


def pick_device(requested: str = "auto"):
    """torch.device to run on: CUDA when present (for "auto"), else CPU; "cuda" demands CUDA.

    Raises RuntimeError when "cuda" is requested and torch sees no GPU.
    """
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise RuntimeError(f"device {requested!r} is not one of auto, cpu, cuda")
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if requested == "cuda":
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA GPU")
    return torch.device("cpu")


def device_name(device) -> str:
    """Human name of a torch device: the GPU model for CUDA, the CPU model otherwise."""
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def unused_gpus(device, gpus: list, requested: str, torch_version: str) -> str | None:
    """The sentence when nvidia-smi lists GPUs but `device` (picked for "auto") is the CPU:
    a CPU-only torch wheel, or a driver older than torch's CUDA build, would otherwise serve on
    the CPU without anyone noticing. None when the device is as expected. The runtime check
    and the model server (a deploy's check) refuse the same way."""
    if device.type != "cpu" or not gpus or requested != "auto":
        return None
    return (
        f"nvidia-smi lists {len(gpus)} GPU(s) ({gpus[0].name}) but torch {torch_version} cannot "
        "use CUDA: install a CUDA build of torch that matches the driver, or pass --device cpu "
        "to accept serving on the CPU"
    )

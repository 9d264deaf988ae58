"""What a run was made with: code commit, library versions and machine (metrics.json).

Recorded per-seed figures that do not reproduce elsewhere are only explainable when the run
says where it came from; figures that depend on the machine (seconds, windows/s, and to a
small degree float results across CPU kinds and thread counts) are read with this.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def git_commit(root: Path = REPO) -> dict:
    """{"commit": sha or None, "dirty": bool or None} of the code tree running now."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != Path(root).resolve():
        # a copy of the tree outside its repository (a GPU host, or nested in another
        # checkout, whose commit would be the wrong one): the commit it was copied from, if said
        return {"commit": os.environ.get("MOOLA_SOURCE_COMMIT") or None, "dirty": None}
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def provenance(device: str = "cpu") -> dict:
    """Commit, library versions and machine facts as one JSON-able dict."""
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for package in ("torch", "numpy", "pandas"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    machine = {
        "node": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": device,
    }
    try:
        import torch

        machine["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available() and device.startswith("cuda"):
            machine["gpu"] = torch.cuda.get_device_name(torch.device(device))
    except ImportError:
        pass
    return {**git_commit(), "versions": versions, "machine": machine}

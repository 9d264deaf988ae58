"""The dependency doctor (`invoke doctor`, preflight's `doctor` step): Python, packages,
torch/CUDA, OpenSSH, the project's data paths and `pip check`, each with a fix."""

from __future__ import annotations

PACKAGES = (
    "numpy",
    "pandas",
    "pyarrow",
    "pydantic",
    "PyYAML",
    "invoke",
    "fabric",
    "paramiko",
    "rich",
)


def _check(name: str, status: str, detail: str, fix: str = "") -> dict:
    return {"name": name, "status": status, "detail": detail, "fix": fix}


def doctor_checks(root: str = ".") -> list[dict]:
    """Every environment check: {"name", "status" ok|warn|fail, "detail", "fix"}."""
    import importlib.metadata as md
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    checks = []
    version = ".".join(map(str, sys.version_info[:3]))
    checks.append(
        _check("python", "ok", version)
        if sys.version_info >= (3, 11)
        else _check("python", "fail", version, "use Python 3.11 or newer (scripts/setup.sh)")
    )
    for package in PACKAGES:
        try:
            checks.append(_check(package, "ok", md.version(package)))
        except md.PackageNotFoundError:
            checks.append(_check(package, "fail", "not installed", "run bash scripts/setup.sh"))
    try:
        import torch

        checks.append(_check("torch", "ok", torch.__version__))
        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            checks.append(_check("cuda", "ok", f"{len(names)} device(s): {', '.join(names)}"))
        else:
            checks.append(_check("cuda", "ok", "not available: training and checks run on the CPU"))
    except ImportError:
        checks.append(
            _check("torch", "fail", "not installed", "run bash scripts/setup.sh (pins torch)")
        )
    try:
        checks.append(_check("moola", "ok", f"installed {md.version('moola')}"))
    except md.PackageNotFoundError:
        checks.append(
            _check("moola", "warn", "not pip-installed", "run .venv/bin/pip install -e '.[dev]'")
        )
    sshd = shutil.which("sshd") or next(
        (p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if Path(p).exists()), None
    )
    checks.append(
        _check("sshd", "ok", sshd)
        if sshd
        else _check(
            "sshd",
            "warn",
            "OpenSSH server not found (needed by the sandbox and integration tests)",
            "apt-get install -y openssh-server (scripts/setup.sh does this)",
        )
    )
    for tool in ("ssh", "ssh-keygen"):
        found = shutil.which(tool)
        checks.append(
            _check(tool, "ok", found)
            if found
            else _check(tool, "fail", "not found", "apt-get install -y openssh-client")
        )
    base = Path(root)
    for path, what, fix in (
        ("configs/jade.yaml", "default training config", "restore it from git"),
        ("data/labeled.parquet", "labeled set", "invoke data.market (or train on synthetic)"),
        ("runs/selected.json", "selected run", "invoke train, then invoke select"),
    ):
        present = (base / path).exists()
        required = path.startswith("configs/")
        status = "ok" if present else ("fail" if required else "warn")
        detail = f"{what}: {path}" + ("" if present else " missing")
        checks.append(_check(path, status, detail, "" if present else fix))
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False
    )
    first = (pip.stdout or pip.stderr).strip().splitlines()
    if pip.returncode == 0:
        checks.append(_check("pip check", "ok", "no broken requirements"))
    elif "No module named pip" in (pip.stderr or ""):
        checks.append(_check("pip check", "warn", "pip is not installed in this Python"))
    else:
        checks.append(
            _check(
                "pip check",
                "fail",
                first[0] if first else f"exit {pip.returncode}",
                "reinstall the named package: .venv/bin/pip install -e '.[dev]'",
            )
        )
    return checks

"""Build a reproducible bundle `bundles/moola-<version>.tar.gz` from a training run.

The bundle holds manifest.json, the weights, golden inputs with the outputs they must produce,
the run's resolved training config and the project's runtime code (code/moola_core/...), so
that code and model roll back together. Same run + same code -> the same bytes.
"""

from __future__ import annotations

import datetime as dt
import getpass
import io
import json
import os
import platform
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from moola_core.agent import archive as _archive
from moola_core.agent.archive import BundleError, validate_version
from moola_core.bundle.manifest import (
    FeatureSpec,
    FileEntry,
    GoldenInfo,
    Manifest,
    ModelInfo,
    RuntimeVersions,
    SourceInfo,
)

# The code that runs on a host: the runtime, the models it builds and what they import. An
# explicit list (not "all of moola_core") keeps pandas/pydantic modules off hosts; a unit test
# checks every import of these files is torch, the standard library or another shipped file.
CODE_FILES = (
    "moola_core/__init__.py",
    "moola_core/errors.py",
    "moola_core/spec.py",
    "moola_core/spans.py",
    "moola_core/bundle/__init__.py",
)
CODE_PACKAGES = ("moola_core/agent", "moola_core/models", "moola_core/runtime")

DEFAULT_SLA_P99_MS = 5.0
GOLDEN_WINDOWS = 8
GOLDEN_SEED = 20240601
# CPU vs GPU float32 BiLSTM outputs differ by ~1e-6; 1e-4 leaves room without hiding a bug.
GOLDEN_CLASS_PROBS_ATOL = 1e-4

_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BuiltBundle:
    """The result of a build: where the archive is, its sha256 and manifest, and what happened."""

    path: Path
    sha256: str
    manifest: Manifest
    replaced: bool  # an archive of this version existed and --force replaced it
    signed: bool


def resolve_run(run_id: str | None, runs_dir: str | Path = "runs") -> Path:
    """The run folder to bundle: runs/<run_id>, or the one phase 2 selected (runs/selected.json)."""
    runs_dir = Path(runs_dir)
    if run_id is None:
        selected = runs_dir / "selected.json"
        if not selected.is_file():
            raise BundleError(
                f"no run given and {selected} does not exist: run `invoke select` first "
                "or pass --run RUN_ID."
            )
        try:
            run_id = json.loads(selected.read_text())["run_id"]
        except (ValueError, KeyError, TypeError):
            raise BundleError(
                f"{selected} has no run_id: run `invoke select` again or pass --run RUN_ID."
            ) from None
    if not isinstance(run_id, str) or not _RUN_ID_RE.fullmatch(run_id) or ".." in run_id:
        raise BundleError(f"run id {run_id!r} is not a valid run folder name: check --run.")
    run_dir = runs_dir / run_id
    for name in ("model.json", "weights.pt", "metrics.json"):
        if not (run_dir / name).is_file():
            raise BundleError(
                f"{run_dir / name} is missing: the run is incomplete; train it again "
                "or pick another run with --run."
            )
    return run_dir


def collect_code(code_root: str | Path = REPO_ROOT) -> dict[str, bytes]:
    """The runtime code to ship, as {"code/moola_core/...": bytes}, from an explicit list."""
    code_root = Path(code_root)
    paths = [code_root / rel for rel in CODE_FILES]
    for package in CODE_PACKAGES:
        paths += sorted(
            p for p in (code_root / package).rglob("*.py") if "__pycache__" not in p.parts
        )
    entries = {}
    for path in paths:
        if not path.is_file():
            raise BundleError(f"runtime code file {path} is missing: restore it from git.")
        entries["code/" + path.relative_to(code_root).as_posix()] = path.read_bytes()
    return entries


def git_source(code_root: str | Path = REPO_ROOT) -> SourceInfo:
    """The commit the code comes from and whether the working tree had changes (None: no git)."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", "-C", str(code_root), *args], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    if git("rev-parse", "--show-toplevel") is None or (
        Path(git("rev-parse", "--show-toplevel").strip()).resolve() != Path(code_root).resolve()
    ):
        return SourceInfo(commit=None, dirty=None)
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return SourceInfo(
        commit=commit.strip() if commit else None,
        dirty=None if status is None else bool(status.strip()),
    )


def golden_inputs(n_windows: int, seed: int, window_len: int, n_features: int):
    """Seeded golden windows -> (x float32 [N, T, F], valid bool [N, T]).

    Features ~ N(0, 1) like the normalised bar features; each window starts with a different
    number of warm-up bars (valid False) so the golden run also exercises the mask.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_windows, window_len, n_features, generator=gen)  # [N, T, F]
    warmup = torch.randint(0, window_len // 4, (n_windows,), generator=gen)  # [N]
    valid = torch.arange(window_len)[None, :] >= warmup[:, None]  # [N, T]
    return x, valid


def golden_outputs(model, x, valid) -> dict:
    """Run the model one window at a time (as hosts serve it) on one thread (reproducible)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            rows = [model.predict(x[i : i + 1], valid[i : i + 1]) for i in range(len(x))]
    finally:
        torch.set_num_threads(threads)
    return {key: torch.cat([row[key].cpu() for row in rows]) for key in rows[0]}


def _load_model(run_dir: Path):
    import torch

    from moola_core.models import build_model

    config = json.loads((run_dir / "model.json").read_text())
    model = build_model(config)
    try:
        state = torch.load(run_dir / "weights.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise BundleError(
            f"{run_dir / 'weights.pt'} does not load into the model of model.json ({exc}): "
            "the run is damaged; train it again."
        ) from None
    return config, model.eval()


def _dataset_fingerprint(metrics: dict, config_text: str | None) -> str:
    """The training data's fingerprint as the run recorded it ('unknown' if it did not)."""
    for source in (metrics, metrics.get("data") if isinstance(metrics.get("data"), dict) else {}):
        for key in ("dataset_fingerprint", "fingerprint"):
            if isinstance(source.get(key), str):
                return source[key]
    if config_text:
        import yaml

        config = yaml.safe_load(config_text) or {}
        for source in (config, config.get("data") or {}):
            for key in ("dataset_fingerprint", "fingerprint"):
                if isinstance(source, dict) and isinstance(source.get(key), str):
                    return source[key]
    return "unknown"


def _creator() -> str:
    """user@machine; containers without a passwd entry get uid<N>@machine."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _created_at(run_dir: Path) -> int:
    """Build timestamp (epoch s): SOURCE_DATE_EPOCH when set, else when the weights were written.

    Deriving it from the run, not the clock, is what makes rebuilding the same run byte-identical.
    """
    if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        return int(os.environ["SOURCE_DATE_EPOCH"])
    return int((run_dir / "weights.pt").stat().st_mtime)


def build_bundle(
    version: str,
    run_id: str | None = None,
    *,
    runs_dir: str | Path = "runs",
    out_dir: str | Path = "bundles",
    force: bool = False,
    sign_key: str | Path | None = None,
    sla_p99_ms: float = DEFAULT_SLA_P99_MS,
    code_root: str | Path = REPO_ROOT,
    creator: str | None = None,
) -> BuiltBundle:
    """Build bundles/moola-<version>.tar.gz from runs/<run_id> (default: runs/selected.json).

    Refuses an invalid version, an incomplete run, weights that do not load with
    weights_only=True, and an existing version unless `force` (then `replaced` is True).
    `sign_key` signs manifest.json with `ssh-keygen -Y sign`. The archive is verified after
    writing. Raises BundleError with one sentence on any of these.
    """
    import torch

    from moola_core import spec

    version = validate_version(version)
    if not sla_p99_ms or sla_p99_ms <= 0:
        raise BundleError(f"latency SLA {sla_p99_ms!r} ms is not positive: pass e.g. 5.")
    out_path = Path(out_dir) / _archive.archive_name(version)
    existed = out_path.exists()
    if existed and not force:
        raise BundleError(
            f"{out_path} already exists and bundle versions are immutable: choose a new version "
            "or pass --force to replace it (logged)."
        )
    run_dir = resolve_run(run_id, runs_dir)
    config, model = _load_model(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config_path = run_dir / "config.yaml"
    config_text = config_path.read_text() if config_path.is_file() else None

    x, valid = golden_inputs(GOLDEN_WINDOWS, GOLDEN_SEED, spec.WINDOW_LEN, spec.N_FEATURES)
    golden = {"x": x, "valid": valid, **golden_outputs(model, x, valid)}
    buffer = io.BytesIO()
    torch.save(golden, buffer)

    entries: dict[str, bytes] = {
        "weights.pt": (run_dir / "weights.pt").read_bytes(),
        "golden.pt": buffer.getvalue(),
        "model.json": (run_dir / "model.json").read_bytes(),
        **collect_code(code_root),
    }
    if config_text is not None:
        entries["training_config.yaml"] = config_path.read_bytes()

    created = _created_at(run_dir)
    manifest = Manifest(
        version=version,
        created_at=dt.datetime.fromtimestamp(created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        creator=creator or _creator(),
        source=git_source(code_root),
        run_id=run_dir.name,
        model=ModelInfo(
            architecture=str(config.get("arch", type(model).__name__)),
            config=config,
            parameters=sum(p.numel() for p in model.parameters()),
        ),
        metrics=metrics,
        dataset_fingerprint=_dataset_fingerprint(metrics, config_text),
        feature_spec=FeatureSpec(
            names=list(spec.FEATURE_NAMES), window_len=spec.WINDOW_LEN, labels=list(spec.LABELS)
        ),
        runtime=RuntimeVersions(python=platform.python_version(), torch=torch.__version__),
        latency_sla_p99_ms=float(sla_p99_ms),
        golden=GoldenInfo(
            n_windows=GOLDEN_WINDOWS, seed=GOLDEN_SEED, class_probs_atol=GOLDEN_CLASS_PROBS_ATOL
        ),
        files=[
            FileEntry(path=name, size=len(data), sha256=_archive.sha256_bytes(data))
            for name, data in sorted(entries.items())
        ],
    )
    entries[_archive.MANIFEST_NAME] = manifest.to_json_bytes()
    if sign_key is not None:
        from moola_core.bundle.signing import sign_manifest

        entries[_archive.SIGNATURE_NAME] = sign_manifest(entries[_archive.MANIFEST_NAME], sign_key)

    _archive.write_archive(entries, version, out_path, mtime=created)
    from moola_core.bundle.verify import verify_bundle

    checked = verify_bundle(out_path)
    return BuiltBundle(out_path, checked.sha256, manifest, existed, sign_key is not None)

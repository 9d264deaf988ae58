"""The bundle manifest: the one schema of `manifest.json`, shared by moola_core and moola_ops.

Pydantic only (no torch), so `moola_ops` can read and validate manifests cheaply. The remote
runtime reads the same JSON with the standard library (hosts have no pydantic); the fields it
relies on are `version`, `files`, `model.config`, `golden` and `latency_sla_p99_ms`.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, field_validator

from moola_core.agent.archive import validate_version

SCHEMA_VERSION = 1


class _Strict(BaseModel):
    # unknown keys are refused: a typo in a hand-edited manifest is an error, not a silent default
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    """One file of the bundle, relative to its root (posix path)."""

    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class SourceInfo(_Strict):
    """Where the code came from: git commit (None outside git) and whether the tree was dirty."""

    commit: str | None
    dirty: bool | None


class ModelInfo(_Strict):
    """The model: architecture name, the plain-dict config for `build_model`, parameter count."""

    architecture: str
    config: dict
    parameters: int = Field(ge=0)
    weights: str = "weights.pt"


class FeatureSpec(_Strict):
    """The input contract the model was trained on (moola_core.spec at build time)."""

    names: list[str]
    window_len: int
    labels: list[str]


class RuntimeVersions(_Strict):
    """Python and torch versions on the machine that built the bundle."""

    python: str
    torch: str


class GoldenInfo(_Strict):
    """Golden inputs and the outputs they must produce; the runtime compares within tolerance."""

    path: str = "golden.pt"
    n_windows: int = Field(ge=1)
    seed: int
    # |probability difference| allowed between the recorded and the host's class_probs;
    # labels and span indices must match exactly.
    class_probs_atol: float = Field(gt=0)


class Manifest(_Strict):
    """Everything a host and a reviewer need to trust a bundle; see docs/bundle.md."""

    schema_version: int = SCHEMA_VERSION
    version: str
    created_at: str
    creator: str
    source: SourceInfo
    run_id: str
    model: ModelInfo
    metrics: dict
    dataset_fingerprint: str
    feature_spec: FeatureSpec
    runtime: RuntimeVersions
    latency_sla_p99_ms: float = Field(gt=0)
    golden: GoldenInfo
    code_dir: str = "code"
    files: list[FileEntry]

    @field_validator("version")
    @classmethod
    def _version_is_valid(cls, value: str) -> str:
        try:
            return validate_version(value)
        except Exception as exc:  # pydantic reports ValueError as a validation error
            raise ValueError(str(exc)) from None

    @field_validator("files")
    @classmethod
    def _files_sorted_unique(cls, value: list[FileEntry]) -> list[FileEntry]:
        paths = [entry.path for entry in value]
        if paths != sorted(set(paths)):
            raise ValueError("files must be sorted by path and unique")
        return value

    def to_json_bytes(self) -> bytes:
        """The canonical manifest.json bytes (sorted keys, 2-space indent, trailing newline)."""
        payload = self.model_dump(mode="json")
        return (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json_bytes(cls, data: bytes, label: str = "manifest.json") -> Manifest:
        """Parse and validate manifest.json bytes; BundleError with one sentence when invalid."""
        from pydantic import ValidationError

        from moola_core.agent.archive import BundleError

        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(root)"
            raise BundleError(
                f"{label} is not a valid Moola manifest ({where}: {first['msg']}): "
                "rebuild the bundle with `invoke bundle`."
            ) from None

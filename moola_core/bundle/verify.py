"""Verify a bundle (archive or extracted folder) on the machine that builds or deploys it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moola_core.agent import archive as _archive
from moola_core.bundle.manifest import Manifest


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle that passed verification: its manifest, signature state and archive sha256."""

    path: Path
    manifest: Manifest
    signed: bool
    signer: str | None  # the allowed_signers principal, when a signature was checked
    sha256: str | None  # of the archive file; None for an extracted folder


def verify_bundle(path: str | Path, allowed_signers: str | Path | None = None) -> VerifiedBundle:
    """Check every file of a bundle against its manifest, and the signature when asked.

    `path` is a moola-<version>.tar.gz or an extracted bundle folder. Raises BundleError naming
    the first file that is missing, extra or whose size or sha256 differs, an unsafe archive
    entry, an invalid manifest or (with `allowed_signers`) a missing or wrong signature.
    """
    path = Path(path)
    if path.is_dir():
        raw = _archive.verify_directory(path)
        manifest_bytes = (path / _archive.MANIFEST_NAME).read_bytes()
        sig_path = path / _archive.SIGNATURE_NAME
        signature = None
        if sig_path.is_file():
            _archive._check_small_file(str(path), sig_path.name, sig_path.stat().st_size)
            signature = sig_path.read_bytes()
        archive_sha = None
    else:
        raw = _archive.verify_archive(path)
        manifest_bytes, signature = raw["_manifest_bytes"], raw["_signature"]
        archive_sha = _archive.sha256_file(path)
    manifest = Manifest.from_json_bytes(manifest_bytes, f"{path.name}:manifest.json")
    signer = None
    if allowed_signers is not None:
        from moola_core.bundle.signing import verify_signature

        signer = verify_signature(manifest_bytes, signature, allowed_signers)
    return VerifiedBundle(path, manifest, signature is not None, signer, archive_sha)


def read_manifest(path: str | Path) -> Manifest:
    """The validated manifest of a bundle archive or folder (after full verification)."""
    return verify_bundle(path).manifest

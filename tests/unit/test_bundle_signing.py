"""Signing bundles with real OpenSSH keys (`ssh-keygen -Y sign / verify`)."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

from moola_core.agent import archive as bundle_archive
from moola_core.bundle import BundleError
from moola_core.bundle.build import build_bundle
from moola_core.bundle.signing import sign_manifest, verify_signature
from moola_core.bundle.verify import verify_bundle
from tests.unit.tiny_runs import freeze_runtime_code, make_tiny_run


def keypair(directory: Path, name: str) -> tuple[Path, str]:
    """A fresh unencrypted ed25519 key -> (private key path, public key line)."""
    key = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True
    )
    return key, (directory / f"{name}.pub").read_text().strip()


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """A run, a signing key, an allowed_signers file naming it, and a signed bundle."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("signed")
    make_tiny_run(root / "runs", "run-1")
    key, public = keypair(root, "release-key")
    allowed = root / "allowed_signers"
    allowed.write_text(f"release@moola {public}\n")
    code = freeze_runtime_code(root / "code")  # others' edits cannot change the bytes
    built = build_bundle(
        "v0.4",
        "run-1",
        runs_dir=root / "runs",
        out_dir=root / "bundles",
        sign_key=key,
        code_root=code,
    )
    return root, key, allowed, built


def test_signed_bundle_verifies_and_names_its_signer(signed):
    _, _, allowed, built = signed
    info = verify_bundle(built.path, allowed_signers=allowed)
    assert built.signed and info.signed and info.signer == "release@moola"


def test_signing_keeps_builds_reproducible(signed, tmp_path):
    root, key, _, built = signed
    again = build_bundle(
        "v0.4",
        "run-1",
        runs_dir=root / "runs",
        out_dir=tmp_path,
        sign_key=key,
        code_root=root / "code",
    )
    assert again.path.read_bytes() == built.path.read_bytes()


def test_manifest_edited_after_signing_is_refused(signed, tmp_path):
    _, _, allowed, built = signed
    with tarfile.open(built.path) as tar:
        entries = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()}
    manifest = json.loads(entries["manifest.json"])
    manifest["latency_sla_p99_ms"] = 500.0  # a quiet edit that keeps every checksum valid
    entries["manifest.json"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    tampered = bundle_archive.write_archive(entries, "v0.4", tmp_path / "t.tar.gz", mtime=0)
    assert verify_bundle(tampered).manifest.latency_sla_p99_ms == 500.0  # hashes alone pass
    with pytest.raises(BundleError, match="manifest.json was changed after signing"):
        verify_bundle(tampered, allowed_signers=allowed)


def test_unknown_signer_and_unsigned_bundle_are_refused(signed, tmp_path):
    _, _, allowed, built = signed
    stranger, _ = keypair(tmp_path, "stranger")
    manifest = built.manifest.to_json_bytes()
    with pytest.raises(BundleError, match="signed by a key not listed in"):
        verify_signature(manifest, sign_manifest(manifest, stranger), allowed)
    with pytest.raises(BundleError, match="is not signed but signatures are required"):
        verify_signature(manifest, None, allowed)
    with pytest.raises(BundleError, match="allowed_signers file .* does not exist"):
        verify_signature(manifest, b"sig", tmp_path / "nope")
    with pytest.raises(BundleError, match="signing key .* does not exist"):
        sign_manifest(manifest, tmp_path / "no-key")

"""What a person reads when the allowed_signers file they named is not there."""

from __future__ import annotations

import pytest

from moola_core.bundle.signing import verify_signature
from moola_core.errors import MoolaError


def test_a_missing_allowed_signers_file_names_the_flag(tmp_path):
    # `invoke bundle.verify --allowed-signers typo` pointed at the inventory, which has no such field
    with pytest.raises(MoolaError, match="check the path given to --allowed-signers"):
        verify_signature(b"{}", b"sig", tmp_path / "typo")


def _sign(tmp_path, data: bytes, namespace: str):
    import subprocess

    key = tmp_path / "key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (tmp_path / "allowed").write_text(f"me@moola {key.with_suffix('.pub').read_text()}")
    target = tmp_path / f"data-{namespace}"
    target.write_bytes(data)
    subprocess.run(
        ["ssh-keygen", "-Y", "sign", "-f", str(key), "-n", namespace, str(target)],
        check=True,
        capture_output=True,
    )
    return target.with_name(target.name + ".sig").read_bytes(), tmp_path / "allowed"


def test_a_signature_for_another_namespace_says_so(tmp_path):
    from moola_core.bundle.signing import NAMESPACE

    manifest = b'{"version": "v1.0"}\n'
    foreign, allowed = _sign(tmp_path, manifest, "git")  # the same key, signing a commit
    with pytest.raises(MoolaError) as caught:
        verify_signature(manifest, foreign, allowed)
    message = str(caught.value)
    assert "made for namespace 'git', not 'moola-bundle'" in message
    assert "changed after signing" not in message
    good, allowed = _sign(tmp_path, manifest, NAMESPACE)
    assert verify_signature(manifest, good, allowed) == "me@moola"


def test_a_damaged_signature_is_named_as_such(tmp_path):
    manifest = b'{"version": "v1.0"}\n'
    good, allowed = _sign(tmp_path, manifest, "moola-bundle")
    for damaged in (b"not a signature", good.replace(b"U1NIU0lH", b"QUJDREVG")):
        with pytest.raises(MoolaError, match="is not an OpenSSH signature"):
            verify_signature(manifest, damaged, allowed)

"""Sign and verify a bundle's manifest with OpenSSH (`ssh-keygen -Y sign / verify`).

The manifest lists every file with its sha256, so signing manifest.json signs the whole bundle.
OpenSSH signatures need no extra dependency and reuse the SSH keys operators already have.
Ed25519 and RSA signatures are deterministic, so a signed bundle stays reproducible.
"""

from __future__ import annotations

import base64
import binascii
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from moola_core.agent.archive import BundleError

# The namespace binds a signature to its purpose: a Moola signature cannot be replayed as,
# say, a git commit signature made with the same key.
NAMESPACE = "moola-bundle"


def _ssh_keygen() -> str:
    path = shutil.which("ssh-keygen")
    if path is None:
        raise BundleError("ssh-keygen is not installed: install OpenSSH to sign or verify bundles.")
    return path


def sign_manifest(manifest_bytes: bytes, key_path: str | Path) -> bytes:
    """Return the armored SSH signature of `manifest_bytes` made with the private key file."""
    key_path = Path(key_path).expanduser()
    if not key_path.is_file():
        raise BundleError(f"signing key {str(key_path)!r} does not exist: pass a private key file.")
    with tempfile.TemporaryDirectory(prefix="moola-sign-") as tmp:
        data = Path(tmp) / "manifest.json"
        data.write_bytes(manifest_bytes)
        proc = subprocess.run(
            [_ssh_keygen(), "-Y", "sign", "-f", str(key_path), "-n", NAMESPACE, str(data)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        signature = data.with_name("manifest.json.sig")
        if proc.returncode != 0 or not signature.is_file():
            reason = (proc.stderr or proc.stdout).strip().splitlines()
            raise BundleError(
                f"ssh-keygen could not sign with {key_path} ({reason[-1] if reason else 'no output'}): "
                "use an unencrypted private key or load it into ssh-agent."
            )
        return signature.read_bytes()


def signature_namespace(signature: bytes) -> str:
    """The namespace an armored OpenSSH signature (SSHSIG) was made for; BundleError when the
    bytes are not such a signature. The format: PROTOCOL.sshsig in OpenSSH's sources."""
    text = signature.decode("ascii", errors="replace").strip().splitlines()
    if (
        not text
        or text[0] != "-----BEGIN SSH SIGNATURE-----"
        or text[-1] != ("-----END SSH SIGNATURE-----")
    ):
        raise BundleError(_DAMAGED)
    try:
        blob = base64.b64decode("".join(text[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(_DAMAGED) from None
    if blob[:6] != b"SSHSIG" or len(blob) < 10:
        raise BundleError(_DAMAGED)
    offset = 10  # magic, then a uint32 version
    fields = []
    for _ in range(2):  # the public key, then the namespace
        if offset + 4 > len(blob):
            raise BundleError(_DAMAGED)
        (length,) = struct.unpack(">I", blob[offset : offset + 4])
        offset += 4
        if offset + length > len(blob):
            raise BundleError(_DAMAGED)
        fields.append(blob[offset : offset + length])
        offset += length
    return fields[1].decode("utf-8", errors="replace")


_DAMAGED = (
    "manifest.json.sig is not an OpenSSH signature (damaged or another format): rebuild and "
    "sign the bundle again with `invoke bundle --sign KEY`."
)


def verify_signature(
    manifest_bytes: bytes, signature: bytes | None, allowed_signers: str | Path
) -> str:
    """Check the signature against an OpenSSH allowed_signers file; return the signer principal.

    Raises BundleError when the bundle is unsigned, the signer is not allowed or the manifest
    changed after signing.
    """
    allowed_signers = Path(allowed_signers).expanduser()
    if not allowed_signers.is_file():
        raise BundleError(
            # the inventory has no such field; the path comes from `bundle.verify --allowed-signers`
            f"allowed_signers file {str(allowed_signers)!r} does not exist: check the path "
            "given to --allowed-signers."
        )
    if not signature:
        raise BundleError(
            "the bundle is not signed but signatures are required: rebuild it with "
            "`invoke bundle --sign KEY`."
        )
    namespace = signature_namespace(signature)
    if namespace != NAMESPACE:
        # ssh-keygen would only say "verification failed", which reads as a changed manifest
        raise BundleError(
            f"the bundle's signature was made for namespace {namespace!r}, not {NAMESPACE!r}: "
            "that key signed something else (a git commit, a file), not this bundle; sign the "
            "bundle itself with `invoke bundle --sign KEY`."
        )
    keygen = _ssh_keygen()
    with tempfile.TemporaryDirectory(prefix="moola-verify-") as tmp:
        sig_path = Path(tmp) / "manifest.json.sig"
        sig_path.write_bytes(signature)
        found = subprocess.run(
            [keygen, "-Y", "find-principals", "-s", str(sig_path), "-f", str(allowed_signers)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        principals = found.stdout.split()
        if found.returncode != 0 or not principals:
            raise BundleError(
                f"the bundle was signed by a key not listed in {allowed_signers}: add the signer's "
                "public key there or rebuild with an allowed key."
            )
        principal = principals[0]
        proc = subprocess.run(
            [keygen, "-Y", "verify", "-f", str(allowed_signers), "-I", principal, "-n", NAMESPACE]
            + ["-s", str(sig_path)],
            input=manifest_bytes,
            capture_output=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise BundleError(
                f"the manifest signature does not match (signer {principal}): manifest.json was "
                "changed after signing; rebuild and sign the bundle again."
            )
    return principal

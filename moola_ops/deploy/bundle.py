"""The bundle on this machine: resolved, copied privately, verified in full once.

The bytes Moola verifies (sha256, manifest, every file, the signature) are the bytes it uploads:
`resolve_bundle` copies the archive once into a private folder while hashing it, and every later
step (full verification, signature, upload) reads that copy; the host checks the sha256 again
before it extracts. Swapping the original file after `resolve_bundle` changes nothing.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from moola_core.agent import archive as bundle_archive
from moola_core.errors import MoolaError
from moola_ops.hosts.layout import check_name

DEFAULT_BUNDLES = Path("bundles")
_PRIVATE: list[str] = []


@dataclass(frozen=True)
class LocalBundle:
    """A bundle archive ready to ship: a private copy, its version, sha256 and size."""

    path: Path  # the private copy every step reads
    version: str
    sha256: str
    size: int
    source: Path | None = None  # where the person pointed us
    _verified: dict = field(default_factory=dict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def verify(self) -> None:
        """The full `invoke bundle.verify` of the copy (manifest schema, every file, no extra
        file), once per run; BundleError/MoolaError says what is wrong."""
        with self._lock:
            if "error" in self._verified:
                raise MoolaError(self._verified["error"])
            if self._verified.get("ok"):
                return
            from moola_core.bundle.verify import verify_bundle

            try:
                verified = verify_bundle(self.path)
            except MoolaError as exc:
                self._verified["error"] = str(exc)
                raise
            self._verified["ok"] = True
            self._verified["manifest"] = verified.manifest
            # sized from the bytes just verified, so a later read of the copy is never needed
            self._verified["unpacked"] = bundle_archive.unpacked_size(self.path)

    @property
    def unpacked(self) -> int:
        """Bytes the release takes once extracted (`archive.unpacked_size` of the copy, taken
        when `verify()` ran; computed here only for a bundle that was never verified)."""
        with self._lock:
            if "unpacked" not in self._verified:
                self._verified["unpacked"] = bundle_archive.unpacked_size(self.path)
            return self._verified["unpacked"]

    @property
    def manifest(self):
        """The verified manifest (after `verify()`), else None."""
        return self._verified.get("manifest")

    def signer(self, allowed_signers: str) -> str | None:
        """Who signed the copy per `allowed_signers`; MoolaError when unsigned or tampered."""
        from moola_core.bundle.verify import verify_bundle

        return verify_bundle(self.path, allowed_signers=allowed_signers).signer


def resolve_bundle(spec: str, *, bundles_dir: str | os.PathLike = DEFAULT_BUNDLES) -> LocalBundle:
    """`v0.3` -> bundles/moola-v0.3.tar.gz, or a path to an archive; reads its manifest version.

    Names are validated before anything else, so a version carrying shell characters never
    reaches a remote command.
    """
    is_path = Path(spec).is_file()
    if is_path:
        path = Path(spec)
    else:
        path = Path(bundles_dir) / f"moola-{check_name(spec, 'bundle version')}.tar.gz"
    if not path.is_file():
        raise MoolaError(
            f"bundle {path} not found: build it with `invoke bundle --version {spec}` "
            "or pass --bundle PATH/TO/moola-VERSION.tar.gz"
        )
    copy, sha256, size = _private_copy(path)
    version = _archive_version(copy, path)
    check_name(version, "bundle version (from its manifest)")
    if not is_path and version != spec:
        raise MoolaError(f"bundle {path} says version {version!r}, not {spec!r}: rebuild it")
    return LocalBundle(path=copy, version=version, sha256=sha256, size=size, source=path)


def _private_copy(path: Path) -> tuple[Path, str, int]:
    """Copy `path` into a private folder (0700) in one read, hashing what is written."""
    folder = tempfile.mkdtemp(prefix="moola-bundle-")
    _PRIVATE.append(folder)
    target = Path(folder) / path.name
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
    return target, digest.hexdigest(), size


@atexit.register
def _remove_private_copies() -> None:
    for folder in _PRIVATE:
        shutil.rmtree(folder, ignore_errors=True)


def _archive_version(path: Path, shown: Path) -> str:
    """The version a bundle archive's manifest says, after archive.py's checks of its entries
    (the same the host repeats before extracting: no links, '..', stray folders)."""
    try:
        version, members, tar = bundle_archive.read_members(path)
    except MoolaError as exc:
        raise type(exc)(str(exc).replace(str(path), str(shown))) from None
    with tar:
        data = tar.extractfile(members[bundle_archive.MANIFEST_NAME]).read()
    said = bundle_archive.load_manifest_bytes(data, f"{shown.name}:manifest.json").get("version")
    if said != version:
        raise MoolaError(
            f"bundle {shown} is in folder moola-{version}/ but its manifest says {said!r}: "
            "rebuild it with `invoke bundle`"
        )
    return version

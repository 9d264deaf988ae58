"""Bundle archives: reproducible writing, safe extraction and checksum verification.

Standard library only (part of the host agent, on its Python floor), and also runnable as a
lone script on a host that has just Python, to check an archive before anything is extracted
into `releases/`:

    python3 archive.py extract ARCHIVE DEST [--sha256 HEX]   # refuse, extract, verify
    python3 archive.py verify DIR                            # re-check an extracted release

Each prints one JSON line and exits 0 (ok), 1 (the bundle is bad) or 2 (could not run). The
host agent's `release` action (release.py beside this file) runs these same functions on the
host, so host and workstation share one implementation.

Layout of an archive `moola-<version>.tar.gz`: every entry is a regular file under the one
top-level folder `moola-<version>/`; `manifest.json` lists every other file with its size and
sha256 (only `manifest.json.sig`, the optional signature, is outside that list).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import zlib
from pathlib import Path, PurePosixPath

try:  # on the workstation (and in a release's code/) a bundle error is a MoolaError
    if not __package__:  # run alone: never import whatever `moola_core` lies on sys.path there
        raise ImportError
    from moola_core.errors import MoolaError as _ErrorBase
except ImportError:  # the uploaded agent folder ships no errors.py
    _ErrorBase = Exception


class BundleError(_ErrorBase):
    """A bundle or archive is invalid, corrupt or unsafe; the message names what and the fix."""


MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.json.sig"
# Files a bundle may hold that manifest.json does not list: itself and its signature.
UNLISTED_NAMES = frozenset({MANIFEST_NAME, SIGNATURE_NAME})
# Python writes byte-code caches next to the shipped code when the runtime imports it. In an
# archive (a snapshot of a release that ran) they are never extracted: a planted cache would run
# in place of the verified source it claims to belong to.
IGNORED_DIR_NAMES = frozenset({"__pycache__"})
# Refuse archives that would unpack to more than this (a decompression bomb fills the disk).
MAX_UNPACKED_BYTES = 4 * 1024**3
# manifest.json is parsed in memory, so its size is capped (a real one lists a few hundred
# files in tens of KB); the signature likewise (an SSH signature is well under 2 KB).
MAX_MANIFEST_BYTES = 8 * 1024**2
MAX_SIGNATURE_BYTES = 64 * 1024
_CHUNK = 1 << 20  # files are hashed and copied in 1 MiB pieces: memory stays flat

_VERSION_RE = re.compile(r"v[0-9]{1,6}(\.[0-9]{1,6}){0,3}(-[A-Za-z0-9]{1,32})?")


def validate_version(version: str) -> str:
    """Return `version` when it is `v` + numbers and dots with an optional `-suffix` (v0.3,
    v1.2.0-rc1); raise BundleError otherwise, before the name reaches any path or command."""
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise BundleError(
            f"bundle version {version!r} is not valid: use 'v' followed by numbers and dots "
            "with an optional '-suffix' of letters and digits, e.g. v0.3 or v1.2.0-rc1."
        )
    return version


def archive_name(version: str) -> str:
    """The archive file name for a version: moola-<version>.tar.gz."""
    return f"moola-{validate_version(version)}.tar.gz"


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    with open(path, "rb") as fh:
        return sha256_stream(fh)


def sha256_stream(stream) -> str:
    """Hex sha256 of a binary stream read to its end in 1 MiB chunks (never whole)."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# writing


def write_archive(entries: dict[str, bytes], version: str, dest: str | os.PathLike, mtime: int):
    """Write `entries` (relative path -> bytes) as a reproducible moola-<version>.tar.gz at dest.

    Same entries, version and mtime give the same bytes: entries sorted by name, every mtime =
    `mtime`, owner root:root with empty names, modes 0644, gzip header mtime 0 and no file name.
    The file appears atomically (written to a temporary name, then renamed).
    """
    top = f"moola-{validate_version(version)}"
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        # filename="" keeps the temporary name out of the gzip header
        with open(tmp, "wb") as raw:  # noqa: SIM117
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for name in sorted(entries):
                        _check_member_name(name)
                        data = entries[name]
                        info = tarfile.TarInfo(f"{top}/{name}")
                        info.size = len(data)
                        info.mtime = int(mtime)
                        info.mode = 0o644
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


# --------------------------------------------------------------------------------------------
# reading


def _check_member_name(name: str) -> None:
    """Refuse a relative bundle path that is absolute, climbs out with '..' or is odd."""
    path = PurePosixPath(name)
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(part in ("..", ".", "") for part in name.split("/"))
        or path.is_absolute()
    ):
        raise BundleError(
            f"archive entry {name!r} is unsafe (absolute path, '..' or empty part): "
            "refusing the whole archive; rebuild it with `invoke bundle`."
        )


def read_members(
    archive: str | os.PathLike, *, snapshot: bool = False
) -> tuple[str, dict[str, tarfile.TarInfo], tarfile.TarFile]:
    """Open an archive and check every entry before anything is written.

    Returns (version, {relative path: member}, open TarFile). Refuses absolute paths, '..',
    links, devices, FIFOs, duplicates, entries outside the one `moola-<version>/` folder and
    archives that would unpack past MAX_UNPACKED_BYTES. With `snapshot`, the archive is what the
    deploy engine's snapshot step writes (`tar -cf` of releases/<version>): a plain .tar whose
    one folder is `<version>/`; the checks are the same.
    Entries under __pycache__/ are left out. The caller closes the TarFile.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise BundleError(f"bundle archive {str(archive)!r} does not exist: check the path.")
    try:
        mode = "r:" if snapshot else "r:gz"
        tar = tarfile.open(archive, mode=mode)  # noqa: SIM115 - returned open to the caller
        members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleError(
            f"{archive.name} is not a readable .tar.gz ({exc}): upload or rebuild it again."
        ) from None
    try:
        return (*_check_members(archive.name, members, "" if snapshot else "moola-"), tar)
    except BaseException:
        tar.close()
        raise


def _check_members(label: str, members: list[tarfile.TarInfo], folder_prefix: str):
    top = None
    files: dict[str, tarfile.TarInfo] = {}
    total = 0
    for member in members:
        name = member.name
        if name.startswith("/") or ".." in name.split("/"):
            raise BundleError(
                f"{label} holds the entry {name!r} that points outside the bundle "
                "(absolute path or '..'): refusing it; rebuild the bundle with `invoke bundle`."
            )
        if member.issym() or member.islnk():
            raise BundleError(
                f"{label} holds the link {name!r} -> {member.linkname!r}; bundles contain only "
                "regular files: refusing it; rebuild the bundle with `invoke bundle`."
            )
        if member.isdir():
            continue
        if not member.isfile():
            raise BundleError(
                f"{label} holds {name!r}, which is a device, FIFO or other special file; "
                "bundles contain only regular files: refusing it."
            )
        head, _, rest = name.partition("/")
        if top is None:
            top = head
        if head != top or not rest:
            raise BundleError(
                f"{label} mixes top-level folders ({top!r} and {name!r}); a bundle holds one "
                "folder moola-<version>/: rebuild it with `invoke bundle`."
            )
        _check_member_name(rest)
        if IGNORED_DIR_NAMES.intersection(rest.split("/")[:-1]):
            continue  # a byte-code cache: never written (see IGNORED_DIR_NAMES)
        if rest in files:
            raise BundleError(f"{label} holds {rest!r} twice: refusing an ambiguous archive.")
        files[rest] = member
        _check_small_file(label, rest, member.size)
        total += member.size
        if total > MAX_UNPACKED_BYTES:
            raise BundleError(
                f"{label} would unpack to more than {MAX_UNPACKED_BYTES >> 30} GiB: refusing it."
            )
    for name in files:  # "a" as a file and "a/b" would make a folder of a file
        parts = name.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in files:
                parent = "/".join(parts[:depth])
                raise BundleError(
                    f"{label} holds {name!r} inside the file {parent!r}: refusing it; "
                    "rebuild the bundle with `invoke bundle`."
                )
    if top is None or MANIFEST_NAME not in files:
        raise BundleError(f"{label} has no {MANIFEST_NAME}: it is not a Moola bundle.")
    if not top.startswith(folder_prefix):
        raise BundleError(f"{label}: top folder {top!r} is not {folder_prefix}<version>/.")
    version = validate_version(top[len(folder_prefix) :])
    return version, files


def _check_small_file(label: str, name: str, size: int) -> None:
    """Refuse a manifest or signature too large to be real before it is read into memory."""
    cap = {MANIFEST_NAME: MAX_MANIFEST_BYTES, SIGNATURE_NAME: MAX_SIGNATURE_BYTES}.get(name)
    if cap is not None and size > cap:
        raise BundleError(
            f"{label}: {name} is {size / 1024**2:.1f} MiB, more than the "
            f"{cap / 1024**2:g} MiB such a file may be: refusing it; rebuild the bundle."
        )


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, label: str, name: str) -> bytes:
    """The bytes of manifest.json or its signature from an open archive (size-capped)."""
    _check_small_file(label, name, member.size)
    return tar.extractfile(member).read()


def unpacked_size(archive: str | os.PathLike) -> int:
    """Bytes a bundle archive writes when extracted (every file it holds, after its checks).

    This, not the compressed size, is what a host needs free: the deploy engine's disk check
    uses it. Raises BundleError for an archive `read_members` refuses.
    """
    _version, members, tar = read_members(archive)
    tar.close()
    return sum(member.size for member in members.values())


def load_manifest_bytes(data: bytes, label: str = MANIFEST_NAME) -> dict:
    """Parse manifest JSON into a dict with the fields the stdlib checks need (files, version)."""
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{label} is not valid JSON ({exc}): rebuild the bundle.") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise BundleError(f"{label} has no 'files' list: rebuild the bundle.")
    for entry in manifest["files"]:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("path"), str)
            and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str)
        ):
            raise BundleError(f"{label} has a malformed file entry {entry!r}: rebuild the bundle.")
        _check_member_name(entry["path"])
    return manifest


def check_file_list(files: list[dict], actual: dict[str, tuple[int, object]], label: str) -> None:
    """Compare the manifest's file list with what is present and raise on the first difference.

    `actual` maps relative path -> (size, sha256 or a zero-argument callable computing it); the
    hash is only computed when the size matches. Files missing, extra, of another size or hash
    are named one at a time, in sorted order, so the message points at one concrete file.
    """
    listed = {entry["path"]: entry for entry in files}
    for path in sorted(listed):
        if path in UNLISTED_NAMES:
            raise BundleError(f"{label}: manifest lists {path!r} among its own files.")
        entry = listed[path]
        if path not in actual:
            raise BundleError(
                f"{label}: {path} is missing; the bundle is incomplete: upload or rebuild it."
            )
        size, digest = actual[path]
        if size != entry["size"]:
            raise BundleError(
                f"{label}: {path} is {size} bytes but the manifest says {entry['size']}; "
                "the file is damaged: upload or rebuild the bundle."
            )
        digest = digest() if callable(digest) else digest
        if digest != entry["sha256"]:
            raise BundleError(
                f"{label}: {path} has sha256 {digest[:12]}... but the manifest says "
                f"{entry['sha256'][:12]}...; the file is damaged: upload or rebuild the bundle."
            )
    for path in sorted(actual):
        if path not in listed and path not in UNLISTED_NAMES:
            raise BundleError(
                f"{label}: {path} is not listed in the manifest; someone added it after the "
                "build: remove it or rebuild the bundle."
            )


def directory_files(root: str | os.PathLike) -> dict[str, tuple[int, object]]:
    """Every regular file under root as {relative posix path: (size, lazy sha256)}.

    Skips __pycache__ folders (Python writes them when the runtime imports the shipped code);
    refuses links and special files, which a bundle never holds.
    """
    root = Path(root)
    found: dict[str, tuple[int, object]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_DIR_NAMES)
        for name in list(dirnames) + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                raise BundleError(
                    f"{root}: {rel} is a symbolic link; a release holds only regular files."
                )
            if name in filenames and not path.is_file():
                raise BundleError(f"{root}: {rel} is not a regular file.")
            if name in filenames:
                found[rel] = (path.stat().st_size, lambda p=path: sha256_file(p))
    return found


def verify_directory(root: str | os.PathLike) -> dict:
    """Check an extracted bundle against its manifest.json; return the manifest dict.

    Raises BundleError naming the first file that is missing, extra or whose size/sha256 differs.
    """
    root = Path(root)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{root} has no {MANIFEST_NAME}: it is not an extracted bundle.")
    _check_small_file(str(root), MANIFEST_NAME, manifest_path.stat().st_size)
    manifest = load_manifest_bytes(manifest_path.read_bytes(), f"{root}/{MANIFEST_NAME}")
    check_file_list(manifest["files"], directory_files(root), str(root))
    return manifest


def verify_archive(archive: str | os.PathLike) -> dict:
    """Check an archive's entries and every file against its manifest without extracting.

    Returns the manifest dict (with '_signature' bytes or None, and '_version')."""
    version, members, tar = read_members(archive)
    label = Path(archive).name
    with tar:
        manifest_bytes = read_member(tar, members[MANIFEST_NAME], label, MANIFEST_NAME)
        manifest = load_manifest_bytes(manifest_bytes, f"{label}:{MANIFEST_NAME}")
        actual = {
            name: (member.size, lambda m=member: sha256_stream(tar.extractfile(m)))
            for name, member in members.items()
        }
        check_file_list(manifest["files"], actual, label)
        signature = None
        if SIGNATURE_NAME in members:
            signature = read_member(tar, members[SIGNATURE_NAME], label, SIGNATURE_NAME)
    if manifest.get("version") != version:
        raise BundleError(
            f"{label}: folder says {version} but manifest.json says {manifest.get('version')!r}: "
            "rebuild the bundle."
        )
    manifest["_manifest_bytes"] = manifest_bytes
    manifest["_signature"] = signature
    return manifest


def safe_extract(
    archive: str | os.PathLike,
    dest: str | os.PathLike,
    expected_sha256: str | None = None,
    *,
    version: str | None = None,
    snapshot: bool = False,
) -> Path:
    """Extract a bundle archive into `dest` (its files directly, without the top folder).

    Every entry is checked before the first byte is written (no absolute paths, '..', links,
    devices); then each file is written fresh and the result verified against manifest.json.
    `dest` must not exist or be empty. On any failure what was written is removed and
    BundleError raised. `expected_sha256` (of the archive file) is checked first when given;
    `version`, when given, is the version the archive must hold. `snapshot` as in
    `read_members` (a release's plain .tar snapshot).
    """
    archive, dest = Path(archive), Path(dest)
    if expected_sha256 is not None:
        actual = sha256_file(archive) if archive.is_file() else None
        if actual != expected_sha256.lower():
            raise BundleError(
                f"{archive.name} has sha256 {str(actual)[:12]}... but {expected_sha256[:12]}... "
                "was expected: the upload is damaged; upload it again."
            )
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BundleError(f"{dest} already exists and is not empty: extract into a fresh folder.")
    found, members, tar = read_members(archive, snapshot=snapshot)
    if version is not None and found != version:
        tar.close()
        raise BundleError(
            f"{archive.name} holds version {found}, not {version}: upload the right archive."
        )
    version = found
    created = not dest.exists()
    try:
        with tar:
            dest.mkdir(parents=True, exist_ok=True)
            root = dest.resolve()
            for name in sorted(members):
                target = (root / name).resolve()
                if root not in target.parents:  # belt and braces after the name checks
                    raise BundleError(f"{archive.name}: {name!r} would land outside {dest}.")
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(members[name])
                # O_EXCL: never follow or overwrite something already there
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK)
        manifest = verify_directory(dest)
        if manifest.get("version") != version:
            raise BundleError(
                f"{archive.name}: folder says {version} but manifest.json says "
                f"{manifest.get('version')!r}: rebuild the bundle."
            )
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for child in dest.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
    return dest


# --------------------------------------------------------------------------------------------
# command line (runs on hosts with only Python)


def main(argv: list[str] | None = None) -> int:
    """`extract ARCHIVE DEST [--sha256 HEX]` or `verify DIR`; one JSON line; exit 0/1/2."""
    import argparse

    parser = argparse.ArgumentParser(prog="archive.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    extract = sub.add_parser("extract", help="check, extract and verify an archive")
    extract.add_argument("archive")
    extract.add_argument("dest")
    extract.add_argument("--sha256", default=None, help="expected sha256 of the archive file")
    verify = sub.add_parser("verify", help="verify an extracted bundle against its manifest")
    verify.add_argument("dir")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 2 if exc.code else 0
    try:
        if args.command == "extract":
            safe_extract(args.archive, args.dest, args.sha256)
            manifest = verify_directory(args.dest)
        else:
            manifest = verify_directory(args.dir)
    except BundleError as exc:
        print(json.dumps({"ok": False, "error": str(exc)}))
        return 1
    except OSError as exc:
        print(json.dumps({"ok": False, "error": f"could not run: {exc}"}))
        return 2
    print(
        json.dumps(
            {"ok": True, "version": manifest.get("version"), "files": len(manifest["files"])}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

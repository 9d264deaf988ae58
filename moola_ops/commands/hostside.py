"""Runs ON the host: safe extraction and checksum verification of releases and snapshots.

Standard library only, Python >= 3.8, no imports from this project: `release.py` sends this
file's source as `python3 -c SOURCE ACTION ARGS...`, so a bare host needs nothing installed and
the engine never depends on what an older release left on the disk.

Every action prints one JSON document on stdout; exit 0 ok, 1 verification failed, 2 error.
"""

import hashlib
import json
import os
import shutil
import sys
import tarfile

MARKER_SUFFIX = ".sha256"  # releases/<v>.sha256 beside the release: the bundle lists every file
MANIFEST = "manifest.json"


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_entries(manifest):
    """[(relative path, size, sha256)] from manifest["files"] (a list of dicts or a mapping)."""
    files = manifest.get("files", [])
    if isinstance(files, dict):
        files = [dict(info, path=path) for path, info in files.items()]
    return [(f["path"], int(f["size"]), f["sha256"]) for f in files]


def verify_tree(root, expect_version=None):
    """Problems found comparing the files under `root` with its manifest ([] when all match)."""
    try:
        with open(os.path.join(root, MANIFEST)) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as exc:
        return None, [f"manifest.json unreadable: {exc}"]
    problems = []
    version = manifest.get("version")
    if expect_version is not None and version != expect_version:
        problems.append(f"manifest version {version!r}, expected {expect_version!r}")
    try:
        entries = manifest_entries(manifest)
    except (KeyError, TypeError, ValueError) as exc:
        return manifest, [f"manifest files list malformed: {exc}"]
    if not entries:
        problems.append("manifest lists no files")
    for rel, size, digest in entries:
        if rel.startswith("/") or ".." in rel.split("/"):
            problems.append(f"{rel}: unsafe path in manifest")
            continue
        path = os.path.join(root, rel)
        if not os.path.isfile(path) or os.path.islink(path):
            problems.append(f"{rel}: missing")
        elif os.path.getsize(path) != size:
            problems.append(f"{rel}: size {os.path.getsize(path)}, expected {size}")
        elif sha256_file(path) != digest:
            problems.append(f"{rel}: sha256 mismatch")
    return manifest, problems


def safe_extract(archive, dest):
    """Extract regular files and directories only; refuse absolute paths, '..', links, devices."""
    os.makedirs(dest)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            parts = m.name.split("/")
            if m.name.startswith("/") or ".." in parts:
                raise ValueError(f"archive member {m.name!r} escapes the release directory")
            if not (m.isfile() or m.isdir()):
                raise ValueError(f"archive member {m.name!r} is a link or device")
        for m in members:
            target = os.path.join(dest, m.name)
            if m.isdir():
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            src = tar.extractfile(m)
            with open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            os.chmod(target, 0o644 | (m.mode & 0o111))


def tree_root(dest):
    """The release root inside an extraction: dest itself, or its single top-level directory."""
    if os.path.exists(os.path.join(dest, MANIFEST)):
        return dest
    entries = os.listdir(dest)
    if len(entries) == 1 and os.path.isdir(os.path.join(dest, entries[0])):
        return os.path.join(dest, entries[0])
    return dest


def promote(archive, expected_sha, version, staging, release_dir):
    """Check the uploaded archive, extract + verify it in staging, rename it into releases/."""
    actual = sha256_file(archive)
    if actual != expected_sha:
        return 1, {"problems": [f"uploaded archive sha256 {actual}, expected {expected_sha}"]}
    if os.path.isdir(release_dir):
        return _existing(release_dir, expected_sha, version)
    tree = os.path.join(staging, "tree")
    safe_extract(archive, tree)
    root = tree_root(tree)
    manifest, problems = verify_tree(root, version)
    if problems:
        return 1, {"problems": problems}
    os.rename(root, release_dir)
    with open(release_dir + MARKER_SUFFIX, "w") as fh:
        fh.write(expected_sha + "\n")
    shutil.rmtree(staging, ignore_errors=True)
    return 0, {"promoted": True, "files": len(manifest_entries(manifest))}


def _existing(release_dir, expected_sha, version):
    try:
        with open(release_dir + MARKER_SUFFIX) as fh:
            present = fh.read().strip()
    except OSError:
        present = ""
    if present != expected_sha:
        return 1, {
            "problems": [
                "releases/{} already exists from different bytes (sha256 {}); "
                "bump the bundle version instead of reusing it".format(
                    version, present or "unknown"
                )
            ]
        }
    manifest, problems = verify_tree(release_dir, version)
    if problems:
        return 1, {"problems": problems}
    return 0, {"promoted": False, "already_present": True}


def verify(release_dir, expect_version):
    """Verify a release (or `current`) against its manifest; report where it resolves to."""
    manifest, problems = verify_tree(release_dir, expect_version or None)
    info = {"resolved": os.path.realpath(release_dir), "problems": problems}
    if manifest is not None:
        info["version"] = manifest.get("version")
    return (1 if problems else 0), info


def restore(snapshot, staging, releases_dir, version):
    """Extract a snapshot, verify it, and put it in place of releases/<version>."""
    tree = os.path.join(staging, "tree")
    safe_extract(snapshot, tree)
    root = os.path.join(tree, version)
    if not os.path.isdir(root):
        root = tree_root(tree)
    manifest, problems = verify_tree(root, version)
    if problems:
        return 1, {"problems": [f"snapshot {os.path.basename(snapshot)}: {p}" for p in problems]}
    target = os.path.join(releases_dir, version)
    if os.path.lexists(target):
        os.rename(target, os.path.join(staging, "damaged"))
    os.rename(root, target)
    shutil.rmtree(staging, ignore_errors=True)
    return 0, {"restored": version, "files": len(manifest_entries(manifest))}


ACTIONS = {"promote": promote, "verify": verify, "restore": restore}


def main(argv):
    action, args = argv[0], argv[1:]
    try:
        code, info = ACTIONS[action](*args)
    except Exception as exc:  # report, never a traceback: the engine reads stdout as JSON
        code, info = 2, {"problems": [f"{type(exc).__name__}: {exc}"]}
        staging = {"promote": 3, "restore": 1}.get(action)
        staging = args[staging] if staging is not None and len(args) > staging else None
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
    info["ok"] = code == 0
    sys.stdout.write(json.dumps(info, sort_keys=True) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

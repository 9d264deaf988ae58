"""Runs ON the host: promote an uploaded bundle into releases/, verify a release, restore one.

The agent's `release` action: `python3 -S agent.py release ACTION ARGS...` (moola_ops'
deploy/commands/release.py builds the lines). Safe extraction (no '..', links,
devices, overwrites or files used as folders) and checksum verification (every listed file
present and intact, nothing unlisted) are archive.py's, the same code `invoke bundle.verify`
runs here; this file adds only what is specific to a host's releases/: the .sha256 marker,
the rename into place and the JSON report the engine reads. The engine never depends on what
an older release left on the disk: the agent runs from its own content-addressed folder.

Every action prints one JSON document on stdout; exit 0 ok, 1 verification failed, 2 error.
"""

import json
import os
import shutil
import sys

from moola_core.agent import archive

MARKER_SUFFIX = ".sha256"  # releases/<v>.sha256 beside the release: the archive it came from


def _listed_files(root):
    """How many files the manifest of an extracted, verified release lists."""
    with open(os.path.join(root, archive.MANIFEST_NAME), "rb") as fh:
        return len(archive.load_manifest_bytes(fh.read())["files"])


def _verify_release(root, version):
    """Check every file of an extracted release against its manifest and its version."""
    manifest = archive.verify_directory(root)
    if version and manifest.get("version") != version:
        raise archive.BundleError(
            "{}: manifest version {!r}, expected {!r}".format(
                root, manifest.get("version"), version
            )
        )
    return manifest


def promote(archive_path, expected_sha, version, staging, release_dir):
    """Check the uploaded archive, extract + verify it in staging, rename it into releases/."""
    actual = archive.sha256_file(archive_path)
    if actual != expected_sha:
        return 1, {"problems": [f"uploaded archive sha256 {actual}, expected {expected_sha}"]}
    if os.path.isdir(release_dir):
        return _existing(release_dir, expected_sha, version)
    tree = os.path.join(staging, "tree")
    archive.safe_extract(archive_path, tree, version=version)
    os.rename(tree, release_dir)
    with open(release_dir + MARKER_SUFFIX, "w") as fh:
        fh.write(expected_sha + "\n")
    shutil.rmtree(staging, ignore_errors=True)
    return 0, {"promoted": True, "files": _listed_files(release_dir)}


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
    _verify_release(release_dir, version)
    return 0, {"promoted": False, "already_present": True}


def verify(release_dir, expect_version):
    """Verify a release (or `current`) against its manifest; report where it resolves to."""
    info = {"resolved": os.path.realpath(release_dir), "problems": []}
    try:
        info["version"] = _verify_release(release_dir, expect_version or None).get("version")
    except archive.BundleError as exc:
        info["problems"] = [str(exc)]
        return 1, info
    return 0, info


def restore(snapshot, staging, releases_dir, version):
    """Extract a snapshot (plain tar of <version>/), verify it, put it in place of the release."""
    tree = os.path.join(staging, "tree")
    try:
        archive.safe_extract(snapshot, tree, version=version, snapshot=True)
    except archive.BundleError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        return 1, {"problems": [f"snapshot {os.path.basename(snapshot)}: {exc}"]}
    target = os.path.join(releases_dir, version)
    if os.path.lexists(target):
        os.rename(target, os.path.join(staging, "damaged"))
    os.rename(tree, target)
    shutil.rmtree(staging, ignore_errors=True)
    return 0, {"restored": version, "files": _listed_files(target)}


ACTIONS = {"promote": promote, "verify": verify, "restore": restore}
STAGING_ARG = {"promote": 3, "restore": 1}  # where each action keeps its scratch files


def main(argv):
    action, args = argv[0], argv[1:]
    try:
        code, info = ACTIONS[action](*args)
    except Exception as exc:  # report, never a traceback: the engine reads stdout as JSON
        bad_bundle = isinstance(exc, archive.BundleError)
        code = 1 if bad_bundle else 2
        info = {"problems": [str(exc) if bad_bundle else f"{type(exc).__name__}: {exc}"]}
        staging = STAGING_ARG.get(action)
        staging = args[staging] if staging is not None and len(args) > staging else None
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
    info["ok"] = code == 0
    sys.stdout.write(json.dumps(info, sort_keys=True) + "\n")
    return code

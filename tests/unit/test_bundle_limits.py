"""Size limits of bundle archives (issue 15, item 8): members are hashed and extracted in
chunks with bounded memory, manifest.json and its signature are capped before they are read,
and `unpacked_size` gives what extraction writes (the deploy engine's disk check uses it)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from moola_core.agent import archive
from moola_core.agent.archive import BundleError

BIG = 128 * 1024**2  # one member this large; the process must stay far below it


def _bundle(
    tmp_path: Path,
    files: dict[str, Path],
    version: str = "v1.0",
    pad: int = 0,
    unlisted: dict[str, Path] | None = None,
) -> Path:
    """A gzip archive moola-<version>/ of `files` plus a manifest listing them and the
    `unlisted` extras (streamed: the big member never sits in this process's memory)."""
    entries = [
        {"path": name, "size": path.stat().st_size, "sha256": archive.sha256_file(path)}
        for name, path in sorted(files.items())
    ]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"version": version, "files": entries, "pad": "x" * pad}))
    out = tmp_path / f"moola-{version}.tar.gz"
    with tarfile.open(out, "w:gz", compresslevel=1) as tar:
        tar.add(manifest, arcname=f"moola-{version}/manifest.json")
        for name, path in sorted({**files, **(unlisted or {})}.items()):
            tar.add(path, arcname=f"moola-{version}/{name}")
    return out


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


# Peak RSS of this process image: VmHWM belongs to the address space that execve made fresh
# (getrusage's ru_maxrss would carry over the forking pytest's own peak, torch and all).
_MEASURE = """
import sys
sys.path.insert(0, sys.argv[1])
import archive  # alone, as on a host: standard library only
assert archive._ErrorBase is Exception
archive.verify_archive(sys.argv[2])
archive.safe_extract(sys.argv[2], sys.argv[3])
with open("/proc/self/status") as fh:
    peak_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
print(peak_kb * 1024)
"""


def test_verify_and_extract_a_large_member_with_bounded_memory(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    bundle = _bundle(tmp_path, {"weights.bin": _sparse(source / "weights.bin", BIG)})
    dest = tmp_path / "release"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEASURE,
            str(Path(archive.__file__).parent),
            str(bundle),
            str(dest),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    peak = int(done.stdout.strip())
    # generous: an interpreter is ~10 MB; reading the member whole needed more than 128 MiB
    assert peak < 64 * 1024**2, f"peak RSS {peak / 1024**2:.0f} MiB for a 128 MiB member"
    assert (dest / "weights.bin").stat().st_size == BIG


def test_a_manifest_over_the_cap_is_refused_before_it_is_read(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "model.json").write_text("{}")
    bundle = _bundle(
        tmp_path, {"model.json": source / "model.json"}, pad=archive.MAX_MANIFEST_BYTES
    )
    with pytest.raises(BundleError, match=r"manifest.json is 8.0 MiB, more than the 8 MiB"):
        archive.verify_archive(bundle)
    with pytest.raises(BundleError, match="more than the 8 MiB"):
        archive.safe_extract(bundle, tmp_path / "out")
    assert not (tmp_path / "out").exists()

    folder = tmp_path / "extracted"  # an extracted release is checked the same way
    folder.mkdir()
    (folder / "manifest.json").write_bytes(b" " * (archive.MAX_MANIFEST_BYTES + 1))
    with pytest.raises(BundleError, match="more than the 8 MiB"):
        archive.verify_directory(folder)


def test_a_signature_over_the_cap_is_refused(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "model.json").write_text("{}")
    signature = _sparse(source / "manifest.json.sig", archive.MAX_SIGNATURE_BYTES + 1)
    bundle = _bundle(
        tmp_path, {"model.json": source / "model.json"}, unlisted={"manifest.json.sig": signature}
    )
    with pytest.raises(BundleError, match=r"manifest.json.sig is 0.1 MiB, more than"):
        archive.read_members(bundle)


def test_unpacked_size_is_what_extraction_writes(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    files = {
        "weights.bin": _sparse(source / "weights.bin", 5 * 1024**2),
        "code/x.py": source / "x.py",
    }
    files["code/x.py"].write_text("print('hi')\n")
    bundle = _bundle(tmp_path, files)
    size = archive.unpacked_size(bundle)
    assert size > bundle.stat().st_size * 100  # sparse zeros compress: the archive is tiny
    dest = tmp_path / "out"
    archive.safe_extract(bundle, dest)
    assert size == sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())


def test_the_deploy_disk_check_counts_the_unpacked_size_not_the_compressed_one(tmp_path):
    """A bundle that unpacks far larger than its archive (zeros compress ~1000:1) must not
    pass a free-space check sized from the archive and then fill the volume."""
    from moola_ops import deploy as engine
    from moola_ops.deploy.results import disk_need

    source = tmp_path / "src"
    source.mkdir()
    big = 16 * 1024**2
    archive_path = _bundle(tmp_path, {"weights.bin": _sparse(source / "weights.bin", big)})
    local = engine.resolve_bundle(str(archive_path))
    assert local.size < big / 100  # what the old check multiplied by 3
    assert local.unpacked == big + (tmp_path / "manifest.json").stat().st_size
    assert disk_need(local.size, local.unpacked) >= 2 * big > 3 * local.size

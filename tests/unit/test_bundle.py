"""Bundles: build from a real (randomly initialised) run, reproducibility, verification that names
the damaged file, refusal of unsafe archives and invalid versions, and the archive script."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from moola_core.agent import archive as bundle_archive
from moola_core.bundle import BundleError, safe_extract, validate_version
from moola_core.bundle.build import REPO_ROOT, build_bundle, collect_code
from moola_core.bundle.manifest import Manifest
from moola_core.bundle.verify import verify_bundle
from moola_core.models import build_model
from tests.unit.tiny_runs import freeze_runtime_code, make_tiny_run


def make_run(runs_dir: Path, run_id: str = "run-1", seed: int = 0) -> Path:
    """A tiny real run with the config.yaml and test metrics a trained run also leaves."""
    run = make_tiny_run(
        runs_dir, run_id, seed=seed, metrics={"test": {"accuracy": 0.5}, "fingerprint": "ab"}
    )
    (run / "config.yaml").write_text("seed: 0\n")
    os.utime(run / "weights.pt", (1_700_000_000, 1_700_000_000))
    return run


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """runs/ with one run, a frozen copy of the runtime code, and one built bundle."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bundle")
    make_run(root / "runs")
    # a frozen copy, so edits others make to the repo mid-test cannot change the bytes
    code = freeze_runtime_code(root / "code")
    built = build_bundle(
        "v0.3", "run-1", runs_dir=root / "runs", out_dir=root / "bundles", code_root=code
    )
    return root, code, built


def entries_of(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {
            m.name.split("/", 1)[1]: tar.extractfile(m).read()
            for m in tar.getmembers()
            if m.isfile()
        }


# -- versions ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v0.3", "v1", "v1.2.3", "v0.3-rc1", "v2026.11.25"])
def test_valid_versions_pass(version):
    assert validate_version(version) == version


@pytest.mark.parametrize(
    "version", ["0.3", "V0.3", "v", "v0.3/../x", "../v1", "v0.3;rm -rf", "v0.3 ", "", "v0..3"]
)
def test_invalid_versions_are_refused_with_a_fix(version, tmp_path):
    with pytest.raises(BundleError, match="is not valid: use 'v' followed by numbers"):
        validate_version(version)
    # refused before any file is touched
    with pytest.raises(BundleError, match="is not valid"):
        build_bundle(version, "run-1", runs_dir=tmp_path / "runs", out_dir=tmp_path / "b")
    assert not (tmp_path / "b").exists()


# -- building ------------------------------------------------------------------------------


def test_build_writes_a_complete_manifest(workspace):
    root, _, built = workspace
    assert built.path == root / "bundles" / "moola-v0.3.tar.gz"
    manifest = built.manifest
    assert manifest.version == "v0.3" and manifest.run_id == "run-1"
    assert manifest.created_at == "2023-11-14T22:13:20Z"  # the weights' mtime
    assert manifest.feature_spec.window_len == 105 and len(manifest.feature_spec.names) == 11
    assert manifest.model.config["hidden"] == 8 and manifest.model.parameters > 0
    assert manifest.metrics == {"test": {"accuracy": 0.5}, "fingerprint": "ab"}
    assert manifest.dataset_fingerprint == "ab"
    assert manifest.runtime.torch == torch.__version__
    assert manifest.source.commit is None  # the frozen code copy is not a git tree
    entries = entries_of(built.path)
    paths = {f.path for f in manifest.files}
    assert set(entries) == paths | {"manifest.json"}
    for name in ("weights.pt", "golden.pt", "model.json", "training_config.yaml"):
        assert name in paths
    for name in ("runtime/check.py", "models/jade.py", "spec.py", "agent/archive.py"):
        assert f"code/moola_core/{name}" in paths
    assert not any("pydantic" in p or "data/" in p or "__pycache__" in p for p in paths)
    # weights load with weights_only=True into a fresh model
    state = torch.load(io.BytesIO(entries["weights.pt"]), weights_only=True)
    build_model(manifest.model.config).load_state_dict(state)


def test_rebuilding_the_same_run_is_byte_identical(workspace, tmp_path):
    root, code, built = workspace
    again = build_bundle("v0.3", "run-1", runs_dir=root / "runs", out_dir=tmp_path, code_root=code)
    assert again.path.read_bytes() == built.path.read_bytes()
    assert again.sha256 == built.sha256
    with tarfile.open(again.path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {
        (0, 0, "", "", 1_700_000_000)
    }
    assert again.path.read_bytes()[4:8] == b"\0\0\0\0"  # gzip header mtime


def test_a_built_version_is_immutable_unless_forced(workspace):
    root, code, built = workspace
    before = built.path.read_bytes()
    kwargs = dict(runs_dir=root / "runs", out_dir=root / "bundles", code_root=code)
    with pytest.raises(BundleError, match="already exists and bundle versions are immutable"):
        build_bundle("v0.3", "run-1", **kwargs)
    forced = build_bundle("v0.3", "run-1", force=True, **kwargs)
    assert forced.replaced and forced.path.read_bytes() == before


def test_default_run_comes_from_selected_json(workspace, tmp_path):
    root, code, _ = workspace
    with pytest.raises(BundleError, match="run `invoke select` first"):
        build_bundle("v1", runs_dir=tmp_path / "empty", out_dir=tmp_path)
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    (runs / "selected.json").write_text(json.dumps({"run_id": "run-1", "metric": 0.5}))
    built = build_bundle("v1", runs_dir=runs, out_dir=tmp_path / "b", code_root=code)
    assert built.manifest.run_id == "run-1"


def test_incomplete_run_is_refused(tmp_path):
    run = make_run(tmp_path / "runs")
    (run / "weights.pt").unlink()
    with pytest.raises(BundleError, match="weights.pt is missing"):
        build_bundle("v1", "run-1", runs_dir=tmp_path / "runs", out_dir=tmp_path / "b")
    with pytest.raises(BundleError, match="not a valid run folder name"):
        build_bundle("v1", "../run-1", runs_dir=tmp_path / "runs", out_dir=tmp_path / "b")


# -- verification --------------------------------------------------------------------------


def repack(built, tmp_path: Path, change) -> Path:
    """The built archive's entries, changed by `change(entries)`, written again as an archive."""
    entries = entries_of(built.path)
    change(entries)
    out = tmp_path / "moola-v0.3.tar.gz"
    bundle_archive.write_archive(entries, "v0.3", out, mtime=0)
    return out


def flip_byte(data: bytes, at: int = 100) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def test_verify_accepts_the_built_archive_and_its_extraction(workspace, tmp_path):
    _, _, built = workspace
    info = verify_bundle(built.path)
    assert info.manifest == built.manifest and info.sha256 == built.sha256 and not info.signed
    dest = safe_extract(built.path, tmp_path / "release")
    assert (dest / "manifest.json").is_file() and (dest / "code/moola_core/spec.py").is_file()
    assert verify_bundle(dest).manifest == built.manifest


def test_verify_names_a_flipped_byte(workspace, tmp_path):
    _, _, built = workspace
    bad = repack(built, tmp_path, lambda e: e.update({"weights.pt": flip_byte(e["weights.pt"])}))
    with pytest.raises(BundleError, match=r"weights.pt has sha256 .* but the manifest says"):
        verify_bundle(bad)
    with pytest.raises(BundleError, match="weights.pt has sha256"):
        safe_extract(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing left behind


def test_verify_names_a_missing_or_extra_file(workspace, tmp_path):
    _, _, built = workspace
    missing = repack(built, tmp_path, lambda e: e.pop("code/moola_core/spec.py"))
    with pytest.raises(BundleError, match="code/moola_core/spec.py is missing"):
        verify_bundle(missing)
    extra = repack(built, tmp_path, lambda e: e.update({"code/torch.py": b"print('x')"}))
    with pytest.raises(BundleError, match="code/torch.py is not listed in the manifest"):
        verify_bundle(extra)


def test_verify_of_an_extracted_release_names_the_damaged_file(workspace, tmp_path):
    _, _, built = workspace
    dest = safe_extract(built.path, tmp_path / "release")
    golden = dest / "golden.pt"
    golden.write_bytes(flip_byte(golden.read_bytes()))
    with pytest.raises(BundleError, match="golden.pt has sha256"):
        verify_bundle(dest)
    golden.write_bytes(golden.read_bytes() + b"x")
    with pytest.raises(BundleError, match="golden.pt is .* bytes but the manifest says"):
        verify_bundle(dest)


def test_an_edited_manifest_is_refused_with_its_field(workspace, tmp_path):
    _, _, built = workspace
    data = json.loads(built.manifest.to_json_bytes())
    data["surprise"] = 1
    with pytest.raises(BundleError, match="not a valid Moola manifest .surprise"):
        Manifest.from_json_bytes(json.dumps(data).encode())
    data.pop("surprise")
    data["version"] = "v0.3/../../etc"
    with pytest.raises(BundleError, match="not a valid Moola manifest .version"):
        Manifest.from_json_bytes(json.dumps(data).encode())


# -- unsafe archives -----------------------------------------------------------------------


def hostile_archive(path: Path, *members: tarfile.TarInfo) -> Path:
    """A tar.gz with a valid-looking bundle plus the given hostile members."""
    with tarfile.open(path, "w:gz") as tar:
        manifest = json.dumps({"version": "v0.3", "files": []}).encode()
        info = tarfile.TarInfo("moola-v0.3/manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        for member in members:
            data = b"owned" if member.isfile() else None
            if data is not None:
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member("moola-v0.3/../x"), "points outside the bundle"),
        (_member("../x"), "points outside the bundle"),
        (_member("/etc/cron.d/x"), "points outside the bundle"),
        (_member("moola-v0.3/code/link", tarfile.SYMTYPE, "/etc/passwd"), "holds the link"),
        (_member("moola-v0.3/code/hard", tarfile.LNKTYPE, "moola-v0.3/manifest.json"), "link"),
        (_member("moola-v0.3/dev", tarfile.CHRTYPE), "device, FIFO or other special file"),
        (_member("moola-v0.3/fifo", tarfile.FIFOTYPE), "device, FIFO or other special file"),
        (_member("other/x"), "mixes top-level folders"),
        (_member("moola-v0.3/manifest.json/x"), "inside the file"),
    ],
    ids=[
        "dotdot-inside",
        "dotdot",
        "absolute",
        "symlink",
        "hardlink",
        "device",
        "fifo",
        "other",
        "file-as-folder",
    ],
)
def test_unsafe_archives_are_refused_before_writing(tmp_path, member, message):
    archive = hostile_archive(tmp_path / "moola-v0.3.tar.gz", member)
    dest = tmp_path / "dest"
    with pytest.raises(BundleError, match=message):
        safe_extract(archive, dest)
    assert not dest.exists()
    assert not (tmp_path / "x").exists()


def test_extract_refuses_a_non_empty_destination_and_a_wrong_archive_hash(workspace, tmp_path):
    _, _, built = workspace
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep").write_text("mine")
    with pytest.raises(BundleError, match="already exists and is not empty"):
        safe_extract(built.path, tmp_path / "busy")
    assert (tmp_path / "busy" / "keep").read_text() == "mine"
    with pytest.raises(BundleError, match="the upload is damaged"):
        safe_extract(built.path, tmp_path / "new", expected_sha256="0" * 64)
    assert safe_extract(built.path, tmp_path / "new", expected_sha256=built.sha256).is_dir()


def test_archive_script_runs_alone_with_only_python(workspace, tmp_path):
    """The host side: archive.py copied next to the upload, run by a bare interpreter."""
    _, _, built = workspace
    script = tmp_path / "archive.py"
    shutil.copy(bundle_archive.__file__, script)
    upload = tmp_path / "upload.tar.gz"
    shutil.copy(built.path, upload)

    def run(*args):
        # -I: isolated, so neither the repo nor PYTHONPATH can lend it moola_core
        proc = subprocess.run(
            [sys.executable, "-I", str(script), *args], capture_output=True, text=True, timeout=60
        )
        return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])

    code, out = run("extract", str(upload), str(tmp_path / "rel"), "--sha256", built.sha256)
    assert (code, out) == (0, {"ok": True, "version": "v0.3", "files": len(built.manifest.files)})
    assert run("verify", str(tmp_path / "rel"))[0] == 0
    (tmp_path / "rel" / "model.json").write_text("{}")
    code, out = run("verify", str(tmp_path / "rel"))
    assert code == 1 and "model.json is" in out["error"]
    code, out = run("extract", str(upload), str(tmp_path / "rel2"), "--sha256", "f" * 64)
    assert code == 1 and "upload is damaged" in out["error"]


# -- what ships to hosts -------------------------------------------------------------------


def test_manifest_and_report_import_without_torch():
    code = (
        "import sys; import moola_core.bundle.manifest, moola_core.runtime.report, "
        "moola_core.bundle; assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'numpy' not in sys.modules"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_shipped_code_imports_only_stdlib_torch_and_shipped_modules():
    """What code/ holds is enough on a host with only Python and torch (checked statically;
    test_runtime runs it with numpy, pandas, pydantic and yaml blocked)."""
    import ast

    shipped = {rel.removeprefix("code/") for rel in collect_code(REPO_ROOT)}
    modules = {p.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for p in shipped}
    for rel in sorted(shipped):
        tree = ast.parse((REPO_ROOT / rel).read_text())
        # a module's lazy `__getattr__` exports (bundle/__init__: build_bundle) are for the
        # build machine; hosts never touch them
        for hook in [n for n in ast.walk(tree) if getattr(n, "name", "") == "__getattr__"]:
            hook.body = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "moola_core":
                    # "from moola_core import spans" names a module; "from x import Class" not
                    assert name in modules or name.rsplit(".", 1)[0] in modules, (rel, name)
                else:
                    assert top in sys.stdlib_module_names or top == "torch", (rel, name)


def test_shipped_code_parses_for_the_hosts_python():
    """Hosts run their own Python (RunPod images ship 3.10): the shipped code must not use
    3.11-only syntax or `datetime.UTC`; archive.py, uploaded alone, must run on 3.8."""
    import ast

    for rel in sorted(collect_code(REPO_ROOT)):
        path = REPO_ROOT / rel.removeprefix("code/")
        oldest = (3, 8) if path.name == "archive.py" else (3, 10)
        tree = ast.parse(path.read_text(), feature_version=oldest)
        for node in ast.walk(tree):
            assert not (isinstance(node, ast.Attribute) and node.attr == "UTC"), (rel, node.lineno)

"""The host's ledger of model loads (moola_core/runtime/loads.py): a deployed release's loads
are recorded, a bundle elsewhere's are not, the file stays bounded and a torn line is skipped."""

from __future__ import annotations

from moola_core.runtime import loads


def test_a_deployed_release_is_recorded_also_through_current(tmp_path):
    release = tmp_path / "ws" / "releases" / "v1.0"
    release.mkdir(parents=True)
    (tmp_path / "ws" / "current").symlink_to("releases/v1.0")
    loads.record(release, "serve", "cpu")
    loads.record(tmp_path / "ws" / "current", "check", "cuda:0")
    got = loads.read(tmp_path / "ws")
    assert [(x["release"], x["by"], x["device"]) for x in got] == [
        ("v1.0", "serve", "cpu"),
        ("v1.0", "check", "cuda:0"),
    ]


def test_a_bundle_outside_a_workspace_is_not_recorded(tmp_path):
    folder = tmp_path / "bundles" / "v1.0"
    folder.mkdir(parents=True)
    loads.record(folder, "check", "cpu")
    assert loads.ledger_path(folder) is None
    assert not list(tmp_path.rglob(loads.LEDGER))


def test_the_ledger_stays_bounded_and_skips_a_torn_line(tmp_path, monkeypatch):
    release = tmp_path / "ws" / "releases" / "v2"
    release.mkdir(parents=True)
    monkeypatch.setattr(loads, "MAX_BYTES", 2000)
    for _ in range(100):
        loads.record(release, "serve", "cpu")
    path = tmp_path / "ws" / loads.LEDGER
    assert path.stat().st_size <= 2000
    with path.open("a") as fh:
        fh.write('{"time": 1, "pid"')  # a writer that died mid-line
    assert 0 < len(loads.read(tmp_path / "ws")) < 100

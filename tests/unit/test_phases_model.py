"""Phase 1's model step as a person meets it when runs/selected.json is damaged."""

from __future__ import annotations

from moola_core.train import load_config
from moola_ops.checklist.preflight import check_model


def test_a_damaged_selection_file_fails_the_model_step_with_a_fix(tmp_path):
    config = load_config(None)
    for text in ("garbage", '{"x": 1}', "[]"):
        (tmp_path / "selected.json").write_text(text)
        status, message, _ = check_model(config, tmp_path, None)
        assert status == "failed"
        assert message == f"{tmp_path / 'selected.json'} has no run_id: run `invoke select` again"

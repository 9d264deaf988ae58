"""The YAML config reader both training and pre-training configs use: one sentence per mistake."""

from __future__ import annotations

import pytest

from moola_core.errors import MoolaError
from moola_core.pretrain.config import load_config as load_pretrain
from moola_core.train.config import load_config as load_train
from moola_core.yaml_config import read_mapping, set_dotted


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a: [1, 2", "is not valid YAML"),
        ("- a\n- list\n", "must hold a mapping of sections"),
        # falsy but not empty: once read as "no keys", so a run silently trained on defaults
        ("[]\n", "must hold a mapping of sections"),
        ("0\n", "must hold a mapping of sections"),
    ],
)
def test_bad_files_are_refused_by_both_configs(tmp_path, text, words):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    for load in (load_train, load_pretrain):
        with pytest.raises(MoolaError, match=words):
            load(path)
    with pytest.raises(MoolaError, match="pre-training config .* does not exist"):
        load_pretrain(tmp_path / "nope.yaml")
    (tmp_path / "empty.yaml").write_text("")
    assert read_mapping(tmp_path / "empty.yaml", "config", "configs/jade.yaml") == {}


def test_overrides_nest_and_unknown_keys_name_where():
    raw: dict = {"train": {"epochs": 1}}
    set_dotted(raw, "train.lr", 0.5)
    set_dotted(raw, "model.hidden", 8)
    assert raw == {"train": {"epochs": 1, "lr": 0.5}, "model": {"hidden": 8}}
    with pytest.raises(MoolaError, match="override train.epochs.x: epochs is not a section"):
        set_dotted(raw, "train.epochs.x", 2)
    with pytest.raises(MoolaError, match="must look like section.key"):
        load_pretrain(None, {"epochs": 3})
    with pytest.raises(MoolaError, match=r"config: train.epcohs: Extra inputs are not permitted"):
        load_pretrain(None, {"train.epcohs": 3})
    with pytest.raises(MoolaError, match=r"defaults: surprise: Extra inputs .* \(1 problem\(s\)\)"):
        load_train(None, {"surprise": 1})


def test_a_config_that_is_not_utf8_or_is_a_folder_is_one_sentence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"optim:\n  max_epochs: 3\n# caf\xe9\n")
    for load in (load_train, load_pretrain):
        with pytest.raises(MoolaError, match=r"is not UTF-8 text \(byte 0xe9 on line 3\)"):
            load(path)
    with pytest.raises(MoolaError, match="is a folder, not a file"):
        read_mapping(tmp_path, "training config", "configs/jade.yaml")

"""A pre-trained encoder loads into JadeModel frozen or trainable; mismatches name both sides."""

import pytest
import torch

from moola_core.errors import MoolaError
from moola_core.models import build_model
from moola_core.pretrain.config import config_from_dict
from moola_core.pretrain.data import PretrainWindows
from moola_core.pretrain.pretrainer import JadePretrainer
from moola_core.pretrain.trainer import pretrain
from moola_core.pretrain.transfer import load_pretrained_encoder

torch.set_num_threads(1)


def _windows(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 105, 11, generator=g).cumsum(dim=1) * 0.1
    return x, torch.ones(n, 105, dtype=torch.bool)


def test_a_pretrained_run_loads_into_jade_model_and_changes_its_predictions(tmp_path):
    train_x, train_valid = _windows(24)
    val_x, val_valid = _windows(8, seed=1)
    windows = PretrainWindows(train_x, train_valid, val_x, val_valid, "2024-01-01T00:00:00")
    config = config_from_dict(
        {"model": {"hidden": 8, "layers": 2}, "train": {"epochs": 1, "batch_size": 8}}
    )
    pretrain(config, tmp_path / "run", windows=windows)

    model = build_model({"hidden": 8, "layers": 2})
    info = load_pretrained_encoder(model, tmp_path / "run", freeze=True)
    assert info["frozen"] is True and "hidden=8" in info["source"]
    saved = torch.load(tmp_path / "run" / "encoder.pt", weights_only=True)
    for key, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, saved[key])
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert any(p.requires_grad for name, p in model.named_parameters() if "encoder" not in name)

    load_pretrained_encoder(model, tmp_path / "run" / "encoder.pt", freeze=False)
    assert all(p.requires_grad for p in model.encoder.parameters())


def test_a_frozen_encoder_does_not_move_during_fine_tuning():
    pretrained = JadePretrainer(hidden=8, layers=1, dropout=0.0)
    model = build_model({"hidden": 8, "layers": 1})
    load_pretrained_encoder(model, pretrained.encoder.state_dict(), freeze=True)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, valid = _windows(4)
    out = model(x, valid)
    loss = sum(v.float().pow(2).mean() for v in out.values() if v.is_floating_point())
    loss.backward()
    optimizer.step()
    for key, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, before[key])


def test_a_hidden_size_mismatch_names_both_sides():
    pretrained = JadePretrainer(hidden=16, layers=2, dropout=0.0)
    model = build_model({"hidden": 8, "layers": 2})
    with pytest.raises(MoolaError) as caught:
        load_pretrained_encoder(model, pretrained.encoder.state_dict())
    message = str(caught.value)
    assert "hidden=8" in message and "[64, 11]" in message and "[32, 11]" in message


def test_a_layer_count_mismatch_names_the_missing_keys():
    pretrained = JadePretrainer(hidden=8, layers=1, dropout=0.0)
    model = build_model({"hidden": 8, "layers": 2})
    with pytest.raises(MoolaError, match=r"layers=2\): missing lstm\.\w+_l1"):
        load_pretrained_encoder(model, pretrained.encoder.state_dict())


def test_a_missing_or_corrupt_file_is_a_user_error(tmp_path):
    model = build_model({"hidden": 8, "layers": 1})
    with pytest.raises(MoolaError, match="invoke pretrain"):
        load_pretrained_encoder(model, tmp_path)
    (tmp_path / "encoder.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MoolaError, match="not a readable encoder"):
        load_pretrained_encoder(model, tmp_path)

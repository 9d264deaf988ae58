"""Unlabeled pre-training windows: date split without overlap, stride, warm-up, jitter, config."""

import pandas as pd
import pytest
import torch

from moola_core.data.synthetic import generate_market
from moola_core.errors import MoolaError
from moola_core.pretrain.config import DataSection, config_from_dict, load_config
from moola_core.pretrain.data import build_windows, date_split, jitter

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bars():
    return generate_market(n_bars=390 * 6, seed=2)  # six weekday sessions


def test_date_split_keeps_every_train_window_before_every_val_window():
    start = pd.date_range("2024-01-01 14:30", periods=200, freq="30min", tz="UTC")
    end = start + pd.Timedelta(minutes=104)
    train, val, cutoff = date_split(start, end, val_fraction=0.25)
    assert cutoff == cutoff.normalize()  # a calendar-day boundary
    assert end[train].max() < cutoff <= start[val].min()
    assert 0.15 < len(val) / len(start) < 0.45  # rounded down to a day boundary
    # the windows that straddle the cutoff are in neither set
    straddling = (start < cutoff) & (end >= cutoff)
    assert straddling.sum() + len(train) + len(val) == len(start)


def test_an_explicit_split_date_wins_and_an_impossible_one_is_a_user_error():
    start = pd.date_range("2024-01-01", periods=96, freq="1h", tz="UTC")
    end = start + pd.Timedelta(minutes=104)
    train, val, cutoff = date_split(start, end, 0.2, split_date="2024-01-03")
    assert str(cutoff.date()) == "2024-01-03" and len(val) == 48
    with pytest.raises(MoolaError, match="split_date"):
        date_split(start, end, 0.2, split_date="2023-12-01")


def test_windows_from_the_synthetic_market_are_split_by_date_with_warm_up_marked(bars):
    section = DataSection(n_bars=len(bars), stride=10, val_fraction=0.34)
    windows = build_windows(section, bars)
    n_train, n_val = windows.train_x.shape[0], windows.val_x.shape[0]
    # 6 sessions x 29 windows (stride 10 inside 390 bars); two sessions' worth go to val
    assert n_train + n_val <= 6 * 29 and n_val == 2 * 29
    assert windows.train_x.shape[1:] == (105, 11) and windows.train_x.dtype == torch.float32
    # per-window features, as for labeled windows: the first rows are warm-up, later ones valid
    assert not windows.train_valid[:, 0].any() and windows.train_valid[:, -1].all()
    assert torch.all(windows.train_x[~windows.train_valid] == 0)
    assert pd.Timestamp(windows.cutoff) > bars["timestamp"].iloc[0]


def test_stride_sets_how_many_windows_a_session_gives(bars):
    dense = build_windows(DataSection(stride=5, val_fraction=0.0, features="stream"), bars)
    sparse = build_windows(DataSection(stride=20, val_fraction=0.0, features="stream"), bars)
    assert dense.train_x.shape[0] == 6 * 58 and sparse.train_x.shape[0] == 6 * 15
    assert dense.val_x.shape[0] == 0


def test_jitter_perturbs_valid_rows_only():
    x = torch.zeros(2, 105, 11)
    valid = torch.ones(2, 105, dtype=torch.bool)
    valid[:, :19] = False
    noisy = jitter(x, valid, 0.1, torch.Generator().manual_seed(0))
    assert torch.all(noisy[:, :19] == 0)
    assert 0.05 < noisy[:, 19:].std().item() < 0.15
    assert jitter(x, valid, 0.0, torch.Generator()) is x


def test_the_shipped_config_loads_and_typos_are_user_errors(tmp_path):
    config = load_config("configs/pretrain.yaml", {"train.epochs": 3})
    assert config.train.epochs == 3 and config.model.hidden == 128
    with pytest.raises(MoolaError, match="masking.ratoi"):
        config_from_dict({"masking": {"ratoi": 0.3}})
    with pytest.raises(MoolaError, match="masking.strategy"):
        config_from_dict({"masking": {"strategy": "stripes"}})
    with pytest.raises(MoolaError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_the_shipped_config_file_states_the_code_defaults():
    from moola_core.pretrain.config import PretrainConfig

    assert load_config("configs/pretrain.yaml") == PretrainConfig()


def test_the_real_bar_sample_gives_date_split_windows_that_pre_train(tmp_path):
    from moola_core.pretrain.trainer import pretrain

    config = config_from_dict(
        {
            "model": {"hidden": 8, "layers": 1},
            "data": {"source": "real", "stride": 15, "val_fraction": 0.25},
            "train": {"epochs": 1, "batch_size": 32},
        }
    )
    result = pretrain(config, tmp_path / "real")
    assert result.train_windows > 20 and result.val_windows > 5
    assert pd.Timestamp(result.cutoff) == pd.Timestamp(result.cutoff).normalize()
    assert result.val_loss is not None and result.val_loss > 0

"""Masking strategies, the masked loss, and the proof that masked inputs never reach the encoder."""

import pytest
import torch
from torch import nn

from moola_core.errors import MoolaError
from moola_core.pretrain.masking import apply_mask, make_mask, masked_count
from moola_core.pretrain.pretrainer import JadePretrainer, masked_huber_loss

torch.set_num_threads(1)
T, F = 105, 11


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("strategy", ["random", "block", "patch"])
@pytest.mark.parametrize("ratio", [0.15, 0.4, 0.6])
def test_every_strategy_masks_the_configured_share_of_each_window(strategy, ratio):
    mask = make_mask(32, T, strategy, ratio, _gen(), block_len=8, patch_len=7)
    assert mask.shape == (32, T) and mask.dtype == torch.bool
    counts = mask.sum(dim=1)
    expected = masked_count(T // 7, ratio) * 7 if strategy == "patch" else masked_count(T, ratio)
    assert torch.all(counts == expected), counts
    # different windows get different masks
    assert not torch.all(mask == mask[0])


def test_block_mask_is_made_of_separate_blocks_of_the_configured_length():
    mask = make_mask(64, T, "block", 0.4, _gen(1), block_len=7)
    for row in mask.int():
        edges = torch.diff(
            torch.cat([torch.zeros(1, dtype=torch.int), row, torch.zeros(1, dtype=torch.int)])
        )
        starts = torch.nonzero(edges == 1).flatten()
        ends = torch.nonzero(edges == -1).flatten()
        lengths = ends - starts
        assert len(lengths) == 6  # 42 masked steps / block_len 7
        assert torch.all(lengths == 7)


def test_patch_mask_hides_whole_grid_patches():
    mask = make_mask(16, T, "patch", 0.4, _gen(2), patch_len=7)
    per_patch = mask.view(16, 15, 7)
    assert torch.all(per_patch.all(dim=2) | (~per_patch).all(dim=2))


def test_masks_repeat_with_the_same_generator_seed():
    a = make_mask(8, T, "random", 0.3, _gen(5))
    b = make_mask(8, T, "random", 0.3, _gen(5))
    assert torch.equal(a, b)


def test_bad_masking_settings_are_user_errors():
    with pytest.raises(MoolaError, match="strategy"):
        make_mask(2, T, "stripes", 0.4, _gen())
    with pytest.raises(MoolaError, match="ratio"):
        make_mask(2, T, "random", 1.5, _gen())


def test_apply_mask_replaces_masked_rows_with_the_token_and_keeps_the_rest():
    x = torch.randn(4, T, F)
    mask = make_mask(4, T, "block", 0.4, _gen())
    token = torch.arange(F, dtype=torch.float32)
    out = apply_mask(x, mask, token)
    assert torch.equal(out[mask], token.expand(int(mask.sum()), F))
    assert torch.equal(out[~mask], x[~mask])


def test_loss_counts_only_masked_and_valid_positions():
    target = torch.zeros(2, T, F)
    reconstruction = torch.zeros(2, T, F)
    mask = torch.zeros(2, T, dtype=torch.bool)
    valid = torch.ones(2, T, dtype=torch.bool)
    mask[:, 50:60] = True
    valid[:, 55:60] = False  # warm-up-like rows inside the masked block
    reconstruction[:, :50] = 100.0  # huge error, but visible: ignored
    reconstruction[:, 55:60] = 100.0  # huge error, but invalid: ignored
    reconstruction[:, 50:55] = 0.5  # the only counted error
    loss, positions = masked_huber_loss(reconstruction, target, mask, valid)
    assert positions == 10  # 5 steps x 2 windows
    assert loss.item() == pytest.approx(0.5 * 0.5**2)  # Huber below delta is quadratic
    reconstruction[:, 50:55] = 3.0  # beyond delta 1.0 the loss is linear: 3 - 0.5
    assert masked_huber_loss(reconstruction, target, mask, valid)[0].item() == pytest.approx(2.5)


def _random_walk_windows(n, seed=0):
    g = _gen(seed)
    return torch.randn(n, T, F, generator=g).cumsum(dim=1) * 0.3


class CopyEncoder(nn.Module):
    """A cheating encoder: hands its input straight to the decoder (zero-padded to 2H)."""

    def __init__(self, hidden):
        super().__init__()
        self.hidden = hidden

    def forward(self, x):
        return nn.functional.pad(x, (0, 2 * self.hidden - x.shape[-1]))


def test_an_encoder_that_copies_its_input_cannot_reconstruct_masked_positions():
    hidden = 16
    model = JadePretrainer(hidden=hidden, layers=1, dropout=0.0)
    model.encoder = CopyEncoder(hidden)
    # decoder = exact identity on the copied features: perfect on anything it can see
    model.decoder = nn.Sequential(nn.Linear(2 * hidden, F, bias=False))
    with torch.no_grad():
        model.decoder[0].weight.zero_()
        model.decoder[0].weight[:, :F] = torch.eye(F)
    x = _random_walk_windows(64)
    valid = torch.ones(64, T, dtype=torch.bool)
    mask = make_mask(64, T, "block", 0.4, _gen(3))
    # the best the cheat can do: the mask token set to the mean of the data
    with torch.no_grad():
        model.mask_token.copy_(x.mean(dim=(0, 1)))
        reconstruction = model(x, mask)
    masked_loss, _ = masked_huber_loss(reconstruction, x, mask, valid)
    visible_loss, _ = masked_huber_loss(reconstruction, x, ~mask, valid)
    assert visible_loss.item() < 1e-6  # the copy is perfect where it can see ...
    # ... and no better than predicting the mean where it cannot
    mean_loss, _ = masked_huber_loss(x.mean(dim=(0, 1)).expand_as(x), x, mask, valid)
    assert masked_loss.item() == pytest.approx(mean_loss.item(), rel=1e-5)
    assert masked_loss.item() > 0.3


def test_masked_inputs_never_reach_the_encoder():
    torch.manual_seed(0)
    model = JadePretrainer(hidden=8, layers=1, dropout=0.0).eval()
    seen = []
    model.encoder.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    x = _random_walk_windows(8, seed=1)
    mask = make_mask(8, T, "random", 0.4, _gen(4))
    with torch.no_grad():
        out_a = model(x, mask)
        changed = x.clone()
        changed[mask] = 1e6  # anything at all in the masked positions
        out_b = model(changed, mask)
    encoder_input = seen[0]
    assert torch.equal(encoder_input[mask], model.mask_token.expand(int(mask.sum()), F))
    assert torch.equal(encoder_input[~mask], x[~mask])
    assert torch.equal(seen[0], seen[1])
    assert torch.equal(out_a, out_b)  # so the reconstruction cannot depend on hidden values


def test_the_mask_token_learns_and_the_loss_falls():
    torch.manual_seed(0)
    model = JadePretrainer(hidden=16, layers=1, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = _random_walk_windows(32, seed=2)
    valid = torch.ones(32, T, dtype=torch.bool)
    token_before = model.mask_token.detach().clone()
    losses = []
    for step in range(30):
        mask = make_mask(32, T, "block", 0.3, _gen(step))
        loss, _ = masked_huber_loss(model(x, mask), x, mask, valid)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert not torch.equal(model.mask_token.detach(), token_before)
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])

"""Which timesteps the pre-trainer hides, and how it hides them.

A mask is a bool tensor [B, T]: True where the timestep is hidden from the encoder and must be
reconstructed. Three strategies, all with an exact number of masked timesteps per window
(round(ratio * T), at least one) so the loss sees the same amount of work in every batch:

- ``random``: independent timesteps anywhere in the window;
- ``block``:  a few contiguous, non-touching blocks of about ``block_len`` timesteps at random
              positions, so the model cannot interpolate from the immediate neighbours;
- ``patch``:  the window is cut into a fixed grid of ``patch_len`` timesteps and whole patches
              are hidden (the MAE/PatchTST recipe).

Masked timesteps are overwritten with a learned mask token *before* the encoder runs
(``apply_mask``): the original values never reach it.
"""

from __future__ import annotations

import math

import torch

from moola_core.errors import MoolaError

STRATEGIES = ("random", "block", "patch")


def masked_count(seq_len: int, ratio: float) -> int:
    """How many timesteps of a window of `seq_len` are masked at `ratio` (at least 1)."""
    if not 0.0 < ratio < 1.0:
        raise MoolaError(f"mask ratio {ratio} is outside (0, 1); set masking.ratio to e.g. 0.4.")
    return min(seq_len - 1, max(1, round(ratio * seq_len)))


def random_mask(batch: int, seq_len: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Mask round(ratio*T) timesteps chosen uniformly per window. Returns bool [B, T]."""
    n_masked = masked_count(seq_len, ratio)
    scores = torch.rand(batch, seq_len, generator=generator)  # [B, T]
    hidden = scores.argsort(dim=1)[:, :n_masked]  # [B, n_masked]
    mask = torch.zeros(batch, seq_len, dtype=torch.bool)
    mask.scatter_(1, hidden, True)
    return mask


def block_mask(
    batch: int, seq_len: int, ratio: float, block_len: int, generator: torch.Generator
) -> torch.Tensor:
    """Mask round(ratio*T) timesteps as k separate contiguous blocks of ~block_len each.

    The unmasked timesteps are spread over the k+1 gaps around the blocks at random (inner gaps
    at least one timestep, so blocks never merge). Returns bool [B, T].
    """
    if block_len < 1:
        raise MoolaError(f"block_len {block_len} must be at least 1; set masking.block_len.")
    n_masked = masked_count(seq_len, ratio)
    n_visible = seq_len - n_masked
    k = max(1, min(round(n_masked / block_len), n_visible + 1))
    # block lengths: n_masked split into k near-equal parts
    lengths = torch.full((k,), n_masked // k, dtype=torch.long)
    lengths[: n_masked % k] += 1
    # free visible timesteps after reserving one between neighbouring blocks
    free = n_visible - (k - 1)
    offsets = torch.randint(0, free + 1, (batch, k), generator=generator).sort(dim=1).values
    before = torch.cumsum(lengths, 0) - lengths  # masked timesteps before block i: [k]
    starts = offsets + torch.arange(k) + before  # [B, k]
    ends = starts + lengths  # [B, k], exclusive
    pos = torch.arange(seq_len).view(1, 1, seq_len)  # [1, 1, T]
    inside = (pos >= starts.unsqueeze(-1)) & (pos < ends.unsqueeze(-1))  # [B, k, T]
    return inside.any(dim=1)


def patch_mask(
    batch: int, seq_len: int, ratio: float, patch_len: int, generator: torch.Generator
) -> torch.Tensor:
    """Mask whole patches of a fixed grid of `patch_len` timesteps. Returns bool [B, T].

    The count is round(ratio * n_patches) patches; with T=105 and patch_len 5 or 7 the grid
    is exact, otherwise the last patch is shorter.
    """
    if patch_len < 1:
        raise MoolaError(f"patch_len {patch_len} must be at least 1; set masking.patch_len.")
    n_patches = math.ceil(seq_len / patch_len)
    if n_patches < 2:
        raise MoolaError(
            f"patch_len {patch_len} leaves fewer than 2 patches in {seq_len} timesteps; "
            "choose a smaller masking.patch_len."
        )
    n_hidden = masked_count(n_patches, ratio)
    scores = torch.rand(batch, n_patches, generator=generator)
    hidden = scores.argsort(dim=1)[:, :n_hidden]
    patches = torch.zeros(batch, n_patches, dtype=torch.bool)
    patches.scatter_(1, hidden, True)  # [B, n_patches]
    patch_of_step = torch.arange(seq_len) // patch_len  # [T]
    return patches[:, patch_of_step]  # [B, T]


def make_mask(
    batch: int,
    seq_len: int,
    strategy: str,
    ratio: float,
    generator: torch.Generator,
    *,
    block_len: int = 8,
    patch_len: int = 7,
) -> torch.Tensor:
    """A bool mask [B, T] (True = hidden) drawn with `strategy` on the CPU generator."""
    if strategy == "random":
        return random_mask(batch, seq_len, ratio, generator)
    if strategy == "block":
        return block_mask(batch, seq_len, ratio, block_len, generator)
    if strategy == "patch":
        return patch_mask(batch, seq_len, ratio, patch_len, generator)
    raise MoolaError(f"unknown masking strategy {strategy!r}; use one of {', '.join(STRATEGIES)}.")


def apply_mask(x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
    """Replace the masked timesteps of x [B, T, F] by mask_token [F]; the originals are dropped.

    torch.where builds a new tensor, so gradients reach the token only through masked rows and
    nothing of x at a masked timestep survives.
    """
    token = mask_token.to(dtype=x.dtype).view(1, 1, -1).expand_as(x)  # [B, T, F]
    return torch.where(mask.unsqueeze(-1), token, x)

"""The one home of the expansion-span encoding. Standard library and torch only.

A span is a pair of bar indices `(start, end)` inside a window of `T` bars with
`0 <= start <= end <= T - 1`; **end is inclusive**, so `length = end - start + 1` (1..T) and
`center = (start + end) / 2`. Every other encoding (per-bar mask, center/length, start/end
distributions) converts through the functions here, so no module divides by T or T-1 on its
own (the original project mixed /104 with /105 and e-s with e-s+1). See docs/spans.md.
"""

from __future__ import annotations

import torch


def span_length(start, end):
    """Number of bars in the inclusive span [start, end]."""
    return end - start + 1


def to_center_length(start: torch.Tensor, end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer spans [B] -> (center, length) in bar units, as float tensors [B]."""
    start, end = start.float(), end.float()
    return (start + end) / 2.0, end - start + 1.0


def from_center_length(
    center: torch.Tensor, length: torch.Tensor, window_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(center, length) in bars [B] -> integer spans (start, end) [B], clipped into the window.

    The exact inverse of `to_center_length` for integer spans; otherwise the nearest span of the
    rounded length that fits in the window.
    """
    length = torch.floor(length + 0.5).clamp(1, window_len)
    # half-up rounding (not banker's) so that x.5 always moves the same way
    start = torch.floor(center - (length - 1.0) / 2.0 + 0.5)
    start = torch.minimum(start.clamp(min=0), window_len - length)
    end = start + length - 1
    return start.long(), end.long()


def to_mask(start: torch.Tensor, end: torch.Tensor, window_len: int) -> torch.Tensor:
    """Spans [B] -> per-bar in-span mask bool [B, T] (True on start..end inclusive)."""
    positions = torch.arange(window_len, device=start.device)  # [T]
    return (positions[None, :] >= start[:, None]) & (positions[None, :] <= end[:, None])


def from_mask(mask: torch.Tensor, fallback: torch.Tensor | None = None):
    """Per-bar mask bool [B, T] -> (start, end) [B] of the longest run of True per row.

    Ties go to the earliest run. A row with no True bar takes `fallback[b]` (a single bar;
    default 0) for both ends, so every window always gets a span.
    """
    batch, window_len = mask.shape
    starts = torch.zeros(batch, dtype=torch.long)
    ends = torch.zeros(batch, dtype=torch.long)
    rows = mask.detach().cpu().tolist()
    for b, row in enumerate(rows):
        best_len, best_start, run_start = 0, -1, None
        for t, inside in enumerate(row + [False]):  # sentinel closes a run at the end
            if inside and run_start is None:
                run_start = t
            elif not inside and run_start is not None:
                if t - run_start > best_len:
                    best_len, best_start = t - run_start, run_start
                run_start = None
        if best_len == 0:
            single = int(fallback[b]) if fallback is not None else 0
            starts[b], ends[b] = single, single
        else:
            starts[b], ends[b] = best_start, best_start + best_len - 1
    return starts.to(mask.device), ends.to(mask.device)


def best_pair(
    start_scores: torch.Tensor, end_scores: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode start/end scores [B, T] (log-probabilities) as the best pair with start <= end.

    Maximises start_scores[s] + end_scores[e] over s <= e, both on valid bars (as QA span
    extraction does), instead of two independent argmaxes that can cross.
    """
    batch, window_len = start_scores.shape
    pair = start_scores[:, :, None] + end_scores[:, None, :]  # [B, T(start), T(end)]
    allowed = torch.ones(window_len, window_len, dtype=torch.bool, device=pair.device).triu()
    allowed = allowed[None].expand(batch, -1, -1)
    if valid is not None:
        allowed = allowed & valid[:, :, None] & valid[:, None, :]
    pair = pair.masked_fill(~allowed, float("-inf"))
    flat = pair.reshape(batch, -1).argmax(dim=1)  # [B]
    return flat // window_len, flat % window_len

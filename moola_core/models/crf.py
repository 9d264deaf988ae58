"""A small linear-chain CRF (vectorised over the batch), tagging each bar in-span or not.

Written here instead of depending on pytorch-crf (unmaintained since 2019); it is a few dozen
lines for our case. Every sequence has the full window length: bars that must be ignored (the
feature warm-up) get zero emissions from the caller, so they carry a tag but no evidence.
Checked against brute-force enumeration in tests/unit/test_crf.py. Torch only.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearChainCRF(nn.Module):
    """Transition scores between tags plus start/end scores; emissions come from the model."""

    def __init__(self, num_tags: int = 2):
        super().__init__()
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))  # [from, to]
        self.start_scores = nn.Parameter(torch.zeros(num_tags))
        self.end_scores = nn.Parameter(torch.zeros(num_tags))

    def log_partition(self, emissions: torch.Tensor) -> torch.Tensor:
        """log Z for emissions [B, T, K] -> [B] (forward algorithm in log space)."""
        alpha = self.start_scores + emissions[:, 0]  # [B, K]
        for t in range(1, emissions.shape[1]):
            # [B, K(from), 1] + [K(from), K(to)] -> logsumexp over from -> [B, K(to)]
            alpha = torch.logsumexp(alpha[:, :, None] + self.transitions, dim=1) + emissions[:, t]
        return torch.logsumexp(alpha + self.end_scores, dim=1)

    def sequence_score(self, emissions: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        """Unnormalised score of tag sequences tags [B, T] under emissions [B, T, K] -> [B]."""
        emitted = emissions.gather(2, tags[:, :, None]).squeeze(2).sum(dim=1)  # [B]
        moved = self.transitions[tags[:, :-1], tags[:, 1:]].sum(dim=1)  # [B]
        return self.start_scores[tags[:, 0]] + emitted + moved + self.end_scores[tags[:, -1]]

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of the gold tags [B, T] (the training loss)."""
        return (self.log_partition(emissions) - self.sequence_score(emissions, tags)).mean()

    @torch.no_grad()
    def viterbi(self, emissions: torch.Tensor) -> torch.Tensor:
        """Most likely tag sequence for emissions [B, T, K] -> tags int64 [B, T]."""
        batch, length, _ = emissions.shape
        score = self.start_scores + emissions[:, 0]  # [B, K]
        backpointers = []
        for t in range(1, length):
            candidates = score[:, :, None] + self.transitions  # [B, K(from), K(to)]
            score, best_from = candidates.max(dim=1)  # [B, K(to)]
            score = score + emissions[:, t]
            backpointers.append(best_from)
        last = (score + self.end_scores).argmax(dim=1)  # [B]
        tags = [last]
        for best_from in reversed(backpointers):
            last = best_from.gather(1, last[:, None]).squeeze(1)
            tags.append(last)
        return torch.stack(tags[::-1], dim=1)

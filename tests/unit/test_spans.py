"""The span encoding round-trips exactly; decoders never return crossed or out-of-window spans."""

import itertools

import torch

from moola_core import spans

T = 105


def all_spans(window_len):
    pairs = [(s, e) for s in range(window_len) for e in range(s, window_len)]
    start = torch.tensor([p[0] for p in pairs])
    end = torch.tensor([p[1] for p in pairs])
    return start, end


def test_length_is_inclusive():
    assert spans.span_length(10, 10) == 1
    assert spans.span_length(0, T - 1) == T


def test_center_length_round_trip_is_exact_for_every_span_of_the_window():
    start, end = all_spans(T)
    center, length = spans.to_center_length(start, end)
    assert float(length.min()) == 1.0 and float(length.max()) == float(T)
    back_start, back_end = spans.from_center_length(center, length, T)
    assert torch.equal(back_start, start) and torch.equal(back_end, end)


def test_center_length_decoding_clips_into_the_window():
    start, end = spans.from_center_length(
        torch.tensor([-5.0, 104.0, 50.0, 50.0]), torch.tensor([10.0, 30.0, 500.0, 0.2]), T
    )
    assert start.tolist() == [0, 75, 0, 50]
    assert end.tolist() == [9, 104, 104, 50]


def test_mask_round_trip_for_every_span():
    start, end = all_spans(12)
    mask = spans.to_mask(start, end, 12)
    assert mask.sum(1).tolist() == (end - start + 1).tolist()
    back_start, back_end = spans.from_mask(mask)
    assert torch.equal(back_start, start) and torch.equal(back_end, end)


def test_from_mask_takes_longest_run_earliest_on_ties_and_fallback_when_empty():
    rows = torch.tensor(
        [
            [1, 1, 0, 1, 1, 1, 0, 0],
            [1, 1, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    start, end = spans.from_mask(rows, fallback=torch.tensor([0, 0, 5, 0]))
    assert start.tolist() == [3, 0, 5, 6]
    assert end.tolist() == [5, 1, 5, 7]


def test_best_pair_matches_brute_force_and_never_crosses():
    torch.manual_seed(0)
    length = 9
    start_scores = torch.randn(20, length).log_softmax(1)
    end_scores = torch.randn(20, length).log_softmax(1)
    valid = torch.ones(20, length, dtype=torch.bool)
    valid[:, :2] = False
    start, end = spans.best_pair(start_scores, end_scores, valid)
    for b in range(20):
        best = max(
            (
                (float(start_scores[b, s] + end_scores[b, e]), s, e)
                for s, e in itertools.product(range(2, length), repeat=2)
                if s <= e
            )
        )
        assert (int(start[b]), int(end[b])) == (best[1], best[2])
    assert bool((start <= end).all()) and bool((start >= 2).all())


def test_best_pair_prefers_a_consistent_pair_over_crossed_argmaxes():
    # independent argmaxes would give start=3 > end=1
    start_scores = torch.tensor([[0.0, 0.0, 0.0, 5.0, 0.0]])
    end_scores = torch.tensor([[0.0, 5.0, 0.0, 4.0, 0.0]])
    start, end = spans.best_pair(start_scores, end_scores)
    assert (int(start), int(end)) == (3, 3)

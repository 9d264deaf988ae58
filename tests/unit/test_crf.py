"""The CRF's log-partition and Viterbi agree with brute-force enumeration of all tag paths."""

import itertools

import torch

from moola_core.models.crf import LinearChainCRF

torch.set_num_threads(1)


def random_crf(seed, num_tags=2):
    torch.manual_seed(seed)
    crf = LinearChainCRF(num_tags)
    with torch.no_grad():
        crf.transitions.normal_()
        crf.start_scores.normal_()
        crf.end_scores.normal_()
    return crf


def all_paths(length, num_tags):
    return torch.tensor(list(itertools.product(range(num_tags), repeat=length)))  # [K^T, T]


def test_log_partition_equals_logsumexp_over_every_path():
    for seed, length, num_tags in [(0, 1, 2), (1, 4, 2), (2, 6, 2), (3, 4, 3)]:
        crf = random_crf(seed, num_tags)
        emissions = torch.randn(3, length, num_tags)
        paths = all_paths(length, num_tags)
        for b in range(3):
            scores = crf.sequence_score(emissions[b : b + 1].expand(len(paths), -1, -1), paths)
            expected = torch.logsumexp(scores, dim=0)
            got = crf.log_partition(emissions[b : b + 1])[0]
            assert torch.allclose(got, expected, atol=1e-5), (seed, b, got, expected)


def test_sequence_score_by_hand():
    crf = LinearChainCRF(2)
    with torch.no_grad():
        crf.transitions.copy_(torch.tensor([[0.1, 0.2], [0.3, 0.4]]))
        crf.start_scores.copy_(torch.tensor([1.0, 2.0]))
        crf.end_scores.copy_(torch.tensor([10.0, 20.0]))
    emissions = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    tags = torch.tensor([[1, 0, 1]])
    # start[1] + e(0,1) + e(1,0) + e(2,1) + trans[1,0] + trans[0,1] + end[1]
    expected = 2.0 + 2.0 + 3.0 + 6.0 + 0.3 + 0.2 + 20.0
    got = crf.sequence_score(emissions, tags)[0].detach()
    assert abs(float(got) - expected) < 1e-5


def test_viterbi_returns_the_best_path_by_enumeration():
    for seed, length in [(4, 1), (5, 5), (6, 7)]:
        crf = random_crf(seed)
        emissions = torch.randn(5, length, 2)
        paths = all_paths(length, 2)
        decoded = crf.viterbi(emissions)
        for b in range(5):
            scores = crf.sequence_score(emissions[b : b + 1].expand(len(paths), -1, -1), paths)
            assert decoded[b].tolist() == paths[scores.argmax()].tolist()


def test_nll_is_positive_and_gradients_flow():
    crf = random_crf(7)
    emissions = torch.randn(4, 6, 2, requires_grad=True)
    tags = torch.randint(0, 2, (4, 6))
    loss = crf.nll(emissions, tags)
    loss.backward()
    assert loss.item() > 0
    assert emissions.grad is not None and crf.transitions.grad.abs().sum() > 0

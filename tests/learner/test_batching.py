"""Padding-aware micro-batching, the naive baseline, and right-padding."""

import random

import pytest
import torch

from temper.learner.batching import naive_micro_batches, pad_right, plan_micro_batches


def cost(lengths, batch):
    return len(batch) * max(lengths[i] for i in batch)


def test_plan_by_hand():
    # Sorted longest first: 10 (idx 1), 6 (idx 3), 5 (idx 0), 4 (idx 4), 2 (idx 2), 1 (idx 5); budget 12.
    #   [1]: 10 alone, since adding 6 would cost 2 * 10 = 20 > 12
    #   [3, 0]: 2 * 6 = 12 fits; adding 4 would cost 3 * 6 = 18
    #   [4, 2, 5]: 3 * 4 = 12 fits
    assert plan_micro_batches([5, 10, 2, 6, 4, 1], token_budget=12) == [[1], [3, 0], [4, 2, 5]]


def test_over_long_sample_gets_its_own_batch():
    # Sorted: 50 (idx 1), 8 (2), 8 (4), 3 (0), 3 (3); budget 16. 50 > 16 -> alone; 2 * 8 = 16 fits, a third
    # would cost 3 * 8 = 24; the two 3s cost 2 * 3 = 6.
    assert plan_micro_batches([3, 50, 8, 3, 8], token_budget=16) == [[1], [2, 4], [0, 3]]


def test_ties_keep_input_order_and_empty_input():
    assert plan_micro_batches([4, 4, 4], token_budget=8) == [[0, 1], [2]]
    assert plan_micro_batches([], token_budget=8) == []
    with pytest.raises(ValueError, match="token_budget"):
        plan_micro_batches([1], token_budget=0)


def test_plan_properties_on_random_long_tailed_lengths():
    rng = random.Random(0)
    for trial in range(50):
        lengths = [min(int(rng.lognormvariate(3, 1)) + 1, 400) for _ in range(rng.randint(1, 80))]
        budget = rng.choice([64, 256, 1000])
        plan = plan_micro_batches(lengths, budget)
        assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))  # each sample once
        for batch in plan:
            assert cost(lengths, batch) <= budget or len(batch) == 1
        # Greedy fill: the next micro-batch's first (longest) sample would not have fitted.
        for batch in plan[:-1]:
            assert (len(batch) + 1) * max(lengths[i] for i in batch) > budget


def test_padding_aware_pads_less_than_naive():
    rng = random.Random(1)
    lengths = [rng.choice([8] * 15 + [200]) for _ in range(64)]
    padded = sum(cost(lengths, b) for b in plan_micro_batches(lengths, token_budget=8 * 200))
    naive = sum(cost(lengths, b) for b in naive_micro_batches(lengths, batch_size=8))
    assert padded < naive / 2


def test_naive_chunks_in_order():
    assert naive_micro_batches([1, 2, 3, 4, 5], batch_size=2) == [[0, 1], [2, 3], [4]]
    assert naive_micro_batches([], batch_size=2) == []
    with pytest.raises(ValueError, match="batch_size"):
        naive_micro_batches([1], batch_size=0)


def test_pad_right_ints_and_floats():
    ids = pad_right([[5, 6, 7], [8], []], pad=0)
    assert ids.dtype == torch.int64
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    logp = pad_right([[-0.5, -1.0], [-2.0]], pad=0.0)
    assert logp.dtype == torch.float32
    torch.testing.assert_close(logp, torch.tensor([[-0.5, -1.0], [-2.0, 0.0]]))
    mixed = pad_right([[1, 0], [1]], pad=0.0)  # a float pad makes a float tensor (e.g. a loss mask)
    assert mixed.dtype == torch.float32 and mixed.tolist() == [[1.0, 0.0], [1.0, 0.0]]
    assert pad_right([], pad=0).shape == (0, 0)

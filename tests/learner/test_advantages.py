"""Advantage estimators against values derived by hand."""

import pytest
import torch

from temper.configs.algorithm import AlgorithmConfig, DrGRPOAdvantage, GRPOAdvantage, RLOOAdvantage
from temper.learner.advantages import compute_advantages

# Three groups of four: one right answer out of four, two out of four, all four right.
REWARDS_GN = torch.tensor(
    [
        [0.0, 0.0, 0.0, 1.0],
        [1.0, 0.0, 0.0, 1.0],
        [1.0, 1.0, 1.0, 1.0],
    ]
)


def test_grpo_divides_by_the_unbiased_group_std():
    # Group 0: mean 0.25, centred (-.25, -.25, -.25, .75), unbiased var (3 * .0625 + .5625) / 3 = .25, std .5
    #          -> (-.5, -.5, -.5, 1.5).
    # Group 1: mean .5, centred (.5, -.5, -.5, .5), var (4 * .25) / 3 = 1/3, std .57735 -> +-.866025.
    # Group 2: zero variance -> 0 / (0 + eps) = 0 (not NaN).
    adv = compute_advantages(REWARDS_GN, GRPOAdvantage())
    expected = torch.tensor(
        [
            [-0.5, -0.5, -0.5, 1.5],
            [0.866025, -0.866025, -0.866025, 0.866025],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    assert adv.dtype == torch.float32 and adv.shape == (3, 4)
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)


def test_dr_grpo_only_subtracts_the_group_mean():
    # Group 0: r - .25; group 1: r - .5; group 2: 0.
    adv = compute_advantages(REWARDS_GN, DrGRPOAdvantage())
    expected = torch.tensor(
        [
            [-0.25, -0.25, -0.25, 0.75],
            [0.5, -0.5, -0.5, 0.5],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(adv, expected, atol=1e-7, rtol=0)


def test_rloo_subtracts_the_mean_of_the_other_samples():
    # Group 0, sample 0: others (0, 0, 1) mean 1/3 -> -1/3; sample 3: others (0, 0, 0) -> 1.
    # Group 1, sample 0: others (0, 0, 1) -> 1 - 1/3 = 2/3; sample 1: others (1, 0, 1) -> -2/3.
    # Group 2: 0. (Equivalently N / (N - 1) * (r - mean) = 4/3 * Dr.GRPO's values.)
    adv = compute_advantages(REWARDS_GN, RLOOAdvantage())
    third = 1 / 3
    expected = torch.tensor(
        [
            [-third, -third, -third, 1.0],
            [2 * third, -2 * third, -2 * third, 2 * third],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(adv.sum(dim=1), torch.zeros(3), atol=1e-6, rtol=0)


def test_grpo_is_invariant_to_reward_shift_and_scale():
    rewards = torch.tensor([[3.0, 7.0, 5.0, 1.0]])
    a = compute_advantages(rewards, GRPOAdvantage(eps=1e-12))
    b = compute_advantages(1000.0 + 10.0 * rewards, GRPOAdvantage(eps=1e-12))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_accepts_the_union_member_from_a_parsed_config():
    cfg = AlgorithmConfig.model_validate({"advantage": {"type": "rloo"}})
    adv = compute_advantages(torch.tensor([[1.0, 0.0]]), cfg.advantage)
    # Two samples: each baseline is the other reward -> (1, -1).
    torch.testing.assert_close(adv, torch.tensor([[1.0, -1.0]]))


def test_int_rewards_and_no_gradient():
    rewards = torch.tensor([[1, 0]], dtype=torch.int64)
    adv = compute_advantages(rewards, DrGRPOAdvantage())
    assert adv.dtype == torch.float32 and not adv.requires_grad
    torch.testing.assert_close(adv, torch.tensor([[0.5, -0.5]]))


@pytest.mark.parametrize("cfg", [GRPOAdvantage(), DrGRPOAdvantage(), RLOOAdvantage()])
def test_rejects_groups_of_one(cfg):
    with pytest.raises(ValueError, match="group_size >= 2"):
        compute_advantages(torch.tensor([[1.0], [0.0]]), cfg)


def test_rejects_wrong_rank_and_non_finite_rewards():
    with pytest.raises(ValueError, match="num_groups, group_size"):
        compute_advantages(torch.tensor([1.0, 0.0]), GRPOAdvantage())
    with pytest.raises(ValueError, match="finite"):
        compute_advantages(torch.tensor([[1.0, float("nan")]]), GRPOAdvantage())

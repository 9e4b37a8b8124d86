"""Group-relative advantages: one scalar per sample from the rewards of its group.

Every estimator here is a baseline subtracted from the reward of each sample, with the baseline taken from
the other samples answering the same prompt; they differ only in the baseline and the scale:

- GRPO:     A_i = (r_i - mean(r)) / (std(r) + eps), with the *unbiased* std (N - 1 in the denominator), as
            in TRL's and verl's GRPO. A group whose rewards are all equal gets A = 0, not NaN.
- Dr.GRPO:  A_i = r_i - mean(r). Dividing by the std makes a group where 1 of 8 answers is right push as
            hard as a group where 4 of 8 are; Dr.GRPO drops the division (and pairs it with the
            "constant" loss aggregation, see losses.py).
- RLOO:     A_i = r_i - mean(r_j, j != i) = N / (N - 1) * (r_i - mean(r)). The baseline excludes the sample
            itself, so the estimate is unbiased.

All three need at least two samples per group (a group of one has no baseline).
"""

from __future__ import annotations

import torch

from temper.configs.algorithm import AdvantageConfig, DrGRPOAdvantage, GRPOAdvantage, RLOOAdvantage


def _grpo(rewards_GN: torch.Tensor, cfg: GRPOAdvantage) -> torch.Tensor:
    centred_GN = rewards_GN - rewards_GN.mean(dim=1, keepdim=True)
    std_G1 = rewards_GN.std(dim=1, keepdim=True, correction=1)
    return centred_GN / (std_G1 + cfg.eps)


def _dr_grpo(rewards_GN: torch.Tensor, cfg: DrGRPOAdvantage) -> torch.Tensor:
    return rewards_GN - rewards_GN.mean(dim=1, keepdim=True)


def _rloo(rewards_GN: torch.Tensor, cfg: RLOOAdvantage) -> torch.Tensor:
    n = rewards_GN.shape[1]
    others_mean_GN = (rewards_GN.sum(dim=1, keepdim=True) - rewards_GN) / (n - 1)
    return rewards_GN - others_mean_GN


ESTIMATORS = {
    "grpo": _grpo,
    "dr_grpo": _dr_grpo,
    "rloo": _rloo,
}
"""Advantage estimators by the config's `type` name."""


def compute_advantages(rewards_GN: torch.Tensor, cfg: AdvantageConfig) -> torch.Tensor:
    """Rewards [num_groups, group_size] -> advantages of the same shape, float32."""
    if rewards_GN.ndim != 2:
        raise ValueError(f"rewards must be [num_groups, group_size], got shape {tuple(rewards_GN.shape)}")
    if rewards_GN.shape[1] < 2:
        raise ValueError(
            f"algorithm.advantage.type = {cfg.type!r} needs group_size >= 2 (a baseline from the other "
            f"samples of the group), got rewards of shape {tuple(rewards_GN.shape)}"
        )
    # float64 inside: rewards can be large (e.g. token counts) and the group mean cancels most of them.
    rewards_GN = rewards_GN.detach().to(torch.float64)
    if not torch.isfinite(rewards_GN).all():
        raise ValueError("rewards contain NaN or inf; verifiers must return finite rewards")
    return ESTIMATORS[cfg.type](rewards_GN, cfg).to(torch.float32)

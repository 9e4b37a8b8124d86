"""Micro-batching with gradient accumulation gives the one-batch gradient, for every mode.

Six samples of different lengths (one of them all tool tokens), random logits as the leaf tensor, every
micro-batch padded only to its own longest sample (as the learner will do). The summed micro-batch
gradient w.r.t. the logits must match the one-batch gradient to 1e-6, and so must the loss and metrics.
"""

import itertools

import pytest
import torch

from temper.configs.algorithm import (
    AlgorithmConfig,
    CISPOLoss,
    ClippedLoss,
    GSPOLoss,
    KLConfig,
    OffPolicyConfig,
)
from temper.learner.batching import naive_micro_batches, plan_micro_batches
from temper.learner.losses import (
    PolicyBatch,
    accumulate_metrics,
    finalize_metrics,
    loss_normalizer,
    policy_loss,
)

LENGTHS = [3, 9, 5, 12, 1, 7]
VOCAB = 11
LOSSES = {
    "clip": ClippedLoss(eps_low=0.2, eps_high=0.28),
    "gspo": GSPOLoss(eps_low=0.1, eps_high=0.1),
    "cispo": CISPOLoss(eps_low=0.5, eps_high=0.28),
}
SPLITS = {
    "padding_aware": plan_micro_batches(LENGTHS, token_budget=16),
    "naive_pairs": naive_micro_batches(LENGTHS, batch_size=2),
    "one_each": [[i] for i in range(len(LENGTHS))],
}


def make_data(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B, T = len(LENGTHS), max(LENGTHS)
    logits_BTV = torch.randn(B, T, VOCAB, generator=g)
    tokens_BT = torch.randint(VOCAB, (B, T), generator=g)
    logp0_BT = logits_BTV.log_softmax(-1).gather(-1, tokens_BT[..., None]).squeeze(-1)
    mask_BT = (torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]).float()
    mask_BT *= (torch.rand(B, T, generator=g) > 0.25).float()  # tool tokens sprinkled in
    mask_BT[4] = 0.0  # a sample that is nothing but tool output
    return {
        "logits_BTV": logits_BTV,
        "tokens_BT": tokens_BT,
        "rollout_BT": logp0_BT + 0.3 * torch.randn(B, T, generator=g),
        "prox_BT": logp0_BT + 0.1 * torch.randn(B, T, generator=g),
        "ref_BT": logp0_BT + 0.5 * torch.randn(B, T, generator=g),
        "adv_B": torch.randn(B, generator=g),
        "mask_BT": mask_BT,
    }


def micro_batch(data: dict, logits_leaf_BTV: torch.Tensor, idx: list[int]) -> PolicyBatch:
    T = max(LENGTHS[i] for i in idx)  # padded to this micro-batch's own longest sample
    logprobs_BTV = logits_leaf_BTV[idx, :T].log_softmax(-1)
    return PolicyBatch(
        logp_BT=logprobs_BTV.gather(-1, data["tokens_BT"][idx, :T, None]).squeeze(-1),
        rollout_logp_BT=data["rollout_BT"][idx, :T],
        prox_logp_BT=data["prox_BT"][idx, :T],
        ref_logp_BT=data["ref_BT"][idx, :T],
        entropy_BT=-(logprobs_BTV.exp() * logprobs_BTV).sum(-1),
        adv_B=data["adv_B"][idx],
        mask_BT=data["mask_BT"][idx, :T],
    )


def loss_and_grad(data: dict, cfg: AlgorithmConfig, split: list[list[int]]):
    logits_leaf_BTV = data["logits_BTV"].clone().requires_grad_()
    normalizer = loss_normalizer(cfg, [data["mask_BT"][idx, : max(LENGTHS[i] for i in idx)] for idx in split])
    total_loss, total_metrics = 0.0, {}
    for idx in split:
        loss, metrics = policy_loss(micro_batch(data, logits_leaf_BTV, idx), cfg, normalizer)
        loss.backward()
        total_loss += loss.item()
        total_metrics = accumulate_metrics(total_metrics, metrics)
    return total_loss, logits_leaf_BTV.grad, finalize_metrics(total_metrics)


@pytest.mark.parametrize(
    "aggregation, loss_type, mode",
    list(
        itertools.product(
            ["token_mean", "seq_mean_token_mean", "constant"], LOSSES, ["none", "tis", "decoupled"]
        )
    ),
)
def test_accumulated_gradient_equals_one_batch_gradient(aggregation, loss_type, mode):
    cfg = AlgorithmConfig(
        loss=LOSSES[loss_type],
        aggregation=aggregation,
        constant_normalizer=16,
        off_policy=OffPolicyConfig(mode=mode, tis_cap=1.5),
        kl=KLConfig(coef=0.05, estimator="k3"),
        entropy_coef=0.01,
    )
    data = make_data()
    full_loss, full_grad, full_metrics = loss_and_grad(data, cfg, [list(range(len(LENGTHS)))])
    assert full_grad.abs().sum() > 0
    for name, split in SPLITS.items():
        loss, grad, metrics = loss_and_grad(data, cfg, split)
        torch.testing.assert_close(
            grad, full_grad, atol=1e-6, rtol=0, msg=lambda m, name=name: f"{name}: {m}"
        )
        assert loss == pytest.approx(full_loss, abs=1e-6), name
        assert metrics == pytest.approx(full_metrics, abs=1e-6), name


def test_padding_aware_split_really_splits():
    # Guard against the test above passing trivially: the budget must produce several micro-batches, each
    # holding whole samples, covering all of them once.
    split = SPLITS["padding_aware"]
    assert len(split) >= 3
    assert sorted(i for idx in split for i in idx) == list(range(len(LENGTHS)))

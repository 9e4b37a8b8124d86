"""`policy_loss` against a deliberately naive, per-token Python-loop implementation of the same objective.

The naive version shares no code with learner/losses.py: it walks sample by sample and token by token,
takes stop-gradients by converting to Python floats, and writes clipping as explicit if-branches (the
textbook "is this token clipped?" reading) instead of max/clamp. Gradients are compared w.r.t. the
logits, so the path through log_softmax, gather and the entropy is covered too.
"""

import itertools
import math

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
from temper.learner.losses import PolicyBatch, loss_normalizer, policy_loss

B, T, VOCAB = 5, 8, 7
LENGTHS = [8, 2, 5, 1, 6]


def value(x: torch.Tensor) -> float:
    """A plain Python float: the naive loop's stop-gradient."""
    return float(x.detach())


def naive_loss(logp, rollout, prox, ref, entropy, adv, mask, cfg: AlgorithmConfig) -> torch.Tensor:
    lo, hi = 1 - cfg.loss.eps_low, 1 + cfg.loss.eps_high
    mode, cap = cfg.off_policy.mode, cfg.off_policy.tis_cap
    trained = [[t for t in range(T) if mask[i][t] > 0] for i in range(B)]
    n_tokens = sum(len(ts) for ts in trained)
    n_samples = sum(1 for ts in trained if ts)

    total = torch.zeros(())
    for i in range(B):
        ts = trained[i]
        if not ts:
            continue
        a = float(adv[i])
        # "old" and the behaviour weight, per token, as floats (= no gradient).
        olds, weights = {}, {}
        for t in ts:
            mu = float(rollout[i, t])
            learner = float(prox[i, t]) if prox is not None else value(logp[i, t])
            w = math.exp(learner - mu)
            if mode == "none":
                olds[t], weights[t] = mu, 1.0
            elif mode == "tis":
                olds[t], weights[t] = learner, min(w, cap)
            else:  # decoupled: a weight over the cap removes the token
                olds[t], weights[t] = learner, (w if w <= cap else 0.0)

        if cfg.loss.type == "gspo":
            seq_log_ratio = torch.zeros(())
            for t in ts:
                seq_log_ratio = seq_log_ratio + (logp[i, t] - olds[t])
            s = torch.exp(seq_log_ratio / len(ts))
            if (a > 0 and value(s) > hi) or (a < 0 and value(s) < lo):
                seq_loss = torch.tensor(-a * (hi if a > 0 else lo))
            else:
                seq_loss = -a * s

        sample_sum = torch.zeros(())
        for t in ts:
            lp = logp[i, t]
            if cfg.loss.type == "gspo":
                tok = seq_loss
            else:
                r = torch.exp(lp - olds[t])
                if cfg.loss.type == "clip":
                    if a > 0 and value(r) > hi:
                        tok = torch.tensor(-a * hi)
                    elif a < 0 and value(r) < lo:
                        tok = torch.tensor(-a * lo)
                    else:
                        tok = -a * r
                else:  # cispo
                    c = min(max(value(r), lo), hi)
                    tok = -c * a * lp
            tok = weights[t] * tok
            if cfg.kl.coef > 0:
                d = float(ref[i, t]) - lp
                kl = (lp - float(ref[i, t])) if cfg.kl.estimator == "k1" else torch.exp(d) - d - 1
                tok = tok + cfg.kl.coef * kl
            if cfg.entropy_coef > 0:
                tok = tok - cfg.entropy_coef * entropy[i, t]
            sample_sum = sample_sum + tok

        if cfg.aggregation == "token_mean":
            total = total + sample_sum / n_tokens
        elif cfg.aggregation == "seq_mean_token_mean":
            total = total + (sample_sum / len(ts)) / n_samples
        else:
            total = total + sample_sum / (n_samples * cfg.constant_normalizer)
    return total


def make_inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, VOCAB, generator=g)
    tokens = torch.randint(VOCAB, (B, T), generator=g)
    logp0 = logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
    mask = (torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]).float()
    mask[0, 2:4] = 0.0  # a tool call's output inside sample 0
    mask[2, 1] = 0.0
    mask[3] = 0.0  # all tool output
    return {
        "logits": logits,
        "tokens": tokens,
        "rollout": logp0 + 0.4 * torch.randn(B, T, generator=g),
        "prox": logp0 + 0.15 * torch.randn(B, T, generator=g),
        "ref": logp0 + 0.5 * torch.randn(B, T, generator=g),
        "adv": torch.tensor([1.0, -0.5, 0.75, 2.0, -1.25]),
        "mask": mask,
    }


def forward(logits_leaf, tokens):
    logprobs = logits_leaf.log_softmax(-1)
    logp = logprobs.gather(-1, tokens[..., None]).squeeze(-1)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    return logp, entropy


LOSSES = {
    "clip": ClippedLoss(eps_low=0.2, eps_high=0.28),
    "gspo": GSPOLoss(eps_low=0.15, eps_high=0.15),
    "cispo": CISPOLoss(eps_low=0.4, eps_high=0.28),
}


@pytest.mark.parametrize(
    "loss_type, aggregation, mode, estimator",
    list(
        itertools.product(
            LOSSES,
            ["token_mean", "seq_mean_token_mean", "constant"],
            ["none", "tis", "decoupled"],
            ["k1", "k3"],
        )
    ),
)
def test_policy_loss_matches_naive_loop(loss_type, aggregation, mode, estimator):
    cfg = AlgorithmConfig(
        loss=LOSSES[loss_type],
        aggregation=aggregation,
        constant_normalizer=10,
        off_policy=OffPolicyConfig(mode=mode, tis_cap=1.3),
        kl=KLConfig(coef=0.07, estimator=estimator),
        entropy_coef=0.02,
    )
    x = make_inputs(seed=1)
    # The prox log-probs are only passed where the mode calls for them, as the learner would.
    prox = x["prox"] if mode == "decoupled" else None

    leaf_fast = x["logits"].clone().requires_grad_()
    logp, entropy = forward(leaf_fast, x["tokens"])
    batch = PolicyBatch(
        logp_BT=logp,
        rollout_logp_BT=x["rollout"],
        prox_logp_BT=prox,
        ref_logp_BT=x["ref"],
        entropy_BT=entropy,
        adv_B=x["adv"],
        mask_BT=x["mask"],
    )
    fast, _ = policy_loss(batch, cfg, loss_normalizer(cfg, [x["mask"]]))
    fast.backward()

    leaf_naive = x["logits"].clone().requires_grad_()
    logp, entropy = forward(leaf_naive, x["tokens"])
    naive = naive_loss(logp, x["rollout"], prox, x["ref"], entropy, x["adv"], x["mask"], cfg)
    naive.backward()

    assert fast.item() == pytest.approx(naive.item(), abs=1e-6)
    assert leaf_naive.grad.abs().sum() > 0
    torch.testing.assert_close(leaf_fast.grad, leaf_naive.grad, atol=1e-6, rtol=0)


def test_the_data_exercises_clipping_and_truncation():
    # Guard against the parity test passing on data where nothing is clipped or truncated.
    x = make_inputs(seed=1)
    logp, _ = forward(x["logits"], x["tokens"])
    trained = x["mask"] > 0
    ratio = torch.exp(logp - x["rollout"])[trained]
    assert (ratio > 1.28).any() and (ratio < 0.8).any()
    assert (torch.exp(x["prox"] - x["rollout"])[trained] > 1.3).any()

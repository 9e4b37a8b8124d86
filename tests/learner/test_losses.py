"""Every loss mode against values derived by hand in the comments.

The running example is two samples, four completion positions each:
    sample 0 (A = +1): trained, trained, TOOL token (mask 0), trained
    sample 1 (A = -2): trained, trained, padding, padding
so N_tokens = 5 and N_samples = 2. Tensors are built from the ratios we want (logp = rollout + log r), so
every ratio below is exact by construction. The tool token always carries a wild ratio (3.0) that must
not show up anywhere: not in the loss, not in the gradient, not in ratio_max.
"""

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
from temper.learner.losses import (
    PolicyBatch,
    accumulate_metrics,
    finalize_metrics,
    loss_normalizer,
    policy_loss,
)

MASK = [[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0]]
ADV = [1.0, -2.0]
LOG_ROLLOUT = math.log(0.25)


def make_batch(ratios, adv=ADV, mask=MASK, **extra) -> PolicyBatch:
    """logp = log(0.25) + log(ratio): ratio is exp(logp - rollout) exactly as written."""
    ratio_BT = torch.tensor(ratios)
    rollout_BT = torch.full_like(ratio_BT, LOG_ROLLOUT)
    logp_BT = (rollout_BT + ratio_BT.log()).requires_grad_()
    return PolicyBatch(
        logp_BT=logp_BT,
        rollout_logp_BT=rollout_BT,
        adv_B=torch.tensor(adv),
        mask_BT=torch.tensor(mask),
        **extra,
    )


def config(loss=None, aggregation="token_mean", mode="none", **kw) -> AlgorithmConfig:
    return AlgorithmConfig(
        loss=loss or ClippedLoss(eps_low=0.2, eps_high=0.2),
        aggregation=aggregation,
        off_policy=OffPolicyConfig(mode=mode, tis_cap=2.0),
        constant_normalizer=4,
        **kw,
    )


def run(batch: PolicyBatch, cfg: AlgorithmConfig):
    normalizer = loss_normalizer(cfg, [batch.mask_BT])
    loss, metrics = policy_loss(batch, cfg, normalizer)
    loss.backward()
    return loss.item(), batch.logp_BT.grad, finalize_metrics(metrics)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float32), torch.tensor(expected), atol=atol, rtol=0
    )


# ---------------------------------------------------------------------------------------------- clip
# Ratios (eps_low = eps_high = 0.2, clip range [0.8, 1.2]), loss = max(-A r, -A clip(r)):
#   s0 (A=+1): r=1.5 -> max(-1.5, -1.2) = -1.2  clipped high, no gradient
#              r=0.5 -> max(-0.5, -0.8) = -0.5  (A>0: a low ratio is not clipped), d/dlogp = -A r = -0.5
#              tool (r=3.0) ignored
#              r=1.1 -> -1.1, d/dlogp = -1.1
#   s1 (A=-2): r=0.5 -> max(1.0, 1.6) = 1.6      clipped low, no gradient
#              r=1.5 -> max(3.0, 2.4) = 3.0      (A<0: a high ratio is not clipped), d/dlogp = -A r = 3.0
# Token sum = -1.2 - 0.5 - 1.1 + 1.6 + 3.0 = 1.8.
CLIP_RATIOS = [[1.5, 0.5, 3.0, 1.1], [0.5, 1.5, 1.0, 1.0]]


def test_clip_token_mean():
    # 1.8 / 5 = 0.36; gradients / 5.
    loss, grad, m = run(make_batch(CLIP_RATIOS), config(aggregation="token_mean"))
    close(loss, 0.36)
    close(grad, [[0.0, -0.1, 0.0, -0.22], [0.0, 0.6, 0.0, 0.0]])
    # One clipped low and one clipped high out of 5; ratio mean (1.5+.5+1.1+.5+1.5)/5 = 1.02; max 1.5
    # (not the tool token's 3.0). Mode "none": the learner/rollout mismatch is |log r|:
    # (2 ln 1.5 + 2 ln 2 + ln 1.1) / 5 = (0.810930 + 1.386294 + 0.095310) / 5 = 0.458507.
    close(m["clip_frac_low"], 0.2)
    close(m["clip_frac_high"], 0.2)
    close(m["ratio_mean"], 1.02)
    close(m["ratio_max"], 1.5)
    close(m["tis_truncated_frac"], 0.0)
    close(m["logp_mismatch"], 0.458507)
    close(m["loss"], 0.36)
    assert m["tokens"] == 5 and "kl" not in m and "entropy" not in m


def test_clip_seq_mean_token_mean():
    # s0 mean (-1.2 - 0.5 - 1.1) / 3 = -0.933333; s1 mean (1.6 + 3.0) / 2 = 2.3; mean of the two = 0.683333.
    # Gradients: s0 tokens / 3 / 2 -> -0.5/6 = -0.083333, -1.1/6 = -0.183333; s1 tokens / 2 / 2 -> 3/4 = 0.75.
    loss, grad, _ = run(make_batch(CLIP_RATIOS), config(aggregation="seq_mean_token_mean"))
    close(loss, 0.683333)
    close(grad, [[0.0, -0.083333, 0.0, -0.183333], [0.0, 0.75, 0.0, 0.0]])


def test_clip_constant_normalizer():
    # Dr.GRPO: 1.8 / (2 samples * 4) = 0.225; gradients / 8.
    loss, grad, _ = run(make_batch(CLIP_RATIOS), config(aggregation="constant"))
    close(loss, 0.225)
    close(grad, [[0.0, -0.0625, 0.0, -0.1375], [0.0, 0.375, 0.0, 0.0]])


def test_clip_higher_uses_separate_epsilons():
    # eps_low 0.2, eps_high 0.6 (range [0.8, 1.6]): s0's r=1.5 is no longer clipped -> -1.5 with gradient -1.5;
    # s1 is unchanged. Sum = -1.5 - 0.5 - 1.1 + 1.6 + 3.0 = 1.5 -> /5 = 0.3; s0 t0 gradient -1.5/5 = -0.3.
    cfg = config(loss=ClippedLoss(eps_low=0.2, eps_high=0.6))
    loss, grad, m = run(make_batch(CLIP_RATIOS), cfg)
    close(loss, 0.3)
    close(grad, [[-0.3, -0.1, 0.0, -0.22], [0.0, 0.6, 0.0, 0.0]])
    close(m["clip_frac_high"], 0.0)
    close(m["clip_frac_low"], 0.2)


# ---------------------------------------------------------------------------------------------- off-policy
def test_tis_weights_by_the_truncated_learner_over_rollout_ratio():
    # mode "tis", no prox: the learner's view is stopgrad(logp), so the clipped ratio is exactly 1 (never
    # clipped) and the per-token loss is -A * w with w = min(pi_learner / mu, 2), d/dlogp = -A * w.
    #   s0 (A=+1): w = 1.5, 0.5, (tool), 1.1   -> losses -1.5, -0.5, -1.1
    #   s1 (A=-2): w = 0.5, min(2.5, 2) = 2.0  -> losses  1.0,  4.0   (one token truncated)
    # Sum 1.9 -> token_mean 0.38; gradients / 5: -0.3, -0.1, -0.22 | 0.2, 0.8.
    ratios = [[1.5, 0.5, 3.0, 1.1], [0.5, 2.5, 1.0, 1.0]]
    loss, grad, m = run(make_batch(ratios), config(mode="tis"))
    close(loss, 0.38)
    close(grad, [[-0.3, -0.1, 0.0, -0.22], [0.2, 0.8, 0.0, 0.0]])
    close(m["tis_truncated_frac"], 0.2)
    close(m["ratio_mean"], 1.0)
    close(m["ratio_max"], 1.0)
    close(m["clip_frac_low"] + m["clip_frac_high"], 0.0)
    # mismatch (ln 1.5 + ln 2 + ln 1.1 + ln 2 + ln 2.5) / 5 = (0.405465 + 0.693147 + 0.095310 + 0.693147
    # + 0.916291) / 5 = 0.560672
    close(m["logp_mismatch"], 0.560672)


def test_decoupled_clips_against_prox_and_weights_by_prox_over_rollout():
    # Two ratios per token: r = pi / prox (clipped, [0.8, 1.2]) and w = prox / mu, dropped (0) over the cap 2.
    # A = (+1, -1).
    #   s0 t0: r=1.5, w=1.0  A>0, clipped high -> 1.0 * -1.2 = -1.2, no gradient
    #   s0 t1: r=1.0, w=3 > 2: dropped          -> 0, no gradient
    #   s0 t3: r=0.5, w=0.5  A>0, not clipped  -> 0.5 * -0.5 = -0.25, d/dlogp = -A r w = -0.25
    #   s1 t0: r=0.5, w=1.0  A<0, clipped low  -> 1.0 * 0.8 = 0.8, no gradient
    #   s1 t1: r=1.1, w=1.2                    -> 1.2 * 1.1 = 1.32, d/dlogp = 1.32
    # seq_mean_token_mean: s0 (-1.2 + 0 - .25)/3 = -0.483333, s1 (0.8 + 1.32)/2 = 1.06
    #   -> (-0.483333 + 1.06)/2 = 0.288333. Gradients: s0 / 6 -> 0, 0, -0.041667; s1 / 4 -> 0, 0.33.
    pi_over_prox = torch.tensor([[1.5, 1.0, 3.0, 0.5], [0.5, 1.1, 1.0, 1.0]])
    prox_over_mu = torch.tensor([[1.0, 3.0, 3.0, 0.5], [1.0, 1.2, 1.0, 1.0]])
    rollout_BT = torch.full((2, 4), LOG_ROLLOUT)
    prox_BT = rollout_BT + prox_over_mu.log()
    logp_BT = (prox_BT + pi_over_prox.log()).requires_grad_()
    batch = PolicyBatch(
        logp_BT=logp_BT,
        rollout_logp_BT=rollout_BT,
        prox_logp_BT=prox_BT,
        adv_B=torch.tensor([1.0, -1.0]),
        mask_BT=torch.tensor(MASK),
    )
    loss, grad, m = run(batch, config(aggregation="seq_mean_token_mean", mode="decoupled"))
    close(loss, 0.288333)
    close(grad, [[0.0, 0.0, 0.0, -0.041667], [0.0, 0.33, 0.0, 0.0]])
    close(m["clip_frac_low"], 0.2)
    close(m["clip_frac_high"], 0.2)
    close(m["tis_truncated_frac"], 0.2)
    close(m["ratio_mean"], 0.92)  # (1.5 + 1 + .5 + .5 + 1.1) / 5
    close(m["ratio_max"], 1.5)
    # mismatch is |prox - rollout|: (0 + ln 3 + ln 2 + 0 + ln 1.2) / 5 = (1.098612 + 0.693147 + 0.182322) / 5
    close(m["logp_mismatch"], 0.394816)


def test_tis_truncates_where_decoupled_drops():
    # The inputs of the test above under both modes. Only s0 t1 has a weight over the cap (prox / mu = 3):
    # "tis" keeps it with weight 2 (loss term 2 * -1.0 = -2.0, gradient -A r w = -2.0, / 6 -> -0.333333,
    # loss -(2.0 / 3) / 2 = -0.333333 lower); "decoupled" drops it. Every other token is the same.
    pi_over_prox = torch.tensor([[1.5, 1.0, 3.0, 0.5], [0.5, 1.1, 1.0, 1.0]])
    rollout_BT = torch.full((2, 4), LOG_ROLLOUT)
    prox_BT = rollout_BT + torch.tensor([[1.0, 3.0, 3.0, 0.5], [1.0, 1.2, 1.0, 1.0]]).log()
    results = {}
    for mode in ("tis", "decoupled"):
        batch = PolicyBatch(
            logp_BT=(prox_BT + pi_over_prox.log()).requires_grad_(),
            rollout_logp_BT=rollout_BT,
            prox_logp_BT=prox_BT,
            adv_B=torch.tensor([1.0, -1.0]),
            mask_BT=torch.tensor(MASK),
        )
        results[mode] = run(batch, config(aggregation="seq_mean_token_mean", mode=mode))
    (tis_loss, tis_grad, tis_m), (dec_loss, dec_grad, dec_m) = results["tis"], results["decoupled"]
    close(tis_loss, 0.288333 - 0.333333)
    close(dec_loss, 0.288333)
    close(tis_grad - dec_grad, [[0.0, -0.333333, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    close(tis_m["tis_truncated_frac"], dec_m["tis_truncated_frac"])  # 1 of 5 tokens over the cap in both


def test_decoupled_without_prox_is_an_error():
    with pytest.raises(ValueError, match="prox_logp_BT"):
        run(make_batch(CLIP_RATIOS), config(mode="decoupled"))


# ---------------------------------------------------------------------------------------------- GSPO
# eps 0.2 / 0.2 here (not GSPO's 1e-3 scale) so the numbers are readable. Mode "none".
#   s0 (A=+1): log-ratios ln 2, ln 0.5, (tool ln 3), ln 1.5 -> mean over 3 trained = ln 1.5 / 3,
#              s = 1.5^(1/3) = 1.144714 in range -> per-token loss -1.144714
#   s1 (A=+0.5): ln 2, ln 2 -> s = 2 > 1.2 with A>0 -> clipped: -0.5 * 1.2 = -0.6, no gradient
# Gradient of s0's broadcast loss: each trained token gets d/dlogp_t (-A s) = -s / 3 per token copy.
GSPO_RATIOS = [[2.0, 0.5, 3.0, 1.5], [2.0, 2.0, 1.0, 1.0]]
GSPO_CFG = GSPOLoss(eps_low=0.2, eps_high=0.2)


def test_gspo_token_mean_weights_samples_by_length():
    # 3 * -1.144714 + 2 * -0.6 = -4.634142, / 5 = -0.926828.
    # s0's loss appears on 3 tokens: d/dlogp_t = 3 * (-s / 3) / 5 = -0.228943 on each of s0's trained tokens.
    loss, grad, m = run(make_batch(GSPO_RATIOS, adv=[1.0, 0.5]), config(loss=GSPO_CFG))
    close(loss, -0.926828)
    close(grad, [[-0.228943, -0.228943, 0.0, -0.228943], [0.0, 0.0, 0.0, 0.0]])
    close(m["clip_frac_high"], 0.4)  # both of s1's tokens
    close(m["ratio_mean"], 1.486828)  # (3 * 1.144714 + 2 * 2) / 5
    close(m["ratio_max"], 2.0)


def test_gspo_seq_mean_token_mean_is_the_paper_objective():
    # (-1.144714 - 0.6) / 2 = -0.872357; s0's tokens: -s / 3 / 2 = -0.190786.
    loss, grad, _ = run(
        make_batch(GSPO_RATIOS, adv=[1.0, 0.5]), config(loss=GSPO_CFG, aggregation="seq_mean_token_mean")
    )
    close(loss, -0.872357)
    close(grad, [[-0.190786, -0.190786, 0.0, -0.190786], [0.0, 0.0, 0.0, 0.0]])


# ---------------------------------------------------------------------------------------------- CISPO
def test_cispo_keeps_every_token_and_clips_only_the_weight():
    # eps_low 1.0 (no lower clip), eps_high 0.28: weight c = stopgrad(min(r, 1.28)); loss -c A logp.
    # logp = ln(0.25 r):
    #   s0 (A=+1): r 1.5 -> c 1.28, logp ln .375 = -0.980829 -> 1.255461
    #              r 0.5 -> c 0.5,  logp ln .125 = -2.079442 -> 1.039721
    #              r 1.1 -> c 1.1,  logp ln .275 = -1.290984 -> 1.420083
    #   s1 (A=-2): r 0.5 -> c 0.5,  logp -2.079442             -> -2.079442
    #              r 1.5 -> c 1.28, logp -0.980829             -> -2.510922
    # Sum = 3.715265 - 4.590364 = -0.875099; constant: / (2 * 4) = -0.109387.
    # d/dlogp = -c A / 8: s0 -0.16, -0.0625, -0.1375; s1 0.125, 0.32. Clipped high: s0 t0, s1 t1 -> 2/5.
    cfg = config(loss=CISPOLoss(eps_low=1.0, eps_high=0.28), aggregation="constant")
    loss, grad, m = run(make_batch(CLIP_RATIOS), cfg)
    close(loss, -0.109387)
    close(grad, [[-0.16, -0.0625, 0.0, -0.1375], [0.125, 0.32, 0.0, 0.0]])
    close(m["clip_frac_high"], 0.4)
    close(m["clip_frac_low"], 0.0)


# ---------------------------------------------------------------------------------------------- KL, entropy
# A = 0 makes the policy term exactly 0, leaving the regulariser alone. One sample, tokens trained,
# trained, TOOL, trained; logp - ref = ln 2, -ln 2, (tool: 5), 0.
KL_MASK = [[1.0, 1.0, 0.0, 1.0]]
LOGP_MINUS_REF = torch.tensor([[math.log(2), -math.log(2), 5.0, 0.0]])


def kl_batch() -> PolicyBatch:
    batch = make_batch([[1.0, 1.0, 1.0, 1.0]], adv=[0.0], mask=KL_MASK)
    batch.ref_logp_BT = batch.logp_BT.detach() - LOGP_MINUS_REF
    return batch


def test_kl_k1():
    # k1 = logp - ref: (0.693147 - 0.693147 + 0) / 3 = 0; coef 0.1 -> loss 0; d/dlogp = 0.1 / 3 each.
    loss, grad, m = run(kl_batch(), config(kl=KLConfig(coef=0.1, estimator="k1")))
    close(loss, 0.0)
    close(grad, [[0.033333, 0.033333, 0.0, 0.033333]])
    close(m["kl"], 0.0)


def test_kl_k3():
    # x = ref - logp = -ln 2, ln 2, 0: k3 = e^x - x - 1 = 0.5 + 0.693147 - 1 = 0.193147, 2 - 0.693147 - 1 =
    # 0.306853, 0 -> mean 0.5 / 3 = 0.166667; coef 0.1 -> 0.016667.
    # d k3 / d logp = 1 - e^x = 0.5, -1, 0; times 0.1 / 3 -> 0.016667, -0.033333, 0.
    loss, grad, m = run(kl_batch(), config(kl=KLConfig(coef=0.1, estimator="k3")))
    close(loss, 0.016667)
    close(grad, [[0.016667, -0.033333, 0.0, 0.0]])
    close(m["kl"], 0.166667)


def test_entropy_bonus_is_subtracted():
    # entropy 1, 2, (tool 9), 3 -> mean 2; coef 0.01 -> loss -0.02; d loss / d entropy = -0.01 / 3.
    batch = make_batch([[1.0, 1.0, 1.0, 1.0]], adv=[0.0], mask=KL_MASK)
    batch.entropy_BT = torch.tensor([[1.0, 2.0, 9.0, 3.0]], requires_grad=True)
    loss, _, m = run(batch, config(entropy_coef=0.01))
    close(loss, -0.02)
    close(batch.entropy_BT.grad, [[-0.003333, -0.003333, 0.0, -0.003333]])
    close(m["entropy"], 2.0)


def test_missing_reference_or_entropy_is_an_error():
    with pytest.raises(ValueError, match="ref_logp_BT"):
        run(make_batch(CLIP_RATIOS), config(kl=KLConfig(coef=0.1)))
    with pytest.raises(ValueError, match="entropy_BT"):
        run(make_batch(CLIP_RATIOS), config(entropy_coef=0.1))


# ---------------------------------------------------------------------------------------------- robustness
def test_garbage_in_padding_and_tool_positions_changes_nothing():
    clean = make_batch(CLIP_RATIOS)
    clean.ref_logp_BT = clean.logp_BT.detach() - 0.1
    clean.entropy_BT = torch.ones(2, 4, requires_grad=True)
    dirty = make_batch(CLIP_RATIOS)
    dirty.ref_logp_BT = clean.ref_logp_BT.clone()
    dirty.entropy_BT = torch.ones(2, 4, requires_grad=True)
    masked = torch.tensor(MASK) == 0
    with torch.no_grad():
        dirty.logp_BT[masked] = torch.tensor([float("nan"), float("-inf"), float("inf")])
    dirty.rollout_logp_BT = dirty.rollout_logp_BT.masked_fill(masked, float("-inf"))
    dirty.ref_logp_BT = dirty.ref_logp_BT.masked_fill(masked, float("nan"))
    with torch.no_grad():
        dirty.entropy_BT[masked] = float("inf")
    for mode in ("none", "tis"):
        cfg = config(mode=mode, kl=KLConfig(coef=0.1), entropy_coef=0.01, aggregation="seq_mean_token_mean")
        clean.logp_BT.grad = dirty.logp_BT.grad = None
        loss_c, grad_c, m_c = run(clean, cfg)
        loss_d, grad_d, m_d = run(dirty, cfg)
        assert loss_c == pytest.approx(loss_d)
        torch.testing.assert_close(grad_c, grad_d)
        assert torch.isfinite(dirty.entropy_BT.grad).all()
        assert m_c == pytest.approx(m_d)


def test_all_masked_batch_gives_zero_loss_and_gradient():
    batch = make_batch(CLIP_RATIOS, mask=[[0.0] * 4, [0.0] * 4])
    for aggregation in ("token_mean", "seq_mean_token_mean", "constant"):
        cfg = config(aggregation=aggregation)
        assert loss_normalizer(cfg, [batch.mask_BT]) == 1.0
        batch.logp_BT.grad = None
        loss, grad, m = run(batch, cfg)
        assert loss == 0.0 and (grad == 0).all() and m["clip_frac_low"] == 0.0


# ---------------------------------------------------------------------------------------------- normaliser, metrics
def test_loss_normalizer_spans_every_micro_batch():
    # Micro-batch 1: 3 + 2 trained tokens. Micro-batch 2: an all-tool sample (ignored) and 1 token.
    # tokens = 6; samples with a trained token = 3; constant = 3 * 4 = 12.
    masks = [torch.tensor(MASK), torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])]
    assert loss_normalizer(config(aggregation="token_mean"), masks) == 6.0
    assert loss_normalizer(config(aggregation="seq_mean_token_mean"), masks) == 3.0
    assert loss_normalizer(config(aggregation="constant"), masks) == 12.0


def test_accumulate_metrics_sums_counts_and_maxes_maxima():
    a = {"tokens": torch.tensor(3.0), "ratio_max": torch.tensor(1.5), "ratio_sum": torch.tensor(3.3)}
    b = {"tokens": torch.tensor(2.0), "ratio_max": torch.tensor(1.2), "ratio_sum": torch.tensor(2.0)}
    total = accumulate_metrics(accumulate_metrics({}, a), b)
    assert total["tokens"].item() == 5.0
    assert total["ratio_max"].item() == pytest.approx(1.5)
    assert total["ratio_sum"].item() == pytest.approx(5.3)


def test_metrics_are_detached_scalars():
    batch = make_batch(CLIP_RATIOS)
    _, metrics = policy_loss(batch, config(), loss_normalizer(config(), [batch.mask_BT]))
    for name, value in metrics.items():
        assert value.ndim == 0 and not value.requires_grad, name

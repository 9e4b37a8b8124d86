"""Policy losses of the GRPO family as pure tensor math over one micro-batch, exact under accumulation.

The learner takes one or more optimizer steps per rollout batch (learner.mini_batches * learner.epochs);
each step's samples (the whole batch, or one mini-batch of whole groups) are "the batch" of this module.
It splits them into micro-batches (whole samples only), calls `policy_loss` on each and backwards each
result. The sum of those gradients is *exactly* the gradient of the whole-batch loss for every aggregation
mode, because every normaliser that spans samples is computed once, up front, by `loss_normalizer` over all
micro-batches' masks; the only per-micro-batch division is by a sample's own token count, which never
crosses a micro-batch boundary.

Notation, per trained token t of sample i (mask = 1; padding and tool/environment tokens have mask = 0 and
contribute nothing, whatever values they hold -- even inf/NaN):
    logp      current policy log-prob (carries the gradient)
    rollout   the rollout engine's log-prob of the sampled token (behaviour policy mu)
    learner   the learner's pre-update view: prox_logp when given, else stopgrad(logp). With one optimizer
              step per rollout batch, stopgrad(logp) *is* the pre-update policy and no extra forward pass
              is needed. With several, every step after the first runs on updated weights, so the learner
              computes the log-probs of the weights from before the first step once, without gradient,
              and passes them as prox_logp to every step, in both "tis" and "decoupled".
    old       rollout             if off_policy.mode == "none"
              learner             if off_policy.mode in ("tis", "decoupled")
    ratio     exp(logp - old)
    w         1                                           if mode == "none"
              stopgrad(min(exp(learner - rollout), cap))  if mode == "tis"        (truncated)
              stopgrad(exp(learner - rollout)) if <= cap, else 0     if mode == "decoupled"  (filtered)

Why "tis" takes its ratio against the learner and not against the rollout: the clipped surrogate's gradient
already carries the factor pi/old; with old = rollout *and* a weight pi_learner/rollout, the mismatch
would be corrected twice ((pi/mu)^2). Following Yao et al. 2025 ("Your efficient RL framework secretly
brings you off-policy RL training"), the ratio is against the learner's own old policy and the truncated
weight alone corrects for the engine (numerics and staleness). "decoupled" (Hilton et al. 2021, AReaL)
clips against a proximal policy the caller must pass explicitly (`prox_logp_BT`; "tis" falls back to
stopgrad(logp), which is the pre-update policy only before the first update) and weights by
prox / rollout like "tis", but as AReaL does it: a token whose weight exceeds the cap is dropped from the
loss instead of truncated (very stale or badly mismatched tokens carry no gradient at all, where "tis"
still pushes them with weight cap). Below the cap the two are the same. "none" clips against the rollout
directly, which is the trust region of plain async GRPO and has no separate mismatch weight.

Per-token losses (A = the sample's advantage):
    clip   l_t = w * max(-A * ratio, -A * clip(ratio, 1 - eps_low, 1 + eps_high))         (PPO, DAPO)
    cispo  l_t = -w * stopgrad(clip(ratio, 1 - eps_low, 1 + eps_high)) * A * logp          (CISPO)
    gspo   s_i = exp(sum_t m_t (logp - old) / n_i)      (n_i = trained tokens of sample i)
           l_t = w * max(-A * s_i, -A * clip(s_i, 1 - eps_low, 1 + eps_high))   for every token t of i
GSPO's per-sample loss is broadcast to each trained token of the sample and then aggregated like any
token loss, so: seq_mean_token_mean gives exactly the GSPO paper's mean over samples; token_mean weights
each sample by its length (sum_i n_i l_i / N_tokens); constant gives sum_i n_i l_i / (N_samples * C).
The weight w stays per token for every loss type (for GSPO the sample's weight is thus the mean of its
tokens' truncated weights under seq_mean_token_mean).

Aggregation of any per-token quantity x (the policy loss, the KL, the entropy), over the WHOLE batch of
one optimizer step:
    token_mean           sum_{i,t} m x / N_tokens                                         (DAPO)
    seq_mean_token_mean  sum_i (sum_t m x / n_i) / N_samples
    constant             sum_{i,t} m x / (N_samples * constant_normalizer)               (Dr.GRPO)
N_samples counts samples with at least one trained token (a sample that is all tool output, or empty,
has nothing to average). An all-masked batch gets normaliser 1 and a loss of exactly 0.

Total: loss = agg(l) + kl.coef * agg(kl) - entropy_coef * agg(entropy), where
    k1 = logp - ref,   k3 = exp(ref - logp) - (ref - logp) - 1.
The KL and entropy terms are not multiplied by w: they are regularisers, not policy-gradient estimates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from temper.configs.algorithm import AlgorithmConfig, CISPOLoss, ClippedLoss, GSPOLoss


@dataclass(kw_only=True)
class PolicyBatch:
    """One micro-batch of B whole samples, completion tokens right-padded to T."""

    logp_BT: Tensor
    """Current policy log-probs of the sampled completion tokens; requires grad."""
    rollout_logp_BT: Tensor
    """The rollout engine's log-probs of the same tokens (behaviour policy)."""
    prox_logp_BT: Tensor | None = None
    """Learner's pre-update log-probs (no grad); required for off_policy.mode == "decoupled", and "tis" uses
    stopgrad(logp_BT) without them."""
    ref_logp_BT: Tensor | None = None
    """Frozen reference model's log-probs; required when kl.coef > 0."""
    entropy_BT: Tensor | None = None
    """Per-token entropy of the current policy (with grad); required when entropy_coef > 0."""
    adv_B: Tensor
    """One advantage per sample."""
    mask_BT: Tensor
    """1.0 for tokens to train on, 0.0 for padding and tool/environment tokens."""

    def __post_init__(self) -> None:
        shape = self.logp_BT.shape
        assert self.logp_BT.ndim == 2, f"logp_BT must be [B, T], got {tuple(shape)}"
        for name in ("rollout_logp_BT", "prox_logp_BT", "ref_logp_BT", "entropy_BT", "mask_BT"):
            value = getattr(self, name)
            assert value is None or value.shape == shape, f"{name} {tuple(value.shape)} != {tuple(shape)}"
        assert self.adv_B.shape == shape[:1], f"adv_B {tuple(self.adv_B.shape)} != ({shape[0]},)"


def loss_normalizer(cfg: AlgorithmConfig, masks: list[Tensor]) -> float:
    """The batch-wide denominator of the loss, from every micro-batch's mask_BT (once per optimizer step)."""
    tokens = sum(float(m.double().sum()) for m in masks)
    samples = sum(int((m.sum(dim=-1) > 0).sum()) for m in masks)
    by_mode = {
        "token_mean": tokens,
        "seq_mean_token_mean": float(samples),
        "constant": float(samples * cfg.constant_normalizer),
    }
    normalizer = by_mode[cfg.aggregation]
    return normalizer if normalizer > 0 else 1.0


def _aggregate(x_BT: Tensor, mask_BT: Tensor, aggregation: str, normalizer: float) -> Tensor:
    """This micro-batch's share of the batch-wide aggregate of x (x is already 0 where mask is 0)."""
    if aggregation == "seq_mean_token_mean":
        per_sample_B = (x_BT * mask_BT).sum(dim=-1) / mask_BT.sum(dim=-1).clamp(min=1)
        return per_sample_B.sum() / normalizer
    return (x_BT * mask_BT).sum() / normalizer  # token_mean and constant differ only in the normaliser


# Each surrogate maps (logp, log_ratio, adv, mask) to (loss, ratio, clipped_low, clipped_high), all [B, T].
def _clip_surrogate(cfg: ClippedLoss, logp_BT, log_ratio_BT, adv_B1, mask_BT):
    ratio_BT = torch.exp(log_ratio_BT)
    clipped_BT = ratio_BT.clamp(1 - cfg.eps_low, 1 + cfg.eps_high)
    loss_BT = torch.maximum(-adv_B1 * ratio_BT, -adv_B1 * clipped_BT)
    # Counted where the clip zeroes the gradient: the only tokens on which clipping changes anything.
    low_BT = (adv_B1 < 0) & (ratio_BT < 1 - cfg.eps_low)
    high_BT = (adv_B1 > 0) & (ratio_BT > 1 + cfg.eps_high)
    return loss_BT, ratio_BT, low_BT, high_BT


def _gspo_surrogate(cfg: GSPOLoss, logp_BT, log_ratio_BT, adv_B1, mask_BT):
    n_B1 = mask_BT.sum(dim=-1, keepdim=True).clamp(min=1)
    seq_ratio_B1 = torch.exp((log_ratio_BT * mask_BT).sum(dim=-1, keepdim=True) / n_B1)
    clipped_B1 = seq_ratio_B1.clamp(1 - cfg.eps_low, 1 + cfg.eps_high)
    loss_B1 = torch.maximum(-adv_B1 * seq_ratio_B1, -adv_B1 * clipped_B1)
    low_B1 = (adv_B1 < 0) & (seq_ratio_B1 < 1 - cfg.eps_low)
    high_B1 = (adv_B1 > 0) & (seq_ratio_B1 > 1 + cfg.eps_high)
    shape = log_ratio_BT.shape
    return loss_B1.expand(shape), seq_ratio_B1.expand(shape), low_B1.expand(shape), high_B1.expand(shape)


def _cispo_surrogate(cfg: CISPOLoss, logp_BT, log_ratio_BT, adv_B1, mask_BT):
    ratio_BT = torch.exp(log_ratio_BT)
    weight_BT = ratio_BT.detach().clamp(1 - cfg.eps_low, 1 + cfg.eps_high)
    loss_BT = -weight_BT * adv_B1 * logp_BT
    # CISPO clips the weight whatever the advantage's sign, and every token keeps a gradient.
    return loss_BT, ratio_BT, ratio_BT < 1 - cfg.eps_low, ratio_BT > 1 + cfg.eps_high


SURROGATES = {
    "clip": _clip_surrogate,
    "gspo": _gspo_surrogate,
    "cispo": _cispo_surrogate,
}
"""Policy surrogates by the loss config's `type` name."""


def _kl_k1(logp_BT: Tensor, ref_BT: Tensor) -> Tensor:
    return logp_BT - ref_BT


def _kl_k3(logp_BT: Tensor, ref_BT: Tensor) -> Tensor:
    log_ref_ratio_BT = ref_BT - logp_BT
    return torch.exp(log_ref_ratio_BT) - log_ref_ratio_BT - 1


KL_ESTIMATORS = {"k1": _kl_k1, "k3": _kl_k3}
"""Per-token KL(pi || pi_ref) estimators by `kl.estimator`."""


def policy_loss(
    batch: PolicyBatch, cfg: AlgorithmConfig, normalizer: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """This micro-batch's scalar loss (its share of the batch loss) and its summable metrics.

    `normalizer` comes from `loss_normalizer` over the whole batch. Metrics are detached 0-dim tensors:
    sums and counts, combined across micro-batches with `accumulate_metrics`, read with `finalize_metrics`.
    """
    mode = cfg.off_policy.mode
    if mode == "decoupled" and batch.prox_logp_BT is None:
        raise ValueError('algorithm.off_policy.mode = "decoupled" needs prox_logp_BT (pre-update log-probs)')
    if cfg.kl.coef > 0 and batch.ref_logp_BT is None:
        raise ValueError("algorithm.kl.coef > 0 needs ref_logp_BT (the reference model's log-probs)")
    if cfg.entropy_coef > 0 and batch.entropy_BT is None:
        raise ValueError("algorithm.entropy_coef > 0 needs entropy_BT")

    # Zero every input outside the mask first, so garbage in padding (inf, NaN) never reaches an exp or a
    # gradient; torch.where sends a zero gradient to the positions it discards.
    keep_BT = batch.mask_BT > 0
    mask_BT = keep_BT.float()

    def clean(x_BT: Tensor | None) -> Tensor | None:
        return None if x_BT is None else torch.where(keep_BT, x_BT.float(), 0.0)

    logp_BT = clean(batch.logp_BT)
    rollout_BT = clean(batch.rollout_logp_BT).detach()
    prox_BT = clean(batch.prox_logp_BT)
    learner_BT = (prox_BT if prox_BT is not None else logp_BT).detach()  # stop-gradient either way
    adv_B1 = batch.adv_B.float().detach()[:, None]

    if mode == "none":
        old_BT = rollout_BT
        weight_BT = torch.ones_like(logp_BT)
        truncated_BT = torch.zeros_like(keep_BT)
    else:
        old_BT = learner_BT
        behaviour_ratio_BT = torch.exp(learner_BT - rollout_BT)
        truncated_BT = behaviour_ratio_BT > cfg.off_policy.tis_cap
        if mode == "tis":  # truncate the weight at the cap
            weight_BT = behaviour_ratio_BT.clamp(max=cfg.off_policy.tis_cap)
        else:  # decoupled: drop the tokens whose weight is over the cap
            weight_BT = torch.where(truncated_BT, 0.0, behaviour_ratio_BT)

    surrogate = SURROGATES[cfg.loss.type]
    pg_BT, ratio_BT, low_BT, high_BT = surrogate(cfg.loss, logp_BT, logp_BT - old_BT, adv_B1, mask_BT)
    loss = _aggregate(weight_BT * pg_BT, mask_BT, cfg.aggregation, normalizer)

    with torch.no_grad():
        metrics = {
            "tokens": mask_BT.sum(),
            "clip_low_sum": (low_BT & keep_BT).float().sum(),
            "clip_high_sum": (high_BT & keep_BT).float().sum(),
            "ratio_sum": (ratio_BT * mask_BT).sum(),
            "ratio_max": torch.where(keep_BT, ratio_BT, 0.0).max() if keep_BT.numel() else mask_BT.sum(),
            "tis_truncated_sum": (truncated_BT & keep_BT).float().sum(),
            "logp_mismatch_sum": ((rollout_BT - learner_BT).abs() * mask_BT).sum(),
        }

    ref_BT = clean(batch.ref_logp_BT)
    if ref_BT is not None:
        kl_BT = KL_ESTIMATORS[cfg.kl.estimator](logp_BT, ref_BT)
        if cfg.kl.coef > 0:
            loss = loss + cfg.kl.coef * _aggregate(kl_BT, mask_BT, cfg.aggregation, normalizer)
        metrics["kl_sum"] = (kl_BT.detach() * mask_BT).sum()

    entropy_BT = clean(batch.entropy_BT)
    if entropy_BT is not None:
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * _aggregate(entropy_BT, mask_BT, cfg.aggregation, normalizer)
        metrics["entropy_sum"] = (entropy_BT.detach() * mask_BT).sum()

    metrics["loss_sum"] = loss.detach()
    return loss, metrics


def accumulate_metrics(total: dict[str, Tensor], micro: dict[str, Tensor]) -> dict[str, Tensor]:
    """Combine one micro-batch's metrics into the running total: `*_max` keys by max, the rest by sum."""
    out = dict(total)
    for key, value in micro.items():
        if key not in out:
            out[key] = value
        elif key.endswith("_max"):
            out[key] = torch.maximum(out[key], value)
        else:
            out[key] = out[key] + value
    return out


def finalize_metrics(summed: dict[str, Tensor], steps: int = 1) -> dict[str, float]:
    """Summed metrics of `steps` optimizer steps -> reported values.

    Per-token values are means over every token trained in any of the steps (a token trained in two epochs
    counts twice), `ratio_max` the max over all of them, `tokens` that count of trained tokens, and `loss`
    the mean of the steps' losses (each step's loss is its own batch loss). `kl` and `entropy` appear only
    when the micro-batches carried reference log-probs / entropies.
    """
    tokens = max(float(summed["tokens"]), 1.0)
    out = {
        "clip_frac_low": float(summed["clip_low_sum"]) / tokens,
        "clip_frac_high": float(summed["clip_high_sum"]) / tokens,
        "ratio_mean": float(summed["ratio_sum"]) / tokens,
        "ratio_max": float(summed["ratio_max"]),
        "tis_truncated_frac": float(summed["tis_truncated_sum"]) / tokens,
        "logp_mismatch": float(summed["logp_mismatch_sum"]) / tokens,
        "loss": float(summed["loss_sum"]) / steps,
        "tokens": float(summed["tokens"]),
    }
    if "kl_sum" in summed:
        out["kl"] = float(summed["kl_sum"]) / tokens
    if "entropy_sum" in summed:
        out["entropy"] = float(summed["entropy_sum"]) / tokens
    return out

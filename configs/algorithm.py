"""The learner's algorithm knobs: advantage estimator, policy loss, off-policy correction, KL, optimizer.

Variants are discriminated unions on a `type` field (as in prime-rl), so a recipe reads
`[algorithm.advantage] type = "rloo"` and a typo is a validation error that names the field, not a
silently ignored key. Imports nothing heavier than pydantic so the CLI starts instantly.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from temper.configs.base import Strict


# ---------------------------------------------------------------------------------------------- advantages
class GRPOAdvantage(Strict):
    """GRPO: (r - mean(group)) / (std(group) + eps)."""

    type: Literal["grpo"] = "grpo"
    eps: float = Field(1e-6, gt=0)
    """Added to the group std so zero-variance groups give zero advantage, not NaN."""


class DrGRPOAdvantage(Strict):
    """Dr.GRPO: r - mean(group), no std division (the std divisor over-weights easy/hard groups)."""

    type: Literal["dr_grpo"] = "dr_grpo"


class RLOOAdvantage(Strict):
    """RLOO: r_i - mean(r_j for j != i), the leave-one-out baseline (unbiased)."""

    type: Literal["rloo"] = "rloo"


AdvantageConfig = Annotated[GRPOAdvantage | DrGRPOAdvantage | RLOOAdvantage, Field(discriminator="type")]


# ---------------------------------------------------------------------------------------------- losses
class ClippedLoss(Strict):
    """PPO/GRPO token-level clipped ratio, with DAPO's separate low/high epsilons (clip-higher)."""

    type: Literal["clip"] = "clip"
    eps_low: float = Field(0.2, ge=0)
    """Lower clip: ratio is clipped at 1 - eps_low for negative advantages."""
    eps_high: float = Field(0.2, ge=0)
    """Upper clip: ratio is clipped at 1 + eps_high for positive advantages (DAPO uses 0.28)."""


class GSPOLoss(Strict):
    """GSPO: one length-normalised sequence-level ratio per sample, clipped (eps are ~1e-3 scale).

    The sample's loss is spread over its trained tokens and then aggregated like a token loss, so
    aggregation = "seq_mean_token_mean" is the paper's objective; "token_mean" weights samples by length.
    """

    type: Literal["gspo"] = "gspo"
    eps_low: float = Field(3e-4, ge=0)
    """Lower clip on the sequence ratio."""
    eps_high: float = Field(4e-4, ge=0)
    """Upper clip on the sequence ratio."""


class CISPOLoss(Strict):
    """CISPO: REINFORCE weighted by a clipped, stop-gradient importance weight; no token is dropped."""

    type: Literal["cispo"] = "cispo"
    eps_low: float = Field(1.0, ge=0)
    """Importance weight is clipped below at 1 - eps_low (1.0 = no lower clip)."""
    eps_high: float = Field(0.28, ge=0)
    """Importance weight is clipped above at 1 + eps_high."""


LossConfig = Annotated[ClippedLoss | GSPOLoss | CISPOLoss, Field(discriminator="type")]


class OffPolicyConfig(Strict):
    """Correction for the gap between the rollout engine's policy and the learner's.

    Two gaps exist: vLLM's numerics differ from the learner's, and async rollouts were sampled by older
    weights (staleness). `tis` takes the clipped ratio against the learner's pre-update policy pi_old
    and multiplies each token's loss by stopgrad(min(pi_old / pi_rollout, cap)) (truncated importance
    sampling; the ratio is *not* taken against the rollout too, which would correct the mismatch twice).
    `decoupled` (decoupled PPO, as AReaL runs it) clips against the same pre-update policy, named the
    proximal policy, and weights by pi_prox / pi_rollout, but drops the tokens whose weight exceeds the cap
    instead of truncating it. With one optimizer step per batch (learner.mini_batches * learner.epochs ==
    1), pi_old is the detached current log-probs, so the ratio is exactly 1 and only the weight acts; with
    several, the learner computes pi_old once before the batch's first step and every step clips against
    it. Exact formulas: learner/losses.py.
    """

    mode: Literal["none", "tis", "decoupled"] = "tis"
    """none: ratio against rollout log-probs, no weight; tis: ratio against the learner's pre-update
    log-probs times the truncated IS weight; decoupled: the same ratio, tokens over the cap dropped."""
    tis_cap: float = Field(2.0, gt=0)
    """Cap of the importance weight pi_learner / pi_rollout: tis truncates at it, decoupled drops tokens
    above it."""


class KLConfig(Strict):
    """Optional KL penalty to a frozen reference model (the starting weights)."""

    coef: float = Field(0.0, ge=0)
    """0 disables the reference model entirely (no extra memory, no extra forward)."""
    estimator: Literal["k1", "k3"] = "k3"
    """k1: log(pi/pi_ref); k3: pi_ref/pi - log(pi_ref/pi) - 1 (unbiased, non-negative)."""


class OptimizerConfig(Strict):
    """AdamW with linear warmup then cosine (or constant) decay."""

    lr: float = Field(1e-5, gt=0)
    """Peak learning rate."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Cosine decays to lr * min_lr_ratio at the last optimizer step."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warmup from 0 over this many optimizer steps (learner.mini_batches * learner.epochs of them
    per batch; the schedule spans learner.steps * mini_batches * epochs)."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Decay after warmup."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Global gradient-norm clip."""


class AlgorithmConfig(Strict):
    """Everything that decides the gradient, given a batch of scored groups."""

    advantage: AdvantageConfig = Field(default_factory=GRPOAdvantage)
    """How group rewards become per-sample advantages."""
    loss: LossConfig = Field(default_factory=ClippedLoss)
    """Policy-gradient surrogate."""
    aggregation: Literal["token_mean", "seq_mean_token_mean", "constant"] = "token_mean"
    """token_mean: sum over all tokens / number of tokens (DAPO); seq_mean_token_mean: mean over samples of
    per-sample token means; constant: sum over tokens / (samples * constant_normalizer) (Dr.GRPO)."""
    constant_normalizer: int = Field(1024, gt=0)
    """Denominator per sample for aggregation = "constant" (usually the max generation length)."""
    off_policy: OffPolicyConfig = Field(default_factory=OffPolicyConfig)
    """Rollout-vs-learner mismatch and staleness correction."""
    kl: KLConfig = Field(default_factory=KLConfig)
    """KL to the reference model."""
    entropy_coef: float = Field(0.0, ge=0)
    """Entropy bonus weight (0 = off; no entropy is computed)."""

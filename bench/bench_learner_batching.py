"""Learner tokens/s: padding-aware micro-batches vs naive fixed-size padded micro-batches, same run.

A random-init Qwen2 (built in code, nothing downloaded) runs the learner's forward + loss + backward over
one batch of sequences with a long-tailed length distribution (most short, a few long), as RL completions
are. Both plans cover exactly the same samples with the same loss (temper.learner.losses.policy_loss), so the
tokens/s ratio is the speed-up from not padding short samples to long ones.

Fairness: the padding-aware token budget (default 2048) is below the naive plan's worst micro-batch
(batch_size * longest sample), so padding-aware never uses more activation memory. Neither passes an attention mask: with right
padding and causal attention, real tokens never attend to padding, so the padded positions only cost time.
Steps alternate between the two plans (after a warm-up of each) so drift hits both; medians are reported.

    python bench/bench_learner_batching.py [--num-seqs 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

# On a shared 2-core machine (a vLLM worker on the other core, tests running), OpenMP threads that
# spin-wait at barriers make a 2-thread forward/backward ~6x slower than 1 thread. Passive waiting fixes
# it; it has to be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from temper.configs.algorithm import AlgorithmConfig, OffPolicyConfig
from temper.learner.batching import naive_micro_batches, pad_right, plan_micro_batches
from temper.learner.losses import PolicyBatch, loss_normalizer, policy_loss

PROMPT_LEN = 8
VOCAB = 512


def make_model() -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    return Qwen2ForCausalLM(config).train()


def make_samples(num_seqs: int, seed: int) -> list[list[int]]:
    """Prompt + completion token ids; completion lengths log-normal (median ~16, p99 ~170), capped at 384."""
    rng = random.Random(seed)
    samples = []
    for _ in range(num_seqs):
        completion = min(max(int(rng.lognormvariate(2.8, 1.0)), 1), 384)
        samples.append([rng.randrange(VOCAB) for _ in range(PROMPT_LEN + completion)])
    return samples


def micro_batch_tensors(samples: list[list[int]], idx: list[int]):
    seqs = [samples[i] for i in idx]
    ids_BL = pad_right(seqs, pad=0)
    # Completion tokens are positions PROMPT_LEN.. of each sequence, predicted from the position before.
    mask_BT = pad_right([[0.0] * (PROMPT_LEN - 1) + [1.0] * (len(s) - PROMPT_LEN) for s in seqs], pad=0.0)
    return ids_BL, mask_BT


def run_step(model, samples, plan, adv_N, cfg) -> int:
    """Forward + loss + backward over every micro-batch of `plan`; returns padded tokens processed."""
    tensors = [micro_batch_tensors(samples, idx) for idx in plan]
    normalizer = loss_normalizer(cfg, [mask_BT for _, mask_BT in tensors])
    padded = 0
    for idx, (ids_BL, mask_BT) in zip(plan, tensors):
        logits_BLV = model(input_ids=ids_BL).logits
        logp_BT = logits_BLV[:, :-1].log_softmax(-1).gather(-1, ids_BL[:, 1:, None]).squeeze(-1)
        batch = PolicyBatch(
            logp_BT=logp_BT,
            rollout_logp_BT=logp_BT.detach(),
            adv_B=adv_N[idx],
            mask_BT=mask_BT,
        )
        loss, _ = policy_loss(batch, cfg, normalizer)
        loss.backward()
        padded += ids_BL.numel()
    model.zero_grad(set_to_none=True)
    return padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="naive plan's samples per micro-batch")
    parser.add_argument("--token-budget", type=int, default=2048, help="padding-aware plan's budget")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = make_model()
    samples = make_samples(args.num_seqs, seed=0)
    lengths = [len(s) for s in samples]
    adv_N = torch.randn(len(samples))
    cfg = AlgorithmConfig(off_policy=OffPolicyConfig(mode="none"))
    real_tokens = sum(lengths)

    budget = args.token_budget
    assert budget <= args.batch_size * max(lengths), "padding-aware must not get more memory than naive"
    plans = {
        "naive": naive_micro_batches(lengths, args.batch_size),
        "padding_aware": plan_micro_batches(lengths, budget),
    }
    lengths_sorted = sorted(lengths)
    print(
        f"{len(samples)} sequences, {real_tokens} tokens; length median {lengths_sorted[len(lengths) // 2]}, "
        f"p90 {lengths_sorted[int(0.9 * len(lengths))]}, max {lengths_sorted[-1]}; "
        f"naive: {len(plans['naive'])} micro-batches of {args.batch_size}; "
        f"padding-aware: {len(plans['padding_aware'])} micro-batches, budget {budget} tokens"
    )

    for plan in plans.values():  # warm-up on each plan's first and last two micro-batches
        run_step(model, samples, plan[:2] + plan[-2:], adv_N, cfg)
    times: dict[str, list[float]] = {name: [] for name in plans}
    padded: dict[str, int] = {}
    for _ in range(args.repeats):
        for name, plan in plans.items():
            start = time.perf_counter()
            padded[name] = run_step(model, samples, plan, adv_N, cfg)
            times[name].append(time.perf_counter() - start)

    tokens_per_s = {name: real_tokens / statistics.median(t) for name, t in times.items()}
    for name in plans:
        print(
            f"{name:14s} median step {statistics.median(times[name]):6.2f} s  "
            f"{tokens_per_s[name]:8.0f} tokens/s  (padded tokens {padded[name]}, "
            f"{100 * real_tokens / padded[name]:.0f}% real)"
        )
    ratio = tokens_per_s["padding_aware"] / tokens_per_s["naive"]
    print(
        f"RESULT learner tokens/s: padding-aware {tokens_per_s['padding_aware']:.0f} vs naive "
        f"{tokens_per_s['naive']:.0f} = {ratio:.2f}x (median of {args.repeats}, {args.threads} threads)"
    )


if __name__ == "__main__":
    main()

"""Padding-aware micro-batching: short samples should not pay for long ones.

RL completions have a long-tailed length distribution (most answers are short, a few run to the
generation limit). Chunking a batch in arrival order pads every micro-batch to its longest member, so one
long sample makes its whole micro-batch cost batch_size * max_len. Sorting by length and filling each
micro-batch up to a token budget (counting padding: len(batch) * max_len <= budget) keeps padding small
and memory bounded by the budget rather than by the longest sample times a fixed batch size.

A sample is never split: losses.py relies on every sample living in exactly one micro-batch.
"""

from __future__ import annotations

import torch


def plan_micro_batches(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Indices into `lengths`, grouped so each group's len(group) * max_len(group) <= token_budget.

    Longest samples first (an out-of-memory shows up on the first micro-batch, not the last); ties keep
    their input order. A single sample longer than the budget gets a micro-batch of its own.
    """
    if token_budget <= 0:
        raise ValueError(f"token_budget must be positive, got {token_budget}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    current_max = 0  # the first (longest) member's length, since the order is descending
    for i in order:
        if current and (len(current) + 1) * current_max > token_budget:
            batches.append(current)
            current = []
        if not current:
            current_max = lengths[i]
        current.append(i)
    if current:
        batches.append(current)
    return batches


def naive_micro_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """The baseline: consecutive chunks of `batch_size` samples in input order, whatever their lengths."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return [
        list(range(start, min(start + batch_size, len(lengths))))
        for start in range(0, len(lengths), batch_size)
    ]


def pad_right(seqs: list[list[int] | list[float]], pad: float) -> torch.Tensor:
    """Rows of different lengths -> [len(seqs), max_len], right-padded with `pad`.

    int64 when every value and `pad` are ints (token ids), float32 otherwise (log-probs, masks).
    """
    max_len = max((len(s) for s in seqs), default=0)
    all_ints = isinstance(pad, int) and all(isinstance(v, int) for s in seqs for v in s)
    dtype = torch.int64 if all_ints else torch.float32
    out_BT = torch.full((len(seqs), max_len), pad, dtype=dtype)
    for row, seq in enumerate(seqs):
        if seq:
            out_BT[row, : len(seq)] = torch.tensor(seq, dtype=dtype)
    return out_BT

"""The demos' warm start: supervised training on correct episodes until greedy val accuracy passes a target.

Both demos start RL from a model that is right some of the time, because RL learns only from groups whose
samples disagree. A fixed step count does not give that (measured: anywhere from 9% to 85% held-out), so the
warm start stops at a target accuracy instead. Each demo says only how a row becomes a correct episode
(`Encode`); the loop, the batching and the accuracy check are the same for both.

Greedy accuracy is teacher-forced: greedy decoding reproduces an episode iff the argmax at every trained
position is the episode's token (for the tool demo, the calculator's answer to a correct call is the
episode's), so one batched forward pass scores every val row.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from temper.configs.schema import DemoConfig

Episode = tuple[list[int], list[int]]
"""A correct episode's token ids and, per token, 1 where the model produced it (trained and checked)."""
Encode = Callable[[dict[str, str]], Episode]

LR = 3e-3
"""The tool demo's rate. The addition demo passes 1e-3: at 3e-3 the step where its accuracy jumps varied
from 305 to over 1,400 across seeds (seed 1 stuck at 9-16%); at 1e-3, 255-465 over seeds 0-4."""
BATCH_ROWS = 64


def batch(episodes: list[Episode], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and targets; targets are -100 wherever the model did not produce the token."""
    width = max(len(ids) for ids, _ in episodes)
    ids_BT = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in episodes])
    mask_BT = torch.tensor([mask + [0] * (width - len(mask)) for _, mask in episodes], dtype=torch.bool)
    target_BT = torch.where(mask_BT, ids_BT, torch.full_like(ids_BT, -100))
    return ids_BT, target_BT


@torch.no_grad()
def greedy_accuracy(model, ids_BT: torch.Tensor, target_BT: torch.Tensor) -> float:
    """Fraction of rows whose greedy decode is the episode (teacher-forced, see the module docstring)."""
    model.eval()
    pred_BT = model(input_ids=ids_BT).logits[:, :-1].argmax(-1)
    tgt_BT = target_BT[:, 1:]
    ok_B = ((pred_BT == tgt_BT) | (tgt_BT == -100)).all(dim=1)
    model.train()
    return ok_B.float().mean().item()


def warm_start(cfg: DemoConfig, model, encode: Encode, pad_id: int, train: list[dict], val: list[dict],
               log=print, near_loss: float | None = None, what: str = "val greedy accuracy",
               lr: float = LR) -> dict[str, Any]:
    """Train on `encode(row)` episodes until greedy val accuracy reaches cfg.sft_target_accuracy.

    Accuracy is checked every 5 steps (one batched forward); with `near_loss`, every step once the loss falls
    below it or accuracy leaves 0 (for a task whose accuracy jumps from 0 to past the target in a few steps)."""
    torch.manual_seed(cfg.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(cfg.seed)
    val_ids_BT, val_target_BT = batch([encode(r) for r in val], pad_id)  # encoded once, checked many times
    acc, step, t0 = 0.0, 0, time.time()
    for step in range(1, cfg.sft_max_steps + 1):
        ids_BT, target_BT = batch([encode(r) for r in rng.sample(train, BATCH_ROWS)], pad_id)
        logits_BTV = model(input_ids=ids_BT).logits
        loss = F.cross_entropy(logits_BTV[:, :-1].flatten(0, 1), target_BT[:, 1:].flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # lr 3e-3 spikes without it
        opt.step()
        near = near_loss is not None and (loss.item() < near_loss or acc > 0)
        if step % 5 == 0 or near:
            acc = greedy_accuracy(model, val_ids_BT, val_target_BT)
            if step % 50 == 0 or (near and step % 5 == 0) or acc >= cfg.sft_target_accuracy:
                log(f"  warm start step {step}: loss {loss.item():.3f}, {what} {acc:.1%}")
            if acc >= cfg.sft_target_accuracy:
                break
    return {"sft_steps": step, "sft_val_accuracy": acc, "sft_seconds": round(time.time() - t0, 1)}


def save_model(model, folder) -> None:
    """The warm-started model as an HF folder, without transformers' "Writing model shards" bar on the
    console (one shard of a 0.5M-parameter model: nothing to watch)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        hf_logging.enable_progress_bar()

"""The tool-use demo's task, tokenizer and warm start: multiplication the model cannot do alone.

- Task: "What is 347 * 58?" -> `\\boxed{20126}`. A 0.5M-parameter model cannot multiply, but it can call the
  calculator: `<tool_call>{"name": "calculator", "arguments": {"expression": "347 * 58"}}</tool_call>`, read
  the tool's answer, and copy it into the box. Train, val and held-out use disjoint (a, b) pairs.
- Tokenizer: the addition demo's byte-level one, plus `<tool_call>`/`</tool_call>` as single tokens (as in
  Qwen's vocabulary), and a chat template that shows the tools' names and renders role "tool" messages.
- Warm start: supervised training on demonstration episodes made by the same machinery the environment uses
  (chat template, tool schemas, the glue between turns, the calculator's real output), loss on the
  assistant's tokens only, stopped as soon as greedy val accuracy *with tools* passes the target.
  Teacher-forced: a greedy episode reproduces the demonstration iff the argmax at every assistant token is
  the demonstration's token (the calculator's answer to a correct call is the demonstration's), so one
  forward pass scores a whole episode.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from temper.configs.data import load_rows
from temper.configs.schema import DemoConfig
from temper.environments.calculator import calculator, evaluate
from temper.environments.trajectory import ChatRenderer

CHAT_TEMPLATE = (
    "{% if tools %}<|im_start|>system\ntools: {% for t in tools %}{{ t['function']['name'] }}"
    "{% if not loop.last %}, {% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOL_TAGS = ["<tool_call>", "</tool_call>"]


def problem(a: int, b: int) -> dict[str, str]:
    return {"prompt": f"What is {a} * {b}?", "label": str(a * b)}


def write_data(cfg: DemoConfig, out: Path) -> tuple[Path, Path, Path]:
    from temper.demo import write_splits

    return write_splits(cfg, out, [(a, b) for a in range(100, 1000) for b in range(10, 100)], problem)


def build_tokenizer(out: Path):
    from temper.demo import build_tokenizer as byte_tokenizer

    hf = byte_tokenizer(out)
    hf.add_tokens(TOOL_TAGS)  # ordinary (not special) tokens: decoded text keeps them
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(out)
    return hf


def demonstration(renderer: ChatRenderer, row: dict[str, str]) -> tuple[list[int], list[int]]:
    """A correct episode's token ids and, per token, 1 where the assistant produced it: the call, then
    (after the tool's real answer and the template's glue) the boxed answer. Built as the environment
    builds episodes, so the warm start trains on exactly what RL will sample."""
    tok = renderer.tokenizer
    a, b = row["prompt"].removeprefix("What is ").removesuffix("?").split(" * ")
    expression = f"{a} * {b}"
    call = f'<tool_call>{json.dumps({"name": "calculator", "arguments": {"expression": expression}})}</tool_call>'
    messages = [{"role": "user", "content": row["prompt"]}]
    ids = renderer.encode_prompt(messages)
    mask = [0] * len(ids)
    call_ids = renderer.encode(call) + [tok.eos_token_id]
    messages.append({"role": "assistant", "content": call})
    glue = renderer.glue(messages, renderer.decode(call_ids),
                         [{"role": "tool", "name": "calculator", "content": evaluate(expression)}])
    answer_ids = renderer.encode(f"\\boxed{{{row['label']}}}") + [tok.eos_token_id]
    for part, m in ((call_ids, 1), (glue, 0), (answer_ids, 1)):
        ids += part
        mask += [m] * len(part)
    return ids, mask


def _batch(renderer: ChatRenderer, rows: list[dict[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = [demonstration(renderer, r) for r in rows]
    width = max(len(ids) for ids, _ in encoded)
    pad = renderer.tokenizer.pad_token_id
    ids_BT = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in encoded])
    target_BT = torch.full_like(ids_BT, -100)
    for i, (ids, mask) in enumerate(encoded):
        keep = torch.tensor(mask, dtype=torch.bool)
        target_BT[i, : len(ids)][keep] = ids_BT[i, : len(ids)][keep]
    return ids_BT, target_BT


@torch.no_grad()
def greedy_accuracy(model, renderer: ChatRenderer, rows: list[dict[str, str]]) -> float:
    """Fraction of rows whose greedy episode (with the calculator) is the demonstration (teacher-forced)."""
    model.eval()
    ids_BT, target_BT = _batch(renderer, rows)
    pred_BT = model(input_ids=ids_BT).logits[:, :-1].argmax(-1)
    tgt_BT = target_BT[:, 1:]
    ok_B = ((pred_BT == tgt_BT) | (tgt_BT == -100)).all(dim=1)
    model.train()
    return ok_B.float().mean().item()


def warm_start(cfg: DemoConfig, model, tokenizer, train: list[dict], val: list[dict], log=print) -> dict[str, Any]:
    """Supervised training on demonstration episodes until greedy val accuracy with tools passes the target."""
    renderer = ChatRenderer(tokenizer, [calculator.schema()])
    torch.manual_seed(cfg.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    rng = random.Random(cfg.seed)
    acc, step, t0 = 0.0, 0, time.time()
    for step in range(1, cfg.sft_max_steps + 1):
        ids_BT, target_BT = _batch(renderer, rng.sample(train, 64))
        logits_BTV = model(input_ids=ids_BT).logits
        loss = F.cross_entropy(logits_BTV[:, :-1].flatten(0, 1), target_BT[:, 1:].flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        # Accuracy jumps from 0 to over 60% within ~10 steps once the model learns to copy digits (its loss
        # falls through ~0.15 then): check every 5 steps before that, every step from then on.
        near = loss.item() < 0.15 or acc > 0
        if step % 5 == 0 or near:
            acc = greedy_accuracy(model, renderer, val)
            if step % 50 == 0 or (near and step % 5 == 0) or acc >= cfg.sft_target_accuracy:
                log(f"  warm start step {step}: loss {loss.item():.3f}, val greedy accuracy with tools {acc:.1%}")
            if acc >= cfg.sft_target_accuracy:
                break
    return {"sft_steps": step, "sft_val_accuracy": acc, "sft_seconds": round(time.time() - t0, 1)}


def build(cfg: DemoConfig, root: Path, log=print) -> dict[str, Any]:
    """Data, tokenizer, model and warm start into `root` (the caller caches it)."""
    from temper.demo import build_model

    train_path, val_path, _ = write_data(cfg, root)
    tokenizer = build_tokenizer(root / "model")
    model = build_model(cfg, tokenizer, root / "model")
    info = warm_start(cfg, model, tokenizer, load_rows(train_path), load_rows(val_path), log=log)
    model.save_pretrained(root / "model", safe_serialization=True)
    info["parameters"] = sum(p.numel() for p in model.parameters())
    return info

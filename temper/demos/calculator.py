"""The tool-use demo's task, tokenizer and episodes: multiplication the model cannot do alone.

- Task: "What is 347 * 58?" -> `\\boxed{20126}`. A 0.5M-parameter model cannot multiply, but it can call the
  calculator: `<tool_call>{"name": "calculator", "arguments": {"expression": "347 * 58"}}</tool_call>`, read
  the tool's answer, and copy it into the box. Train, val and held-out use disjoint (a, b) pairs.
- Tokenizer: the addition demo's byte-level one, plus `<tool_call>`/`</tool_call>` as single tokens (as in
  Qwen's vocabulary), and a chat template that shows the tools' names and renders role "tool" messages.
- Warm start (warm_start.py): on demonstration episodes made by the same machinery the environment uses
  (chat template, tool schemas, the glue between turns, the calculator's real output), loss on the
  assistant's tokens only, stopped as soon as greedy val accuracy *with tools* passes the target.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from temper.configs.data import load_rows
from temper.configs.schema import DemoConfig
from temper.demos import addition
from temper.demos.warm_start import Episode, save_model, warm_start
from temper.environments.calculator import calculator, evaluate
from temper.environments.trajectory import ChatRenderer

CHAT_TEMPLATE = (
    "{% if tools %}<|im_start|>system\ntools: {% for t in tools %}{{ t['function']['name'] }}"
    "{% if not loop.last %}, {% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOL_TAGS = ["<tool_call>", "</tool_call>"]
NEAR_LOSS = 0.15
"""Accuracy jumps from 0 to over 60% within ~10 steps once the model learns to copy digits (its loss falls
through ~0.15 then): the warm start checks it every step from there."""


def problem(a: int, b: int) -> dict[str, str]:
    return {"prompt": f"What is {a} * {b}?", "label": str(a * b)}


def build_tokenizer(out: Path):
    hf = addition.build_tokenizer(out)
    hf.add_tokens(TOOL_TAGS)  # ordinary (not special) tokens: decoded text keeps them
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(out)
    return hf


def demonstration(renderer: ChatRenderer, row: dict[str, str]) -> Episode:
    """A correct episode: the call, then (after the tool's real answer and the template's glue) the boxed
    answer; the mask is 1 on the call and the answer. Built as the environment builds episodes, so the warm
    start trains on exactly what RL will sample."""
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


def build(cfg: DemoConfig, root: Path, log=print) -> dict[str, Any]:
    """Data, tokenizer, model and warm start into `root` (the caller caches it)."""
    pairs = [(a, b) for a in range(100, 1000) for b in range(10, 100)]
    train_path, val_path, _ = addition.write_splits(cfg, root, pairs, problem)
    tokenizer = build_tokenizer(root / "model")
    model = addition.build_model(cfg, tokenizer)
    renderer = ChatRenderer(tokenizer, [calculator.schema()])
    info = warm_start(cfg, model, lambda row: demonstration(renderer, row), tokenizer.pad_token_id,
                      load_rows(train_path), load_rows(val_path), log=log, near_loss=NEAR_LOSS,
                      what="val greedy accuracy with tools")
    save_model(model, root / "model")
    return {**info, "parameters": sum(p.numel() for p in model.parameters())}

"""The demo's own model and task, made locally because nothing can come from a model hub.

- Task: two-digit addition ("What is 37 + 48?" -> `\\boxed{85}`), seeded, with held-out pairs that never
  appear in training, written as JSONL and read back through `datasets` like any user data.
- Tokenizer: byte-level BPE with no merges (256 byte tokens + chat specials) and a Qwen-style chat
  template, saved as an ordinary HF tokenizer that transformers and vLLM both load.
- Model: a tiny Qwen2 causal LM with tied embeddings (the tied case is the tricky one for weight sync).
- Warm start: warm_start.py, on `\\boxed{answer}` completions of the chat-formatted prompt.

The tool demo (calculator.py) builds on this one's splits, tokenizer and model.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from temper.configs.data import load_rows
from temper.configs.schema import DemoConfig
from temper.demos.warm_start import Episode, save_model, warm_start
from temper.environments.base import encode_chat

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VAL_ROWS = 200


def problem(a: int, b: int) -> dict[str, str]:
    return {"prompt": f"What is {a} + {b}?", "label": str(a + b)}


def write_splits(cfg: DemoConfig, out: Path, pairs: list[tuple[int, int]],
                 make: Callable[[int, int], dict[str, str]]) -> tuple[Path, Path, Path]:
    """Seeded train, val (stops the warm start) and held-out (accuracy before/after RL, never trained or
    selected on) sets of disjoint (a, b) pairs: pairs shuffled into held-out (n_eval), val (200) and train
    (n_train, cycling through the rest when it is shorter), written as JSONL rows `{"id", **make(a, b)}`."""
    rng = random.Random(cfg.seed)
    pairs = list(pairs)
    rng.shuffle(pairs)
    held = pairs[: cfg.n_eval]
    val, rest = pairs[cfg.n_eval : cfg.n_eval + VAL_ROWS], pairs[cfg.n_eval + VAL_ROWS :]
    train = [rest[i % len(rest)] for i in range(cfg.n_train)]
    rng.shuffle(train)
    paths = []
    for split, rows in (("train", train), ("val", val), ("heldout", held)):
        path = out / f"{split}.jsonl"
        with path.open("w") as f:
            for i, (a, b) in enumerate(rows):
                f.write(json.dumps({"id": f"{split}-{i}", **make(a, b)}) + "\n")
        paths.append(path)
    return paths[0], paths[1], paths[2]


def build_tokenizer(out: Path):
    """Byte-level BPE without merges: every byte is a token, so any text round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(out)
    return hf


def build_model(cfg: DemoConfig, tokenizer):
    """A freshly initialised (seeded) tiny Qwen2 with tied embeddings, sized by cfg."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(cfg.seed)
    config = Qwen2Config(
        vocab_size=64 * ((len(tokenizer) + 63) // 64),
        hidden_size=cfg.hidden_size,
        intermediate_size=4 * cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=max(1, cfg.hidden_size // 32),
        num_key_value_heads=max(1, cfg.hidden_size // 64),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    return model


def episode(tokenizer, row: dict[str, str]) -> Episode:
    """The chat-formatted prompt (the encoding the single-turn environment gives RL prompts, so the warm
    start trains on them), then `\\boxed{label}<eos>`, which alone is trained."""
    ids = encode_chat(tokenizer, [{"role": "user", "content": row["prompt"]}])
    answer = tokenizer.encode(f"\\boxed{{{row['label']}}}", add_special_tokens=False) + [tokenizer.eos_token_id]
    return ids + answer, [0] * len(ids) + [1] * len(answer)


def build(cfg: DemoConfig, root: Path, log=print) -> dict[str, Any]:
    """Data, tokenizer, model and warm start into `root` (the caller caches it)."""
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    train_path, val_path, _ = write_splits(cfg, root, pairs, problem)
    tokenizer = build_tokenizer(root / "model")
    model = build_model(cfg, tokenizer)
    info = warm_start(cfg, model, lambda row: episode(tokenizer, row), tokenizer.pad_token_id,
                      load_rows(train_path), load_rows(val_path), log=log, lr=1e-3)
    save_model(model, root / "model")
    return {**info, "parameters": sum(p.numel() for p in model.parameters())}

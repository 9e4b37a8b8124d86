"""The demo's own model and task, made locally because nothing can come from a model hub.

- Task: two-digit addition ("What is 37 + 48?" -> `\\boxed{85}`), seeded, with held-out pairs that never
  appear in training, written as JSONL and read back through `datasets` like any user data.
- Tokenizer: byte-level BPE with no merges (256 byte tokens + chat specials) and a Qwen-style chat
  template, saved as an ordinary HF tokenizer that transformers and vLLM both load.
- Model: a tiny Qwen2 causal LM with tied embeddings (the tied case is the tricky one for weight sync).
- Warm start: plain supervised training on the train split, stopped as soon as greedy held-out accuracy
  passes a target (not after a fixed step count: measured here, fixed counts land anywhere from 9% to 85%
  held-out, and RL needs groups whose samples disagree).

Everything is cached under a folder keyed by the settings, so the second run skips it in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from temper.configs.data import load_rows
from temper.configs.schema import DemoConfig
from temper.environments.base import encode_chat

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ASSETS_VERSION = 3  # bump when the way assets are made changes: old caches are then ignored
TOOL_ASSETS_VERSION = 2  # the same, for the tool demo's assets only (tool_demo.py)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def problem(a: int, b: int) -> dict:
    return {"prompt": f"What is {a} + {b}?", "label": str(a + b)}


def write_data(cfg: DemoConfig, out: Path) -> tuple[Path, Path, Path]:
    """Seeded addition problems in three disjoint sets of (a, b) pairs: train, val (stops the warm
    start) and held-out (accuracy before/after RL, never trained or selected on)."""
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    return write_splits(cfg, out, pairs, problem)


def write_splits(cfg: DemoConfig, out: Path, pairs: list[tuple[int, int]], make) -> tuple[Path, Path, Path]:
    """pairs shuffled (seeded) into held-out (n_eval), val (200) and train (n_train, cycling through the
    rest when it is shorter), written as JSONL rows `{"id", **make(a, b)}`."""
    rng = random.Random(cfg.seed)
    pairs = list(pairs)
    rng.shuffle(pairs)
    held, val, rest = pairs[: cfg.n_eval], pairs[cfg.n_eval : cfg.n_eval + 200], pairs[cfg.n_eval + 200 :]
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


def build_model(cfg: DemoConfig, tokenizer, out: Path):
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


def _encode_pair(tokenizer, prompt: str, completion: str | None) -> tuple[list[int], int]:
    # The same encoding the single-turn environment gives RL prompts, so the warm start trains on them.
    ids = encode_chat(tokenizer, [{"role": "user", "content": prompt}])
    n_prompt = len(ids)
    if completion is not None:
        ids += tokenizer.encode(completion, add_special_tokens=False) + [tokenizer.eos_token_id]
    return ids, n_prompt


def _batch(tokenizer, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded chat-formatted prompt + `\\boxed{label}<eos>`; targets are -100 outside the answer."""
    encoded = [_encode_pair(tokenizer, r["prompt"], f"\\boxed{{{r['label']}}}") for r in rows]
    width = max(len(ids) for ids, _ in encoded)
    ids_BT = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in encoded])
    target_BT = torch.full_like(ids_BT, -100)
    for i, (ids, n_prompt) in enumerate(encoded):
        target_BT[i, n_prompt : len(ids)] = ids_BT[i, n_prompt : len(ids)]
    return ids_BT, target_BT


@torch.no_grad()
def greedy_accuracy(model, tokenizer, rows: list[dict]) -> float:
    """Fraction of rows whose greedy decode is exactly `\\boxed{label}<eos>`.

    Teacher-forced: greedy decoding reproduces the target iff the argmax at every target position is the
    target token, so one forward pass replaces a token-by-token generate loop.
    """
    model.eval()
    ids_BT, target_BT = _batch(tokenizer, rows)
    pred_BT = model(input_ids=ids_BT).logits[:, :-1].argmax(-1)
    tgt_BT = target_BT[:, 1:]
    ok_B = ((pred_BT == tgt_BT) | (tgt_BT == -100)).all(dim=1)
    model.train()
    return ok_B.float().mean().item()


def warm_start(cfg: DemoConfig, model, tokenizer, train: list[dict], val: list[dict], log=print) -> dict:
    """Supervised training on `\\boxed{answer}` completions until greedy val accuracy passes the target."""
    torch.manual_seed(cfg.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    rng = random.Random(cfg.seed)
    acc, step, t0 = 0.0, 0, time.time()
    for step in range(1, cfg.sft_max_steps + 1):
        ids_BT, target_BT = _batch(tokenizer, rng.sample(train, 64))
        logits_BTV = model(input_ids=ids_BT).logits
        loss = F.cross_entropy(logits_BTV[:, :-1].flatten(0, 1), target_BT[:, 1:].flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # lr 3e-3 spikes without it
        opt.step()
        if step % 5 == 0:  # accuracy jumps fast once it starts: check often (one batched forward)
            acc = greedy_accuracy(model, tokenizer, val)
            if step % 50 == 0 or acc >= cfg.sft_target_accuracy:
                log(f"  warm start step {step}: loss {loss.item():.3f}, val greedy accuracy {acc:.1%}")
            if acc >= cfg.sft_target_accuracy:
                break
    return {"sft_steps": step, "sft_val_accuracy": acc, "sft_seconds": round(time.time() - t0, 1)}


def ensure_demo_assets(cfg: DemoConfig, log=print) -> dict[str, str]:
    """Build (or reuse) the demo model folder and data; return {"model", "train", "eval"} paths."""
    # "task" joined the settings later: left out for addition so caches made before stay valid.
    exclude = {"cache_dir"} | ({"task"} if cfg.task == "addition" else set())
    version = f"{ASSETS_VERSION}" if cfg.task == "addition" else f"{ASSETS_VERSION}.{TOOL_ASSETS_VERSION}"
    key = hashlib.sha256(f"{version}{cfg.model_dump_json(exclude=exclude)}".encode()).hexdigest()[:12]
    root = Path(cfg.cache_dir).expanduser() / key
    done = root / "DONE.json"
    paths = {"model": str(root / "model"), "train": str(root / "train.jsonl"), "eval": str(root / "heldout.jsonl")}
    if done.exists():
        return paths
    log(f"building demo model and data in {root} (cached for later runs)")
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny matmuls: a second thread only adds sync overhead and contention
    if cfg.task == "calculator":
        from temper import tool_demo

        info = tool_demo.build(cfg, root, log=log)
    else:
        train_path, val_path, _ = write_data(cfg, root)
        tokenizer = build_tokenizer(root / "model")
        model = build_model(cfg, tokenizer, root / "model")
        info = warm_start(cfg, model, tokenizer, load_rows(train_path), load_rows(val_path), log=log)
        model.save_pretrained(root / "model", safe_serialization=True)
        info["parameters"] = sum(p.numel() for p in model.parameters())
    done.write_text(json.dumps(info, indent=1))
    log(f"demo assets ready: {info}")
    return paths

"""Tokenizers and chat templates the agent tests share: the tool demo's byte tokenizer, and a Qwen3-style
byte-level BPE (merges trained here, Qwen's special tokens) with two templates written for these tests: one
that keeps history as rendered, one that drops `<think>` from assistant turns before the last user message."""

from __future__ import annotations

import copy
import json

from temper.rollout.engine import Completion

QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TAGS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]


def qwen3_template(strip_reasoning: bool) -> str:
    """Tools in the system turn; assistant tool calls rendered from `tool_calls` in Hermes JSON; tool results in
    a user turn. strip_reasoning: earlier turns lose `...</think>` when a user message follows them."""
    strip = ("{% if loop.index0 < ns.last_user and '</think>' in content %}"
             "{% set content = content.split('</think>')[-1].lstrip('\\n') %}{% endif %}") if strip_reasoning else ""
    return (
        "{% set ns = namespace(last_user=-1) %}"
        "{% for m in messages %}{% if m['role'] == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
        "{% if tools %}<|im_start|>system\n# Tools\n<tools>\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
        "</tools><|im_end|>\n{% endif %}"
        "{% for m in messages %}"
        "{% if m['role'] == 'assistant' %}{% set content = m['content'] or '' %}" + strip +
        "<|im_start|>assistant\n{{ content }}"
        "{% for c in m['tool_calls'] or [] %}<tool_call>{\"name\": \"{{ c['function']['name'] }}\", "
        "\"arguments\": {{ c['function']['arguments'] }}}</tool_call>{% endfor %}<|im_end|>\n"
        "{% elif m['role'] == 'tool' %}"
        "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}<|im_start|>user{% endif %}"
        "\n<tool_response>\n{{ m['content'] }}\n</tool_response>"
        "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}<|im_end|>\n{% endif %}"
        "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def build_qwen3_tokenizer(folder):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    corpus = ["What is 347 * 58? Let me think about the product.", "The answer is \\boxed{20126}.",
              '{"name": "calculator", "arguments": {"expression": "347 * 58"}}', "user assistant system tool"] * 20
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    hf.chat_template = qwen3_template(strip_reasoning=False)
    hf.save_pretrained(folder)
    return hf


def build_demo_tokenizer(folder):
    """The tool demo's tokenizer."""
    from temper.demos.calculator import build_tokenizer

    return build_tokenizer(folder)


def with_template(tokenizer, template: str):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


def call_text(expression: str) -> str:
    return f'<tool_call>{json.dumps({"name": "calculator", "arguments": {"expression": expression}})}</tool_call>'


class Scripted:
    """A stand-in engine answering with scripted replies (each ends with EOS), as `generate` does: log-probs
    -0.5, -1.5, ... and one weight version per reply (`versions`, else 0). Records the prompts and the
    per-request sampling it was given."""

    def __init__(self, tokenizer, replies, versions=None):
        self.tok, self.replies = tokenizer, list(replies)
        self.versions = list(versions or [0] * len(self.replies))
        self.prompts: list[list[int]] = []
        self.sampling: list[dict | None] = []

    async def __call__(self, prompt_ids, n, max_tokens=None, sampling=None):
        self.prompts.append(list(prompt_ids))
        self.sampling.append(sampling)
        out = []
        for _ in range(n):
            ids = self.tok.encode(self.replies.pop(0), add_special_tokens=False) + [self.tok.eos_token_id]
            v = self.versions.pop(0)
            out.append(Completion(tuple(ids), tuple(-0.5 - i for i in range(len(ids))), "", "stop", (v,) * len(ids)))
        return out

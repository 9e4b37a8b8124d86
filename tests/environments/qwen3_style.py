"""A Qwen3-style tokenizer made locally (no hub here): byte-level BPE with real merges trained on chat-like
text, Qwen2/3's pre-tokenizer pattern and NFC normalizer, Qwen's chat tokens as added tokens (the three
<|...|> ones special, the tool and think tags not, as in Qwen3's tokenizer.json), and a chat template in the
style of Qwen3's with tools (written for these tests). Merges matter: unlike the demo's merge-free tokenizer,
this one joins text across the edge between the template and a message's content (e.g. "\\n" + "\\nfoo")."""

from __future__ import annotations

from pathlib import Path

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TAGS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
# The pre-tokenizer split of Qwen2/Qwen3 (a fact about their tokenizer.json, not code).
PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")
TEMPLATE = (  # text only in {{ }} expressions: HF renders with trim_blocks, which eats a newline after a tag
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided '"
    "    'with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for t in tools %}{{- '\\n' }}{{- t | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '"
    "    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, '"
    "    '\"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + m['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- elif m['role'] != 'system' %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def corpus() -> list[str]:
    """Chat-like training text: prose, numbers, code, JSON tool calls, the chat tags, runs of newlines."""
    prose = ("the model reads a question, thinks, calls a tool when it cannot compute the answer itself, reads "
             "what the tool returned and writes its final answer in a box; tokens that were not sampled are masked")
    lines = [" ".join(prose.split()[i:] + prose.split()[:i]) for i in range(len(prose.split()))]
    for i in range(300):
        a, b = 100 + 7 * i % 900, 10 + 3 * i % 90
        lines += [
            f"<|im_start|>user\nWhat is {a} * {b}? Think about it.<|im_end|>\n<|im_start|>assistant\n",
            f'<tool_call>\n{{"name": "calculator", "arguments": {{"expression": "{a} * {b}"}}}}\n</tool_call>',
            f"<|im_start|>user\n<tool_response>\n{a * b}\n</tool_response><|im_end|>\n\n",
            f"def f(x):\n    return x * {b}\n\n\nprint(f({a}))\n",
            "The answer is \\boxed{" + str(a * b) + "}. <think>\nLet me check.\n</think>\n\n",
        ]
    return lines


def build(out: Path):
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    hf.chat_template = TEMPLATE
    hf.save_pretrained(out)
    return hf

"""Chat messages from an agent's client, encoded with their contents as text.

An agent's messages hold text temper did not write (a user's question, a web page, a tool's output). If one
of them contains the string "<|im_end|>", encoding the rendered chat as usual would turn it into the real
end-of-turn token, and the client could forge turns. The chat template's own special tokens stay special:
temper.environments.chat_encoding does the work, as it does for tool results and dataset prompts.

Assistant messages are the exception: they are what the engine sampled, sent back, and templates parse
their tags (a template that strips `<think>...</think>` from earlier turns must see those tags).
"""

from __future__ import annotations

from typing import Any

from temper.environments.chat_encoding import encode_rendering, render_chat


def encode_untrusted_chat(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                          add_generation_prompt: bool) -> list[int]:
    """Token ids of `messages` (and `tools`) under the tokenizer's chat template, every content but the
    assistant's encoded as plain text: special- and added-token strings inside it become ordinary text
    tokens. A chat without such strings encodes exactly as `tokenizer.encode(rendering)` does."""
    as_text = [i for i, m in enumerate(messages) if m.get("role") != "assistant"]
    rendering = render_chat(tokenizer, messages, tools=tools, generation_prompt=add_generation_prompt,
                            as_text=as_text)
    return encode_rendering(tokenizer, rendering)

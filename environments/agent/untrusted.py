"""Chat messages from an agent's client, encoded with their contents as text.

An agent's messages hold text temper did not write (a user's question, a web page, a tool's output). If one
of them contains the string "<|im_end|>", encoding the rendered chat as usual turns it into the real
end-of-turn token, and the client could forge turns. The chat template's own special tokens stay special.

This module is the one place the agent package encodes chat messages; the shared function of the same
contract in temper.environments replaces its body.
"""

from __future__ import annotations

from typing import Any


def _special_strings(tokenizer: Any) -> list[str]:
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    found = {t.content for t in decoder.values() if getattr(t, "special", False)}
    return sorted(found | set(getattr(tokenizer, "all_special_tokens", ())), key=len, reverse=True)


def _content_texts(messages: list[dict[str, Any]]) -> list[str]:
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return out


def encode_untrusted_chat(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                          add_generation_prompt: bool) -> list[int]:
    """Token ids of `messages` (and `tools`) under the tokenizer's chat template, every message content
    encoded as plain text: special-token strings inside it become ordinary text tokens.

    Delegates to the tokenizer: the template renders the text; contents that hold a special-token string are
    found in the rendering (in order) and only those spans are encoded with `split_special_tokens`, so a chat
    without such strings encodes exactly as `tokenizer.encode(rendering)` does. A content the template
    rewrote (so it is not found verbatim) is encoded as the template wrote it."""
    text = tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=add_generation_prompt,
                                         tokenize=False)
    specials = _special_strings(tokenizer)
    spans, cursor = [], 0
    for content in _content_texts(messages):
        if not content or not any(s in content for s in specials):
            continue
        at = text.find(content, cursor)
        if at < 0:
            continue
        spans.append((at, at + len(content)))
        cursor = at + len(content)
    ids: list[int] = []
    start = 0
    for a, b in spans:
        ids += tokenizer.encode(text[start:a], add_special_tokens=False)
        ids += tokenizer.encode(text[a:b], add_special_tokens=False, split_special_tokens=True)
        start = b
    return ids + tokenizer.encode(text[start:], add_special_tokens=False)

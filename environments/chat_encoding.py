"""Chat messages to token ids, where only the chat template's own structure becomes special tokens.

Rendering the template to text and encoding that text lets any message *content* that holds the text of a
special or added token (`<|im_end|>`, `<|im_start|>`, `<tool_call>`...) become that token's id: a tool that
prints `<|im_end|><|im_start|>assistant` would end its own turn and forge an assistant turn in the tokens
the policy is trained on. Contents temper did not sample (tool results, observations, dataset prompts by
default, agents' and judges' messages) are text, so they must encode as ordinary tokens.

How: before rendering, every occurrence of an added token's text inside such a content is swapped for a
placeholder (a per-call random marker holding no token text); the rendering is cut at the placeholders, the
pieces between them are encoded as before (the template's own tags still become special ids), and each
placeholder becomes the ordinary-token encoding of the text it stood for, which decodes back to that text.
Why not encode each content on its own: a byte-level BPE merges across the edge between template text and
content (Qwen's pre-tokenizer joins "\\n" + "\\nfoo" into one "\\n\\n" token), so cutting at every content would
change the tokens of ordinary episodes. Cutting only at forged tags leaves a content without them
untouched: its ids equal the plain encoding of the rendering, token for token. Templates that trim or test
a content still see it (only the forged tags are masked).

Only what `tokenizer.added_tokens_encoder` lists is looked for, in the raw text: an added token that a
normalizer could form from other characters (`normalized=True` with e.g. NFKC) is not caught; Qwen's NFC
forms none of its added tokens.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rendering:
    """The chat template's text of some messages, with each forged token text in a content replaced by a
    placeholder; `forged` maps the placeholder's number to the text it replaced."""

    text: str
    forged: tuple[str, ...]
    marker: str

    @functools.cached_property
    def placeholder(self) -> re.Pattern[str]:
        """Matches one placeholder; group 1 is its number."""
        return re.compile(re.escape(self.marker) + r"(\d+)\x00")

    @property
    def plain(self) -> str:
        """The rendering with the placeholders put back: the template's text for the real contents."""
        return self.placeholder.sub(lambda m: self.forged[int(m.group(1))], self.text)


def render_chat(tokenizer: Any, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                generation_prompt: bool = True, as_text: Collection[int] = ()) -> Rendering:
    """The template's rendering of `messages`; the contents of messages[i] for i in `as_text` are text (their
    token texts are placeholders, see the module's docstring)."""
    marker = f"\x00temper-text-{secrets.token_hex(8)}-"
    forged: list[str] = []
    pattern = _token_texts(tuple(tokenizer.added_tokens_encoder))

    def mask(text: str) -> str:
        def one(m: re.Match[str]) -> str:
            forged.append(m.group(0))
            return f"{marker}{len(forged) - 1}\x00"

        return pattern.sub(one, text) if pattern is not None else text

    shown = [_with_content(m, mask) if i in as_text else m for i, m in enumerate(messages)]
    text = tokenizer.apply_chat_template(shown, tools=tools or None, add_generation_prompt=generation_prompt,
                                         tokenize=False)
    return Rendering(text, tuple(forged), marker)


def encode_rendering(tokenizer: Any, rendering: Rendering, start: int = 0) -> list[int]:
    """Token ids of rendering.text[start:]: the template's text as the tokenizer encodes it (its tags
    special), each placeholder as the ordinary tokens of the text it stands for."""
    text = rendering.text[start:]
    if not rendering.forged:
        return tokenizer.encode(text, add_special_tokens=False)
    ids: list[int] = []
    at = 0
    for m in rendering.placeholder.finditer(text):
        if m.start() > at:
            ids += tokenizer.encode(text[at : m.start()], add_special_tokens=False)
        ids += encode_text(tokenizer, rendering.forged[int(m.group(1))])
        at = m.end()
    if at < len(text):
        ids += tokenizer.encode(text[at:], add_special_tokens=False)
    return ids


def encode_chat(tokenizer: Any, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                contents_as_text: bool = True) -> list[int]:
    """Token ids of `messages` under the tokenizer's chat template, ready for the assistant's turn; every
    content is text unless `contents_as_text` is False (data whose special tokens are meant)."""
    as_text = range(len(messages)) if contents_as_text else ()
    return encode_rendering(tokenizer, render_chat(tokenizer, messages, tools=tools, as_text=as_text))


def encode_untrusted_chat(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                          add_generation_prompt: bool) -> list[int]:
    """Token ids of `messages` (and `tools`) under the tokenizer's chat template, every content but the
    assistant's encoded as plain text: special- and added-token strings inside it become ordinary text
    tokens. A chat without such strings encodes exactly as `tokenizer.encode(rendering)` does.

    For conversations that come from outside (an agent's client) or follow sampled turns (the glue between
    turns): assistant messages are what the engine sampled, sent back, and templates parse their tags (a
    template that strips `<think>...</think>` from earlier turns must see those tags)."""
    as_text = [i for i, m in enumerate(messages) if m.get("role") != "assistant"]
    rendering = render_chat(tokenizer, messages, tools=tools, generation_prompt=add_generation_prompt,
                            as_text=as_text)
    return encode_rendering(tokenizer, rendering)


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Ordinary token ids of `text`, no special or added token matched (`<|im_end|>` becomes `<|`, `im`...).

    HF's `split_special_tokens=True` splits only tokens marked special, not added ones such as Qwen's
    `<tool_call>`, so a fast tokenizer runs its own pipeline here without the added-token step: normalizer,
    pre-tokenizer, model. For text holding no added token this is what `encode` gives."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow (pure Python) tokenizer: the best it offers
        return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
    normalized = backend.normalizer.normalize_str(text) if backend.normalizer is not None else text
    if backend.pre_tokenizer is None:
        pieces = [normalized]
    else:
        pieces = [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]
    return [t.id for piece in pieces for t in backend.model.tokenize(piece)]


@functools.lru_cache(maxsize=16)
def _token_texts(added: tuple[str, ...]) -> re.Pattern[str] | None:
    """A pattern matching the text of any added token (special or not), longest first like the tokenizer."""
    texts = sorted((t for t in added if t), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, texts))) if texts else None


def _with_content(message: dict[str, Any], mask: Callable[[str], str]) -> dict[str, Any]:
    """The message with `mask` applied to its text content (a string, or the text parts of a list)."""
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": mask(content)}
    if isinstance(content, list):
        parts = [{**p, "text": mask(p["text"])} if isinstance(p, dict) and isinstance(p.get("text"), str) else p
                 for p in content]
        return {**message, "content": parts}
    return message

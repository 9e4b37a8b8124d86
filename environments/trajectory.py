"""A multi-turn episode as the learner will see it: token ids exact to what the engine sampled.

The most reported multi-turn bug in RL frameworks is re-tokenization drift: decoding the assistant's turns
to text, rendering the whole conversation again with the chat template and re-encoding it gives token ids
that differ from what the policy sampled (other BPE merges, a re-serialized tool-call JSON, a template that
rewrites earlier turns). The learner then computes log-probs of tokens the policy never produced.

So nothing here is ever re-encoded. Sampled tokens are appended as sampled. The tokens *between* turns
(tool responses and the template's glue) get loss_mask 0, log-prob 0 and version ENV_VERSION, and are found
one of two ways (`History`):
- "as_sampled" (`ChatRenderer.stand_in_glue`): the template's text for the new messages after a short fixed
  stand-in history ending in a plain assistant message (STAND_IN), rendered with and without them. It never
  depends on how the template re-renders older turns, so a template that rewrites history (Qwen3 drops
  earlier `<think>` reasoning) still gives one exact sample; the context then holds the past as sampled, not
  as the template would render it now.
- "template" (`ChatRenderer.glue`): render(conversation + new messages, with the generation prompt) minus
  render(conversation so far) minus the assistant's sampled text. A template that rewrites history has no
  such prefix: TemplatePrefixError names where the two renderings part, and the caller stops there (the
  native environments end the episode with stop reason "template_mismatch", its tokens so far exact and
  trainable).
For a template that keeps history the two are the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from temper.environments.chat_encoding import (
    encode_chat,
    encode_rendering,
    encode_untrusted_chat,
    render_chat,
)

ENV_VERSION = -1
"""The weight version recorded for tokens the environment inserted (no policy produced them)."""

History = Literal["as_sampled", "template"]
"""How the tokens between turns are found (see the module's docstring)."""

STAND_IN = ({"role": "user", "content": "0"}, {"role": "assistant", "content": "1"})
"""The history the "as_sampled" glue of new messages is rendered after: plain enough that no template
rewrites it."""


class TemplatePrefixError(ValueError):
    """The chat template rendered an earlier part of the conversation differently once new messages came."""


@dataclass(frozen=True)
class Span:
    """One turn's tokens in the completion: [start, end) of completion_token_ids. role: "assistant" for
    sampled tokens, "env" for tokens the environment inserted (tool results and template glue)."""

    role: str
    start: int
    end: int


class Trajectory:
    """Prompt ids plus a growing completion whose per-token fields stay aligned (checked on every append)."""

    def __init__(self, prompt_ids: list[int]) -> None:
        self.prompt_ids = tuple(prompt_ids)
        self.ids: list[int] = []
        self.loss_mask: list[int] = []
        self.logprobs: list[float] = []
        self.versions: list[int] = []
        self.spans: list[Span] = []

    def add_sampled(self, ids: tuple[int, ...], logprobs: tuple[float, ...], versions: tuple[int, ...]) -> None:
        if not len(ids) == len(logprobs) == len(versions):
            raise AssertionError(f"sampled turn misaligned: {len(ids)} ids, {len(logprobs)} log-probs, "
                                 f"{len(versions)} versions")
        self._append("assistant", ids, [1] * len(ids), logprobs, versions)

    def add_env(self, ids: list[int]) -> None:
        self._append("env", ids, [0] * len(ids), [0.0] * len(ids), [ENV_VERSION] * len(ids))

    def _append(self, role: str, ids, mask, logprobs, versions) -> None:
        start = len(self.ids)
        self.ids.extend(ids)
        self.loss_mask.extend(mask)
        self.logprobs.extend(logprobs)
        self.versions.extend(versions)
        assert len(self.ids) == len(self.loss_mask) == len(self.logprobs) == len(self.versions), "fields drifted"
        if ids:
            self.spans.append(Span(role, start, len(self.ids)))

    @property
    def context_ids(self) -> list[int]:
        """What the engine continues from: the prompt and every completion token so far."""
        return [*self.prompt_ids, *self.ids]

    @property
    def sampled_versions(self) -> tuple[int, int]:
        """(oldest, newest) version among sampled tokens."""
        sampled = [v for v, m in zip(self.versions, self.loss_mask) if m]
        return (min(sampled), max(sampled)) if sampled else (0, 0)


class ChatRenderer:
    """The tokenizer's chat template, with the run's tool schemas (`tools=`), as text and as token ids. Message
    contents become tokens through chat_encoding.py: text, never special tokens, unless the prompt's are meant."""

    def __init__(self, tokenizer: Any, tools: list[dict[str, Any]] | None = None) -> None:
        self.tokenizer = tokenizer
        self.tools = tools or None

    def render(self, messages: list[dict[str, Any]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=self.tools, add_generation_prompt=generation_prompt, tokenize=False
        )

    def encode_prompt(self, messages: list[dict[str, Any]], contents_as_text: bool = True) -> list[int]:
        """The opening messages with the generation prompt (see chat_encoding.encode_chat)."""
        return encode_chat(self.tokenizer, messages, tools=self.tools, contents_as_text=contents_as_text)

    def encode(self, text: str) -> list[int]:
        """Text as the model would sample it (special tokens allowed): for scripted or demonstration replies."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int] | tuple[int, ...]) -> str:
        """Exact text of token ids, special tokens included (what the template must reproduce)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def glue(self, history: list[dict[str, Any]], sampled_text: str, new: list[dict[str, Any]]) -> list[int]:
        """History "template": token ids of the text the template puts after the assistant's sampled text
        once `new` messages follow it; the contents of `new` are text (a tool printing `<|im_end|>` cannot
        end its turn).

        history: the conversation up to and including the assistant message whose sampled text is
        `sampled_text`. Raises TemplatePrefixError when the template renders the past differently."""
        before = self.render(history[:-1], generation_prompt=True) + sampled_text
        n = len(history)
        after = render_chat(self.tokenizer, history + new, tools=self.tools, as_text=range(n, n + len(new)))
        if not after.text.startswith(before):
            plain = after.plain
            at = next((i for i, (a, b) in enumerate(zip(before, plain)) if a != b), min(len(before), len(plain)))
            raise TemplatePrefixError(
                f"the chat template re-renders the conversation differently at character {at}: "
                f"the episode so far reads {before[max(0, at - 40) : at + 40]!r}, the re-rendering "
                f"{plain[max(0, at - 40) : at + 40]!r}"
            )
        return encode_rendering(self.tokenizer, after, start=len(before))

    def stand_in_glue(self, new: list[dict[str, Any]], ended_with_eos: bool) -> list[int]:
        """Token ids the template puts after an assistant turn once `new` messages follow (and the next
        assistant turn opens), whatever came before that turn: the rendering of STAND_IN + `new` past that of
        STAND_IN. The contents of `new` are text but an assistant's (chat_encoding.encode_untrusted_chat).

        ended_with_eos: the turn's sampled ids end with the EOS token, which the template's text after the
        turn then starts with (left out here). Raises TemplatePrefixError when the template re-renders even
        the stand-in, or does not end an assistant turn with EOS."""
        tok, eos = self.tokenizer, self.tokenizer.eos_token_id
        head = encode_untrusted_chat(tok, list(STAND_IN[:1]), self.tools, add_generation_prompt=True)
        head += self.encode(STAND_IN[1]["content"])
        full = encode_untrusted_chat(tok, [*STAND_IN, *new], self.tools, add_generation_prompt=True)
        if full[: len(head)] != head:
            raise TemplatePrefixError(
                "the chat template renders the stand-in history "
                f"{self.decode(head)!r} differently once new messages follow: "
                f"{self.decode(full[: len(head) + 8])!r}; it cannot extend a conversation token-exactly"
            )
        rest = full[len(head) :]
        if ended_with_eos:
            if not rest or rest[0] != eos:
                raise TemplatePrefixError(
                    f"the chat template does not end an assistant turn with the EOS token {eos}: "
                    f"after it comes {self.decode(rest[:8])!r}"
                )
            rest = rest[1:]
        return rest

"""The environment contract: turn one dataset row into `n` finished episodes, using a policy engine.

An environment owns the conversation (chat template, tool calls, observations) but not the reward: the
rollout worker scores the finished episodes with the run's verifiers. Multi-turn environments put tool
output tokens into the completion with loss_mask 0, so the learner trains only on what the policy sampled.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel

from temper.configs.base import NoParams
from temper.environments.chat_encoding import encode_chat
from temper.rewards.base import VerifyResult

__all__ = ["CompletionLike", "Environment", "Episode", "Generate", "encode_chat"]


class CompletionLike(Protocol):
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    text: str
    finish_reason: str
    token_versions: tuple[int, ...]

    @property
    def versions(self) -> tuple[int, int]: ...


class Generate(Protocol):
    """generate(prompt_token_ids, n, max_tokens=None) -> n completions of that prompt, ordered. max_tokens caps
    this call below the run's sampling.max_tokens (never above it). Further keywords (`sampling={...}`: stop,
    seed) reach the engine unchanged (rollout/engine.py)."""

    def __call__(
        self, prompt_ids: list[int], n: int, max_tokens: int | None = None, **kwargs: Any
    ) -> Awaitable[list[CompletionLike]]: ...


@dataclass(frozen=True)
class Episode:
    """What an environment hands back for one sample; the rollout worker's `Sample` extends it with the
    row's label and metadata, the group and the reward (temper.rollout.types).

    prompt: the row's prompt (text or chat messages). prompt_token_ids: the tokens the engine was first
        given (chat template applied).
    completion_token_ids: every token after the prompt: sampled tokens and, in multi-turn episodes,
        tool/environment tokens in between.
    logprobs: per completion token, the engine's log-prob of the sampled token (0.0 where loss_mask is 0).
    loss_mask: per completion token, 1 when the policy sampled it (trained), 0 for environment tokens.
    response: the final assistant text (what the verifiers judge).
    versions: (oldest, newest) policy weight version that produced any of its sampled tokens.
    stop_reason: why the episode ended: the engine's "stop"/"length" for one turn; for multi-turn episodes
        also max_turns, max_tool_calls, max_completion_tokens, context_full, episode_timeout,
        template_mismatch, tool_<error kind> (with on_error = "end"), or what the environment said.
    token_versions: per completion token, the version that sampled it (-1 for environment tokens); empty
        only for samples built by hand.
    messages/spans: the conversation, and each turn's [start, end) in completion_token_ids (role
        "assistant" sampled, "env" inserted). turn_rewards/info: what the environment gave per turn and
        for the verifiers. turns, tool_calls, tool_errors (by kind): counts for the metrics.

    The first nine fields are all a single-turn episode needs; multi-turn episodes also fill in the rest.
    """

    prompt: str | list[dict[str, Any]]
    prompt_token_ids: tuple[int, ...]
    completion_token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    loss_mask: tuple[int, ...]
    response: str
    versions: tuple[int, int]
    stop_reason: str = ""
    token_versions: tuple[int, ...] = ()
    messages: list[dict[str, Any]] | None = None
    spans: tuple[dict[str, Any], ...] = ()
    turn_rewards: tuple[float, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    turns: int = 1
    tool_calls: int = 0
    tool_errors: dict[str, int] = field(default_factory=dict)
    episode: int | None = None
    verdict: VerifyResult | None = None

    def __post_init__(self) -> None:
        n = len(self.completion_token_ids)
        assert len(self.logprobs) == n and len(self.loss_mask) == n, "per-token fields must align"
        assert not self.token_versions or len(self.token_versions) == n, "per-token versions must align"


class Environment(ABC):
    """Subclasses set `Params` and implement `run_group`. Built once per rollout worker."""

    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, params: BaseModel, tokenizer: Any, prompt_key: str, system_prompt: str | None,
                 max_model_len: int | None = None, special_tokens: Literal["text", "tokens"] = "text") -> None:
        self.params = params
        self.tokenizer = tokenizer
        self.prompt_key = prompt_key
        self.system_prompt = system_prompt
        self.max_model_len = max_model_len
        """The engine's context length (prompt + completion), when the environment runs against one."""
        self.prompt_special_tokens = special_tokens
        """data.special_tokens: the prompt's contents encode as "text" (a `<|im_end|>` in them is ordinary
        tokens) or as "tokens" (special token text becomes special ids, for data that means them)."""

    def messages(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """The row's prompt as chat messages (a plain string becomes one user message)."""
        prompt = row[self.prompt_key]
        if isinstance(prompt, str):
            system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            return system + [{"role": "user", "content": prompt}]
        return list(prompt)

    def encode_messages(self, messages: list[dict[str, Any]]) -> list[int]:
        """The prompt's token ids, ready for the assistant's turn (see chat_encoding.py)."""
        return encode_chat(self.tokenizer, messages, contents_as_text=self.prompt_special_tokens == "text")

    @abstractmethod
    async def run_group(self, row: dict[str, Any], generate: Generate, n: int) -> list[Episode]:
        """Run n episodes of one row (a GRPO group): n samples, or more when an episode is several samples
        (each then carries its `episode` index)."""

    async def aclose(self) -> None:
        """Release what the environment holds across episodes (a server, a pool), in the loop that ran them."""

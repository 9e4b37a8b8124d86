"""The rollout -> learner contract: a scored sample and a group of them.

Everything the learner needs to reproduce the loss is here (prompt and completion token ids, the engine's
sampled-token log-probs, the loss mask), plus what a person needs to debug rewards later (texts, label,
breakdown). Samples are written to rollouts.jsonl with exactly these fields, so `temper rewards replay` can
re-score them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the learner imports these types; it needs neither environments nor rewards
    from temper.environments.base import Episode
    from temper.rewards.base import VerifyResult

# Fields stored as tuples (JSON gives lists back).
_TUPLE_FIELDS = ("prompt_token_ids", "completion_token_ids", "logprobs", "loss_mask", "versions")


@dataclass(frozen=True)
class Sample:
    """One finished episode of one prompt.

    prompt_token_ids: the tokens the engine was first given (chat template applied).
    completion_token_ids: every token after the prompt: sampled tokens and, in multi-turn episodes,
        tool/environment tokens in between.
    logprobs: per completion token, the engine's log-prob of the sampled token (0.0 where loss_mask is 0).
    loss_mask: per completion token, 1 when the policy sampled it (trained), 0 for environment tokens.
    versions: (oldest, newest) policy weight version that produced any of its tokens.
    reward: the rubric's total; breakdown: each verifier's part; error: why it could not be judged.
    """

    id: str
    group_id: str
    prompt: str | list[dict[str, Any]]
    response: str
    label: Any
    prompt_token_ids: tuple[int, ...]
    completion_token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    loss_mask: tuple[int, ...]
    versions: tuple[int, int]
    reward: float
    correct: bool
    breakdown: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    finish_reason: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        n = len(self.completion_token_ids)
        assert len(self.logprobs) == n and len(self.loss_mask) == n, "per-token fields must align"

    @classmethod
    def from_episode(
        cls, episode: Episode, result: VerifyResult, *, id: str, group_id: str, label: Any, metadata: dict[str, Any]
    ) -> Sample:
        """An environment's episode plus the scorer's verdict on it."""
        own = {f.name: getattr(episode, f.name) for f in fields(episode)}
        return cls(
            id=id, group_id=group_id, label=label, metadata=metadata, **own,
            reward=result.score, correct=bool(result.correct), breakdown=result.breakdown, error=result.error,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Sample:
        return cls(**{k: tuple(v) if k in _TUPLE_FIELDS else v for k, v in d.items()})


@dataclass(frozen=True)
class Group:
    """All samples of one prompt: the unit the buffer stores and GRPO normalises over."""

    group_id: str
    samples: tuple[Sample, ...]

    @property
    def min_version(self) -> int:
        return min(s.versions[0] for s in self.samples)

    @property
    def rewards(self) -> list[float]:
        return [s.reward for s in self.samples]

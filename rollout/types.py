"""The rollout -> learner contract: a scored sample and a group of them.

Everything the learner needs to reproduce the loss is here (prompt and completion token ids, the engine's
sampled-token log-probs, the loss mask), plus what a person needs to debug rewards later (texts, label,
breakdown). Samples are written to rollouts.jsonl with exactly these fields, so `temper rewards replay` can
re-score them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the learner imports these types; it needs neither environments nor rewards
    from temper.environments.base import Episode
    from temper.rewards.base import VerifyResult

# Fields stored as tuples (JSON gives lists back).
_TUPLE_FIELDS = ("prompt_token_ids", "completion_token_ids", "logprobs", "loss_mask", "versions", "token_versions",
                 "spans", "turn_rewards")


@dataclass(frozen=True)
class Sample:
    """One finished episode of one prompt.

    prompt_token_ids: the tokens the engine was first given (chat template applied).
    completion_token_ids: every token after the prompt: sampled tokens and, in multi-turn episodes,
        tool/environment tokens in between.
    logprobs: per completion token, the engine's log-prob of the sampled token (0.0 where loss_mask is 0).
    loss_mask: per completion token, 1 when the policy sampled it (trained), 0 for environment tokens.
    versions: (oldest, newest) policy weight version that produced any of its sampled tokens.
    token_versions: per completion token, the version that sampled it (-1 for environment tokens); empty
        only for samples built by hand.
    reward: the rubric's total (verifiers plus the environment's turn rewards); breakdown: each part;
        error: why it could not be judged. correct: the rubric's correctness term scored in full.
    stop_reason: why the episode ended: the engine's "stop"/"length" for one turn; for multi-turn episodes
        also max_turns, max_tool_calls, max_completion_tokens, context_full, episode_timeout,
        template_mismatch, tool_<error kind> (with on_error = "end"), or what the environment said.
    messages/spans: the conversation, and each turn's [start, end) in completion_token_ids (role
        "assistant" sampled, "env" inserted). turn_rewards/info: what the environment gave per turn and
        for the verifiers. turns, tool_calls, tool_errors (by kind): counts for the metrics.
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
    stop_reason: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] | None = None
    token_versions: tuple[int, ...] = ()
    spans: tuple[dict[str, Any], ...] = ()
    turn_rewards: tuple[float, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    turns: int = 1
    tool_calls: int = 0
    tool_errors: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.completion_token_ids)
        assert len(self.logprobs) == n and len(self.loss_mask) == n, "per-token fields must align"
        assert not self.token_versions or len(self.token_versions) == n, "per-token versions must align"

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
        """The fields as a dict, shallow (dataclasses.asdict deep-copied every token list, and was most of the
        buffer's CPU time); `json.dumps(..., default=json_default)` writes it."""
        return {name: getattr(self, name) for name in _FIELD_NAMES}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Sample:
        return cls(**{k: tuple(v) if k in _TUPLE_FIELDS else v for k, v in d.items()})


_FIELD_NAMES = tuple(f.name for f in fields(Sample))


def json_default(obj: Any) -> Any:
    """What json.dumps cannot write itself, from an environment's info or metadata: a dataclass as its
    fields, anything else as its repr (a rollout line is for reading, and must not stop the run)."""
    return asdict(obj) if is_dataclass(obj) and not isinstance(obj, type) else repr(obj)


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


def episode_metrics(samples: list[Sample]) -> dict[str, float]:
    """Per batch: turns per episode, tool calls per episode, the share of calls that failed and the count of
    each failure kind, and the share of episodes ending for each stop reason."""
    n = len(samples)
    calls = sum(s.tool_calls for s in samples)
    out: dict[str, float] = {"rollout/turns_mean": sum(s.turns for s in samples) / n,
                             "rollout/tool_calls_mean": calls / n}
    errors = Counter(kind for s in samples for kind, k in s.tool_errors.items() for _ in range(k))
    if calls:
        out["rollout/tool_error_rate"] = sum(errors.values()) / calls
    out.update({f"rollout/tool_errors/{kind}": float(k) for kind, k in errors.items()})
    out.update({f"rollout/stop/{r}": k / n for r, k in Counter(s.stop_reason for s in samples).items()})
    return out

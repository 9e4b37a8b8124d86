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

# Light at run time (pydantic and the environment contract, no torch): the learner imports Sample.
from temper.environments.base import Episode

if TYPE_CHECKING:
    from temper.rewards.base import VerifyResult

# Fields stored as tuples (JSON gives lists back).
_TUPLE_FIELDS = ("prompt_token_ids", "completion_token_ids", "logprobs", "loss_mask", "versions", "token_versions",
                 "spans", "turn_rewards")


@dataclass(frozen=True, kw_only=True)
class Sample(Episode):
    """One finished, scored episode of one prompt: the environment's Episode (see its fields there) plus
    what the rollout worker knows.

    id, group_id: this sample and its group (one prompt's `group_size` samples).
    label, metadata: the row's ground truth and its other fields (what the verifiers were given).
    reward: the rubric's total (verifiers plus the environment's turn rewards); breakdown: each part;
        error: why it could not be judged. correct: the rubric's correctness term scored in full.
    """

    id: str
    group_id: str
    label: Any
    reward: float
    correct: bool
    breakdown: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_episode(
        cls, episode: Episode, result: VerifyResult, *, id: str, group_id: str, label: Any, metadata: dict[str, Any]
    ) -> Sample:
        """An environment's episode plus the scorer's verdict on it."""
        own = {name: getattr(episode, name) for name in _EPISODE_FIELDS}
        own["verdict"] = None  # spent: reward, breakdown and error hold it
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


_EPISODE_FIELDS = tuple(f.name for f in fields(Episode))
# A rollouts.jsonl line opens with the ids, then the episode, then the verdict (the environment's own verdict
# is not written: reward, breakdown and error hold it).
_FIELD_NAMES = ("id", "group_id") + tuple(f.name for f in fields(Sample) if f.name not in ("id", "group_id", "verdict"))


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
        """The oldest version that sampled any of its tokens (0 when none sampled any)."""
        return min((s.versions[0] for s in self.samples if any(s.loss_mask)), default=0)

    @property
    def episodes(self) -> list[int]:
        """Per sample, the index of its episode in `rewards` (segments of one episode share it)."""
        keys = [s.episode if s.episode is not None else ("sample", j) for j, s in enumerate(self.samples)]
        order = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        return [order[k] for k in keys]

    @property
    def rewards(self) -> list[float]:
        """One reward per episode, in order: what GRPO normalises over (an episode's segments share it)."""
        first: dict[int, float] = {}
        for i, s in zip(self.episodes, self.samples, strict=True):
            first.setdefault(i, s.reward)
        return list(first.values())


def episode_metrics(samples: list[Sample]) -> dict[str, float]:
    """Per batch: turns per episode, tool calls per episode, the share of calls that failed and the count of
    each failure kind, and the share of episodes ending for each stop reason."""
    n = len(samples)
    # An agent's episode can be several samples (its segments), each counting its own turns and calls.
    episodes = len({(s.group_id, s.episode if s.episode is not None else ("sample", s.id)) for s in samples})
    calls = sum(s.tool_calls for s in samples)
    out: dict[str, float] = {"rollout/turns_mean": sum(s.turns for s in samples) / episodes,
                             "rollout/tool_calls_mean": calls / episodes}
    if any("segments" in s.info for s in samples):
        out["rollout/segments_per_episode"] = n / episodes
    errors = Counter(kind for s in samples for kind, k in s.tool_errors.items() for _ in range(k))
    if calls:
        out["rollout/tool_error_rate"] = sum(errors.values()) / calls
    out.update({f"rollout/tool_errors/{kind}": float(k) for kind, k in errors.items()})
    out.update({f"rollout/stop/{r}": k / n for r, k in Counter(s.stop_reason for s in samples).items()})
    return out

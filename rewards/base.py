"""The verifier contract: what a reward function sees and what it must return.

A verifier judges untrusted model output, so it must never raise on it and never hang: a verdict it
cannot reach is a zero score with the reason in `error`. `Verifier.verify` may raise on a bug of its own;
the rubric (rewards/rubric.py) catches that, times the call out, and turns both into a zero reward
with the reason — the only place in temper that swallows exceptions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from temper.configs.base import NoParams


@dataclass(frozen=True)
class VerifyRequest:
    """One sample to judge.

    prompt: the user text, or the chat messages the episode started from (None when unknown).
    response: the model's final completion text (for multi-turn, the last assistant message).
    label: the row's ground truth, any JSON value (a number, a LaTeX string, a dict of tests...).
    metadata: the row's other fields (id, source, limits...), untouched.
    messages: the full message list of a multi-turn episode, else None.
    info: what the environment reported about the episode (e.g. its tool results), else empty.
    """

    response: str
    label: Any = None
    prompt: str | list[dict[str, Any]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VerifyResult:
    """A verdict.

    score: the reward, usually in [0, 1].
    breakdown: named sub-scores or verdicts (JSON-serialisable), e.g. {"correct": 1.0, "format": 0.0}.
    error: why the score is 0 when the verifier could not judge (unparsable, timeout, crash), else None.
    seconds: wall time spent judging.
    correct: set by the rubric on its combined result: whether the correctness term (rewards.correct_term,
        default the first term) earned full score. What accuracy counts. None on one verifier's result.
    """

    score: float
    breakdown: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    correct: bool | None = None


class Verifier(ABC):
    """Base class of verifiers. Subclasses set `Params` (a pydantic model) and implement `verify`.

    Instances are built once per scoring process from validated params and reused for many calls, so
    `__init__` is the place for expensive setup. Plain functions `f(request) -> float | VerifyResult`
    are accepted too (see rewards/registry.py) for plugins that need no parameters.
    """

    Params: ClassVar[type[BaseModel]] = NoParams
    # "process": CPU-bound Python, run in the rubric's killable scoring processes.
    # "inline": the verifier isolates and times out its own work (e.g. a sandboxed subprocess).
    isolation: ClassVar[str] = "process"
    # Inline verifiers that mostly wait (an HTTP judge): how many of their calls may usefully wait at once.
    # The rubric gives its inline thread pool at least the sum over its terms.
    concurrency: int = 0

    def __init__(self, params: BaseModel | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @abstractmethod
    def verify(self, request: VerifyRequest) -> VerifyResult:
        """Judge one sample. Must not raise on any response text; may raise on its own bugs."""

    @classmethod
    def quick(cls, params: BaseModel, request: VerifyRequest) -> VerifyResult | None:
        """A verdict reached from the text alone, or None when only `verify` can decide.

        The rubric calls this in the calling process before it sends the sample to a worker, so
        it runs outside the per-sample timeout: it must take time linear in the request, import nothing
        heavy and never run untrusted code. `verify` must agree with it wherever it answers (the math
        verifier calls it first). `params` is a validated instance of `Params`.
        """
        return None

    @classmethod
    def preflight(cls, params: BaseModel) -> str | None:
        """Why this verifier cannot work at all right now (e.g. the service it calls is unreachable), or None.

        `temper rewards` asks before scoring, so that a wrong URL is one clear error rather than a zero on
        every row. It may take a few seconds; `params` is a validated instance of `Params`.
        """
        return None

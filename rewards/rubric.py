"""The reward rubric: a weighted sum of verifiers, as written in a run config's `[rewards]`.

The breakdown is flat so that it logs as metrics and diffs line by line in `temper rewards replay`:
each term's score under its name (`term.name or term.verifier`), and the term's own breakdown under
`NAME/KEY`, e.g. {"math": 1.0, "math/verdict": "correct", "format": 1.0, "format/formatted": True}.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from temper.configs.load import ConfigError
from temper.configs.schema import RewardsConfig, RewardTerm
from temper.rewards.base import Verifier, VerifyRequest, VerifyResult
from temper.rewards.registry import params_model, resolve_verifier


def term_name(term: RewardTerm) -> str:
    return term.name or term.verifier


def correct_term_name(cfg: RewardsConfig) -> str:
    """The breakdown key whose full score makes a sample "correct" (what accuracy counts)."""
    return cfg.correct_term or term_name(cfg.terms[0])


def validate_rewards_config(cfg: RewardsConfig) -> None:
    """Check every term's verifier exists and its params validate; ConfigError naming the field."""
    problems = []
    seen: set[str] = set()
    for i, term in enumerate(cfg.terms):
        where = f"rewards.terms[{i}]"
        try:
            obj = resolve_verifier(term.verifier)
        except Exception as e:  # noqa: BLE001 -- a broken plugin is a config error here
            problems.append(f"{where}.verifier: {e}")
            continue
        try:
            params_model(obj).model_validate(term.params)
        except ValidationError as e:
            for err in e.errors():
                loc = ".".join(str(p) for p in err["loc"])
                msg = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
                got = f" (got {err['input']!r})" if err["type"] != "extra_forbidden" and "input" in err else ""
                problems.append(f"{where}.params{'.' + loc if loc else ''}: {msg}{got}")
        name = term_name(term)
        if name in seen:
            problems.append(f"{where}.name: duplicate term name {name!r} (set `name` to tell them apart)")
        seen.add(name)
    if cfg.correct_term is not None and cfg.correct_term not in seen:
        problems.append(f"rewards.correct_term: {cfg.correct_term!r} is not a term name ({sorted(seen)})")
    if problems:
        raise ConfigError("invalid rewards config:\n  " + "\n  ".join(problems))


@dataclass
class Term:
    name: str
    weight: float
    verifier: Verifier


def combine(terms: list[tuple[str, float]], results: list[VerifyResult], correct_term: str) -> VerifyResult:
    """Weighted sum of per-term results (in term order) into one result with a flat breakdown; correct when
    the term named `correct_term` scored in full."""
    score, seconds = 0.0, 0.0
    breakdown: dict[str, Any] = {}
    errors = []
    for (name, weight), res in zip(terms, results, strict=True):
        score += weight * res.score
        seconds += res.seconds
        breakdown[name] = res.score
        for key, value in res.breakdown.items():
            breakdown[f"{name}/{key}"] = value
        if res.error:
            errors.append(f"{name}: {res.error}")
    return VerifyResult(score, breakdown, "; ".join(errors) or None, seconds, float(breakdown[correct_term]) >= 1.0)


def add_turn_rewards(result: VerifyResult, turn_rewards: tuple[float, ...] | list[float], weight: float) -> VerifyResult:
    """The environment's per-turn rewards, summed and weighted, added to the verifiers' total; the breakdown
    shows them as "env" (the sum) and "env/turns" (each turn's). Correctness stays the verifiers' call."""
    if not turn_rewards:
        return result
    total = float(sum(turn_rewards))
    breakdown = {**result.breakdown, "env": total, "env/turns": list(turn_rewards)}
    return replace(result, score=result.score + weight * total, breakdown=breakdown)


def run_verifier(verifier: Verifier, request: VerifyRequest) -> VerifyResult:
    """Call a verifier, turning its exceptions into a zero score with the reason."""
    start = time.perf_counter()
    try:
        res = verifier.verify(request)
        if not isinstance(res, VerifyResult):
            raise TypeError(f"verify() returned {type(res).__name__}, expected VerifyResult")
        return res
    except Exception as e:  # noqa: BLE001 -- the one place exceptions become rewards: a zero with the reason
        return VerifyResult(0.0, {}, f"{type(e).__name__}: {e}", time.perf_counter() - start)


class Rubric:
    """Verifiers with weights. `score` runs them in this process with no timeout; the scoring pool
    (rewards/pool.py) is what runs them under a hard timeout."""

    def __init__(self, terms: list[Term], correct_term: str | None = None) -> None:
        self.terms = terms
        self.correct_term = correct_term or terms[0].name

    @classmethod
    def from_config(cls, cfg: RewardsConfig) -> Rubric:
        from temper.rewards.registry import build_verifier

        validate_rewards_config(cfg)
        terms = [Term(term_name(t), t.weight, build_verifier(t.verifier, t.params)) for t in cfg.terms]
        return cls(terms, correct_term_name(cfg))

    @property
    def weights(self) -> list[tuple[str, float]]:
        return [(t.name, t.weight) for t in self.terms]

    def score(self, request: VerifyRequest) -> VerifyResult:
        return combine(self.weights, [run_verifier(t.verifier, request) for t in self.terms], self.correct_term)

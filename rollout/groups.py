"""Row -> scored group: the one place that turns a dataset row into scored samples.

Whatever generates the tokens (the worker's vLLM engine, `temper env try`'s scripted replies, an endpoint)
is handed in as a `generate` function; this owns everything else a row goes through, in order: the
environment runs `n` episodes of the row (each turn's max_tokens capped at the run's sampling.max_tokens),
the rubric scores each episode against the row's label and metadata, the environment's turn rewards are
added, and each episode becomes a Sample of the group. The rollout worker (training and eval) and
`temper env try` call it; a new way of generating plugs in here rather than copying these steps.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from temper.configs.schema import RunConfig
from temper.environments.base import Environment, Episode, Generate
from temper.environments.registry import resolve_environment
from temper.rewards.base import VerifyRequest, VerifyResult
from temper.rewards.rubric import Rubric, add_turn_rewards
from temper.rollout.types import Group, Sample


def make_environment(cfg: RunConfig, tokenizer: Any) -> Environment:
    """The run's environment (`[environment]` name and params), with its prompt settings from `[data]`."""
    env_cls = resolve_environment(cfg.environment.name)
    params = env_cls.Params.model_validate(cfg.environment.params)
    return env_cls(params, tokenizer, cfg.data.prompt_key, cfg.data.system_prompt,
                   max_model_len=cfg.rollout.engine.max_model_len, special_tokens=cfg.data.special_tokens)


class GroupRunner:
    """Runs rows through one environment and one rubric under one run config.

    env: the environment (make_environment). rubric: scores in this process or in killable processes;
    its owner closes it.
    """

    def __init__(self, cfg: RunConfig, env: Environment, rubric: Rubric) -> None:
        self.cfg = cfg
        self.env = env
        self.rubric = rubric

    def with_environment(self, env: Environment) -> GroupRunner:
        """The same run and rubric in another environment (e.g. the run's, offering no tools)."""
        return GroupRunner(self.cfg, env, self.rubric)

    def metadata(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row's fields other than its prompt and label: what verifiers see as `metadata`."""
        return {k: v for k, v in row.items() if k not in (self.cfg.data.prompt_key, self.cfg.data.label_key)}

    def capped(self, generate: Generate) -> Generate:
        """`generate` with every call's max_tokens at most the run's sampling.max_tokens (and that when unset)."""
        limit = self.cfg.rollout.sampling.max_tokens

        def call(prompt_ids: list[int], n: int, max_tokens: int | None = None, **kwargs: Any):
            return generate(prompt_ids, n, limit if max_tokens is None else min(max_tokens, limit), **kwargs)

        return call

    async def scored(self, row: dict[str, Any], generate: Generate, n: int) -> list[tuple[Episode, VerifyResult]]:
        """The samples of n episodes of `row` and the verdict on each, the environment's turn rewards added.

        An episode is one sample, or several (an agent's segments, numbered by `Episode.episode`) that share
        one verdict: the environment's own (`Episode.verdict`), else the rubric's on its last sample."""
        episodes = [e if e.episode is not None else replace(e, episode=j)
                    for j, e in enumerate(await self.env.run_group(row, self.capped(generate), n))]
        last = {e.episode: e for e in episodes}
        ask = [e for e in last.values() if e.verdict is None]
        label, metadata = row.get(self.cfg.data.label_key), self.metadata(row)
        results = await self.rubric.ascore(
            [VerifyRequest(e.response, label, e.prompt, metadata, e.messages, e.info) for e in ask]
        )
        verdicts = {e.episode: r for e, r in zip(ask, results, strict=True)}
        verdicts.update({k: e.verdict for k, e in last.items() if e.verdict is not None})
        weight = self.cfg.rewards.turn_reward_weight
        return [(e, add_turn_rewards(verdicts[e.episode], e.turn_rewards, weight)) for e in episodes]

    async def run(self, row: dict[str, Any], generate: Generate, n: int, group_id: str) -> Group:
        """One scored group of `row`: its samples are `{group_id}-s0` .. `{group_id}-s{n-1}`."""
        label, metadata = row.get(self.cfg.data.label_key), self.metadata(row)
        samples = [
            Sample.from_episode(e, r, id=f"{group_id}-s{j}", group_id=group_id, label=label, metadata=metadata)
            for j, (e, r) in enumerate(await self.scored(row, generate, n))
        ]
        return Group(group_id, tuple(samples))

"""A rollout worker: one vLLM engine looping on its shard of prompts, feeding complete groups to the buffer.

The loop is deliberately plain: take the next row, wait for a generation slot (the buffer's staleness
throttle), run the environment for `group_size` episodes, score them, put the group. Up to
`max_concurrent_groups` of these run at once so the engine always has a full batch; weight updates arrive
on the same event loop between engine steps and never interrupt a request.

A plain class with async methods: tests run it in asyncio with a local ReplayBuffer; temper/actors.py
makes it a Ray actor.
"""

from __future__ import annotations

import asyncio
import random
import traceback
from typing import Any, Protocol

from temper.configs.data import load_rows
from temper.configs.schema import RunConfig
from temper.environments.registry import resolve_environment
from temper.rollout.types import Group, Sample


class BufferLike(Protocol):
    async def acquire_slot(self) -> bool: ...
    async def release_slot(self) -> None: ...
    async def put(self, group: Group) -> None: ...


class RolloutWorker:
    def __init__(self, cfg: RunConfig, index: int, buffer: BufferLike | None) -> None:
        self.cfg = cfg
        self.index = index
        self.buffer = buffer
        self.engine = None
        self.env = None
        self.scorer = None
        self.generated_tokens = 0
        self.finished_groups = 0
        self.failed_groups = 0
        self.last_error: str | None = None
        self._stop = asyncio.Event()

    async def start(self, model_path: str | None = None, version: int = 0) -> None:
        """Build the engine, the environment and the scoring pool (slow: call once). model_path/version:
        the weights to start from (default model.path as version 0; a checkpoint when resuming)."""
        from temper.rewards.pool import RewardScorer
        from temper.rollout.engine import Engine

        cfg = self.cfg
        self.engine = Engine(
            model_path or cfg.model.path, cfg.rollout.engine, cfg.rollout.sampling, cfg.model.dtype,
            cfg.seed + 1000 * self.index + version, weight_sync=cfg.weight_sync.backend,
        )
        await self.engine.init(version)
        self.attach(self.engine, RewardScorer(cfg.rewards))

    def attach(self, engine: Any, scorer: Any) -> None:
        """Use this engine and scoring pool (tests share one engine across many workers this way)."""
        cfg = self.cfg
        self.engine, self.scorer = engine, scorer
        env_cls = resolve_environment(cfg.environment.name)
        params = env_cls.Params.model_validate(cfg.environment.params)
        self.env = env_cls(params, engine.tokenizer, cfg.data.prompt_key, cfg.data.system_prompt,
                           max_model_len=cfg.rollout.engine.max_model_len)

    # ------------------------------------------------------------------ the loop
    def _shard(self) -> list[dict[str, Any]]:
        rows = load_rows(self.cfg.data.train)
        return rows[self.index :: self.cfg.rollout.num_workers]

    def _rows_forever(self):
        rows = self._shard()
        # A resumed run (engine starting at a checkpoint's version) draws a fresh order, not the first run's.
        start_version = self.engine.version if self.engine else 0
        rng = random.Random(self.cfg.seed + self.index + 1_000_003 * start_version)
        epoch = 0
        while True:
            order = list(range(len(rows)))
            if self.cfg.data.shuffle:
                rng.shuffle(order)
            for i in order:
                yield f"w{self.index}-e{epoch}-r{i}", rows[i]
            epoch += 1

    async def run(self) -> None:
        """Generate groups until stop(); returns normally, raises only on a bug (which the driver sees)."""
        assert self.buffer is not None and self.engine is not None
        limit = asyncio.Semaphore(self.cfg.rollout.max_concurrent_groups)
        tasks: set[asyncio.Task] = set()
        for group_id, row in self._rows_forever():
            await limit.acquire()
            if self.failed_groups >= 8 and self.failed_groups > self.finished_groups:
                # Failing more often than not is a bad dataset or environment, not bad luck: stop loudly.
                raise RuntimeError(f"rollout worker {self.index}: {self.failed_groups} groups failed, "
                                   f"{self.finished_groups} succeeded; last error:\n{self.last_error}")
            if self._stop.is_set() or not await self.buffer.acquire_slot():
                limit.release()
                break
            task = asyncio.create_task(self._one_group(group_id, row, limit))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _one_group(self, group_id: str, row: dict[str, Any], limit: asyncio.Semaphore) -> None:
        try:
            group = await self.rollout_group(group_id, row)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a broken row or environment must not kill the worker: count it, free the slot
            self.failed_groups += 1
            self.last_error = traceback.format_exc(limit=3)
            await self.buffer.release_slot()
        else:
            await self.buffer.put(group)
        finally:
            limit.release()

    async def rollout_group(self, group_id: str, row: dict[str, Any], greedy: bool = False,
                            env: Any = None) -> Group:
        """Run and score one group of `row`: `group_size` sampled episodes, or one greedy episode.
        env: another environment to run it in (default the run's)."""
        from temper.rewards.base import VerifyRequest
        from temper.rewards.rubric import add_turn_rewards

        limit = self.cfg.rollout.sampling.max_tokens

        async def generate(prompt_ids: list[int], n: int, max_tokens: int | None = None):
            cap = limit if max_tokens is None else min(max_tokens, limit)
            return await self.engine.generate(prompt_ids, 1 if greedy else n, greedy=greedy, max_tokens=cap)

        n = 1 if greedy else self.cfg.rollout.group_size
        episodes = await (env or self.env).run_group(row, generate, n)
        label = row.get(self.cfg.data.label_key)
        metadata = {k: v for k, v in row.items() if k not in (self.cfg.data.prompt_key, self.cfg.data.label_key)}
        results = await self.scorer.ascore(
            [VerifyRequest(e.response, label, e.prompt, metadata, e.messages, e.info) for e in episodes]
        )
        weight = self.cfg.rewards.turn_reward_weight
        results = [add_turn_rewards(r, e.turn_rewards, weight) for e, r in zip(episodes, results, strict=True)]
        samples = [
            Sample.from_episode(e, r, id=f"{group_id}-s{j}", group_id=group_id, label=label, metadata=metadata)
            for j, (e, r) in enumerate(zip(episodes, results, strict=True))
        ]
        if not greedy:
            self.generated_tokens += sum(sum(e.loss_mask) for e in episodes)
            self.finished_groups += 1
        return Group(group_id, tuple(samples))

    # ------------------------------------------------------------------ control
    # The learner drives these through vLLM's weight-transfer API (learner/weight_sync.py).
    async def weights_init(self, init_info: dict[str, Any]) -> None:
        await self.engine.weights_init(init_info)

    async def weights_start(self) -> None:
        await self.engine.weights_start()

    async def weights_update(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        await self.engine.weights_update(update_info)

    async def weights_finish(self, version: int) -> None:
        await self.engine.weights_finish(version)

    async def evaluate(self, rows: list[dict[str, Any]], without_tools: bool = False) -> list[dict[str, Any]]:
        """Greedy, one sample per row: whether it is correct (the rubric's correctness term), its tool calls
        and tool errors. without_tools: in the same environment offering no tools (tool environments only)."""
        env = self.env.without_tools() if without_tools else self.env
        groups = await asyncio.gather(
            *(self.rollout_group(f"eval-{i}", r, greedy=True, env=env) for i, r in enumerate(rows))
        )
        return [{"correct": s.correct, "tool_calls": s.tool_calls, "tool_errors": sum(s.tool_errors.values())}
                for s in (g.samples[0] for g in groups)]

    def stats(self) -> dict[str, Any]:
        return {
            "generated_tokens": self.generated_tokens,
            "finished_groups": self.finished_groups,
            "failed_groups": self.failed_groups,
            "last_error": self.last_error,
            "version": self.engine.version if self.engine else None,
        }

    async def stop(self) -> None:
        self._stop.set()

    def shutdown(self) -> None:
        if self.scorer is not None:
            self.scorer.close()
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

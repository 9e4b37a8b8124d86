"""A rollout worker: one vLLM engine looping on its shard of prompts, feeding complete groups to the buffer.

The loop is deliberately plain: ask the buffer for the next prompt (it waits for a slot under the
staleness throttle and keeps this worker's data cursor, so a replacement worker or a resumed run carries
on where this one stopped), turn the row into a scored group of `group_size` samples (rollout/groups.py,
with this worker's engine generating), put the group. Up
to `max_concurrent_groups` of these run at once so the engine always has a full batch; weight updates
arrive on the same event loop between engine steps and never interrupt a request. A dead engine ends the
loop with `EngineDied` and returns no slot: the driver re-issues its groups to a replacement worker.

A plain class with async methods: tests run it in asyncio with a local ReplayBuffer; temper/actors.py
makes it a Ray actor.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from typing import Any, Protocol

from temper.configs.data import load_prompts
from temper.configs.schema import RunConfig
from temper.rewards.rubric import Rubric
from temper.rollout.activity import Activity, Span
from temper.rollout.dispatch import Ticket
from temper.rollout.groups import GroupRunner, make_environment
from temper.rollout.types import Group


class BufferLike(Protocol):
    async def next_prompt(self, worker: int, incarnation: int = 0) -> Ticket | None: ...
    async def release_slot(self, group_id: str | None = None) -> None: ...
    async def put(self, group: Group) -> None: ...


class EngineDied(RuntimeError):
    """The worker's vLLM engine is dead: nothing this worker holds can finish; replace the worker."""


class RolloutWorker:
    def __init__(self, cfg: RunConfig, index: int, buffer: BufferLike | None) -> None:
        self.cfg = cfg
        self.index = index
        self.buffer = buffer
        self.engine = None
        self.runner = None  # rollout/groups.py: row -> scored group, in the run's environment with its rubric
        self.generated_tokens = 0
        self.finished_groups = 0
        self.failed_groups = 0
        self.last_error: str | None = None
        self.engine_error: str | None = None
        self._stop = asyncio.Event()  # set by stop(), or when the engine dies: the loop takes no new prompt
        # The engine's busy / eval / paused-for-weights spans, drained by the driver each step (timeline).
        self.activity = Activity(exclusive=("paused",))

    async def start(self, model_path: str | None = None, version: int = 0) -> dict[str, float]:
        """Build the engine, the environment and the rubric's scoring processes (slow: call once).
        model_path/version: the weights to start from (default model.path as version 0; a checkpoint when resuming). Returns
        where the time went: importing vLLM, the engine (its processes, the model load, the KV cache), the rest."""
        t0 = time.perf_counter()
        cfg = self.cfg
        # The scoring processes first: their imports (sympy, math-verify) then overlap vLLM's import and the
        # engine's start, rather than the first eval, where they held it up (on the cores the engine needs).
        rubric = Rubric(cfg.rewards)
        try:
            import vllm.v1.engine.async_llm  # noqa: F401 - timed on its own: the engine imports it anyway

            from temper.rollout.engine import Engine

            t_import = time.perf_counter()
            self.engine = Engine(
                model_path or cfg.model.path, cfg.rollout.engine, cfg.rollout.sampling, cfg.model.dtype,
                cfg.seed + 1000 * self.index + version, weight_sync=cfg.weight_sync.backend,
            )
            await self.engine.init(version)
        except BaseException:
            rubric.close()
            raise
        t_engine = time.perf_counter()
        self.attach(self.engine, rubric)
        return {"import_s": t_import - t0, "engine_s": t_engine - t_import, "rest_s": time.perf_counter() - t_engine}

    def attach(self, engine: Any, rubric: Rubric, env: Any = None) -> None:
        """Use this engine and rubric (tests share one engine across many workers this way); env: an
        environment instead of the run's."""
        self.engine = engine
        self.runner = GroupRunner(self.cfg, env or make_environment(self.cfg, engine.tokenizer), rubric)

    @property
    def rubric(self) -> Rubric | None:
        return self.runner.rubric if self.runner is not None else None

    # ------------------------------------------------------------------ the loop
    def _shard(self) -> list[dict[str, Any]]:
        d = self.cfg.data  # read as the driver checked it, so row i means the same row everywhere
        rows = load_prompts(d.train, d.prompt_key, d.label_key, d.on_bad_line).rows
        return rows[self.index :: self.cfg.rollout.num_workers]

    def _engine_dead(self) -> bool:
        return bool(getattr(self.engine, "errored", False))

    async def run(self, incarnation: int = 0) -> None:
        """Generate groups until stop(); returns normally. Raises EngineDied when the engine dies, and
        RuntimeError when most groups fail (a bad dataset or environment); the driver sees both.

        incarnation: how many workers held this index before (the buffer's `requeue_worker`)."""
        assert self.buffer is not None and self.engine is not None
        rows = self._shard()
        limit = asyncio.Semaphore(self.cfg.rollout.max_concurrent_groups)
        tasks: set[asyncio.Task] = set()
        try:
            while True:
                await limit.acquire()
                if self.failed_groups >= 8 and self.failed_groups > self.finished_groups:
                    # Failing more often than not is a bad dataset or environment, not bad luck: stop loudly.
                    raise RuntimeError(f"rollout worker {self.index}: {self.failed_groups} groups failed, "
                                       f"{self.finished_groups} succeeded; last error:\n{self.last_error}")
                ticket = await self._next_ticket(incarnation)
                if ticket is None:
                    limit.release()
                    break
                task = asyncio.create_task(self._one_group(ticket.group_id, rows[ticket.row], limit))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.runner.env.aclose()  # what the environment holds per worker: an MCP server, an endpoint
        if self.engine_error is not None:
            raise EngineDied(f"rollout worker {self.index}: the vLLM engine died: {self.engine_error}")

    async def _next_ticket(self, incarnation: int) -> Ticket | None:
        """The buffer's next prompt for this worker; None once stopping (stop() or a dead engine), even while
        the buffer's throttle still holds the request. A prompt issued to a request given up here stays in
        flight for this worker: stopping on a dead engine means the driver re-issues it."""
        if self._stop.is_set():
            return None
        ask = asyncio.ensure_future(self.buffer.next_prompt(self.index, incarnation))
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({ask, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if ask.done():
            return ask.result()
        ask.cancel()
        return None

    async def _one_group(self, group_id: str, row: dict[str, Any], limit: asyncio.Semaphore) -> None:
        try:
            group = await self.rollout_group(group_id, row)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken row or environment must not kill the worker: count it, free the slot
            if self._engine_dead():  # not this group's fault: keep it in flight so it is issued again
                self.engine_error = self.engine_error or f"{type(e).__name__}: {e}"
                self._stop.set()
            else:
                self.failed_groups += 1
                self.last_error = traceback.format_exc(limit=3)
                await self.buffer.release_slot(group_id)
        else:
            await self.buffer.put(group)
        finally:
            limit.release()

    async def rollout_group(self, group_id: str, row: dict[str, Any], greedy: bool = False,
                            env: Any = None) -> Group:
        """Run and score one group of `row`: `group_size` sampled episodes, or one greedy episode.
        env: another environment to run it in (default the run's)."""

        async def generate(prompt_ids: list[int], n: int, max_tokens: int | None = None, **kwargs: Any):
            with self.activity.during("eval" if greedy else "busy"):
                return await self.engine.generate(prompt_ids, 1 if greedy else n, greedy=greedy,
                                                  max_tokens=max_tokens, **kwargs)

        runner = self.runner if env is None else self.runner.with_environment(env)
        group = await runner.run(row, generate, 1 if greedy else self.cfg.rollout.group_size, group_id)
        if not greedy:
            self.generated_tokens += sum(sum(s.loss_mask) for s in group.samples)
            self.finished_groups += 1
        return group

    # ------------------------------------------------------------------ control
    # The learner drives these through vLLM's weight-transfer API (learner/weight_sync.py).
    async def weights_init(self, init_info: dict[str, Any]) -> None:
        await self.engine.weights_init(init_info)

    async def weights_start(self) -> None:
        self.activity.enter("paused")  # until weights_finish: in-flight requests wait
        try:
            await self.engine.weights_start()
        except BaseException:
            self.activity.leave("paused")
            raise

    async def weights_update(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        await self.engine.weights_update(update_info)

    async def weights_finish(self, version: int) -> None:
        try:
            await self.engine.weights_finish(version)
        finally:
            self.activity.leave("paused")

    async def evaluate(self, rows: list[dict[str, Any]], without_tools: bool = False) -> list[dict[str, Any]]:
        """Greedy, one sample per row: whether it is correct (the rubric's correctness term), its tool calls
        and tool errors. without_tools: in the same environment offering no tools (tool environments only)."""
        env = self.runner.env.without_tools() if without_tools else None
        groups = await asyncio.gather(
            *(self.rollout_group(f"eval-{i}", r, greedy=True, env=env) for i, r in enumerate(rows))
        )
        # One episode per row; an agent's episode may be several segments, each counting its own calls.
        return [{"correct": g.samples[-1].correct, "tool_calls": sum(s.tool_calls for s in g.samples),
                 "tool_errors": sum(sum(s.tool_errors.values()) for s in g.samples)} for g in groups]

    def drain_spans(self) -> list[Span]:
        """The engine's busy / eval / paused spans since the last call (rollout/activity.py)."""
        return self.activity.drain()

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
        if self.runner is not None:
            self.runner.rubric.close()
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

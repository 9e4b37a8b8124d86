"""Does a slow tool stall generation? The tool demo's model on one real vLLM engine, three ways, one run:

    single_turn    the single-turn environment: one reply per episode, no tool runs (the baseline)
    tool 0 ms      the tool environment with the real calculator (a call, its answer, the boxed reply)
    tool 200 ms    the same, but every calculator call first sleeps 200 ms (a slow sandbox, a web lookup)

Same prompts, group size, sampling (so the same per-turn token budget, `rollout.sampling.max_tokens`),
`max_concurrent_groups` and scoring as a rollout worker, driven the way `RolloutWorker.run` drives them:
at most that many groups in flight, a new one started as soon as one finishes. Reported per mode: sampled
tokens/s (loss-mask tokens: what the policy generated, not the inserted tool text), episodes/s, turns and
tool calls per episode, the mean number of requests in the engine, and the fraction of wall time the
engine had no request at all (idle). The ratio that matters is tool 200 ms over single-turn tokens/s
(goal >= 0.8: other episodes keep the engine busy while one waits for its tool). Modes alternate across
repeats so machine drift hits all of them.

    python bench/bench_tools.py [--groups 256] [--repeats 3] [--delay-ms 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from temper.configs.load import load_config
from temper.environments.calculator import calculator, evaluate
from temper.environments.single_turn import SingleTurnEnvironment
from temper.environments.tool_env import ToolEnvironment
from temper.environments.tools import Tool

REPO = Path(__file__).resolve().parents[1]


def slow_calculator(delay_s: float) -> Tool:
    """The calculator, but each call first waits `delay_s` (awaited: it blocks only its own episode)."""

    async def call(expression: str) -> str:
        await asyncio.sleep(delay_s)
        return evaluate(expression)

    return Tool(calculator.name, calculator.description, calculator.args, call, timeout_s=delay_s + 5.0)


class SlowToolEnvironment(ToolEnvironment):
    delay_s = 0.0

    def tools(self, row: dict[str, Any]) -> list[Tool]:
        return [slow_calculator(self.delay_s)] if self.delay_s else super().tools(row)


class EngineClock:
    """Wraps the engine: counts requests in flight and integrates over time how many there were."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.tokenizer = engine, engine.tokenizer
        self.in_flight, self.idle_s, self.request_s = 0, 0.0, 0.0
        self._since = time.perf_counter()

    def __getattr__(self, name: str) -> Any:  # everything else (shutdown, version...) is the engine's
        return getattr(self.engine, name)

    def tick(self) -> None:
        now = time.perf_counter()
        if self.in_flight == 0:
            self.idle_s += now - self._since
        self.request_s += self.in_flight * (now - self._since)
        self._since = now

    def reset(self) -> None:
        self.tick()
        self.idle_s = self.request_s = 0.0

    async def generate(self, *args: Any, **kwargs: Any):
        self.tick()
        self.in_flight += 1
        try:
            return await self.engine.generate(*args, **kwargs)
        finally:
            self.tick()
            self.in_flight -= 1


async def one_mode(worker, clock: EngineClock, env, rows: list[dict], concurrency: int) -> dict[str, float]:
    limit = asyncio.Semaphore(concurrency)

    async def group(i: int, row: dict):
        async with limit:
            return await worker.rollout_group(f"g{i}", row, env=env)

    clock.reset()
    t0 = time.perf_counter()
    groups = await asyncio.gather(*(group(i, r) for i, r in enumerate(rows)))
    seconds = time.perf_counter() - t0
    clock.tick()
    samples = [s for g in groups for s in g.samples]
    sampled = sum(sum(s.loss_mask) for s in samples)
    return {
        "tokens_per_s": sampled / seconds,
        "episodes_per_s": len(samples) / seconds,
        "turns": statistics.mean(s.turns for s in samples),
        "tool_calls": statistics.mean(s.tool_calls for s in samples),
        "accuracy": statistics.mean(float(s.correct) for s in samples),
        "requests_in_engine": clock.request_s / seconds,
        "engine_idle": clock.idle_s / seconds,
        "seconds": seconds,
    }


async def alternate(worker, clock: EngineClock, modes: dict[str, Any], rows: list[dict], concurrency: int,
                    repeats: int) -> dict[str, list[dict[str, float]]]:
    """Every mode over all rows, `repeats` times, in alternating order so machine drift hits all; prints each."""
    width = max(len(name) for name in modes)
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for r in range(repeats):
        for name in (list(modes) if r % 2 == 0 else list(modes)[::-1]):
            res = await one_mode(worker, clock, modes[name], rows, concurrency)
            results[name].append(res)
            print(f"{name:>{width}}: {res['tokens_per_s']:6.0f} sampled tok/s, {res['episodes_per_s']:5.1f} episodes/s, "
                  f"{res['turns']:.2f} turns, {res['tool_calls']:.2f} calls/episode, accuracy {res['accuracy']:.1%}, "
                  f"{res['requests_in_engine']:.0f} requests in engine, engine idle {res['engine_idle']:.1%}",
                  flush=True)
    return results


async def run(args: argparse.Namespace) -> None:
    from temper.configs.data import load_rows
    from temper.prepare import prepare
    from temper.rewards.rubric import Rubric
    from temper.rollout.engine import Engine
    from temper.rollout.worker import RolloutWorker

    cfg = prepare(load_config(REPO / "configs" / "tool_demo.toml", []), log=print).cfg
    rows = load_rows(cfg.data.train)[: args.groups]
    engine = Engine(cfg.model.path, cfg.rollout.engine, cfg.rollout.sampling, cfg.model.dtype, cfg.seed)
    await engine.init()
    clock = EngineClock(engine)
    worker = RolloutWorker(cfg, 0, None)
    worker.attach(clock, Rubric(cfg.rewards))
    env_args = (engine.tokenizer, cfg.data.prompt_key, cfg.data.system_prompt)
    tool_params = ToolEnvironment.Params.model_validate(cfg.environment.params)
    single = SingleTurnEnvironment(SingleTurnEnvironment.Params(), *env_args)
    modes: dict[str, Any] = {"single_turn": single}
    for delay in (0.0, args.delay_ms / 1000):
        env = SlowToolEnvironment(tool_params, *env_args, max_model_len=cfg.rollout.engine.max_model_len)
        env.delay_s = delay
        modes[f"tool {delay * 1000:.0f} ms"] = env
    concurrency = cfg.rollout.max_concurrent_groups
    print(f"{len(rows)} groups x {cfg.rollout.group_size} samples, {concurrency} groups in flight, "
          f"max_tokens {cfg.rollout.sampling.max_tokens} per turn")
    await one_mode(worker, clock, single, rows[:concurrency], concurrency)  # warm-up: compile, prefix cache
    try:
        results = await alternate(worker, clock, modes, rows, concurrency, args.repeats)
    finally:
        worker.shutdown()

    def med(mode: str, key: str) -> float:
        return statistics.median(x[key] for x in results[mode])

    slow = f"tool {args.delay_ms:.0f} ms"
    print(f"\n{slow} / single_turn sampled tokens/s: {med(slow, 'tokens_per_s') / med('single_turn', 'tokens_per_s'):.2f}x; "
          f"{slow} / tool 0 ms: {med(slow, 'tokens_per_s') / med('tool 0 ms', 'tokens_per_s'):.2f}x "
          f"(median of {args.repeats}); engine idle {med(slow, 'engine_idle'):.1%} with the slow tool")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--delay-ms", type=float, default=200.0)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()

"""What does an agent behind the OpenAI-compatible endpoint cost? The tool demo's task on one real vLLM engine,
two ways, one run:

    tool     the native tool environment with the calculator (the baseline)
    agent    `[environment] name = "agent"` running examples/agent_calculator/agent.py: the same task, its own
             tool loop over a real `openai.AsyncOpenAI` client, every call over HTTP to the worker's endpoint

Same prompts, group size, sampling, `max_concurrent_groups` and scoring, driven the way `RolloutWorker.run`
drives them (bench_tools.py's harness). Reported per mode: sampled tokens/s, episodes/s, turns and tool calls
per episode, accuracy, requests in the engine and engine idle time. The ratio is agent / tool sampled tokens/s
(goal >= 0.85). Modes alternate across repeats so machine drift hits both.

    python bench/bench_agent.py [--groups 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from pathlib import Path

from bench_tools import EngineClock, alternate, one_mode

from temper.configs.load import load_config
from temper.environments.agent.environment import AgentEnvironment
from temper.environments.tool_env import ToolEnvironment

REPO = Path(__file__).resolve().parents[1]


async def run(args: argparse.Namespace) -> None:
    from temper.configs.data import load_rows
    from temper.prepare import prepare
    from temper.rewards.rubric import Rubric
    from temper.rollout.engine import Engine
    from temper.rollout.worker import RolloutWorker

    tool_cfg = prepare(load_config(REPO / "configs" / "tool_demo.toml", []), log=print).cfg
    agent_cfg = load_config(REPO / "configs" / "agent_demo.toml", []).environment.params
    rows = load_rows(tool_cfg.data.train)[: args.groups]
    engine = Engine(tool_cfg.model.path, tool_cfg.rollout.engine, tool_cfg.rollout.sampling, tool_cfg.model.dtype,
                    tool_cfg.seed)
    await engine.init()
    clock = EngineClock(engine)
    worker = RolloutWorker(tool_cfg, 0, None)
    worker.attach(clock, Rubric(tool_cfg.rewards))
    env_args = (engine.tokenizer, tool_cfg.data.prompt_key, tool_cfg.data.system_prompt)
    max_len = tool_cfg.rollout.engine.max_model_len
    modes = {
        "tool": ToolEnvironment(ToolEnvironment.Params.model_validate(tool_cfg.environment.params), *env_args,
                                max_model_len=max_len),
        "agent": AgentEnvironment(AgentEnvironment.Params.model_validate(agent_cfg), *env_args, max_model_len=max_len),
    }
    concurrency = tool_cfg.rollout.max_concurrent_groups
    print(f"{len(rows)} groups x {tool_cfg.rollout.group_size} samples, {concurrency} groups in flight, "
          f"max_tokens {tool_cfg.rollout.sampling.max_tokens} per turn")
    for env in modes.values():  # warm-up: compile, prefix cache, the endpoint's server
        await one_mode(worker, clock, env, rows[:concurrency], concurrency)
    try:
        results = await alternate(worker, clock, modes, rows, concurrency, args.repeats)
    finally:
        await modes["agent"].aclose()
        worker.shutdown()

    def med(mode: str, key: str) -> float:
        return statistics.median(x[key] for x in results[mode])

    print(f"\nagent / tool sampled tokens/s: {med('agent', 'tokens_per_s') / med('tool', 'tokens_per_s'):.2f}x; "
          f"episodes/s {med('agent', 'episodes_per_s') / med('tool', 'episodes_per_s'):.2f}x "
          f"(median of {args.repeats})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()

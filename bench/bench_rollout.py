"""Rollout throughput: a temper RolloutWorker against its own engine driven directly, in one run.

A rollout worker cannot be faster than its raw engine; this measures how close it comes. Both sides use the
same model, prompts (the single-turn environment's chat-templated token ids), sampling parameters
(`rollout.engine.sampling_params`) and vLLM engine arguments (`rollout.engine.engine_kwargs`):

    raw     vllm.LLM.generate on every prompt at once, n = group_size samples each; run before and after
            temper's side, and the baseline is the mean of the two (a shared machine drifts)
    temper  RolloutWorker.run on the same prompts (environment episodes, math-verifier scoring, groups into
            a ReplayBuffer; no learner, no Ray), timed until the buffer holds every group. The buffer's
            throttle admits exactly one batch of all the prompts, so it never holds the worker back.
            Run twice: with the default rollout.max_concurrent_groups, and with every group in flight.

The model is the demo's Qwen2 builder at ~40M parameters with random weights (no warm start): big enough
that the engine's compute, not Python overhead, sets the pace. Random weights rarely emit EOS, so nearly
every completion runs to max_tokens on both sides; throughput counts the tokens actually generated.

    python bench/bench_rollout.py [--prompts 64] [--group-size 8] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import tempfile
import time
from pathlib import Path

from temper.configs.schema import DemoConfig, RunConfig


def build_config(model: str, train: str, args) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"path": model},
        "data": {"train": train, "shuffle": False},
        "rollout": {"group_size": args.group_size, "sampling": {"max_tokens": args.max_tokens},
                    "engine": {"kv_cache_gb": args.kv_cache_gb, "max_model_len": 512}},
        # one batch of every prompt: the throttle admits all of them and nothing more
        "buffer": {"max_staleness": 0, "capacity_groups": args.prompts},
        "learner": {"batch_groups": args.prompts},
        "rewards": {"num_workers": 1},
    })


def raw_vllm(cfg: RunConfig, prompts: list[list[int]]) -> dict:
    from vllm import LLM
    from vllm.inputs import TokensPrompt

    from temper.rollout.engine import engine_kwargs, sampling_params

    s = cfg.rollout.sampling
    processed = s.temperature != 1.0 or s.top_p < 1.0 or s.top_k > 0
    llm = LLM(**engine_kwargs(cfg.model.path, cfg.rollout.engine, cfg.model.dtype, cfg.seed, processed, "shm"))
    inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    llm.generate(inputs[:4], sampling_params(s, 1, greedy=True), use_tqdm=False)  # warm-up, as temper's side
    t0 = time.perf_counter()
    outs = llm.generate(inputs, sampling_params(s, cfg.rollout.group_size), use_tqdm=False)
    seconds = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    del llm, outs
    gc.collect()
    return {"seconds": seconds, "tokens": tokens}


async def temper_side(cfg: RunConfig, rows: list[dict]) -> list[dict]:
    """The worker with the default concurrency, then with every group in flight, on one engine."""
    from temper.rollout.buffer import ReplayBuffer
    from temper.rollout.dispatch import PromptDispatch
    from temper.rollout.worker import RolloutWorker

    first = RolloutWorker(cfg, 0, None)
    await first.start()
    await first.evaluate(rows[:4])  # warm-up: the engine, and the scoring pool's processes
    results = []
    for concurrency in sorted({min(cfg.rollout.max_concurrent_groups, len(rows)), len(rows)}):
        run_cfg = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"max_concurrent_groups": concurrency})})
        dispatch = PromptDispatch(PromptDispatch.shard_sizes(len(rows), 1), cfg.seed, shuffle=False)
        buffer = ReplayBuffer(cfg.buffer, cfg.learner.batch_groups, dispatch=dispatch)
        worker = RolloutWorker(run_cfg, 0, buffer)
        worker.attach(first.engine, first.rubric)
        t0 = time.perf_counter()
        loop = asyncio.create_task(worker.run())
        batch = await buffer.get_batch(len(rows), learner_version=0, timeout=3600)
        seconds = time.perf_counter() - t0
        await worker.stop()
        await buffer.close()
        await loop
        tokens = sum(len(s.completion_token_ids) for g in batch for s in g.samples)
        results.append({"concurrency": concurrency, "seconds": seconds, "tokens": tokens})
    first.shutdown()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--kv-cache-gb", type=float, default=1.0)
    args = ap.parse_args()

    from transformers import AutoConfig

    from temper.demos.assets import ensure_demo_assets

    demo = DemoConfig(enabled=True, cache_dir=os.path.expanduser("~/.cache/temper/bench"), hidden_size=512,
                      num_layers=10, sft_max_steps=0, n_train=max(1000, args.prompts), n_eval=10)
    paths = ensure_demo_assets(demo, log=lambda *_: None)
    c = AutoConfig.from_pretrained(paths["model"])
    h, i, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    kv = h * c.num_key_value_heads // c.num_attention_heads
    params = layers * (2 * h * h + 2 * h * kv + 3 * h * i) + c.vocab_size * h  # tied embeddings; norms left out
    with tempfile.TemporaryDirectory(prefix="temper-bench-rollout-") as tmp:
        rows = [json.loads(x) for x in Path(paths["train"]).read_text().splitlines()[: args.prompts]]
        train = Path(tmp) / "prompts.jsonl"
        train.write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = build_config(paths["model"], str(train), args)
        print(f"model: ~{params / 1e6:.0f}M parameters, random weights; {args.prompts} prompts x {args.group_size} "
              f"samples, max_tokens {args.max_tokens}; cores: {os.cpu_count()}", flush=True)

        from transformers import AutoTokenizer

        from temper.environments.single_turn import SingleTurnEnvironment

        env = SingleTurnEnvironment(SingleTurnEnvironment.Params(), AutoTokenizer.from_pretrained(paths["model"]),
                                    cfg.data.prompt_key, cfg.data.system_prompt, max_model_len=512)
        prompts = [env.encode_messages(env.messages(r)) for r in rows]

        def show(what: str, r: dict) -> float:
            tps = r["tokens"] / r["seconds"]
            print(f"{what:<44} {tps:8,.0f} tok/s ({r['tokens']:,} tokens in {r['seconds']:.1f}s)", flush=True)
            return tps

        # raw before and after temper: the baseline is their mean, so drift on a shared machine hits both sides
        before = show("raw vLLM LLM.generate, all prompts at once", raw_vllm(cfg, prompts))
        ours = [(r["concurrency"], show(f"temper RolloutWorker, {r['concurrency']} groups in flight", r))
                for r in asyncio.run(temper_side(cfg, rows))]
        after = show("raw vLLM LLM.generate again", raw_vllm(cfg, prompts))
        raw_tps = (before + after) / 2
        for concurrency, tps in ours:
            print(f"ratio, {concurrency:>3} groups in flight: {tps / raw_tps:.2f}x raw vLLM ({raw_tps:,.0f} tok/s, "
                  f"the mean of the two raw runs)")


if __name__ == "__main__":
    main()

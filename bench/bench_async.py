"""Async vs sync RL: the demo recipe for N steps with max_staleness = 1 (generation overlaps training) and
with max_staleness = 0 (sync: workers wait for each new version), same machine, same run of this script.

Each job is a real `temper train` (private Ray cluster, one vLLM rollout worker, the learner, weight sync
through vLLM's transfer API). Reported per mode: RL seconds for the steps (the loop only: no engine start,
no before/after eval), steps/s, generated tokens/s, mean staleness, and held-out accuracy before/after
(n = all held-out rows), and from the run's timeline the generation (G) and training (T) seconds per batch
and the learner's and engines' idle fractions. The ratio is async steps/s over sync steps/s, printed beside
the ideal (G+T)/max(G,T) from the sync run's G and T. Modes alternate across repeats so machine drift hits
both.

Two models:
    demo    the demo recipe as it is (0.5M parameters, warm-started): overhead-bound, learning shows
    40m     the demo's Qwen2 builder at ~40M parameters (hidden 512, 10 layers) with random weights, the same
            model as bench_rollout.py: the engine's and the learner's compute set the pace. Random weights
            earn no reward, so held-out accuracy stays 0; the learner still runs every sample's forward and
            backward pass (GRPO drops no group), so its time per batch is that of a real step.

    python bench/bench_async.py [--model demo|40m] [--steps N] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from temper.configs.load import load_config
from temper.job import train

REPO = Path(__file__).resolve().parents[1]


# ~40M parameters, random weights: the model (and cache) of bench_rollout.py. Batch and lengths make one
# generation (G) and one training step (T) a few seconds each on one core.
BIG = ["demo.cache_dir=\"~/.cache/temper/bench\"", "demo.hidden_size=512", "demo.num_layers=10", "demo.sft_max_steps=0",
       "demo.n_train=1000", "demo.n_eval=10", "rollout.sampling.max_tokens=32", "rollout.engine.max_model_len=512",
       "learner.batch_groups=4", "rollout.max_concurrent_groups=8", "eval.limit=10"]


def one_job(staleness: int, steps: int, run_dir: str, model: str) -> dict:
    cfg = load_config(
        REPO / "configs" / "demo.toml",
        (BIG if model == "40m" else []) + [
            f"buffer.max_staleness={staleness}", f"learner.steps={steps}", "eval.every_steps=0",
            "logging.progress_bar=false", f"logging.run_dir={json.dumps(run_dir)}", "checkpoint.save_final=false",
            f"name=\"bench-{model}-staleness{staleness}\""],
    )
    summary = train(cfg, log=lambda *_: None)
    t = summary["timeline"]
    return {
        "gen_s": t["gen_s"], "train_s": t["train_s"], "learner_idle": t["learner"]["idle_frac"],
        "engine_idle": t["engine"]["idle_frac"], "engine_paused": t["engine"]["paused_frac"],
        "rl_seconds": summary["rl_seconds"],
        "steps_per_s": summary["steps"] / summary["rl_seconds"],
        "tokens_per_s": summary["means"]["rollout/tokens_per_s"],
        "staleness": summary["means"]["buffer/staleness_mean"],
        "before": summary["heldout_before"]["accuracy"],
        "after": summary["heldout_after"]["accuracy"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["demo", "40m"], default="demo")
    ap.add_argument("--steps", type=int, default=None, help="RL steps per job (default: 40 demo, 12 40m)")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    args.steps = args.steps or (40 if args.model == "demo" else 12)

    results: dict[str, list[dict]] = {"sync": [], "async": []}
    with tempfile.TemporaryDirectory(prefix="temper-bench-async-") as run_dir:
        for r in range(args.repeats):
            order = [("sync", 0), ("async", 1)] if r % 2 == 0 else [("async", 1), ("sync", 0)]
            for mode, staleness in order:
                res = one_job(staleness, args.steps, run_dir, args.model)
                results[mode].append(res)
                print(f"{mode:>5}: {args.steps} steps in {res['rl_seconds']:.1f}s = {res['steps_per_s']:.2f} steps/s, "
                      f"{res['tokens_per_s']:.0f} tok/s, staleness {res['staleness']:.2f}, "
                      f"held-out {res['before']:.1%} -> {res['after']:.1%}; G {res['gen_s']:.2f}s, T {res['train_s']:.2f}s "
                      f"per batch; idle: learner {res['learner_idle']:.0%}, engine {res['engine_idle']:.0%} "
                      f"(+{res['engine_paused']:.0%} paused for weight sync)", flush=True)

    def med(mode: str, key: str) -> float:
        return statistics.median(x[key] for x in results[mode])

    speedup = med('async', 'steps_per_s') / med('sync', 'steps_per_s')
    # The most overlap can give on these resources, from the sync run's own generation (G) and training (T)
    # times per batch: a sync step takes G + T, a perfectly overlapped one max(G, T).
    g, t = med("sync", "gen_s"), med("sync", "train_s")
    ideal = (g + t) / max(g, t)
    print(f"\nasync / sync steps/s: {speedup:.2f}x (median of {args.repeats}); tokens/s "
          f"{med('async', 'tokens_per_s') / med('sync', 'tokens_per_s'):.2f}x; ideal (G+T)/max(G,T) = {ideal:.2f}x "
          f"(G {g:.2f}s, T {t:.2f}s in the sync run): {speedup / ideal:.0%} of ideal")


if __name__ == "__main__":
    main()

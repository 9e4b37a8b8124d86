"""What one rollout-worker restart costs: a real `temper train` job whose worker process is SIGKILLed mid-run.

One job, one rollout worker, sync mode (`buffer.max_staleness = 0`), so training cannot go on without the
worker and the whole restart shows in the learner's step times. The script waits for step `--kill-after`,
SIGKILLs the `ray::RolloutWorker` process, and lets the job finish. Measured in that one run:

    restart seconds     death noticed -> replacement generating (the driver's own clock, summary.json)
    stalled step        the step that spanned the restart, minus the median of the other steps
    steps lost          stalled seconds / median step seconds (the baseline measured in the same run)
    first start         the run's own start of the learner and engine, for comparison

    python bench/bench_restart.py [--steps 30] [--kill-after 10] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
TINY = ["demo.n_train=256", "demo.n_eval=16", "demo.sft_max_steps=0", "demo.hidden_size=64", "demo.num_layers=1",
        "learner.batch_groups=4", "rollout.group_size=4", "rollout.engine.kv_cache_gb=0.25", "rewards.num_workers=1"]


def worker_process(pid: int) -> psutil.Process | None:
    for p in psutil.Process(pid).children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith("ray::RolloutWorker"):
                return p
        except psutil.Error:
            pass
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--kill-after", type=int, default=10)
    ap.add_argument("--tiny", action="store_true", help="an untrained 80k-parameter model (no warm start)")
    args = ap.parse_args()
    runs = tempfile.mkdtemp(prefix="temper-bench-restart-")
    sets = [f"learner.steps={args.steps}", "buffer.max_staleness=0", "eval.every_steps=0", "logging.progress_bar=false",
            f"logging.run_dir={json.dumps(runs)}", "checkpoint.save_final=false", 'name="bench-restart"',
            "ray.num_cpus=2", *(TINY if args.tiny else [])]
    cmd = [str(Path(sys.executable).parent / "temper"), "train", "configs/demo.toml", *[x for s in sets for x in ("--set", s)]]
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while not list(Path(runs).glob("bench-restart-*/metrics.jsonl")):
            time.sleep(0.5)
            assert proc.poll() is None, proc.stdout.read()
        (metrics,) = Path(runs).glob("bench-restart-*/metrics.jsonl")
        while len(metrics.read_text().splitlines()) < args.kill_after:
            time.sleep(0.1)
            assert proc.poll() is None, proc.stdout.read()
        worker = worker_process(proc.pid)
        assert worker is not None, "no ray::RolloutWorker process under the job"
        worker.kill()
        out, _ = proc.communicate(timeout=1800)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    run_dir = metrics.parent
    summary = json.loads((run_dir / "summary.json").read_text())
    (restart,) = summary["restarts"]
    steps = [json.loads(line) for line in metrics.read_text().splitlines()]
    stalled = max(steps, key=lambda m: m["step_seconds"])
    others = [m["step_seconds"] for m in steps if m is not stalled]
    median = statistics.median(others)
    first_start = float(re.search(r"learner up in ([\d.]+)s", out).group(1))
    lost = stalled["step_seconds"] - median
    print(f"restart: {restart['seconds']:.1f}s from death to generating again (first start of learner + engine in "
          f"this run: {first_start:.1f}s; ratio {restart['seconds'] / first_start:.2f}x)")
    print(f"learner: step {stalled['step']} took {stalled['step_seconds']:.1f}s vs median {median:.2f}s -> "
          f"{lost:.1f}s stalled = {lost / median:.0f} steps lost; {restart['lost_groups']} in-flight groups generated again")
    print(f"run: {summary['steps']} of {args.steps} steps, {len(summary['restarts'])} restart, prompts trained twice: "
          f"{sum(len(m['batch/group_ids']) for m in steps) - len({g for m in steps for g in m['batch/group_ids']})}")


if __name__ == "__main__":
    main()

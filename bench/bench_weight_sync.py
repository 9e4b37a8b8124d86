"""Weight sync time per 100 MB, per backend that runs on CPU (README table).

A ~100 MB fp32 model (the demo's Qwen2 at hidden 512, 6 layers, random weights), on a two-node Ray cluster
on this machine (tests/two_node_cluster.py: each node its own raylet and object store). The learner
actor sits on the head node, one rollout worker with its vLLM engine on the second node, both made by
temper/actors.py as in a job. For each backend the learner pushes its weights into the engine `--repeats`
times through `Learner.sync_weights` (the whole round trip: gather, serialize, transfer, the engine's
load, version bump); reported: the median seconds, scaled to 100 MB of weights, and each against a plain
memcpy of the same bytes in one process (the physical floor on this machine).

    shm   safetensors files in /dev/shm, loaded by the engine (valid here: both nodes are one machine)
    ray   each bucket put into the head's object store, pulled by the worker to the second node's store,
          handed to the engine in one message

    python bench/bench_weight_sync.py [--repeats 5] [--world-size 1]

Measured: see the README table (Running on a cluster, Which weight-sync backend).

ipc and nccl need GPUs (tests/test_gpu_path.py prints their times where CUDA exists).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def memcpy_seconds(nbytes: int, repeats: int) -> float:
    """Median seconds to copy nbytes between two preallocated buffers (touched first, so no page faults)."""
    import torch

    src, dst = torch.ones(nbytes, dtype=torch.uint8), torch.zeros(nbytes, dtype=torch.uint8)
    dst.copy_(src)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--world-size", type=int, default=1, help="learner ranks (FSDP2 over gloo)")
    args = parser.parse_args()

    from temper.configs.schema import DemoConfig, RunConfig
    from temper.demos.assets import ensure_demo_assets

    demo = DemoConfig(enabled=True, n_train=64, n_eval=16, sft_max_steps=0, hidden_size=512, num_layers=6)
    assets = ensure_demo_assets(demo, log=lambda *_: None)
    mb = sum(f.stat().st_size for f in Path(assets["model"]).glob("*.safetensors")) / 1e6

    temp_dir = tempfile.mkdtemp(prefix="bw-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": temp_dir, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    os.environ.update({k: env[k] for k in ("RAY_TMPDIR", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
    cluster = subprocess.Popen([sys.executable, str(REPO / "tests" / "two_node_cluster.py")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        address = json.loads(cluster.stdout.readline())["address"]
        import ray

        from temper.actors import RayEngines, make_buffer, make_learner, make_workers

        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        cfg = RunConfig.model_validate({
            "model": {"path": assets["model"]}, "data": {"train": assets["train"]},
            "rollout": {"engine": {"kv_cache_gb": 0.25, "max_model_len": 256}},
            "learner": {"world_size": args.world_size},
            "ray": {"worker_cpus": 0.5, "learner_cpus": 0.5, "worker_resources": {"second": 1},
                    "learner_resources": {"head": 1}},
        })
        workers = make_workers(cfg, make_buffer(cfg, None))
        learner = make_learner(cfg, tempfile.mkdtemp(prefix="bench-sync-", dir="/dev/shm"))
        ray.get([w.start.remote() for w in workers] + [learner.prepare_sync.remote()])
        results = {}
        for backend in ("shm", "ray"):
            ray.get(learner.connect_engines.remote(RayEngines(workers), len(workers), None, backend))
            seconds = []
            for version in range(1, args.repeats + 1):
                t0 = time.perf_counter()
                ray.get(learner.sync_weights.remote(version))
                seconds.append(time.perf_counter() - t0)
            results[backend] = statistics.median(seconds)
            print(f"{backend}: {mb:.0f} MB in {results[backend]:.2f} s median of {args.repeats} "
                  f"({[round(s, 2) for s in seconds]}) -> {results[backend] * 100 / mb:.2f} s per 100 MB", flush=True)
        print(f"ratio ray / shm (baseline, same run): {results['ray'] / results['shm']:.2f}x", flush=True)
        floor = memcpy_seconds(int(mb * 1e6), args.repeats)
        print(f"memcpy of the same {mb:.0f} MB in this process (the physical floor): {floor:.3f} s median -> "
              f"{floor * 100 / mb:.3f} s per 100 MB; shm {results['shm'] / floor:.0f}x it, ray "
              f"{results['ray'] / floor:.0f}x it", flush=True)
        ray.get([w.shutdown.remote() for w in workers] + [learner.cleanup.remote()])
    finally:
        cluster.stdin.close()
        cluster.wait(timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

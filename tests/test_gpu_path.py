"""The GPU path: the learner trains on CUDA in bf16 and pushes its weights into a live `vllm` engine through
vLLM's weight-transfer API, by CUDA IPC (engine on the learner's GPU) and by NCCL (engine on another GPU).

Runs only where CUDA exists (CI has none). Any local HF causal-LM folder: TEMPER_GPU_MODEL, else the tiny
demo model."""

import asyncio
import json
import os
import subprocess
import threading

import pytest
import torch
from conftest import REPO, VENV_BIN, hf_logprobs, local_engines, tiny_job_overrides

from temper.configs.schema import EngineConfig, RunConfig, SamplingConfig

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def engine_on_a_loop(model_path: str, backend: str):
    from temper.rollout.engine import Engine

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def run(coro, timeout=600):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def build():
        eng = Engine(model_path, EngineConfig(gpu_memory_utilization=0.3), SamplingConfig(max_tokens=16),
                     "bfloat16", seed=0, weight_sync=backend)
        await eng.init()
        return eng

    engine = run(build())
    engine.run = run
    return engine


def test_learner_on_cuda_pushes_weights_by_cuda_ipc(demo_assets, tmp_path):
    from temper.learner.learner import Learner
    from temper.rollout.types import Group, Sample

    model_path = os.environ.get("TEMPER_GPU_MODEL", demo_assets["model"])
    cfg = RunConfig.model_validate(
        {"model": {"path": model_path, "dtype": "bfloat16"}, "data": {"train": demo_assets["train"]},
         "learner": {"device": "cuda", "steps": 2, "optimizer": {"lr": 1e-2}},  # a step that shows
         "algorithm": {"off_policy": {"mode": "none"}},
         "ray": {"learner_gpus": 0.5, "worker_gpus": 0.5}}
    )
    assert cfg.weight_sync.backend == "ipc"  # auto: learner and engine share the GPU
    learner = Learner(cfg, str(tmp_path / "weights"))
    assert next(learner.model.parameters()).is_cuda
    engine = engine_on_a_loop(model_path, "ipc")
    try:
        assert learner.connect_engines(local_engines(engine), 1) == "ipc"
        ids = engine.tokenizer.encode("The capital of France is", add_special_tokens=False)
        outs = engine.run(engine.generate(ids, 4))
        samples = tuple(
            Sample(id=f"s{i}", group_id="g", prompt="p", response=c.text, label=None, prompt_token_ids=tuple(ids),
                   completion_token_ids=c.token_ids, logprobs=c.logprobs, loss_mask=(1,) * len(c.token_ids),
                   versions=c.versions, reward=float(i % 2), correct=bool(i % 2))
            for i, c in enumerate(outs)
        )
        metrics = learner.train_step([Group("g", samples)])
        (old,) = engine.run(engine.generate(ids, 1, greedy=True))
        seconds = [learner.sync_weights(metrics["version"]) for _ in range(3)]  # the first pays for setting up CUDA IPC
        (new,) = engine.run(engine.generate(ids, 1, greedy=True))
    finally:
        engine.shutdown()
    learner.model.eval()

    def gap(c) -> float:  # engine vs learner log-probs of the engine's own tokens, mean nats/token
        return sum(abs(a - b) for a, b in zip(c.logprobs, hf_logprobs(learner.model, ids, c.token_ids))) / len(c.logprobs)

    print(f"ipc weight sync: {[round(s * 1000, 1) for s in seconds]} ms; gap before {gap(old):.3f}, "
          f"after {gap(new):.4f} nats/token; on-policy mismatch {metrics['learner/logp_mismatch']:.4f}")
    assert metrics["learner/logp_mismatch"] < 0.1  # bf16 engine vs bf16 learner, same weights
    assert new.versions == (1, 1)
    assert gap(new) < 0.05 < gap(old)  # the engine now computes the learner's updated policy


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL between learner and engine needs two GPUs")
def test_real_job_syncs_by_nccl_across_gpus(tmp_path, demo_assets):
    args = [
        str(VENV_BIN / "temper"), "train", "configs/demo.toml", *tiny_job_overrides(demo_assets["demo"], tmp_path),
        "--set", "learner.steps=3", "--set", "ray.learner_gpus=1", "--set", "ray.worker_gpus=1",
        "--set", "ray.num_cpus=4", "--set", "model.dtype=\"bfloat16\"",
    ]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "weight sync: nccl" in proc.stdout
    (run_dir,) = (tmp_path).glob("demo-*")
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    print("nccl weight_sync_seconds:", [round(m["weight_sync_seconds"], 3) for m in steps])
    assert len(steps) == 3 and max(m["learner/logp_mismatch"] for m in steps) < 0.1

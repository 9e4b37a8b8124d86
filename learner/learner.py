"""The learner: policy-gradient steps on each batch of scored groups, then one new weight version.

Read `train_step` top to bottom: group rewards -> advantages (once per batch); the groups split into
learner.mini_batches mini-batches, each one optimizer step, for learner.epochs passes (with several steps,
the pre-update log-probs are computed first). `_optimizer_step`: samples packed into padding-aware
micro-batches under a token budget; per micro-batch a forward pass gives the current log-probs of the
sampled completion tokens, the loss (learner/losses.py) is backwarded with a normaliser over the step's
mini-batch so accumulation is exact; then clip, step, schedule. `sync_weights` then pushes the new
weights into every rollout engine through vLLM's weight-transfer API (learner/weight_sync.py: a /dev/shm
folder or the Ray object store on CPU, CUDA IPC or NCCL on GPUs), between engine steps.

Sharded (learner.world_size > 1, `rank` given): one Learner per rank, the model in FSDP2
(learner/distributed.py). Every rank receives the whole batch and plans every rank's share of each
optimizer step the same way (samples split by tokens), so the loss normalisers are the whole step's and
the summed gradients equal the single-process ones. Ranks run the same number of forward/backward passes
(a rank with fewer micro-batches runs fully masked ones, which contribute exactly 0), since every FSDP
forward is a collective. Rank 0 sends the weights, gathered bucket by bucket; every rank writes its
optimizer shards.

A plain class: tests use it directly; temper/actors.py makes it a Ray actor (one per rank).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from temper.configs.schema import RunConfig
from temper.learner import distributed
from temper.learner.advantages import compute_advantages
from temper.learner.batching import pad_right, plan_micro_batches
from temper.learner.losses import (
    PolicyBatch,
    accumulate_metrics,
    finalize_metrics,
    loss_normalizer,
    policy_loss,
)
from temper.rollout.types import Group, Sample

LEARNER_STATE = "learner_state.pt"
OPTIMIZER_DIR = "optimizer"
"""In a checkpoint: the optimizer state by parameter name (torch.distributed.checkpoint; any world size)."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def lr_lambda(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak lr: linear warmup, then cosine to min_ratio (or constant)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def sequence_logprobs(
    model: torch.nn.Module, samples: list[Sample], pad_id: int, want_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropies) of each sample's completion tokens under `model`, right-padded to [B, T]."""
    device = next(model.parameters()).device
    seqs = [list(s.prompt_token_ids) + list(s.completion_token_ids) for s in samples]
    ids_BL = pad_right(seqs, pad_id).to(device)
    lens = torch.tensor([len(q) for q in seqs], device=device)
    attn_BL = (torch.arange(ids_BL.shape[1], device=device)[None, :] < lens[:, None]).long()
    logits_BLV = model(input_ids=ids_BL, attention_mask=attn_BL).logits.float()
    # logits at position p predict token p + 1; completion token j of sample i sits at P_i + j.
    T = max(len(s.completion_token_ids) for s in samples)
    starts_B = torch.tensor([len(s.prompt_token_ids) - 1 for s in samples], device=device)
    pos_BT = (starts_B[:, None] + torch.arange(T, device=device)[None, :]).clamp(max=ids_BL.shape[1] - 2)
    step_logits_BTV = logits_BLV.gather(1, pos_BT[:, :, None].expand(-1, -1, logits_BLV.shape[-1]))
    targets_BT = ids_BL.gather(1, pos_BT + 1)
    logsumexp_BT = torch.logsumexp(step_logits_BTV, dim=-1)
    logp_BT = step_logits_BTV.gather(-1, targets_BT[:, :, None]).squeeze(-1) - logsumexp_BT
    entropy_BT = None
    if want_entropy:
        probs_BTV = torch.softmax(step_logits_BTV, dim=-1)
        entropy_BT = logsumexp_BT - (probs_BTV * step_logits_BTV).sum(-1)
    return logp_BT, entropy_BT


class Learner:
    """resume_from: a checkpoint folder (save_checkpoint) to continue from: its weights, optimizer, lr
    schedule and version, whatever world size wrote it. The KL reference stays model.path.

    rank: this process's place in a sharded learner (None: one process, no torch.distributed)."""

    def __init__(
        self, cfg: RunConfig, weights_root: str, resume_from: str | None = None,
        rank: distributed.Rank | None = None,
    ) -> None:
        from transformers import AutoTokenizer

        self.cfg = cfg
        lc = cfg.learner
        torch.manual_seed(cfg.seed)
        if lc.device == "cuda" or (lc.device == "auto" and torch.cuda.is_available()):
            self.device = torch.device("cuda")
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(lc.num_threads)
        self.rank = rank or distributed.Rank(0, 1, "")
        self.sharded = rank is not None
        if self.sharded:
            distributed.init(self.rank, self.device)
        dtype = DTYPES[cfg.model.dtype]
        policy_path = resume_from or cfg.model.path
        self.model = self._load(policy_path, dtype)
        self.model.train()
        if lc.activation_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.ref_model = None
        if cfg.algorithm.kl.coef > 0:
            self.ref_model = self._load(cfg.model.path, dtype).eval()
            self.ref_model.requires_grad_(False)
        if self.sharded:
            for model in (self.model, self.ref_model):
                if model is not None:
                    distributed.shard(model, self.device)
        tok = AutoTokenizer.from_pretrained(cfg.model.path)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        opt = lc.optimizer
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay
        )
        optimizer_steps = lc.steps * lc.mini_batches * lc.epochs  # the scheduler steps with the optimizer
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_lambda(s, opt.warmup_steps, optimizer_steps, opt.schedule, opt.min_lr_ratio),
        )
        self.version = 0
        if resume_from:
            state = torch.load(Path(resume_from) / LEARNER_STATE, map_location=self.device, weights_only=True)
            if "optimizer" in state:  # written before optimizer/ (one process only)
                self.optimizer.load_state_dict(state["optimizer"])
            else:
                distributed.load_optimizer(self.model, self.optimizer, Path(resume_from) / OPTIMIZER_DIR)
            self.scheduler.load_state_dict(state["scheduler"])
            self.version = state["version"]
        self.engines = self.transfer = None  # set by connect_engines
        self.weights_root = Path(weights_root)
        self.weights_root.mkdir(parents=True, exist_ok=True)

    def _load(self, path: str, dtype: torch.dtype) -> torch.nn.Module:
        """Sharded: rank 0 reads the weights into CPU memory, the others build on the meta device, and
        `distributed.shard` (after the KL reference is loaded too) leaves each rank its shards on its device."""
        from transformers import AutoModelForCausalLM

        if self.sharded:
            return distributed.load_model(path, dtype)
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device)

    # ------------------------------------------------------------------ one batch
    def train_step(self, groups: list[Group]) -> dict[str, Any]:
        """One batch of scored groups -> mini_batches * epochs optimizer steps -> one new weight version."""
        t0 = time.perf_counter()
        algo, lc = self.cfg.algorithm, self.cfg.learner
        rewards_GN = torch.tensor([g.rewards for g in groups], dtype=torch.float32)  # per episode
        adv_GN = compute_advantages(rewards_GN, algo.advantage)
        # Each sample takes its episode's advantage (an agent's segments share one). A sample with no tokens
        # (an agent that made no call) counts in its group's baseline above and has nothing to train.
        trained_G = [[(s, adv_GN[g, e]) for s, e in zip(grp.samples, grp.episodes, strict=True) if s.loss_mask]
                     for g, grp in enumerate(groups)]
        samples = [s for pairs in trained_G for s, _ in pairs]
        adv = torch.tensor([float(a) for pairs in trained_G for _, a in pairs])  # [B], sample order

        lengths = [len(s.prompt_token_ids) + len(s.completion_token_ids) for s in samples]
        # One plan per optimizer step: its mini-batch of whole groups, split across the ranks by tokens, each
        # rank's share packed into micro-batches. Every rank plans every rank's share (the same result).
        minis = self._mini_batches([len(pairs) for pairs in trained_G])
        plans = [self._plan(mini, lengths) for mini in minis]  # [step][rank][micro-batch]
        # Each step's loss normaliser, over all of the step's samples (every rank's share).
        normalizers = [loss_normalizer(algo, [self._mask(samples, mb) for share in step for mb in share])
                       for step in plans]
        train_samples, train_adv = samples, adv
        if self.sharded:  # a fully masked copy of the shortest sample fills the micro-batches a rank lacks
            shortest = min(samples, key=lambda s: len(s.prompt_token_ids) + len(s.completion_token_ids))
            train_samples = [*samples, dataclasses.replace(shortest, loss_mask=(0,) * len(shortest.loss_mask))]
            train_adv = torch.cat([adv, adv.new_zeros(1)])
        mine = [self._own_micro_batches(step, filler=len(samples)) for step in plans]
        # The pre-update policy. With one step it is the current one, detached, inside that step; with
        # several, later steps run on updated weights, so it is computed once, before the first update.
        prox = None
        if algo.off_policy.mode != "none" and lc.mini_batches * lc.epochs > 1:
            prox = self._pre_update_logprobs(train_samples, mine)

        summed: dict[str, torch.Tensor] = {}
        first: dict[str, torch.Tensor] = {}
        grad_norms: list[float] = []
        for _ in range(lc.epochs):
            for micro_batches, normalizer in zip(mine, normalizers, strict=True):
                step_metrics, grad_norm = self._optimizer_step(
                    train_samples, train_adv, micro_batches, normalizer, prox
                )
                summed = accumulate_metrics(summed, step_metrics)
                first = first or step_metrics
                grad_norms.append(grad_norm)
        fresh_tokens = sum(sum(s.loss_mask) for s in samples if s.versions == (self.version, self.version))
        self.version += 1

        seconds = time.perf_counter() - t0
        trained = sum(sum(s.loss_mask) for s in samples)
        first_fresh_tokens = float(first["onpolicy_tokens"])
        onpolicy_mismatch = float(first["onpolicy_err_sum"]) / first_fresh_tokens if first_fresh_tokens else None
        all_micro_batches = [mb for step in plans for share in step for mb in share]  # every rank's
        padded = sum(len(mb) * max(lengths[i] for i in mb) for mb in all_micro_batches)
        loss_metrics = finalize_metrics(summed, steps=len(grad_norms))
        # Engine-vs-learner numerics only from the first step: its forwards are the only ones made by the
        # weights that the rollout log-probs are compared against (later steps' by updated weights).
        loss_metrics["logp_mismatch"] = finalize_metrics(first)["logp_mismatch"]
        return {
            **{f"learner/{k}": v for k, v in loss_metrics.items()},
            "learner/grad_norm": sum(grad_norms) / len(grad_norms),
            "learner/grad_norm_max": max(grad_norms),
            "learner/optimizer_steps": len(grad_norms),
            "learner/logp_mismatch_onpolicy": onpolicy_mismatch,
            "learner/onpolicy_frac": fresh_tokens / max(1, trained),
            "learner/lr": self.scheduler.get_last_lr()[0],
            "learner/micro_batches": len(all_micro_batches),  # per pass over the batch, all ranks
            "learner/padding_frac": 1 - sum(lengths) / max(1, padded),
            "learner/seconds": seconds,
            "learner/tokens_per_s": lc.epochs * sum(lengths) / seconds,
            "reward/mean": float(rewards_GN.mean()),
            "reward/accuracy": sum(s.correct for s in samples) / len(samples),
            "reward/errors": sum(s.error is not None for s in samples),
            "rollout/completion_tokens": trained,
            "rollout/completion_len_mean": sum(len(s.completion_token_ids) for s in samples) / len(samples),
            "rollout/truncated_frac": sum(s.stop_reason == "length" for s in samples) / len(samples),
            "version": self.version,
        }

    def _mini_batches(self, group_sizes: list[int]) -> list[list[int]]:
        """Sample indices of each mini-batch: learner.mini_batches consecutive, equal runs of whole groups.
        group_sizes: each group's trained samples."""
        n = self.cfg.learner.mini_batches
        if len(group_sizes) % n:
            raise ValueError(f"{len(group_sizes)} groups do not split into learner.mini_batches = {n} equal parts")
        starts = list(itertools.accumulate(group_sizes, initial=0))
        per = len(group_sizes) // n
        return [list(range(starts[k * per], starts[(k + 1) * per])) for k in range(n)]

    def _plan(self, mini: list[int], lengths: list[int]) -> list[list[list[int]]]:
        """One optimizer step's sample indices -> per rank, its share packed into micro-batches."""
        budget = self.cfg.learner.micro_batch_tokens
        return [
            [[share[j] for j in mb] for mb in plan_micro_batches([lengths[i] for i in share], budget)]
            for share in distributed.split_by_tokens(mini, lengths, self.rank.world_size)
        ]

    def _own_micro_batches(self, step: list[list[list[int]]], filler: int) -> list[list[int]]:
        """This rank's micro-batches of one step, padded with [filler] (a fully masked sample) to as many as
        any rank has: every forward and backward of a sharded model is a collective of all ranks."""
        own = step[self.rank.rank]
        return own + [[filler]] * (max(len(share) for share in step) - len(own))

    @staticmethod
    def _mask(samples: list[Sample], mb: list[int]) -> torch.Tensor:
        return pad_right([list(samples[i].loss_mask) for i in mb], 0.0)

    @torch.no_grad()
    def _pre_update_logprobs(self, samples: list[Sample], plans: list[list[list[int]]]) -> list[list[float]]:
        """Each sample's completion log-probs under the current weights, in the first epoch's micro-batches
        (this rank's: the other ranks' samples are left empty)."""
        logprobs: list[list[float]] = [[] for _ in samples]
        for mb in (mb for plan in plans for mb in plan):
            rows = sequence_logprobs(self.model, [samples[i] for i in mb], self.pad_id, False)[0].tolist()
            for i, row in zip(mb, rows):
                logprobs[i] = row[: len(samples[i].completion_token_ids)]
        return logprobs

    def _optimizer_step(
        self, samples: list[Sample], adv: torch.Tensor, plan: list[list[int]], normalizer: float,
        prox: list[list[float]] | None,
    ) -> tuple[dict[str, torch.Tensor], float]:
        """One optimizer step on the samples of `plan` (this rank's micro-batches of indices into `samples`).

        `normalizer` spans this step's samples only (every rank's share), so the gradients accumulated over
        the micro-batches (and summed over the ranks) are exactly the gradient of this step's own batch loss.
        `prox` holds each sample's pre-update log-probs, or None when this is the batch's only step. Returns
        the step's summed metrics (the loss's, plus the on-policy mismatch sums; over all ranks) and its
        gradient norm before clipping.
        """
        algo = self.cfg.algorithm
        masks = [self._mask(samples, mb) for mb in plan]
        summed: dict[str, torch.Tensor] = {}
        for mb, mask_BT in zip(plan, masks):
            mb_samples = [samples[i] for i in mb]
            logp_BT, entropy_BT = sequence_logprobs(self.model, mb_samples, self.pad_id, algo.entropy_coef > 0)
            ref_BT = None
            if self.ref_model is not None:
                with torch.no_grad():
                    ref_BT, _ = sequence_logprobs(self.ref_model, mb_samples, self.pad_id, False)
            # Not precomputed: either this is the batch's only step, so the current policy is the pre-update
            # one, or mode "none", where it only feeds the logp_mismatch metric (read off the first step).
            prox_BT = logp_BT.detach() if prox is None else pad_right([prox[i] for i in mb], 0.0).to(self.device)
            batch = PolicyBatch(
                logp_BT=logp_BT,
                rollout_logp_BT=pad_right([list(s.logprobs) for s in mb_samples], 0.0).to(self.device),
                prox_logp_BT=prox_BT,
                ref_logp_BT=ref_BT,
                entropy_BT=entropy_BT,
                adv_B=adv[mb].to(self.device),
                mask_BT=mask_BT.to(self.device),
            )
            loss, metrics = policy_loss(batch, algo, normalizer)
            loss.backward()
            # Engine-vs-learner numerics alone: samples sampled entirely by the weights the learner held
            # before this batch (stale samples also differ by the policy change, which logp_mismatch includes).
            fresh_B = torch.tensor([s.versions == (self.version, self.version) for s in mb_samples], device=self.device)
            fresh_BT = batch.mask_BT * fresh_B[:, None]
            err_BT = (batch.rollout_logp_BT - logp_BT.detach()).abs() * fresh_BT
            metrics["onpolicy_err_sum"] = err_BT.sum().double()
            metrics["onpolicy_tokens"] = fresh_BT.sum().double()
            summed = accumulate_metrics(summed, metrics)

        if self.sharded:
            summed = distributed.all_reduce_metrics(summed)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.learner.optimizer.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return summed, float(distributed.full_tensor(grad_norm))  # sharded: the norm over all shards

    def own_cores(self, cores: list[int]) -> None:
        """Run on these cores only; the rollout workers on this machine keep off them (rollout/affinity.py)."""
        from temper.rollout.affinity import pin_self

        pin_self(cores)

    # ------------------------------------------------------------------ weights out
    def prepare_sync(self) -> None:
        """Import vLLM's weight-transfer code (~11 s of CPU) now, while the engines start."""
        import temper.learner.weight_sync  # noqa: F401

    def weights_backend(self, invoke) -> str:
        """weight_sync.backend, with "auto" on CPU decided by where the engines are: "shm" when every one
        shares this process's node (`invoke.all_on_this_node()`, temper/actors.py), else "ray"."""
        backend = self.cfg.weight_sync.backend
        if backend == "auto":
            same_node = getattr(invoke, "all_on_this_node", None)
            backend = "shm" if same_node is None or same_node() else "ray"
        return backend

    def connect_engines(
        self, invoke, num_engines: int, engine_world_size: int | None = None, backend: str | None = None
    ) -> str:
        """Handshake with the rollout engines through vLLM's weight-transfer API (learner/weight_sync.py).
        Called again when an engine is replaced.

        invoke(method, kwargs per engine) calls one `weights_*` method on every engine and waits; only rank 0
        calls it. engine_world_size: processes per engine (default rollout.engine.tensor_parallel_size).
        backend: the one rank 0 chose (every rank must use the same); default weights_backend(invoke).
        Returns the backend."""
        from temper.learner.weight_sync import EngineClient, LearnerWeights, connect

        ws = self.cfg.weight_sync
        if self.transfer is not None:  # again, after a rollout worker was replaced: a fresh handshake
            self.transfer.shutdown()
        backend = backend or self.weights_backend(invoke)
        engine_world_size = engine_world_size or self.cfg.rollout.engine.tensor_parallel_size
        self.engines = EngineClient(invoke, num_engines, engine_world_size)
        source = LearnerWeights(self.model, DTYPES[self.cfg.model.dtype], ws.bucket_mb << 20)
        self.transfer = connect(backend, source, self.engines, str(self.weights_root), ws.packed, self.rank.rank)
        return backend

    def sync_weights(self, version: int) -> float:
        """Push the current weights to every engine, labelled `version`; returns the seconds it took.
        Sharded: every rank calls it (they gather the parameters together; rank 0 sends)."""
        t0 = time.perf_counter()
        with self.engines.labelled(version):
            self.transfer.send_weights()
        return time.perf_counter() - t0

    def save_hf(self, out_dir: str) -> str:
        """The policy as an ordinary HF folder (model + tokenizer), loadable by transformers and vLLM.
        Sharded: every rank calls it; the weights are gathered once, into rank 0's CPU memory, which writes."""
        from transformers import AutoTokenizer

        state = distributed.full_state_dict(self.model) if self.sharded else None
        if self.rank.rank == 0:
            self.model.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
            AutoTokenizer.from_pretrained(self.cfg.model.path).save_pretrained(out_dir)
        return out_dir

    def save_checkpoint(self, out_dir: str) -> str:
        """Weights (HF folder) + optimizer (optimizer/, by parameter name, each rank its shards) + scheduler
        + version: resumable at any learner.world_size. Sharded: every rank calls it."""
        self.save_hf(out_dir)
        distributed.save_optimizer(self.model, self.optimizer, Path(out_dir) / OPTIMIZER_DIR)
        if self.rank.rank == 0:
            torch.save(
                {"scheduler": self.scheduler.state_dict(), "version": self.version,
                 "world_size": self.rank.world_size},
                Path(out_dir) / LEARNER_STATE,
            )
        return out_dir

    def cleanup(self) -> None:
        if self.transfer is not None:
            self.transfer.shutdown()
        shutil.rmtree(self.weights_root, ignore_errors=True)
        if self.sharded:
            distributed.close()

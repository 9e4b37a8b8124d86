"""The learner: one policy-gradient step per batch of scored groups, then publish the new weights.

Read `train_step` top to bottom: group rewards -> advantages; samples packed into padding-aware
micro-batches under a token budget; per micro-batch a forward pass gives the current log-probs of the
sampled completion tokens, the loss (learner/losses.py) is backwarded with a batch-wide normaliser so
accumulation is exact; then clip, step, schedule. Weights are published as a safetensors folder that every
rollout worker reloads between engine steps (what works on vLLM-CPU, see DESIGN.md; on GPU the same path
works, through /dev/shm as well).

A plain class: tests use it directly; learner/ray_actors.py makes it a Ray actor.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from configs.schema import RunConfig
from learner.advantages import compute_advantages
from learner.batching import pad_right, plan_micro_batches
from learner.losses import PolicyBatch, accumulate_metrics, finalize_metrics, loss_normalizer, policy_loss
from rollout.types import Group, Sample

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
    def __init__(self, cfg: RunConfig, weights_root: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        lc = cfg.learner
        torch.manual_seed(cfg.seed)
        if lc.device == "cuda" or (lc.device == "auto" and torch.cuda.is_available()):
            self.device = torch.device("cuda")
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(lc.num_threads)
        dtype = DTYPES[cfg.model.dtype]
        self.model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=dtype).to(self.device)
        self.model.train()
        if lc.activation_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.ref_model = None
        if cfg.algorithm.kl.coef > 0:
            self.ref_model = AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=dtype).to(self.device).eval()
            self.ref_model.requires_grad_(False)
        tok = AutoTokenizer.from_pretrained(cfg.model.path)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        opt = lc.optimizer
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_lambda(s, opt.warmup_steps, lc.steps, opt.schedule, opt.min_lr_ratio),
        )
        self.version = 0
        self.weights_root = Path(weights_root)
        self.weights_root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ one step
    def train_step(self, groups: list[Group]) -> dict[str, Any]:
        t0 = time.perf_counter()
        algo = self.cfg.algorithm
        samples = [s for g in groups for s in g.samples]
        rewards_GN = torch.tensor([g.rewards for g in groups], dtype=torch.float32)
        adv = compute_advantages(rewards_GN, algo.advantage).flatten()  # [B], sample order

        lengths = [len(s.prompt_token_ids) + len(s.completion_token_ids) for s in samples]
        plan = plan_micro_batches(lengths, self.cfg.learner.micro_batch_tokens)
        masks = {tuple(mb): pad_right([list(samples[i].loss_mask) for i in mb], 0.0) for mb in map(tuple, plan)}
        normalizer = loss_normalizer(algo, list(masks.values()))

        summed: dict[str, torch.Tensor] = {}
        onpolicy_err, onpolicy_tokens = 0.0, 0
        for mb in map(tuple, plan):
            mb_samples = [samples[i] for i in mb]
            logp_BT, entropy_BT = sequence_logprobs(self.model, mb_samples, self.pad_id, algo.entropy_coef > 0)
            ref_BT = None
            if self.ref_model is not None:
                with torch.no_grad():
                    ref_BT, _ = sequence_logprobs(self.ref_model, mb_samples, self.pad_id, False)
            batch = PolicyBatch(
                logp_BT=logp_BT,
                rollout_logp_BT=pad_right([list(s.logprobs) for s in mb_samples], 0.0).to(self.device),
                # One optimizer step per batch: the pre-update policy is the current one, detached.
                prox_logp_BT=logp_BT.detach() if algo.off_policy.mode == "decoupled" else None,
                ref_logp_BT=ref_BT,
                entropy_BT=entropy_BT,
                adv_B=adv[list(mb)].to(self.device),
                mask_BT=masks[mb].to(self.device),
            )
            loss, metrics = policy_loss(batch, algo, normalizer)
            loss.backward()
            summed = accumulate_metrics(summed, metrics)
            # Engine-vs-learner numerics alone: samples sampled entirely by the weights the learner holds
            # now (stale samples also differ by the policy change, which logp_mismatch includes).
            fresh_B = torch.tensor([s.versions == (self.version, self.version) for s in mb_samples], device=self.device)
            fresh_BT = batch.mask_BT * fresh_B[:, None]
            onpolicy_err += float(((batch.rollout_logp_BT - logp_BT.detach()).abs() * fresh_BT).sum())
            onpolicy_tokens += int(fresh_BT.sum())

        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.learner.optimizer.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.version += 1

        seconds = time.perf_counter() - t0
        trained = sum(sum(s.loss_mask) for s in samples)
        padded = sum(len(mb) * max(lengths[i] for i in mb) for mb in plan)
        return {
            **{f"learner/{k}": v for k, v in finalize_metrics(summed).items()},
            "learner/grad_norm": float(grad_norm),
            "learner/logp_mismatch_onpolicy": onpolicy_err / onpolicy_tokens if onpolicy_tokens else None,
            "learner/onpolicy_frac": onpolicy_tokens / max(1, trained),
            "learner/lr": self.scheduler.get_last_lr()[0],
            "learner/micro_batches": len(plan),
            "learner/padding_frac": 1 - sum(lengths) / max(1, padded),
            "learner/seconds": seconds,
            "learner/tokens_per_s": sum(lengths) / seconds,
            "reward/mean": float(rewards_GN.mean()),
            "reward/accuracy": sum(s.correct for s in samples) / len(samples),
            "reward/errors": sum(s.error is not None for s in samples),
            "rollout/completion_tokens": trained,
            "rollout/completion_len_mean": sum(len(s.completion_token_ids) for s in samples) / len(samples),
            "rollout/truncated_frac": sum(s.finish_reason == "length" for s in samples) / len(samples),
            "version": self.version,
        }

    # ------------------------------------------------------------------ weights out
    def state_for_engine(self) -> dict[str, torch.Tensor]:
        """HF-named tensors as the checkpoint has them (tied lm_head omitted: it is the embedding)."""
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()}
        if getattr(self.model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)
        return state

    def publish(self) -> str:
        """Write the current weights for the engines; keep only this version and the previous one."""
        from safetensors.torch import save_file

        out = self.weights_root / f"v{self.version}"
        tmp = self.weights_root / f".v{self.version}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        save_file(self.state_for_engine(), str(tmp / "model.safetensors"))
        tmp.rename(out)
        for old in self.weights_root.glob("v*"):
            if old.name != out.name and old.name != f"v{self.version - 1}":
                shutil.rmtree(old, ignore_errors=True)
        return str(out)

    def save_hf(self, out_dir: str) -> str:
        """The policy as an ordinary HF folder (model + tokenizer), loadable by transformers and vLLM."""
        from transformers import AutoTokenizer

        self.model.save_pretrained(out_dir, safe_serialization=True)
        AutoTokenizer.from_pretrained(self.cfg.model.path).save_pretrained(out_dir)
        return out_dir

    def save_checkpoint(self, out_dir: str) -> str:
        """Weights (HF folder) + optimizer + scheduler + version, to resume a run."""
        self.save_hf(out_dir)
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "version": self.version},
            Path(out_dir) / "learner_state.pt",
        )
        return out_dir

    def cleanup(self) -> None:
        shutil.rmtree(self.weights_root, ignore_errors=True)

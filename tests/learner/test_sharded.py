"""The sharded learner (learner.world_size = 2: FSDP2 over gloo, two real processes) against one process.

Same model, same batch, for every aggregation x loss x off-policy mode of test_grad_accumulation.py (with
its KL and entropy terms): after one optimizer step the gathered gradients, the weights, the loss and the
gradient norm equal the single-process ones to 1e-6. (The learning rate is small because AdamW divides each
gradient element by its own magnitude: where one is ~1e-9, float rounding in a different summation order
moves that weight by a good fraction of lr. At lr = 1e-2 a few weights in 20k differ by ~1e-5 for that
reason alone, while the gradients still agree to 1e-6.) The ranks get unequal numbers of micro-batches (one
runs fully masked filler ones), a sample is all tool tokens, several optimizer steps per batch (pre-update
log-probs) and activation checkpointing are covered too. Then checkpoints: a world-size-1 checkpoint
resumed at world size 2 and a world-size-2 checkpoint resumed at world size 1 both take the step the
original would have taken; the HF export is the gathered weights; weight sync writes the gathered weights
in buckets.

The two ranks are plain processes (torch.multiprocessing, spawn) running every case in one go; a job runs
them as Ray actors (temper/actors.py, tests/test_scale.py). Rank 1 builds every model on the meta device and
gets its shards and buffers from rank 0 (learner/distributed.py), so each parity case also checks that
start-up: a missing shard or a garbage rotary buffer would change the step.
"""

import dataclasses
import itertools
import random

import pytest
import torch

from temper.configs.schema import RunConfig
from temper.learner import distributed
from temper.learner.batching import plan_micro_batches
from temper.learner.learner import Learner, sequence_logprobs
from temper.rollout.types import Group, Sample

pytestmark = pytest.mark.slow  # two processes that import torch and transformers

WORLD = 2
PROMPT = (1, 100, 101, 102, 10)
TOKEN_BUDGET = 24
LOSSES = {
    "clip": {"type": "clip", "eps_low": 0.2, "eps_high": 0.28},
    "gspo": {"type": "gspo", "eps_low": 0.1, "eps_high": 0.1},
    "cispo": {"type": "cispo", "eps_low": 0.5, "eps_high": 0.28},
}
CASES = {
    f"{agg}-{loss}-{mode}": {
        "algorithm": {"loss": LOSSES[loss], "aggregation": agg, "constant_normalizer": 16,
                      "off_policy": {"mode": mode, "tis_cap": 1.5}, "kl": {"coef": 0.05, "estimator": "k3"},
                      "entropy_coef": 0.01},
    }
    for agg, loss, mode in itertools.product(
        ["token_mean", "seq_mean_token_mean", "constant"], LOSSES, ["none", "tis", "decoupled"]
    )
}
# Four optimizer steps per batch (pre-update log-probs on each rank), recomputed activations.
CASES["several-steps-checkpointing"] = {
    "algorithm": {"off_policy": {"mode": "decoupled", "tis_cap": 1.5}, "aggregation": "seq_mean_token_mean"},
    "learner": {"mini_batches": 2, "epochs": 2, "activation_checkpointing": True},
}


def make_cfg(model: str, train: str, case: dict) -> RunConfig:
    learner = {"steps": 10, "batch_groups": 4, "micro_batch_tokens": TOKEN_BUDGET,
               "optimizer": {"lr": 1e-4, "schedule": "constant", "max_grad_norm": 0.5}}
    return RunConfig.model_validate({
        "model": {"path": model}, "data": {"train": train},
        "learner": learner | case.get("learner", {}), "algorithm": case["algorithm"],
    })


def make_batch(learner: Learner, seed: int) -> list[Group]:
    """4 groups of 3: completions of 1..12 tokens, tool tokens sprinkled in (one sample all tool tokens),
    rollout log-probs = the model's own plus noise."""
    rng = random.Random(seed)
    groups = []
    for g in range(4):
        samples = []
        for j in range(3):
            n = rng.randint(1, 12)
            completion = tuple(rng.randrange(20, 250) for _ in range(n))
            mask = tuple(int(rng.random() > 0.25) for _ in range(n))
            if (g, j) == (1, 2):
                mask = (0,) * n
            probe = Sample(id="x", group_id="x", prompt="p", response="", label="", prompt_token_ids=PROMPT,
                           completion_token_ids=completion, logprobs=(0.0,) * n, loss_mask=mask, versions=(0, 0),
                           reward=0.0, correct=False)
            with torch.no_grad():
                logp = sequence_logprobs(learner.model, [probe], learner.pad_id, False)[0][0].tolist()
            logprobs = tuple((lp + rng.gauss(0, 0.3)) * m for lp, m in zip(logp, mask))
            reward = float(rng.random() > 0.5)
            samples.append(dataclasses.replace(probe, id=f"g{g}-{j}", group_id=f"g{g}", logprobs=logprobs,
                                               reward=reward, correct=reward > 0))
        groups.append(Group(f"g{g}", tuple(samples)))
    return groups


def full_params(learner: Learner) -> dict[str, torch.Tensor]:
    return {n: distributed.full_tensor(p.detach()).clone() for n, p in learner.model.named_parameters()}


def capture_grads(learner: Learner) -> list[dict[str, torch.Tensor]]:
    """Record the (gathered, clipped) gradients at every optimizer step."""
    grads: list[dict[str, torch.Tensor]] = []

    def record(*_):
        grads.append({n: distributed.full_tensor(p.grad).clone() for n, p in learner.model.named_parameters()})

    learner.optimizer.register_step_pre_hook(record)
    return grads


def one_step(learner: Learner, batch: list[Group]) -> dict:
    grads = capture_grads(learner)
    metrics = learner.train_step(batch)
    return {"metrics": metrics, "grads": grads, "params": full_params(learner)}


class Recorder:
    def __init__(self) -> None:
        self.calls = []

    def __call__(self, method, kwargs):
        self.calls.extend((method, i, kw) for i, kw in enumerate(kwargs))
        return [None] * len(kwargs)


def _rank_main(rank: int, init_method: str, model: str, train: str, batches: list, out: str) -> None:
    """Everything the two ranks do, in one process start: every parity case, then checkpoints, then sync."""
    from pathlib import Path

    torch.set_num_threads(1)
    me = distributed.Rank(rank, WORLD, init_method)
    results = {}
    for name, case in CASES.items():
        learner = Learner(make_cfg(model, train, case), f"{out}/w-{rank}", rank=me)
        results[name] = one_step(learner, batches[0])
    # A checkpoint written at world size 1 (by the test process), resumed here at world size 2.
    cfg = make_cfg(model, train, CASES["token_mean-clip-tis"])
    resumed = Learner(cfg, f"{out}/w-{rank}", resume_from=f"{out}/ckpt-ws1", rank=me)
    results["resumed-from-ws1"] = {"version": resumed.version, **one_step(resumed, batches[1])}
    # A checkpoint written here at world size 2, to be resumed at world size 1 by the test process.
    learner = Learner(cfg, f"{out}/w-{rank}", rank=me)
    learner.train_step(batches[0])
    learner.save_checkpoint(f"{out}/ckpt-ws2")
    results["after-ckpt-ws2"] = one_step(learner, batches[1])
    # Weight sync from the sharded learner: rank 0 writes the gathered weights, 64 KB buckets, one file each.
    engines = Recorder()
    assert learner.connect_engines(engines if rank == 0 else None, 1) == "shm"
    learner.transfer.source.bucket_bytes = 64 << 10
    learner.sync_weights(7)
    results["sync_calls"] = engines.calls
    results["sync_params"] = full_params(learner)
    torch.save(results, Path(out) / f"rank-{rank}.pt")
    distributed.close()


@pytest.fixture(scope="module")
def sharded(demo_assets, tmp_path_factory):
    """The world-size-1 references (this process) and the world-size-2 results (two spawned ranks)."""
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("sharded")
    model, train = demo_assets["model"], demo_assets["train"]
    probe = Learner(make_cfg(model, train, CASES["token_mean-clip-none"]), str(out / "probe"))
    batches = [make_batch(probe, seed) for seed in (0, 1)]
    refs = {"initial": full_params(probe)}
    refs |= {name: one_step(Learner(make_cfg(model, train, case), str(out / "w")), batches[0])
            for name, case in CASES.items()}
    cfg = make_cfg(model, train, CASES["token_mean-clip-tis"])
    original = Learner(cfg, str(out / "w"))
    original.train_step(batches[0])
    original.save_checkpoint(str(out / "ckpt-ws1"))
    refs["continued-ws1"] = one_step(original, batches[1])

    mp.spawn(_rank_main, args=(f"file://{out}/rendezvous", model, train, batches, str(out)), nprocs=WORLD)
    ranks = [torch.load(out / f"rank-{r}.pt", weights_only=False) for r in range(WORLD)]
    # Resumed here at world size 1 from the world-size-2 checkpoint: the step the 2 ranks took after saving.
    resumed = Learner(cfg, str(out / "w"), resume_from=str(out / "ckpt-ws2"))
    refs["resumed-from-ws2"] = {"version": resumed.version, **one_step(resumed, batches[1])}
    return {"refs": refs, "ranks": ranks, "out": out, "batches": batches}


def max_diff(got: dict, want: dict) -> float:
    """The largest absolute difference of any gradient element or weight between two steps' results."""
    diffs = [(g[n] - w[n]).abs().max().item() for g, w in zip(got["grads"], want["grads"], strict=True) for n in w]
    return max(diffs + [(got["params"][n] - w).abs().max().item() for n, w in want["params"].items()])


def assert_same_step(got: dict, want: dict, atol: float = 1e-6) -> None:
    for g_got, g_want in zip(got["grads"], want["grads"], strict=True):
        for name in g_want:
            torch.testing.assert_close(g_got[name], g_want[name], atol=atol, rtol=0, msg=lambda m, n=name: f"grad {n}: {m}")
    for name in want["params"]:
        torch.testing.assert_close(got["params"][name], want["params"][name], atol=atol, rtol=0,
                                   msg=lambda m, n=name: f"weight {n}: {m}")
    for key in ("learner/loss", "learner/grad_norm", "learner/tokens", "learner/clip_frac_low",
                "learner/clip_frac_high", "learner/ratio_mean", "learner/ratio_max", "learner/tis_truncated_frac",
                "learner/logp_mismatch", "learner/kl", "learner/entropy", "version"):
        if key in want["metrics"]:
            assert got["metrics"][key] == pytest.approx(want["metrics"][key], rel=1e-6, abs=1e-6), key


def test_the_ranks_really_split_the_batch_unevenly(sharded):
    """Guard against the parity test passing trivially: both ranks train samples, and one of them runs more
    micro-batches than the other (so the other runs a masked filler)."""
    samples = [s for g in sharded["batches"][0] for s in g.samples]
    lengths = [len(s.prompt_token_ids) + len(s.completion_token_ids) for s in samples]
    shares = distributed.split_by_tokens(list(range(len(samples))), lengths, WORLD)
    assert sorted(i for share in shares for i in share) == list(range(len(samples)))
    counts = [len(plan_micro_batches([lengths[i] for i in share], TOKEN_BUDGET)) for share in shares]
    assert all(shares) and len(set(counts)) > 1, counts
    tokens = [sum(lengths[i] for i in share) for share in shares]
    assert max(tokens) - min(tokens) <= max(lengths)


@pytest.mark.parametrize("case", list(CASES))
def test_world_size_2_step_equals_world_size_1(sharded, case):
    want = sharded["refs"][case]
    moved = max((want["params"][n] - p).abs().max().item() for n, p in sharded["refs"]["initial"].items())
    assert moved > 5e-5  # the step did something (~lr: Adam's first step is ~lr * sign(gradient))
    for rank in sharded["ranks"]:
        assert_same_step(rank[case], want)
    print(f"{case}: max |world size 2 - world size 1| = {max_diff(sharded['ranks'][0][case], want):.2e}")


def test_checkpoints_resume_at_another_world_size(sharded):
    refs, rank0 = sharded["refs"], sharded["ranks"][0]
    # world size 1 -> 2: the resumed ranks take the step the original single process took
    assert rank0["resumed-from-ws1"]["version"] == 1
    assert_same_step(rank0["resumed-from-ws1"], refs["continued-ws1"])
    # world size 2 -> 1: the resumed single process takes the step the two ranks took
    assert refs["resumed-from-ws2"]["version"] == 1
    assert_same_step(refs["resumed-from-ws2"], rank0["after-ckpt-ws2"])


def test_sharded_checkpoint_is_an_ordinary_hf_folder(sharded):
    from transformers import AutoModelForCausalLM

    ckpt = sharded["out"] / "ckpt-ws2"
    assert (ckpt / "config.json").is_file() and (ckpt / "optimizer").is_dir()
    config = (ckpt / "config.json").read_text()
    assert '"Qwen2ForCausalLM"' in config and "FSDP" not in config
    model = AutoModelForCausalLM.from_pretrained(str(ckpt))
    # after one step from the same start on the same batch: the single process's weights
    want = sharded["refs"]["token_mean-clip-tis"]["params"]
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), want[name], atol=1e-6, rtol=0)


def test_weight_sync_from_ranks_sends_gathered_buckets(sharded):
    from safetensors.torch import load_file

    calls = sharded["ranks"][0]["sync_calls"]
    assert [m for m, _, _ in calls] == ["weights_init", "weights_start", "weights_update", "weights_finish"]
    assert sharded["ranks"][1]["sync_calls"] == []  # only rank 0 talks to the engines
    folder = sharded["out"] / "w-0"
    (sent,) = folder.glob("send-*")
    files = sorted(sent.glob("*.safetensors"))
    assert len(files) > 1  # 64 KB buckets of a ~330 KB model
    tensors = {}
    for f in files:
        tensors.update(load_file(str(f)))
    params = sharded["ranks"][0]["sync_params"]
    assert set(tensors) == set(params)
    for name, t in tensors.items():
        assert torch.equal(t, params[name]), name


# ---------------------------------------------------------------------------------------------- on GPUs
def _to_cpu(x):
    if isinstance(x, torch.Tensor):
        return x.cpu()
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_to_cpu(v) for v in x]
    return x


def _gpu_rank_main(rank: int, world: int, init_method: str, model: str, train: str, batch: list, out: str) -> None:
    import os
    import time

    os.environ["CUDA_VISIBLE_DEVICES"] = str(rank)  # one GPU per rank, as Ray gives each rank actor
    case = {**CASES["token_mean-clip-tis"], "learner": {"device": "cuda"}}
    learner = Learner(make_cfg(model, train, case), f"{out}/w-{rank}", rank=distributed.Rank(rank, world, init_method))
    assert next(learner.model.parameters()).device.type == "cuda"
    t0 = time.perf_counter()
    result = one_step(learner, batch)
    result["seconds"] = time.perf_counter() - t0
    torch.save(_to_cpu(result), f"{out}/gpu-rank-{rank}.pt")
    distributed.close()


@pytest.mark.gpu
@pytest.mark.parametrize("world", [1, 2])
def test_fsdp2_on_nccl_equals_one_gpu_process(world, demo_assets, tmp_path):
    """FSDP2 over NCCL (world size 1: the sharded code path on one GPU; 2: two GPUs) against the plain
    single-process learner on one GPU, fp32, same batch: the same gradients and step."""
    import torch.multiprocessing as mp

    if torch.cuda.device_count() < world:
        pytest.skip(f"needs {world} GPUs")
    model, train = demo_assets["model"], demo_assets["train"]
    probe = Learner(make_cfg(model, train, CASES["token_mean-clip-none"]), str(tmp_path / "probe"))
    batch = make_batch(probe, 0)
    case = {**CASES["token_mean-clip-tis"], "learner": {"device": "cuda"}}
    want = _to_cpu(one_step(Learner(make_cfg(model, train, case), str(tmp_path / "w")), batch))
    mp.spawn(_gpu_rank_main, args=(world, f"file://{tmp_path}/rendezvous", model, train, batch, str(tmp_path)),
             nprocs=world)
    for rank in range(world):
        got = torch.load(tmp_path / f"gpu-rank-{rank}.pt", weights_only=False)
        print(f"world size {world}, rank {rank}: one train_step in {got['seconds']:.2f} s")
        assert_same_step(got, want, atol=1e-5)  # GPU kernels differ with the batch's shape

"""The Learner on a real (tiny) HF model, without Ray: a step moves the weights the right way, log-probs
agree with an independent forward pass."""

import dataclasses
import math

import pytest
import torch

from temper.configs.schema import RunConfig
from temper.learner.learner import Learner, lr_lambda, sequence_logprobs
from temper.rollout.types import Group, Sample


def make_cfg(demo_assets, **learner) -> RunConfig:
    return RunConfig.model_validate(
        {
            "model": {"path": demo_assets["model"]},
            "data": {"train": demo_assets["train"]},
            "learner": {"steps": 10, "micro_batch_tokens": 64, **learner},
            "algorithm": {"off_policy": {"mode": "none"}},
        }
    )


def sample_from(learner: Learner, gid: str, j: int, completion: list[int], reward: float) -> Sample:
    prompt = [1, 100, 101, 102, 10]
    probe = Sample(
        id="x", group_id=gid, prompt="p", response="", label="", prompt_token_ids=tuple(prompt),
        completion_token_ids=tuple(completion), logprobs=(0.0,) * len(completion), loss_mask=(1,) * len(completion),
        versions=(0, 0), reward=0.0, correct=False,
    )
    with torch.no_grad():
        logp, _ = sequence_logprobs(learner.model, [probe], learner.pad_id, False)
    return Sample(
        id=f"{gid}-{j}", group_id=gid, prompt="p", response="", label="", prompt_token_ids=tuple(prompt),
        completion_token_ids=tuple(completion), logprobs=tuple(logp[0, : len(completion)].tolist()),
        loss_mask=(1,) * len(completion), versions=(0, 0), reward=reward, correct=reward >= 1,
    )


def test_sequence_logprobs_match_a_plain_forward(demo_assets, tmp_path):
    learner = Learner(make_cfg(demo_assets), str(tmp_path / "w"))
    a = sample_from(learner, "g", 0, [50, 51, 52], 0.0)
    b = sample_from(learner, "g", 1, [60], 0.0)  # shorter: padded in the batch
    with torch.no_grad():
        batched, _ = sequence_logprobs(learner.model, [a, b], learner.pad_id, False)
        full = torch.tensor([list(a.prompt_token_ids) + list(a.completion_token_ids)])
        ref = torch.log_softmax(learner.model(input_ids=full).logits[0].float(), -1)
    n = len(a.prompt_token_ids)
    expected = [ref[n - 1 + j, tok].item() for j, tok in enumerate(a.completion_token_ids)]
    assert batched[0].tolist() == pytest.approx(expected, abs=1e-5)
    assert batched[1, 0].item() == pytest.approx(b.logprobs[0], abs=1e-5)


def test_a_step_raises_the_rewarded_completion(demo_assets, tmp_path):
    learner = Learner(make_cfg(demo_assets, optimizer={"lr": 1e-2, "schedule": "constant"}), str(tmp_path / "w"))
    good = sample_from(learner, "g", 0, [70, 71], 1.0)
    bad = sample_from(learner, "g", 1, [80, 81], 0.0)
    before = sum(good.logprobs) - sum(bad.logprobs)
    metrics = learner.train_step([Group("g", (good, bad))])
    after_good = sample_from(learner, "g", 0, [70, 71], 1.0)
    after_bad = sample_from(learner, "g", 1, [80, 81], 0.0)
    assert sum(after_good.logprobs) - sum(after_bad.logprobs) > before
    assert learner.version == 1 and metrics["version"] == 1
    assert metrics["learner/logp_mismatch"] < 1e-5  # rollout log-probs came from this very model
    assert metrics["reward/mean"] == 0.5 and metrics["reward/accuracy"] == 0.5
    assert math.isfinite(metrics["learner/grad_norm"]) and metrics["learner/grad_norm"] > 0


def test_segments_share_their_episodes_advantage_and_an_episode_without_tokens_only_counts(demo_assets, tmp_path):
    """An agent's episode can be two samples (segments) or none with tokens (it made no call): GRPO normalises
    over the 3 episodes' rewards (1, 0, 0), both segments of the rewarded one rise, and the empty one is not
    trained on."""
    learner = Learner(make_cfg(demo_assets, optimizer={"lr": 1e-2, "schedule": "constant"}), str(tmp_path / "w"))
    seg_a = dataclasses.replace(sample_from(learner, "g", 0, [70, 71], 1.0), episode=0)
    seg_b = dataclasses.replace(sample_from(learner, "g", 1, [72, 73], 1.0), episode=0)
    bad = dataclasses.replace(sample_from(learner, "g", 2, [80, 81], 0.0), episode=1)
    empty = dataclasses.replace(bad, id="g-3", completion_token_ids=(), logprobs=(), loss_mask=(), episode=2)
    group = Group("g", (seg_a, seg_b, bad, empty))
    assert group.episodes == [0, 0, 1, 2] and group.rewards == [1.0, 0.0, 0.0]
    metrics = learner.train_step([group])
    assert metrics["reward/mean"] == pytest.approx(1 / 3) and metrics["rollout/completion_tokens"] == 6
    for before in (seg_a, seg_b):
        after = sample_from(learner, "g", 0, list(before.completion_token_ids), 1.0)
        assert sum(after.logprobs) > sum(before.logprobs)


def test_micro_batches_follow_the_token_budget(demo_assets, tmp_path):
    learner = Learner(make_cfg(demo_assets, micro_batch_tokens=8), str(tmp_path / "w"))
    groups = [Group(f"g{i}", tuple(sample_from(learner, f"g{i}", j, [40 + j], float(j)) for j in range(2))) for i in range(2)]
    metrics = learner.train_step(groups)
    assert metrics["learner/micro_batches"] == 4  # 6-token samples, budget 8: one per micro-batch


def test_lr_schedule_warmup_then_cosine():
    assert lr_lambda(0, 4, 100, "cosine", 0.1) == 0.25
    assert lr_lambda(3, 4, 100, "cosine", 0.1) == 1.0
    assert lr_lambda(4, 4, 100, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_lambda(100, 4, 100, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_lambda(52, 4, 100, "cosine", 0.1) == pytest.approx(0.55)  # halfway: 0.1 + 0.9 * 0.5
    assert lr_lambda(50, 0, 100, "constant", 0.1) == 1.0


def test_activation_checkpointing_gives_the_same_step(demo_assets, tmp_path):
    def one_step(checkpointing: bool) -> dict:
        learner = Learner(make_cfg(demo_assets, activation_checkpointing=checkpointing), str(tmp_path / f"w{checkpointing}"))
        group = Group("g", (sample_from(learner, "g", 0, [70, 71], 1.0), sample_from(learner, "g", 1, [80], 0.0)))
        return learner.train_step([group])

    plain, recomputed = one_step(False), one_step(True)
    assert recomputed["learner/grad_norm"] == pytest.approx(plain["learner/grad_norm"], rel=1e-5)
    assert recomputed["learner/loss"] == pytest.approx(plain["learner/loss"], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("layout", ["optimizer_dir", "before_sharding"])
def test_checkpoint_round_trip_resumes_the_learner(demo_assets, tmp_path, layout):
    """save_checkpoint, then a new Learner(resume_from=...): same weights, optimizer moments, lr step and
    version, so its next step equals the one the original would have taken. Also from a checkpoint of the
    layout written before the sharded learner (the optimizer inside learner_state.pt, no optimizer/)."""
    import shutil

    from temper.learner.learner import LEARNER_STATE, OPTIMIZER_DIR

    def group(learner):
        return [Group("g", (sample_from(learner, "g", 0, [70, 71], 1.0), sample_from(learner, "g", 1, [80], 0.0)))]

    cfg = make_cfg(demo_assets, optimizer={"lr": 1e-2, "warmup_steps": 3})
    original = Learner(cfg, str(tmp_path / "w1"))
    original.train_step(group(original))
    original.save_checkpoint(str(tmp_path / "ckpt"))
    assert (tmp_path / "ckpt" / OPTIMIZER_DIR / ".metadata").is_file()
    if layout == "before_sharding":
        shutil.rmtree(tmp_path / "ckpt" / OPTIMIZER_DIR)
        torch.save({"optimizer": original.optimizer.state_dict(), "scheduler": original.scheduler.state_dict(),
                    "version": original.version}, tmp_path / "ckpt" / LEARNER_STATE)
    resumed = Learner(cfg, str(tmp_path / "w2"), resume_from=str(tmp_path / "ckpt"))
    assert resumed.version == 1 and resumed.scheduler.last_epoch == original.scheduler.last_epoch == 1
    for (name, a), b in zip(original.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b), name
    batch = group(original)  # the same samples for both (rollout log-probs from the original's weights)
    m1, m2 = original.train_step(batch), resumed.train_step(batch)
    assert m2["learner/lr"] == m1["learner/lr"] == pytest.approx(1e-2)  # warmup step 3 of 3
    assert m2["learner/loss"] == pytest.approx(m1["learner/loss"], abs=1e-7)
    for (name, a), b in zip(original.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name

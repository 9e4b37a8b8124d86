"""Several optimizer steps per rollout batch (learner.mini_batches, learner.epochs), on the tiny demo model.

The exact checks compare against what the feature must be equivalent to: in off_policy mode "none" the loss
never looks at the learner's pre-update policy, so mini-batches are exactly single-step batches run one after
the other, and epochs are the same batch trained again. Modes "tis"/"decoupled" are checked by recording what
the loss is given: every step must clip against the weights from before the batch's first step.
"""

import pytest
import torch

import temper.learner.learner as learner_module
from temper.configs.schema import LearnerConfig, RunConfig
from temper.learner.learner import Learner, sequence_logprobs
from temper.rollout.types import Group, Sample

PROMPT = (1, 100, 101, 102, 10)
# Two groups per mini-batch of two: completions of different lengths, one rewarded sample per group.
COMPLETIONS = [([70, 71], [80]), ([72], [81, 82, 83]), ([73, 74, 75], [84, 85]), ([76], [86])]


def make_cfg(demo_assets, mode: str, **learner) -> RunConfig:
    return RunConfig.model_validate(
        {
            "model": {"path": demo_assets["model"]},
            "data": {"train": demo_assets["train"]},
            # 8-token samples at most, budget 16: two samples per micro-batch, so each step accumulates.
            "learner": {"steps": 10, "micro_batch_tokens": 16, "optimizer": {"lr": 1e-2, "schedule": "constant"}}
            | learner,
            "algorithm": {"off_policy": {"mode": mode}},
        }
    )


def make_groups(learner: Learner) -> list[Group]:
    """The groups of COMPLETIONS, with rollout log-probs = the learner's current (pre-update) log-probs."""
    groups = []
    for g, pair in enumerate(COMPLETIONS):
        samples = []
        for j, completion in enumerate(pair):
            probe = Sample(
                id="x", group_id="x", prompt="p", response="", label="", prompt_token_ids=PROMPT,
                completion_token_ids=tuple(completion), logprobs=(0.0,) * len(completion),
                loss_mask=(1,) * len(completion), versions=(0, 0), reward=0.0, correct=False,
            )
            with torch.no_grad():
                logp_BT, _ = sequence_logprobs(learner.model, [probe], learner.pad_id, False)
            reward = float(j == 0)
            samples.append(
                Sample(
                    id=f"g{g}-{j}", group_id=f"g{g}", prompt="p", response="", label="", prompt_token_ids=PROMPT,
                    completion_token_ids=tuple(completion), logprobs=tuple(logp_BT[0].tolist()),
                    loss_mask=(1,) * len(completion), versions=(0, 0), reward=reward, correct=reward >= 1,
                )
            )
        groups.append(Group(f"g{g}", tuple(samples)))
    return groups


def record_calls(monkeypatch) -> tuple[list, list]:
    """Spy on the learner's forward passes (counted) and loss calls (their PolicyBatch kept)."""
    forwards, batches = [], []
    real_forward, real_loss = learner_module.sequence_logprobs, learner_module.policy_loss

    def forward(*args):
        forwards.append(args[1])
        return real_forward(*args)

    def loss(batch, *args):
        batches.append(batch)
        return real_loss(batch, *args)

    monkeypatch.setattr(learner_module, "sequence_logprobs", forward)
    monkeypatch.setattr(learner_module, "policy_loss", loss)
    return forwards, batches


def adam_steps(learner: Learner) -> set[float]:
    return {float(state["step"]) for state in learner.optimizer.state.values()}


def assert_same_weights(a: Learner, b: Learner) -> None:
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")


def test_one_step_per_batch_clips_against_the_current_policy(demo_assets, tmp_path, monkeypatch):
    learner = Learner(make_cfg(demo_assets, "tis"), str(tmp_path / "w"))
    groups = make_groups(learner)
    forwards, _ = record_calls(monkeypatch)
    m = learner.train_step(groups)
    # ratio = exp(logp - stopgrad(logp)) = exp(0) = 1 on every token: nothing is ever clipped.
    assert m["learner/ratio_max"] == 1.0 and m["learner/ratio_mean"] == 1.0
    assert m["learner/clip_frac_low"] == 0.0 and m["learner/clip_frac_high"] == 0.0
    assert m["learner/optimizer_steps"] == 1 and adam_steps(learner) == {1.0}
    assert m["learner/grad_norm_max"] == m["learner/grad_norm"]
    assert len(forwards) == m["learner/micro_batches"]  # no extra forward pass for the pre-update policy


def test_mini_batches_are_single_step_batches_in_a_row(demo_assets, tmp_path):
    # Mode "none": each mini-batch's loss (advantages per group, normaliser over the mini-batch, ratio against
    # the rollout) is exactly that of a one-step batch of its groups, and AdamW sees the same two steps.
    split = Learner(make_cfg(demo_assets, "none", mini_batches=2), str(tmp_path / "split"))
    by_hand = Learner(make_cfg(demo_assets, "none"), str(tmp_path / "by_hand"))
    groups = make_groups(split)
    m = split.train_step(groups)
    halves = [by_hand.train_step(groups[:2]), by_hand.train_step(groups[2:])]

    assert_same_weights(split, by_hand)
    assert m["learner/optimizer_steps"] == 2 and adam_steps(split) == {2.0} and split.scheduler.last_epoch == 2
    assert split.version == 1 and m["version"] == 1  # one new weight version per batch
    assert m["learner/grad_norm"] == pytest.approx((halves[0]["learner/grad_norm"] + halves[1]["learner/grad_norm"]) / 2)
    assert m["learner/grad_norm_max"] == pytest.approx(max(h["learner/grad_norm"] for h in halves))
    # loss: the mean of the two steps' losses; per-token metrics: weighted by each step's trained tokens.
    assert m["learner/loss"] == pytest.approx((halves[0]["learner/loss"] + halves[1]["learner/loss"]) / 2)
    tokens = [h["learner/tokens"] for h in halves]
    assert m["learner/tokens"] == sum(tokens) == m["rollout/completion_tokens"] == 14  # (2+1)+(1+3) + (3+2)+(1+1)
    ratio_mean = (halves[0]["learner/ratio_mean"] * tokens[0] + halves[1]["learner/ratio_mean"] * tokens[1]) / 14
    assert m["learner/ratio_mean"] == pytest.approx(ratio_mean)
    assert m["learner/ratio_max"] == pytest.approx(max(h["learner/ratio_max"] for h in halves))
    assert m["learner/micro_batches"] == halves[0]["learner/micro_batches"] + halves[1]["learner/micro_batches"]

    # Engine-vs-learner mismatch is read off the first step only (forwards by the weights that sampled):
    # the second step's forwards run on updated weights and would report the update as a mismatch.
    assert halves[1]["learner/logp_mismatch"] > 1e-3  # the update is visible there ...
    assert m["learner/logp_mismatch"] == pytest.approx(halves[0]["learner/logp_mismatch"])  # ... but not here
    assert m["learner/logp_mismatch"] < 1e-5 and m["learner/logp_mismatch_onpolicy"] < 1e-5
    assert m["learner/onpolicy_frac"] == 1.0  # every sample is fresh, whichever step trained it


def test_epochs_train_the_same_batch_again(demo_assets, tmp_path):
    twice = Learner(make_cfg(demo_assets, "none", epochs=2), str(tmp_path / "twice"))
    by_hand = Learner(make_cfg(demo_assets, "none"), str(tmp_path / "by_hand"))
    groups = make_groups(twice)
    m = twice.train_step(groups)
    first, second = by_hand.train_step(groups), by_hand.train_step(groups)

    assert_same_weights(twice, by_hand)
    assert m["learner/optimizer_steps"] == 2 and adam_steps(twice) == {2.0} and twice.version == 1
    assert m["learner/tokens"] == 2 * m["rollout/completion_tokens"] == 28  # 14 tokens, each trained twice
    assert m["learner/micro_batches"] == first["learner/micro_batches"]  # counted per pass over the batch
    assert m["learner/loss"] == pytest.approx((first["learner/loss"] + second["learner/loss"]) / 2)
    assert m["learner/ratio_max"] == pytest.approx(second["learner/ratio_max"]) and m["learner/ratio_max"] > 1


@pytest.mark.parametrize("shape", [{"mini_batches": 2}, {"epochs": 2}], ids=["mini_batches", "epochs"])
def test_every_step_clips_against_the_policy_before_the_first(demo_assets, tmp_path, monkeypatch, shape):
    runs = {}
    for mode in ("tis", "decoupled"):
        learner = Learner(make_cfg(demo_assets, mode, **shape), str(tmp_path / mode))
        groups = make_groups(learner)  # rollout log-probs = this learner's log-probs before the batch
        with monkeypatch.context() as patch:
            forwards, batches = record_calls(patch)
            m = learner.train_step(groups)
        runs[mode] = (m, learner)

        assert m["learner/optimizer_steps"] == 2 and learner.version == 1
        # One no-grad pass over the batch up front, then one training pass per epoch.
        assert len(forwards) == (1 + learner.cfg.learner.epochs) * m["learner/micro_batches"]
        moved = 0.0
        for batch in batches:  # every micro-batch of both steps: prox = the pre-update log-probs = rollout
            keep = batch.mask_BT > 0
            torch.testing.assert_close(batch.prox_logp_BT[keep], batch.rollout_logp_BT[keep], atol=1e-5, rtol=0)
            moved = max(moved, float((batch.logp_BT.detach() - batch.prox_logp_BT)[keep].abs().max()))
        assert moved > 1e-3  # the second step's policy differs from prox: a real ratio, not exp(0)
        assert m["learner/ratio_max"] > 1.0
        assert m["learner/logp_mismatch"] < 1e-5  # measured before the update

    # Both modes get the same pre-update log-probs, and no token's weight is over the cap (prox = rollout,
    # weight 1), the only place where they differ: they take the same steps.
    (m_tis, tis), (m_dec, dec) = runs["tis"], runs["decoupled"]
    assert_same_weights(tis, dec)
    assert m_tis["learner/loss"] == pytest.approx(m_dec["learner/loss"], abs=1e-7)


def test_mini_batches_must_divide_the_batch(demo_assets, tmp_path):
    with pytest.raises(ValueError, match=r"learner.batch_groups \(5\) must be divisible by learner.mini_batches \(2\)"):
        LearnerConfig(batch_groups=5, mini_batches=2)
    learner = Learner(make_cfg(demo_assets, "none", batch_groups=4, mini_batches=4), str(tmp_path / "w"))
    with pytest.raises(ValueError, match="3 groups do not split into learner.mini_batches = 4"):
        learner.train_step(make_groups(learner)[:3])


def test_lr_schedule_spans_every_optimizer_step(demo_assets, tmp_path):
    cfg = make_cfg(demo_assets, "none", mini_batches=2, epochs=3, optimizer={"schedule": "cosine", "warmup_steps": 4})
    schedule = Learner(cfg, str(tmp_path / "w")).scheduler.lr_lambdas[0]
    # 10 batches * 2 mini-batches * 3 epochs = 60 optimizer steps; warmup counts optimizer steps too.
    assert schedule(0) == 0.25  # (0 + 1) / 4
    assert schedule(32) == pytest.approx(0.55)  # halfway through the 56 decay steps: 0.1 + 0.9 * 0.5
    assert schedule(60) == pytest.approx(0.1)

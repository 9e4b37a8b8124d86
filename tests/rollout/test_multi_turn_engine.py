"""A real vLLM engine runs multi-turn episodes: the learner's log-probs of the sampled tokens match the
engine's, environment tokens are masked, and a weight update between turns shows in the token versions."""

import pytest
import torch

from temper.environments.multi_turn import MultiTurnEnvironment, MultiTurnParams, StepResult
from temper.environments.trajectory import ENV_VERSION
from temper.learner.learner import sequence_logprobs
from temper.rollout.types import Sample

pytestmark = pytest.mark.slow
ROW = {"prompt": "What is 12 + 34?", "label": "46"}


class ThreeTurns(MultiTurnEnvironment):
    """Answers every turn with a user message until the third; `between` runs after the first turn."""

    between = None

    async def step(self, state, messages, reply):
        turns = sum(m["role"] == "assistant" for m in messages)
        if turns == 1 and self.between is not None:
            await self.between()
        if turns == 3:
            return StepResult(done=True, reward=1.0)
        return StepResult([{"role": "user", "content": f"Try again ({turns})."}], reward=0.0, info={"turns": turns})


def run_episode(engine, env, sampling_max_tokens=8):
    async def generate(prompt_ids, n, max_tokens=None):  # clamped below sampling.max_tokens, as the worker does
        cap = sampling_max_tokens if max_tokens is None else min(max_tokens, sampling_max_tokens)
        return await engine.generate(prompt_ids, n, max_tokens=cap)

    return engine.run(env.run_episode(ROW, generate))


def as_sample(ep) -> Sample:
    return Sample(id="s", group_id="g", prompt=ep.prompt, response=ep.response, label=None,
                  prompt_token_ids=ep.prompt_token_ids, completion_token_ids=ep.completion_token_ids,
                  logprobs=ep.logprobs, loss_mask=ep.loss_mask, versions=ep.versions, reward=0.0, correct=False,
                  token_versions=ep.token_versions)


def test_real_three_turn_episode_matches_the_learner_on_sampled_tokens(shared_engine, demo_assets):
    from transformers import AutoModelForCausalLM

    engine = shared_engine
    engine.run(engine.load_weights(demo_assets["model"], 0))
    env = ThreeTurns(MultiTurnParams(), engine.tokenizer, "prompt", None, max_model_len=256)
    ep = run_episode(engine, env)
    assert ep.turns == 3 and ep.stop_reason == "stop" and ep.turn_rewards == (0.0, 0.0, 1.0)
    assert [s["role"] for s in ep.spans] == ["assistant", "env", "assistant", "env", "assistant"]
    n = len(ep.completion_token_ids)
    assert len(ep.loss_mask) == len(ep.logprobs) == len(ep.token_versions) == n
    mask = torch.tensor(ep.loss_mask, dtype=torch.bool)
    assert all(v == ENV_VERSION for v, m in zip(ep.token_versions, ep.loss_mask) if not m)
    assert "Try again (1)." in engine.tokenizer.decode(list(ep.completion_token_ids))
    model = AutoModelForCausalLM.from_pretrained(demo_assets["model"], dtype=torch.float32).eval()
    with torch.no_grad():
        logp_BT, _ = sequence_logprobs(model, [as_sample(ep)], engine.tokenizer.pad_token_id, False)
    learner = logp_BT[0, :n]
    engine_logp = torch.tensor(ep.logprobs)
    gap = (learner - engine_logp)[mask].abs().max().item()
    print(f"{int(mask.sum())} sampled tokens over 3 turns, max |learner - engine| log-prob gap {gap:.2e}")
    assert gap < 1e-4  # fp32 both sides: equal to float rounding (measured ~1e-6)
    assert (engine_logp[~mask] == 0).all() and (learner[~mask] != 0).any()  # env tokens carry no rollout log-prob


def test_a_weight_update_between_turns_shows_in_the_token_versions(shared_engine, demo_assets):
    engine = shared_engine
    engine.run(engine.load_weights(demo_assets["model"], 0))
    env = ThreeTurns(MultiTurnParams(), engine.tokenizer, "prompt", None, max_model_len=256)

    async def update():  # the same weights, published as version 1 while the episode runs
        await engine.load_weights(demo_assets["model"], 1)

    env.between = update
    try:
        ep = run_episode(engine, env)
    finally:
        engine.run(engine.load_weights(demo_assets["model"], 0))
    first, second = ep.spans[0], ep.spans[2]
    assert set(ep.token_versions[first["start"] : first["end"]]) == {0}
    assert set(ep.token_versions[second["start"] : second["end"]]) == {1}
    assert ep.versions == (0, 1)

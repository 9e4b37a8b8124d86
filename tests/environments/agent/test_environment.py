"""`[environment] name = "agent"` over real HTTP with the real `openai` client, scripted replies standing in
for the engine (the real engine runs it in tests/test_algorithm_recipes.py, configs/agent_demo.toml): one
segment equal to the native tool env, the reward from the rubric, from the agent, or from an agent in another
process; segments of one episode sharing its reward; every fault a zero with its reason, the group going on."""

import asyncio

import pytest
from agent_chat import Scripted, build_demo_tokenizer, call_text

from temper.configs.schema import RunConfig
from temper.environments.agent.environment import AgentEnvironment
from temper.environments.tool_env import ToolEnvironment
from temper.rewards.rubric import Rubric
from temper.rollout.groups import GroupRunner
from temper.rollout.types import Group

ROW = {"prompt": "What is 347 * 58?", "label": "20126"}
REPLIES = [call_text("347 * 58"), "\\boxed{20126}"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_demo_tokenizer(tmp_path_factory.mktemp("demo-tok"))


def cfg_for(agent, **params):
    return RunConfig.model_validate({
        "model": {"path": "unused"}, "data": {"train": "unused.jsonl"},
        "environment": {"name": "agent", "params": {"agent": f"agents:{agent}", **params}},
        "rollout": {"sampling": {"max_tokens": 64}},
        "rewards": {"terms": [{"verifier": "math", "params": {"require_boxed": True}}]},
    })


def scored(tok, agent, replies, n=1, **params):
    cfg = cfg_for(agent, **params)
    env = AgentEnvironment(AgentEnvironment.Params.model_validate(cfg.environment.params), tok, "prompt", None)

    async def go():
        try:
            return await GroupRunner(cfg, env, rubric).scored(ROW, replies, n)
        finally:
            await env.aclose()

    with Rubric(cfg.rewards, processes=0) as rubric:
        return asyncio.run(go())


def test_an_agents_tool_loop_is_one_sample_equal_to_the_native_tool_env_and_the_rubric_scores_it(tok):
    sample = Scripted(tok, REPLIES)
    ((ep, result),) = scored(tok, "tool_loop", sample)
    env = ToolEnvironment(ToolEnvironment.Params(), tok, "prompt", None)
    native = asyncio.run(env.run_episode(ROW, Scripted(tok, REPLIES)))
    for f in ("prompt_token_ids", "completion_token_ids", "logprobs", "loss_mask", "token_versions", "spans"):
        assert getattr(ep, f) == getattr(native, f), f
    assert (ep.turns, ep.tool_calls, ep.response, ep.episode) == (2, 1, "\\boxed{20126}", 0)
    assert ep.info["segments"] == 1 and [c["extends"] for c in ep.info["calls"]] == [False, True]
    assert result.score == 1.0 and result.correct and result.error is None


@pytest.mark.parametrize(("agent", "score", "breakdown", "correct"), [
    ("returns_reward", 0.25, {"agent": 0.25, "length": len("\\boxed{1234567}")}, True),
    ("returns_number", 0.5, {"agent": 0.5}, True),
    ("remote", 0.75, {"agent": 0.75}, True),
])
def test_the_agents_reward_replaces_the_rubric(tok, agent, score, breakdown, correct):
    ((ep, result),) = scored(tok, agent, Scripted(tok, ["\\boxed{1234567}"]))
    assert (result.score, result.breakdown, result.correct, result.error) == (score, breakdown, correct, None)
    assert ep.turns == 1 and ep.response == "\\boxed{1234567}"


def test_segments_of_one_episode_share_its_reward_and_advantage_slot(tok):
    from temper.rollout.types import Sample

    pairs = scored(tok, "rewrites_history", Scripted(tok, ["\\boxed{20126}", "\\boxed{20126}"] * 2), n=2)
    assert [(e.episode, e.info["segment"], e.info["segments"]) for e, _ in pairs] == [
        (0, 0, 2), (0, 1, 2), (1, 0, 2), (1, 1, 2)]
    assert [r.score for _, r in pairs] == [1.0] * 4
    samples = [Sample.from_episode(e, r, id=f"g-s{j}", group_id="g", label="20126", metadata={})
               for j, (e, r) in enumerate(pairs)]
    group = Group("g", tuple(samples))
    assert group.episodes == [0, 0, 1, 1] and group.rewards == [1.0, 1.0]
    from temper.rollout.types import episode_metrics
    metrics = episode_metrics(samples)
    assert metrics["rollout/segments_per_episode"] == 2.0
    assert metrics["rollout/turns_mean"] == sum(e.turns for e, _ in pairs) / 2  # per episode, not per segment


def test_auxiliary_calls_are_answered_and_not_trained_on(tok):
    sample = Scripted(tok, ["A title", "\\boxed{20126}"])
    ((ep, result),) = scored(tok, "with_auxiliary", sample)
    assert len(sample.prompts) == 2 and ep.turns == 1 and ep.info["auxiliary_calls"] == 1
    assert "title" not in tok.decode(list(ep.prompt_token_ids)) and result.score == 1.0


@pytest.mark.parametrize(("agent", "params", "reason"), [
    ("raises", {}, "agent_error: RuntimeError: the agent's own bug"),
    ("hangs", {"episode_timeout_s": 0.3}, "episode_timeout: the agent ran past episode_timeout_s = 0.3"),
    ("no_call", {}, "no_call: the agent made no recorded call"),
    ("too_many_calls", {"max_calls": 2}, "max_calls: the episode's 2 calls are spent"),
    ("malformed", {}, "bad_request: top_logprobs: only 0 is supported"),
    ("bad_return", {}, "bad_return: the returned reward must be a finite number, not 'yes'"),
    ("tool_loop", {"max_completion_tokens": 4}, "max_completion_tokens: a reply was cut at the episode's budget"),
])
def test_every_fault_scores_zero_with_its_reason_and_the_group_goes_on(tok, agent, params, reason):
    from temper.env_cli import Replies

    pairs = scored(tok, agent, Replies(tok, ["\\boxed{20126}"] * 8), n=2, **params)
    assert len({e.episode for e, _ in pairs}) == 2  # both episodes came back
    for ep, result in pairs:
        assert result.score == 0.0 and result.error.startswith(reason), result.error
        assert ep.stop_reason == reason.split(":")[0] and ep.info["agent_error"] == result.error


def test_an_agent_that_is_not_an_async_function_or_cannot_be_imported_fails_at_start(tok):
    for agent, message in (("not_async", "is not an async function"), ("missing", "AttributeError")):
        cfg = cfg_for(agent)
        with pytest.raises(ValueError, match=message):
            AgentEnvironment(AgentEnvironment.Params.model_validate(cfg.environment.params), tok, "prompt", None)


def test_a_cancelled_episode_cancels_its_agent_and_its_calls(tok):
    """A worker stopping mid-episode: the group's task is cancelled, and with it the agent and the call it
    was waiting on; the session is gone."""
    cfg = cfg_for("tool_loop")
    env = AgentEnvironment(AgentEnvironment.Params.model_validate(cfg.environment.params), tok, "prompt", None)
    cancelled = []

    async def go():
        started = asyncio.Event()

        async def generate(prompt_ids, n, max_tokens=None, **kwargs):
            started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append("call")
                raise

        task = asyncio.create_task(env.run_group(ROW, generate, 1))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        endpoint = await env.endpoint()
        await asyncio.sleep(0.05)
        assert endpoint._sessions == {}
        await env.aclose()

    asyncio.run(go())
    assert cancelled == ["call"]


def test_a_dead_engine_fails_the_group_instead_of_scoring_it(tok):
    """Generation that fails (not a refused request) is the worker's problem: the group raises, so the worker
    issues it again (rollout/worker.py), rather than training on a zero the agent did not earn."""

    async def dead(prompt_ids, n, max_tokens=None, **kwargs):
        raise RuntimeError("EngineDeadError: the engine core died")

    with pytest.raises(RuntimeError, match="the engine core died"):
        scored(tok, "tool_loop", dead)

"""Row -> scored group (rollout/groups.py) with scripted replies standing in for the engine: the max_tokens
cap, what the verifiers see (label, metadata without prompt and label), the turn rewards, the sample ids.
The same owner runs with a real vLLM engine in tests/test_algorithm_recipes.py and under the worker in
test_worker.py."""

import asyncio

import pytest

from temper.configs.schema import RunConfig
from temper.environments.base import Environment, Episode
from temper.environments.single_turn import SingleTurnEnvironment
from temper.rewards.base import Verifier, VerifyResult
from temper.rewards.rubric import Rubric
from temper.rollout.engine import Completion
from temper.rollout.groups import GroupRunner, make_environment

SEEN = []  # the requests the verifier below was given, in this process (the rubric runs with processes=0)


class EchoLabel(Verifier):
    """1.0 when the response equals the label; records what it saw."""

    def verify(self, request):
        SEEN.append(request)
        return VerifyResult(float(request.response == str(request.label)), {"metadata": dict(request.metadata)})


class Scripted:
    """Replies in order, one completion per call, and records each call's max_tokens."""

    def __init__(self, replies):
        self.replies, self.max_tokens = list(replies), []

    async def __call__(self, prompt_ids, n, max_tokens=None):
        self.max_tokens.append(max_tokens)
        text = self.replies.pop(0)
        ids = tuple(range(len(text)))
        return [Completion(ids, (-0.5,) * len(ids), text, "stop", (7,) * len(ids))]


class TwoTurns(Environment):
    """Per episode: a turn with no budget of its own, then one asking for 3 tokens and one for 100; the last
    reply is the response. Gives turn rewards 1 and 0.5."""

    async def run_group(self, row, generate, n):
        episodes = []
        for _ in range(n):
            await generate([1, 2], 1)
            await generate([1, 2], 1, max_tokens=3)
            (last,) = await generate([1, 2], 1, max_tokens=100)
            episodes.append(Episode(
                prompt=row[self.prompt_key], prompt_token_ids=(1, 2), completion_token_ids=last.token_ids,
                logprobs=last.logprobs, loss_mask=(1,) * len(last.token_ids), response=last.text,
                versions=last.versions, stop_reason="stop", token_versions=last.token_versions,
                turn_rewards=(1.0, 0.5), turns=3,
            ))
        return episodes


def make_cfg(environment="single_turn"):
    return RunConfig.model_validate({
        "model": {"path": "unused"}, "data": {"train": "unused.jsonl", "prompt_key": "question", "label_key": "answer"},
        "environment": {"name": environment},
        "rollout": {"sampling": {"max_tokens": 8}},
        "rewards": {"turn_reward_weight": 0.5, "terms": [{"verifier": f"{__name__}:EchoLabel", "name": "echo"}]},
    })


def test_a_row_becomes_a_scored_group():
    cfg = make_cfg()
    row = {"question": "What is 6 * 7?", "answer": "42", "id": "r1", "source": "hand"}
    replies = Scripted(["x", "x", "41", "x", "x", "42"])
    SEEN.clear()
    with Rubric(cfg.rewards, processes=0) as rubric:
        runner = GroupRunner(cfg, TwoTurns(TwoTurns.Params(), None, "question", None), rubric)
        group = asyncio.run(runner.run(row, replies, 2, "g7"))
    # the run's max_tokens is 8: an unset budget gets 8, 3 stays 3, 100 is capped to 8
    assert replies.max_tokens == [8, 3, 8] * 2
    # the verifier saw the label, and the row's other fields as metadata
    assert [r.label for r in SEEN] == ["42", "42"]
    assert all(r.metadata == {"id": "r1", "source": "hand"} and r.prompt == "What is 6 * 7?" for r in SEEN)
    assert group.group_id == "g7" and [s.id for s in group.samples] == ["g7-s0", "g7-s1"]
    # echo 0 or 1, plus turn rewards (1 + 0.5) * weight 0.5 = 0.75; correct is the echo term's call alone
    assert [s.reward for s in group.samples] == [0.75, 1.75]
    assert [s.correct for s in group.samples] == [False, True]
    first = group.samples[0]
    assert first.breakdown == {"echo": 0.0, "echo/metadata": {"id": "r1", "source": "hand"}, "env": 1.5,
                               "env/turns": [1.0, 0.5]}
    assert first.label == "42" and first.metadata == {"id": "r1", "source": "hand"} and first.group_id == "g7"
    assert first.response == "41" and first.versions == (7, 7) and first.turns == 3 and first.error is None


def test_scored_gives_the_episode_and_its_verdict():
    """What `temper env try` shows: the episode as the environment made it, and the full verdict."""
    cfg = make_cfg()
    with Rubric(cfg.rewards, processes=0) as rubric:
        runner = GroupRunner(cfg, TwoTurns(TwoTurns.Params(), None, "question", None), rubric)
        scored = runner.scored({"question": "q", "answer": "ok"}, Scripted(["", "", "ok"]), 1)
        ((episode, result),) = asyncio.run(scored)
    assert type(episode) is Episode and episode.response == "ok"
    assert result.score == 1.75 and result.correct is True and result.seconds >= 0


def test_make_environment_builds_the_runs_environment():
    cfg = make_cfg()
    env = make_environment(cfg, tokenizer="tok")
    assert isinstance(env, SingleTurnEnvironment)
    max_len = cfg.rollout.engine.max_model_len
    assert (env.tokenizer, env.prompt_key, env.max_model_len) == ("tok", "question", max_len)
    with pytest.raises(ValueError, match="unknown environment 'nope'"):
        make_environment(make_cfg("nope"), tokenizer=None)

"""Sample extends the environment's Episode: rollouts.jsonl keeps its keys, and lines written before that
change still load (`temper rewards replay` and resume read them)."""

import json
from dataclasses import fields

import pytest

from temper.environments.base import Episode
from temper.rollout.types import Sample, json_default

# A line as the Sample of commit 778c25a (its own 24 fields, declared apart from Episode) wrote it.
OLD_LINE = (
    '{"id": "g3-s1", "group_id": "g3", "prompt": [{"role": "user", "content": "2+2?"}], "response": "\\\\boxed{4}", '
    '"label": "4", "prompt_token_ids": [1, 2, 3], "completion_token_ids": [10, 11, 12, 13], '
    '"logprobs": [-0.5, 0.0, -0.25, -1.0], "loss_mask": [1, 0, 1, 1], "versions": [2, 3], "reward": 1.5, '
    '"correct": true, "breakdown": {"math": 1.0, "env": 1.0, "env/turns": [1.0]}, "error": null, '
    '"stop_reason": "stop", "metadata": {"id": "row-9"}, "messages": [{"role": "user", "content": "2+2?"}, '
    '{"role": "assistant", "content": "\\\\boxed{4}"}], "token_versions": [2, -1, 3, 3], '
    '"spans": [{"role": "assistant", "start": 0, "end": 1}, {"role": "env", "start": 1, "end": 2}, '
    '{"role": "assistant", "start": 2, "end": 4}], "turn_rewards": [1.0], "info": {"calls": 1}, "turns": 2, '
    '"tool_calls": 1, "tool_errors": {"invalid_json": 1}}'
)
OLD_KEYS = {
    "id", "group_id", "prompt", "response", "label", "prompt_token_ids", "completion_token_ids", "logprobs",
    "loss_mask", "versions", "reward", "correct", "breakdown", "error", "stop_reason", "metadata", "messages",
    "token_versions", "spans", "turn_rewards", "info", "turns", "tool_calls", "tool_errors",
}


def test_an_old_line_loads_and_writes_back_the_same_keys_and_values():
    old = json.loads(OLD_LINE)
    sample = Sample.from_json(old)
    assert isinstance(sample, Episode)
    assert sample.completion_token_ids == (10, 11, 12, 13) and sample.versions == (2, 3)
    assert sample.spans[1] == {"role": "env", "start": 1, "end": 2} and sample.turn_rewards == (1.0,)
    written = json.loads(json.dumps(sample.to_json(), default=json_default))
    assert written == {**old, "episode": None}  # one key added since: which episode of its group it belongs to
    assert list(written)[:2] == ["id", "group_id"]  # a line still opens with its ids


def test_a_sample_adds_to_its_episode_and_redeclares_none_of_it():
    episode_names = {f.name for f in fields(Episode)}
    own = {f.name for f in fields(Sample)} - episode_names
    assert own == {"id", "group_id", "label", "metadata", "reward", "correct", "breakdown", "error"}
    assert episode_names | own == OLD_KEYS | {"episode", "verdict"}  # verdict: the environment's, not written


def test_per_token_fields_must_align():
    with pytest.raises(AssertionError, match="per-token fields must align"):
        Episode(prompt="p", prompt_token_ids=(1,), completion_token_ids=(1, 2), logprobs=(0.0,), loss_mask=(1, 1),
                response="", versions=(0, 0))

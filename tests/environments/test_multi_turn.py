"""Multi-turn tool episodes against scripted replies (no engine): token-exact trajectories under two chat
templates, both `history` settings (the same tokens where the template keeps history; one sample as sampled,
template_mismatch as the template renders, where it rewrites), budgets and stop reasons, malformed calls,
teardown. The real-engine episode is in tests/rollout/test_multi_turn_engine.py; the native env against the
agent endpoint's sessions under Qwen3-style templates in tests/environments/agent/test_sessions.py."""

import asyncio
import copy
import json
from typing import ClassVar

import pytest
from qwen3_style import build as build_qwen3

from temper.environments.multi_turn import MultiTurnEnvironment, StepResult
from temper.environments.tool_env import ToolEnvironment
from temper.environments.tools import tool
from temper.environments.trajectory import ENV_VERSION
from temper.rollout.engine import Completion

# A ChatML template in the style of Qwen2.5's, written for these tests: the tools' JSON schemas in the system
# turn, tool results grouped into one user turn inside <tool_response> tags.
QWEN_STYLE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "# Tools\n\nYou may call functions. Their signatures are within <tools></tools>:\n<tools>\n"
    "{% for t in tools %}{{ t | tojson }}\n{% endfor %}</tools>\n\n"
    "Call one as <tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>"
    "<|im_end|>\n"
    "{% elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}"
    "{% elif m['role'] == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}<|im_start|>user{% endif %}"
    "\n<tool_response>\n{{ m['content'] }}\n</tool_response>"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}<|im_end|>\n{% endif %}"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Drops the text of earlier assistant turns (as templates that strip old reasoning do): no prefix property.
REWRITES_HISTORY = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and not loop.last %}[earlier turn]{% else %}{{ m['content'] }}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Re-renders every assistant turn stripped of surrounding whitespace: a reply sampled with a trailing
# newline reads differently once it is history.
STRIPS_REPLIES = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' %}{{ m['content'].strip() }}{% else %}{{ m['content'] }}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ROW = {"prompt": "What is 347 * 58?", "label": "20126"}


def call(expression: str) -> str:
    return f'<tool_call>{json.dumps({"name": "calculator", "arguments": {"expression": expression}})}</tool_call>'


@pytest.fixture(scope="module")
def demo_tokenizer(tmp_path_factory):
    from temper.demos.calculator import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def with_template(tokenizer, template):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


@pytest.fixture(params=["demo", "qwen_style"])
def tokenizer(request, demo_tokenizer):
    return with_template(demo_tokenizer, QWEN_STYLE) if request.param == "qwen_style" else demo_tokenizer


class Scripted:
    """A stand-in engine that answers with scripted replies (each ends with EOS unless cut by max_tokens),
    recording every prompt and max_tokens it was given."""

    def __init__(self, tokenizer, replies, version=0):
        self.tok, self.replies, self.version = tokenizer, list(replies), version
        self.prompts, self.max_tokens = [], []

    async def __call__(self, prompt_ids, n, max_tokens=None):
        self.prompts.append(list(prompt_ids))
        self.max_tokens.append(max_tokens)
        ids = self.tok.encode(self.replies.pop(0), add_special_tokens=False) + [self.tok.eos_token_id]
        finish = "stop"
        if max_tokens is not None and len(ids) > max_tokens:
            ids, finish = ids[:max_tokens], "length"
        return [Completion(tuple(ids), tuple(-0.5 - i for i in range(len(ids))), "", finish,
                           (self.version,) * len(ids))]


def make_env(tokenizer, max_model_len=None, **params):
    return ToolEnvironment(ToolEnvironment.Params(**params), tokenizer, "prompt", None, max_model_len=max_model_len)


def episode(env, replies, version=0):
    engine = Scripted(env.tokenizer, replies, version)
    return asyncio.run(env.run_episode(ROW, engine)), engine


@pytest.mark.parametrize("history", ["as_sampled", "template"])
def test_episode_is_exact_to_the_token_under_both_templates(tokenizer, history):
    env = make_env(tokenizer, history=history)
    ep, engine = episode(env, [call("347 * 58"), "\\boxed{20126}"])
    assert (ep.stop_reason, ep.turns, ep.tool_calls, ep.tool_errors) == ("stop", 2, 1, {})
    assert ep.response == "\\boxed{20126}"
    assert [m["role"] for m in ep.messages] == ["user", "assistant", "tool", "assistant"]
    assert ep.messages[2]["content"] == "20126"  # the calculator's real answer
    n = len(ep.completion_token_ids)
    assert len(ep.logprobs) == len(ep.loss_mask) == len(ep.token_versions) == n
    assert [s["role"] for s in ep.spans] == ["assistant", "env", "assistant"] and ep.spans[-1]["end"] == n
    for s in ep.spans:
        mask = ep.loss_mask[s["start"] : s["end"]]
        versions = ep.token_versions[s["start"] : s["end"]]
        if s["role"] == "env":
            assert set(mask) == {0} and set(versions) == {ENV_VERSION}
            assert set(ep.logprobs[s["start"] : s["end"]]) == {0.0}
        else:
            assert set(mask) == {1} and set(versions) == {0}
    # Sampled tokens kept as sampled, log-probs included.
    first = tokenizer.encode(call("347 * 58"), add_special_tokens=False) + [tokenizer.eos_token_id]
    assert list(ep.completion_token_ids[: len(first)]) == first
    assert ep.logprobs[:3] == (-0.5, -1.5, -2.5)
    # The engine's second prompt is exactly the trajectory so far (no re-encoding between turns).
    assert engine.prompts[1] == list(ep.prompt_token_ids) + list(ep.completion_token_ids[: ep.spans[1]["end"]])
    # The chat template's rendering of the final messages is the trajectory, token for token, up to the
    # end-of-turn text it puts after the last sampled EOS.
    rendered = tokenizer.apply_chat_template(ep.messages, tools=[t.schema() for t in env.tools(ROW)],
                                             tokenize=False)
    ids = tokenizer.encode(rendered, add_special_tokens=False)
    trajectory = list(ep.prompt_token_ids) + list(ep.completion_token_ids)
    assert ids[: len(trajectory)] == trajectory
    assert tokenizer.decode(ids[len(trajectory) :]) == "\n"


def test_a_template_that_rewrites_history_is_reported_not_retokenized(demo_tokenizer):
    tok = with_template(demo_tokenizer, REWRITES_HISTORY)
    ep, _ = episode(make_env(tok, history="template"), [call("2 * 3"), "\\boxed{6}"])
    assert ep.stop_reason == "template_mismatch" and ep.turns == 1
    assert "[earlier turn]" in ep.info["template_mismatch"] and "at character" in ep.info["template_mismatch"]
    assert set(ep.loss_mask) == {1}  # what was sampled stays, exact and trainable
    # It hides even the stand-in's plain assistant turn, so no glue can be read off it as sampled either.
    ep, _ = episode(make_env(tok), [call("2 * 3"), "\\boxed{6}"])
    assert (ep.stop_reason, ep.turns) == ("template_mismatch", 1)
    assert "stand-in" in ep.info["template_mismatch"]


def test_a_template_that_re_renders_a_reply_ends_as_template_and_runs_on_as_sampled(demo_tokenizer):
    tok = with_template(demo_tokenizer, STRIPS_REPLIES)
    replies = [call("2 * 3") + "\n", "\\boxed{6}"]  # the first reply's newline is gone once it is history
    ep, _ = episode(make_env(tok, history="template"), replies)
    assert (ep.stop_reason, ep.turns) == ("template_mismatch", 1)
    assert "at character" in ep.info["template_mismatch"]
    ep, engine = episode(make_env(tok), replies)
    assert (ep.stop_reason, ep.turns, ep.response) == ("stop", 2, "\\boxed{6}")
    glue = ep.completion_token_ids[ep.spans[1]["start"] : ep.spans[1]["end"]]
    # After the sampled <|im_end|>: the template's newline, the tool's turn, the next assistant turn's start.
    assert tok.decode(glue) == "\n<|im_start|>tool\n6<|im_end|>\n<|im_start|>assistant\n"
    # The second turn was sampled after the first exactly as sampled, newline kept.
    assert engine.prompts[1] == [*ep.prompt_token_ids, *ep.completion_token_ids[: ep.spans[1]["end"]]]
    assert tok.decode(engine.prompts[1]).count(call("2 * 3") + "\n<|im_end|>") == 1


def test_malformed_calls_go_back_to_the_model_and_are_counted(tokenizer):
    env = make_env(tokenizer)
    bad = '<tool_call>{"name": "calculator", "arguments": {"expression": "2*3"</tool_call>'
    unknown = '<tool_call>{"name": "abacus", "arguments": {}}</tool_call>'
    ep, _ = episode(env, [bad, unknown, call("2 * 3"), "\\boxed{6}"])
    assert ep.messages[2]["content"].startswith("error: invalid_json")
    assert "unknown tool 'abacus'" in ep.messages[4]["content"]
    assert ep.messages[6]["content"] == "6"
    assert ep.tool_errors == {"invalid_json": 1, "unknown_tool": 1} and ep.tool_calls == 3
    assert ep.stop_reason == "stop" and ep.turns == 4


def test_on_error_end_stops_the_episode_with_the_kind(tokenizer):
    ep, _ = episode(make_env(tokenizer, on_error="end"), ["<tool_call>{oops}</tool_call>"])
    assert ep.stop_reason == "tool_invalid_json" and ep.turns == 1 and ep.tool_errors == {"invalid_json": 1}


def test_max_turns_and_max_tool_calls(tokenizer):
    ep, _ = episode(make_env(tokenizer, max_turns=2), [call("1 + 1"), call("2 + 2")])
    assert ep.stop_reason == "max_turns" and ep.turns == 2
    assert ep.spans[-1]["role"] == "assistant"  # no observations after the last turn
    ep, _ = episode(make_env(tokenizer, max_tool_calls=1), [call("1 + 1"), call("2 + 2")])
    assert ep.stop_reason == "max_tool_calls" and ep.tool_calls == 1 and ep.turns == 2


def test_each_turn_is_clamped_to_the_completion_budget(tokenizer):
    env = make_env(tokenizer, max_completion_tokens=200)
    ep, engine = episode(env, [call("347 * 58"), "\\boxed{20126} and a long tail " * 10])
    used = ep.spans[1]["end"]  # first turn + glue
    assert engine.max_tokens == [200, 200 - used]
    assert ep.stop_reason == "max_completion_tokens" and len(ep.completion_token_ids) == 200


def test_each_turn_is_clamped_to_the_context_and_an_exact_fit_stops(tokenizer):
    env = make_env(tokenizer)
    ep, _ = episode(env, [call("347 * 58"), "\\boxed{20126}"])
    total = len(ep.prompt_token_ids) + len(ep.completion_token_ids)
    # A context that holds exactly the first turn and its tool result: no room for a reply.
    first_two = len(ep.prompt_token_ids) + ep.spans[1]["end"]
    env = make_env(tokenizer, max_model_len=first_two)
    ep2, engine = episode(env, [call("347 * 58"), "\\boxed{20126}"])
    assert engine.max_tokens == [first_two - len(ep.prompt_token_ids)]
    assert ep2.stop_reason == "context_full" and ep2.turns == 1 and ep2.spans[-1]["role"] == "assistant"
    env = make_env(tokenizer, max_model_len=total)  # exactly enough
    ep3, engine = episode(env, [call("347 * 58"), "\\boxed{20126}"])
    assert ep3.stop_reason == "stop" and engine.max_tokens[-1] == total - first_two


@tool
def shout(text: str) -> str:
    """Repeat the text many times."""
    return text * 200


class Shouting(ToolEnvironment):
    """A tool environment as a plugin writes one: its own tools."""

    def tools(self, row):
        return [shout]


def test_tool_output_is_truncated_in_tokens(tokenizer):
    env = Shouting(Shouting.Params(tool_output_tokens=10), tokenizer, "prompt", None)
    reply = '<tool_call>{"name": "shout", "arguments": {"text": "ab"}}</tool_call>'
    ep, _ = episode(env, [reply, "done"])
    content = ep.messages[2]["content"]
    assert content == "ababababab\n[truncated: 390 more tokens]"


class Leasing(MultiTurnEnvironment):
    """Takes a resource in setup and must give it back whatever happens."""

    held: ClassVar[set[int]] = set()

    async def setup(self, row):
        start = await super().setup(row)
        start.state = len(Leasing.held) + 1
        Leasing.held.add(start.state)
        return start

    async def step(self, state, messages, reply):
        if "crash" in reply:
            raise RuntimeError("environment bug")
        if "hang" in reply:
            await asyncio.sleep(60)
        return StepResult([{"role": "user", "content": "go on"}])

    async def teardown(self, state):
        Leasing.held.discard(state)


def test_teardown_runs_after_a_failure_and_after_a_cancellation(demo_tokenizer):
    env = Leasing(Leasing.Params(), demo_tokenizer, "prompt", None)
    with pytest.raises(RuntimeError, match="environment bug"):
        episode(env, ["fine", "crash"])
    assert Leasing.held == set()

    async def cancel_midway():
        task = asyncio.create_task(env.run_episode(ROW, Scripted(demo_tokenizer, ["hang"])))
        await asyncio.sleep(0.2)
        assert Leasing.held  # inside the episode
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    assert Leasing.held == set()


def test_episode_wall_clock_limit(demo_tokenizer):
    env = Leasing(Leasing.Params(episode_timeout_s=0.3), demo_tokenizer, "prompt", None)
    ep, _ = episode(env, ["hang"])
    assert ep.stop_reason == "episode_timeout" and ep.turns == 1 and Leasing.held == set()


def test_a_turn_cut_at_sampling_max_tokens_ends_the_episode_unless_asked_to_continue(demo_tokenizer):
    env = Leasing(Leasing.Params(max_turns=2), demo_tokenizer, "prompt", None)
    ep = asyncio.run(env.run_episode(ROW, Cut(demo_tokenizer, ["a long first reply", "a long second reply"])))
    assert (ep.stop_reason, ep.turns) == ("length", 1)
    env = Leasing(Leasing.Params(max_turns=2, truncated_turns="continue"), demo_tokenizer, "prompt", None)
    ep = asyncio.run(env.run_episode(ROW, Cut(demo_tokenizer, ["a long first reply", "a long second reply"])))
    assert (ep.stop_reason, ep.turns) == ("max_turns", 2) and ep.messages[1]["content"] == "a lon"


class Cut(Scripted):
    """Every reply cut at 5 tokens, as sampling.max_tokens = 5 would (no EOS at the end of a turn)."""

    async def __call__(self, prompt_ids, n, max_tokens=None):
        return await super().__call__(prompt_ids, n, 5)


@pytest.fixture(scope="module")
def qwen3_tokenizer(tmp_path_factory):
    return build_qwen3(tmp_path_factory.mktemp("qwen3"))


@pytest.mark.parametrize("name", ["demo", "qwen_style", "qwen3_style"])
def test_both_histories_are_the_same_tokens_where_the_template_keeps_history(demo_tokenizer, qwen3_tokenizer,
                                                                             name):
    tok = {"demo": demo_tokenizer, "qwen_style": with_template(demo_tokenizer, QWEN_STYLE),
           "qwen3_style": qwen3_tokenizer}[name]
    bad = '<tool_call>{"name": "calculator"</tool_call>'
    cases = [  # tool results after sampled EOS, user turns after sampled EOS, user turns after cut turns
        (lambda h: make_env(tok, history=h), Scripted, [bad, call("347 * 58"), "\\boxed{20126}"]),
        (lambda h: Leasing(Leasing.Params(max_turns=3, history=h), tok, "prompt", None), Scripted,
         ["fine", "still fine", "done"]),
        (lambda h: Leasing(Leasing.Params(max_turns=3, truncated_turns="continue", history=h), tok, "prompt",
                           None), Cut, ["a long first reply", "a long second reply", "a long third reply"]),
    ]
    for make, engine, replies in cases:
        as_sampled, template = (asyncio.run(make(h).run_episode(ROW, engine(tok, replies)))
                                for h in ("as_sampled", "template"))
        assert as_sampled.turns == 3 and as_sampled.spans[1]["role"] == "env"
        for f in ("prompt_token_ids", "completion_token_ids", "logprobs", "loss_mask", "token_versions",
                  "spans", "stop_reason", "turns", "messages"):
            assert getattr(as_sampled, f) == getattr(template, f), (replies[0], f)

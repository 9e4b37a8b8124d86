"""The endpoint over real HTTP with the real `openai` client: against scripted replies (fast), and against the
real demo model in the session's vLLM engine (slow), where the recorded tokens must be what the engine
sampled, with its log-probs and versions."""

import asyncio
import json

import httpx
import openai
import pytest
from agent_chat import Scripted, build_demo_tokenizer, call_text

from temper.environments.agent.server import AUXILIARY_HEADER, AgentEndpoint
from temper.environments.calculator import calculator

SECRET = "s3cret-of-the-run"
TOOLS = [calculator.schema()]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_demo_tokenizer(tmp_path_factory.mktemp("demo-tok"))


async def serve(tokenizer, generate, body):
    endpoint = AgentEndpoint(tokenizer, SECRET)
    await endpoint.start()
    try:
        return await body(endpoint, endpoint.open(generate))
    finally:
        await endpoint.close()


def test_chat_streaming_and_a_tool_round_trip_through_the_openai_client(tok):
    sample = Scripted(tok, [call_text("347 * 58"), "\\boxed{20126}", "\\boxed{20126}", "A title"])

    async def body(endpoint, handle):
        client = openai.AsyncOpenAI(base_url=handle.base_url, api_key=SECRET, max_retries=0)
        messages = [{"role": "user", "content": "What is 347 * 58?"}]
        first = await client.chat.completions.create(model="any", messages=messages, tools=TOOLS, logprobs=True)
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        assert (call.function.name, json.loads(call.function.arguments)) == ("calculator", {"expression": "347 * 58"})
        n_sampled = len(tok.encode(call_text("347 * 58"), add_special_tokens=False)) + 1
        assert first.usage.completion_tokens == n_sampled
        assert [x.logprob for x in choice.logprobs.content] == [-0.5 - i for i in range(n_sampled - 1)]
        messages += [choice.message.model_dump(), {"role": "tool", "tool_call_id": call.id, "content": "20126"}]
        stream = await client.chat.completions.create(model="any", messages=messages, tools=TOOLS, stream=True,
                                                      stream_options={"include_usage": True})
        parts = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
        assert text == "\\boxed{20126}" and parts[-1].usage.completion_tokens == len("\\boxed{20126}") + 1
        assert [c.choices[0].finish_reason for c in parts if c.choices][-1] == "stop"
        # The same request again (a retry): the same answer, nothing sampled.
        again = await client.chat.completions.create(model="any", messages=messages, tools=TOOLS)
        assert again.choices[0].message.content == "\\boxed{20126}" and len(sample.prompts) == 2
        # A follow-up that asks for different settings is a new call; an auxiliary one is not recorded.
        await client.chat.completions.create(model="any", messages=messages, tools=TOOLS, max_tokens=20)
        title = await client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Title?"}],
                                                     extra_headers={AUXILIARY_HEADER: "1"}, temperature=0.3)
        assert title.choices[0].message.content == "A title"
        # Recorded calls sample from the run's distribution; the auxiliary one as it asked.
        assert sample.sampling == [None, None, None, {"temperature": 0.3}]
        models = await client.models.list()
        assert [m.id for m in models.data] == ["temper-policy"]
        return endpoint.end(handle.sid)

    session = asyncio.run(serve(tok, sample, body))
    main, branch = session.episodes()
    assert main.turns == 2 and main.tool_calls == 1 and branch.turns == 1
    assert (session.calls, session.retries, session.auxiliary_calls) == (3, 1, 1)


def test_errors_are_openai_style(tok):
    async def body(endpoint, handle):
        good = openai.AsyncOpenAI(base_url=handle.base_url, api_key=SECRET, max_retries=0)
        wrong = openai.AsyncOpenAI(base_url=handle.base_url, api_key="guess", max_retries=0)
        unknown = openai.AsyncOpenAI(base_url=f"{endpoint.url}/sessions/nope/v1", api_key=SECRET, max_retries=0)
        messages = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.AuthenticationError):
            await wrong.chat.completions.create(model="m", messages=messages)
        with pytest.raises(openai.NotFoundError):
            await unknown.chat.completions.create(model="m", messages=messages)
        with pytest.raises(openai.BadRequestError) as e:
            await good.chat.completions.create(model="m", messages=messages, logprobs=True, top_logprobs=2)
        assert e.value.body["param"] == "top_logprobs"
        with pytest.raises(openai.BadRequestError) as e:
            await good.chat.completions.create(model="m", messages=messages, response_format={"type": "json_object"})
        assert e.value.body["param"] == "response_format"
        async with httpx.AsyncClient() as raw:
            bad = await raw.post(f"{handle.base_url}/chat/completions", content=b"{not json",
                                 headers={"Authorization": f"Bearer {SECRET}"})
            assert bad.status_code == 400 and "not JSON" in bad.json()["error"]["message"]
            no_key = await raw.get(f"{endpoint.url}/sessions/nope/v1/models")
            assert no_key.status_code == 401  # the secret is checked before anything is looked up
        endpoint.fail(handle.sid)
        with pytest.raises(openai.InternalServerError) as e:
            await good.chat.completions.create(model="m", messages=messages)
        assert e.value.status_code == 503
        endpoint.end(handle.sid)
        with pytest.raises(openai.NotFoundError):
            await good.chat.completions.create(model="m", messages=messages)

    asyncio.run(serve(tok, Scripted(tok, []), body))


@pytest.mark.slow
def test_the_real_engine_behind_the_real_client(shared_engine):
    """Non-streaming, streaming and a tool round trip against the demo model; 401 and 404; the segment's
    tokens are the engine's, with its log-probs and versions."""
    engine = shared_engine
    sampled = []

    async def generate(prompt_ids, n, max_tokens=None, sampling=None):
        out = await engine.generate(prompt_ids, n, max_tokens=max_tokens, sampling=sampling)
        sampled.append(out)
        return out

    endpoint = AgentEndpoint(engine.tokenizer, SECRET)
    engine.run(endpoint.start())
    handle = endpoint.open(generate)

    async def agent():
        client = openai.AsyncOpenAI(base_url=handle.base_url, api_key=SECRET, max_retries=0)
        messages = [{"role": "user", "content": "What is 12 + 34?"}]
        first = await client.chat.completions.create(model="m", messages=messages, max_tokens=6, seed=1)
        messages.append(first.choices[0].message.model_dump())
        messages.append({"role": "tool", "tool_call_id": "call_x", "content": "46"})  # a tool's answer
        stream = await client.chat.completions.create(model="m", messages=messages, max_tokens=6, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        messages.append({"role": "assistant", "content": text})
        for key, base, error in ((("guess", handle.base_url, openai.AuthenticationError)),
                                 (SECRET, f"{endpoint.url}/sessions/gone/v1", openai.NotFoundError)):
            with pytest.raises(error):
                await openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0).chat.completions.create(
                    model="m", messages=messages)
        return messages

    try:
        messages = asyncio.run(agent())
        session = endpoint.end(handle.sid)
    finally:
        engine.run(endpoint.close())
    (ep,) = session.episodes()  # the stream's text was sent back as it came: still one segment
    (first,), (second,) = sampled
    assert [s["role"] for s in ep.spans] == ["assistant", "env", "assistant"] and ep.turns == 2
    a, g, b = ep.spans
    assert ep.completion_token_ids[a["start"] : a["end"]] == first.token_ids
    assert ep.completion_token_ids[b["start"] : b["end"]] == second.token_ids
    assert ep.logprobs[a["start"] : a["end"]] == first.logprobs and ep.logprobs[b["start"] : b["end"]] == second.logprobs
    assert ep.token_versions == (*first.token_versions, *[-1] * (g["end"] - g["start"]), *second.token_versions)
    assert ep.loss_mask == (*[1] * len(first.token_ids), *[0] * (g["end"] - g["start"]), *[1] * len(second.token_ids))
    assert all(lp < 0 for lp in first.logprobs + second.logprobs) and set(first.token_versions) == {engine.version}
    assert messages[1]["content"] == engine.tokenizer.decode(
        [t for t in first.token_ids if t != engine.tokenizer.eos_token_id], skip_special_tokens=False)

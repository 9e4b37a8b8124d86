"""Agents the agent-environment tests run, written as users write them: against the `openai` client only."""

import asyncio
import json

import httpx
import openai

from temper.environments.calculator import calculator

TOOLS = [calculator.schema()]


async def tool_loop(client, row):
    """Call, run the calculator calls it asked for, call again, until it answers; the rubric scores it."""
    messages = [{"role": "user", "content": row["prompt"]}]
    for _ in range(4):
        reply = (await client.chat.completions.create(model="policy", messages=messages, tools=TOOLS)).choices[0]
        messages.append(reply.message.model_dump(exclude_none=True))
        if not reply.message.tool_calls:
            return
        for call in reply.message.tool_calls:
            content = await calculator.run(json.loads(call.function.arguments))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
    return


async def returns_reward(client, row):
    reply = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": row["prompt"]}])
    return {"reward": 0.25, "correct": True, "length": len(reply.choices[0].message.content)}


async def returns_number(client, row):
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": row["prompt"]}])
    return 0.5


async def rewrites_history(client, row):
    """Two calls where the second does not extend the first: two segments, one episode."""
    first = [{"role": "user", "content": row["prompt"]}]
    reply = await client.chat.completions.create(model="m", messages=first)
    await client.chat.completions.create(model="m", messages=[
        {"role": "system", "content": "Be brief."}, *first, reply.choices[0].message.model_dump(exclude_none=True),
        {"role": "user", "content": "Sure?"}])


async def with_auxiliary(client, row):
    """A title through the auxiliary header (not recorded), then the recorded call."""
    aux = client.with_options(default_headers={"X-Temper-Auxiliary": "1"})
    await aux.chat.completions.create(model="m", messages=[{"role": "user", "content": "A title, please"}])
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": row["prompt"]}])


async def remote(client, row):
    """What an agent in another process does with the session's URL and key: call, then end with a reward."""
    base, key = str(client.base_url).rstrip("/"), client.api_key
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as http:
        r = await http.post(f"{base}/chat/completions",
                            json={"model": "m", "messages": [{"role": "user", "content": row["prompt"]}]})
        r.raise_for_status()
        (await http.post(f"{base}/temper/end", json={"reward": 0.75})).raise_for_status()
        after = await http.post(f"{base}/chat/completions", json={"model": "m", "messages": [{"role": "user",
                                                                                            "content": "again"}]})
        assert after.status_code == 404, after.status_code


async def raises(client, row):
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": row["prompt"]}])
    raise RuntimeError("the agent's own bug")


async def hangs(client, row):
    await asyncio.sleep(3600)


async def no_call(client, row):
    return None


async def too_many_calls(client, row):
    for i in range(3):
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"{i}"}])


async def malformed(client, row):
    """Asks for what the endpoint cannot serve (top_logprobs), catches the 400, and goes on."""
    messages = [{"role": "user", "content": row["prompt"]}]
    try:
        await client.chat.completions.create(model="m", messages=messages, logprobs=True, top_logprobs=3)
    except openai.BadRequestError as e:  # the agent carries on, as agents do
        print(f"refused: {e}")
    await client.chat.completions.create(model="m", messages=messages)


async def bad_return(client, row):
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": row["prompt"]}])
    return "yes"


def not_async(client, row):
    return 1.0

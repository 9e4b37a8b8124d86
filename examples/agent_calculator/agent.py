"""The tool demo's task, solved by an agent that knows nothing of temper: the `openai` client and its own
tool loop. temper trains it unchanged (configs/agent_demo.toml): `run` gets a client whose every call the
policy answers, and returns None, so the run's math verifier scores the last answer.
"""

import ast
import json
import operator

from openai import AsyncOpenAI

TOOLS = [{"type": "function", "function": {
    "name": "calculator",
    "description": "Evaluate an arithmetic expression, e.g. \"347 * 58\".",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
}}]
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def calculate(expression: str) -> str:
    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError("only whole numbers and + - * //")

    try:
        return str(value(ast.parse(expression, mode="eval").body))
    except (SyntaxError, ValueError, ZeroDivisionError) as e:
        return f"error: {e}"


async def run(client: AsyncOpenAI, row: dict) -> None:
    messages = [{"role": "user", "content": row["prompt"]}]
    for _ in range(3):
        reply = (await client.chat.completions.create(model="policy", messages=messages, tools=TOOLS,
                                                      max_tokens=72)).choices[0].message
        messages.append(reply.model_dump(exclude_none=True))
        if not reply.tool_calls:
            return  # the final answer: the run's verifier scores it
        for call in reply.tool_calls:
            try:
                result = calculate(json.loads(call.function.arguments)["expression"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                result = f"error: {e!r}"
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return

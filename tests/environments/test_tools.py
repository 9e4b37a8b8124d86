"""Tools, the Hermes parser and the calculator: every kind of malformed call is an answer, never a crash."""

import asyncio
import json

import pytest
from pydantic import BaseModel, ConfigDict

from temper.environments.calculator import CalculatorError, calculator, evaluate
from temper.environments.tools import HermesParser, Tool, ToolCall, build_parser, run_calls, tool


def parse(text):
    return HermesParser().parse(text)


def test_hermes_parser_well_formed_calls():
    text = ('thinking <tool_call>{"name": "calculator", "arguments": {"expression": "2 * 3"}}</tool_call>'
            '<tool_call>\n{"name": "python", "arguments": "{\\"code\\": \\"print(1)\\"}"}\n</tool_call>')
    assert parse(text) == [ToolCall("calculator", {"expression": "2 * 3"}), ToolCall("python", {"code": "print(1)"})]
    assert parse("no call here, \\boxed{6}") == []
    assert parse('<tool_call>{"name": "f"}</tool_call>') == [ToolCall("f", {})]  # no arguments: empty


@pytest.mark.parametrize(("text", "kind"), [
    ('<tool_call>{"name": "calculator", "arguments": {"expression": "2*3"</tool_call>', "invalid_json"),
    ("<tool_call>calculator(2*3)</tool_call>", "invalid_json"),
    ('<tool_call>{"name": "calculator", "arguments": {}}', "invalid_json"),  # never closed
    ('<tool_call>{"arguments": {"expression": "1"}}</tool_call>', "missing_name"),
    ('<tool_call>["calculator"]</tool_call>', "missing_name"),
    ('<tool_call>{"name": "", "arguments": {}}</tool_call>', "missing_name"),
    ('<tool_call>{"name": "calculator", "arguments": [1, 2]}</tool_call>', "bad_arguments"),
    ('<tool_call>{"name": "calculator", "arguments": "not json"}</tool_call>', "bad_arguments"),
])
def test_hermes_parser_malformed_calls(text, kind):
    (call,) = parse(text)
    assert call.error == kind and call.detail


def test_a_closing_tag_inside_a_json_string_belongs_to_the_string():
    code = "s = '<tool_call>{}</tool_call>'\nprint(s.split('</tool_call>')[0])"
    text = (f'<tool_call>{json.dumps({"name": "python", "arguments": {"code": code}})}</tool_call> and '
            '<tool_call>{"name": "f", "arguments": {"tag": "</tool_call>"}}</tool_call>')
    assert parse(text) == [ToolCall("python", {"code": code}), ToolCall("f", {"tag": "</tool_call>"})]


@pytest.mark.parametrize("space", ["", " ", "\n", "\r\n", "\t \n  ", "\n\n\n", "\u3000", "\u00a0\n"])
def test_calls_split_across_odd_whitespace(space):
    body = '{"name": "calculator",\n\t"arguments" :  {\r\n "expression": "2 * 3"}\n}'
    text = f"{space}<tool_call>{space}{body}{space}</tool_call>{space}<tool_call>{space}{body}{space}</tool_call>"
    assert parse(text) == [ToolCall("calculator", {"expression": "2 * 3"})] * 2


@pytest.mark.parametrize(("text", "detail"), [
    ('<tool_call>{"name": "f"} trailing</tool_call>', "expected </tool_call> after the JSON value"),
    ('<tool_call>{"name": "f"}{"name": "g"}</tool_call>', "expected </tool_call> after the JSON value"),
    ('<tool_call>{"name": "f", "arguments": {"code": "print(\'</tool_call>\')"}', "Expecting ','"),
    ("<tool_call>" + "[" * 100_000 + "</tool_call>", "nested too deeply"),
])
def test_a_malformed_call_is_invalid_json_and_parsing_goes_on(text, detail):
    calls = parse(text + ' <tool_call>{"name": "next"}</tool_call>')
    assert calls[0].error == "invalid_json" and detail in calls[0].detail
    assert calls[1:] == [ToolCall("next", {})]
    (never_closed,) = parse(text.replace("</tool_call>", ""))
    assert never_closed.error == "invalid_json"


def test_parser_is_pluggable_by_name():
    assert isinstance(build_parser("hermes"), HermesParser)
    assert isinstance(build_parser("temper.environments.tools:HermesParser"), HermesParser)
    with pytest.raises(ValueError, match="tool-call parser 'nope'"):
        build_parser("nope")


def test_tool_schema_from_a_typed_signature_and_from_a_model():
    @tool(timeout_s=2)
    def lookup(word: str, limit: int = 3) -> str:
        """Look a word up.

        Longer text that is not the description."""
        return word * limit

    assert lookup.schema() == {"type": "function", "function": {
        "name": "lookup", "description": "Look a word up.",
        "parameters": {"type": "object", "additionalProperties": False, "required": ["word"],
                       "properties": {"word": {"type": "string"}, "limit": {"type": "integer", "default": 3}}}}}
    assert lookup.timeout_s == 2

    class Args(BaseModel):
        """Add two numbers."""

        model_config = ConfigDict(extra="forbid")
        a: int
        b: int

    add = Tool.from_model("add", Args, lambda a, b: a + b)
    assert add.schema()["function"]["description"] == "Add two numbers."
    assert asyncio.run(add.run({"a": 2, "b": 5})) == "7"  # non-string results go back as JSON


def run(calls, tools, timeout=5.0, cap=4):
    return asyncio.run(run_calls(calls, {t.name: t for t in tools}, timeout, cap))


def test_run_calls_turns_every_failure_into_an_answer():
    @tool
    def boom(x: int) -> str:
        """Always fails."""
        raise RuntimeError("kaput")

    calls = [
        ToolCall("calculator", {"expression": "6 * 7"}),
        ToolCall("nope", {}),
        ToolCall("calculator", {"expr": "1"}),
        ToolCall("calculator", {"expression": "1/0"}),
        ToolCall("boom", {"x": 1}),
        ToolCall("", error="invalid_json", detail="Expecting value at column 1"),
    ]
    results = run(calls, [calculator, boom], cap=10)
    assert [r.error for r in results] == [None, "unknown_tool", "invalid_arguments", "tool_error", "tool_error",
                                          "invalid_json"]
    assert results[0].content == "42"
    assert "available: calculator, boom" in results[1].content
    assert "expression" in results[2].content and "division by zero" in results[3].content
    assert "kaput" in results[4].content and results[5].content.startswith("error: invalid_json")
    no_tools = run([ToolCall("calculator", {"expression": "1"})], [])
    assert no_tools[0].error == "no_tools"


def test_calls_past_the_per_turn_cap_are_answered_not_run():
    ran = []

    @tool
    def mark(i: int) -> str:
        """Record a call."""
        ran.append(i)
        return str(i)

    results = run([ToolCall("mark", {"i": i}) for i in range(4)], [mark], cap=2)
    assert [r.error for r in results] == [None, None, "too_many_calls", "too_many_calls"]
    assert sorted(ran) == [0, 1]


def test_a_tool_past_its_timeout_is_answered_as_a_timeout():
    @tool(timeout_s=0.2)
    async def slow(x: int) -> str:
        """Sleeps."""
        await asyncio.sleep(30)
        return "late"

    (result,) = run([ToolCall("slow", {"x": 1})], [slow])
    assert result.error == "timeout" and "timed out after 0.2s" in result.content


def test_calls_of_one_turn_run_concurrently_and_answer_in_call_order():
    # `first` can only finish once `second` has started: run one after the other, this would time out.
    started = asyncio.Event

    async def scenario():
        second_started = started()

        @tool(timeout_s=10)
        async def first(x: int) -> str:
            """Waits for the second."""
            await second_started.wait()
            return "first"

        @tool
        def second(x: int) -> str:  # a plain function: runs in a thread, off the event loop
            """Starts, then answers."""
            loop.call_soon_threadsafe(second_started.set)
            return "second"

        loop = asyncio.get_running_loop()
        calls = [ToolCall("first", {"x": 1}), ToolCall("second", {"x": 2})]
        return await asyncio.wait_for(run_calls(calls, {"first": first, "second": second}, 10, 4), 20)

    results = asyncio.run(scenario())
    assert [r.content for r in results] == ["first", "second"] and all(r.error is None for r in results)


@pytest.mark.parametrize(("expression", "value"), [
    ("347 * 58", "20126"), ("0.1 + 0.2", "0.3"), ("1/3", "1/3"), ("(2 + 3) / 4", "1.25"), ("2^10", "1024"),
    ("-7 // 2", "-4"), ("7 % 3", "1"), ("2 ** -2", "0.25"), ("12 × 3 ÷ 4", "9"), ("-(0.05)", "-0.05"),
])
def test_calculator_is_exact(expression, value):
    assert evaluate(expression) == value


@pytest.mark.parametrize(("expression", "why"), [
    ("__import__('os').system('true')", "not Call"), ("x + 1", "not Name"), ("'a' * 3", "not Constant"),
    ("9 ** 9 ** 9", "too large"), ("10 ** 100000", "too large"), ("1 / 0", "division by zero"),
    ("2 ** 0.5", "whole-number"), ("1 +", "not an arithmetic expression"), ("1 < 2", "not Compare"),
    ("1" * 600, "longer than"),
])
def test_calculator_refuses_what_is_not_bounded_arithmetic(expression, why):
    with pytest.raises(CalculatorError, match=why):
        evaluate(expression)

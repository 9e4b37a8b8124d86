"""Tools a model can call, and the parsers that find its calls in a turn's text.

A `Tool` is a name, a description, a pydantic model of its arguments (its JSON schema is what the chat
template shows the model), an async or plain function, and a timeout. `@tool` derives all of it from a typed
function; `Tool.from_model` takes an explicit pydantic model.

Calls are parsed, never trusted: invalid JSON, an unknown tool, arguments that fail the schema, a tool that
raises or overruns its timeout all become a `ToolResult` with an error `kind` and a message for the model.
Plain (non-async) tool functions run in a worker thread, so a slow tool never blocks the event loop that
the engine's other episodes share.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from temper.configs.plugins import import_target


class ToolError(Exception):
    """Raise from a tool to answer the model with this message, counted as a tool error (not a crash) of
    `kind` ("tool_error" unless a tool source has a more telling one, e.g. "mcp_unavailable")."""

    def __init__(self, message: str, kind: str = "tool_error") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    args: type[BaseModel]
    fn: Callable[..., Any]
    timeout_s: float | None = None
    """None: the environment's `tool_timeout_s`."""

    @classmethod
    def from_model(cls, name: str, args: type[BaseModel], fn: Callable[..., Any], description: str = "",
                   timeout_s: float | None = None) -> Tool:
        return cls(name, description or (args.__doc__ or "").strip(), args, fn, timeout_s)

    def schema(self) -> dict[str, Any]:
        """The OpenAI/Hermes function schema that chat templates render (`apply_chat_template(tools=...)`)."""
        params = self.args.model_json_schema()
        params.pop("title", None)
        for prop in params.get("properties", {}).values():
            prop.pop("title", None)
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": params}}

    async def run(self, arguments: dict[str, Any]) -> str:
        """Validate and call; raises ValidationError on bad arguments, or what the function raises."""
        kwargs = dict(self.args.model_validate(arguments))
        if inspect.iscoroutinefunction(self.fn):
            out = await self.fn(**kwargs)
        else:
            out = await asyncio.to_thread(self.fn, **kwargs)
        return out if isinstance(out, str) else json.dumps(out, default=str)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, timeout_s: float | None = None):
    """Make a Tool of a typed function: `@tool` or `@tool(timeout_s=2)`. Its docstring's first paragraph is
    the description; its annotated parameters (with defaults) are the arguments' schema."""

    def wrap(f: Callable[..., Any]) -> Tool:
        fields: dict[str, Any] = {}
        for p in inspect.signature(f).parameters.values():
            if p.annotation is inspect.Parameter.empty:
                raise TypeError(f"tool {f.__name__}: parameter {p.name!r} needs a type annotation")
            fields[p.name] = (p.annotation, ... if p.default is inspect.Parameter.empty else p.default)
        args = create_model(f"{f.__name__}_args", __config__=ConfigDict(extra="forbid"), **fields)
        doc = inspect.getdoc(f) or ""
        return Tool(name or f.__name__, doc.split("\n\n")[0].replace("\n", " "), args, f, timeout_s)

    return wrap(fn) if fn is not None else wrap


# ---------------------------------------------------------------------------------------------- calls
@dataclass(frozen=True)
class ToolCall:
    """One call found in an assistant turn; `error` set when it could not be parsed (then name may be "")."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    """"invalid_json", "missing_name" or "bad_arguments" with `detail`; None for a well-formed call."""
    detail: str = ""


@dataclass(frozen=True)
class ToolResult:
    name: str
    content: str
    """What goes back to the model as the tool's message."""
    error: str | None = None
    """Kind of failure: invalid_json, missing_name, bad_arguments, unknown_tool, invalid_arguments, timeout,
    tool_error, too_many_calls, no_tools (or a ToolError's own kind, e.g. mcp_unavailable, mcp_error); None on
    success."""
    seconds: float = 0.0


class HermesParser:
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, as Qwen2/Qwen3 chat templates emit and expect.

    The body is read as JSON, not cut at the first closing tag: code that prints or parses `</tool_call>`
    holds it inside a JSON string, where it belongs to the string. So after `<tool_call>` and any whitespace
    comes exactly one JSON value, then any whitespace and `</tool_call>`. Anything else is a call the model
    got wrong (invalid_json), and parsing goes on after the next closing tag. A call whose closing tag never
    comes is invalid_json too, even when its JSON is complete (a reply cut off by max_tokens looks like
    that). `arguments` may be an object or a JSON string holding one (some models write it so)."""

    OPEN, CLOSE = "<tool_call>", "</tool_call>"
    _decoder = json.JSONDecoder()

    def parse(self, text: str) -> list[ToolCall]:
        calls = []
        at = text.find(self.OPEN)
        while at != -1:
            call, end = self._read(text, at + len(self.OPEN))
            calls.append(call)
            at = text.find(self.OPEN, end)
        return calls

    def _read(self, text: str, at: int) -> tuple[ToolCall, int]:
        """The call whose body starts at `at`, and where parsing goes on."""
        at = _skip_space(text, at)
        try:
            obj, end = self._decoder.raw_decode(text, at)
        except json.JSONDecodeError as e:
            return ToolCall("", error="invalid_json", detail=f"{e.msg} at column {e.pos - at + 1}"), self._resume(text, at)
        except RecursionError:  # json's scanner recurses per nesting level: "[[[[..." from a model
            return ToolCall("", error="invalid_json", detail="JSON nested too deeply"), self._resume(text, at)
        close = _skip_space(text, end)
        if text.startswith(self.CLOSE, close):
            return self._one(obj), close + len(self.CLOSE)
        if close == len(text):
            return ToolCall("", error="invalid_json", detail="<tool_call> is never closed"), close
        return (ToolCall("", error="invalid_json", detail=f"expected </tool_call> after the JSON value, found "
                         f"{text[close : close + 20]!r}"), self._resume(text, close))

    def _resume(self, text: str, at: int) -> int:
        """After the first closing tag from `at` (the end of a malformed call), or the end of the text."""
        close = text.find(self.CLOSE, at)
        return len(text) if close == -1 else close + len(self.CLOSE)

    @staticmethod
    def _one(obj: Any) -> ToolCall:
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
            return ToolCall("", error="missing_name", detail='expected {"name": "...", "arguments": {...}}')
        args = obj.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except (json.JSONDecodeError, RecursionError):
                pass
        if not isinstance(args, dict):
            return ToolCall(obj["name"], error="bad_arguments", detail="arguments must be a JSON object")
        return ToolCall(obj["name"], args)


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


PARSERS: dict[str, str] = {"hermes": "temper.environments.tools:HermesParser"}
"""Tool-call parsers by name; any `module:attr` of a class with `parse(text) -> list[ToolCall]` works too."""


def build_parser(name: str) -> Any:
    try:
        return import_target(PARSERS.get(name, name), "tool-call parser")()
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"tool-call parser {name!r}: {e} (built in: {', '.join(PARSERS)})") from None


async def run_calls(calls: list[ToolCall], tools: dict[str, Tool], default_timeout_s: float,
                    max_calls: int) -> list[ToolResult]:
    """Run a turn's calls concurrently; results in the order of the calls. Calls past `max_calls` are
    answered with an error and not run."""

    async def one(i: int, call: ToolCall) -> ToolResult:
        if call.error:
            return ToolResult(call.name, f"error: {call.error}: {call.detail}", call.error)
        if i >= max_calls:
            return ToolResult(call.name, f"error: too many calls in one turn (at most {max_calls})", "too_many_calls")
        t = tools.get(call.name)
        if t is None:
            known = ", ".join(tools) or "none"
            kind = "no_tools" if not tools else "unknown_tool"
            return ToolResult(call.name, f"error: unknown tool {call.name!r} (available: {known})", kind)
        timeout = t.timeout_s if t.timeout_s is not None else default_timeout_s
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            content = await asyncio.wait_for(t.run(call.arguments), timeout)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'arguments'}: {x['msg']}" for x in e.errors())
            return ToolResult(call.name, f"error: invalid arguments: {problems}", "invalid_arguments")
        except ToolError as e:
            return ToolResult(call.name, f"error: {e}", e.kind, loop.time() - start)
        except TimeoutError:
            return ToolResult(call.name, f"error: {call.name} timed out after {timeout:g}s", "timeout",
                              loop.time() - start)
        except Exception as e:  # noqa: BLE001 - a tool failing on model-chosen input is an answer, not a crash
            return ToolResult(call.name, f"error: {type(e).__name__}: {e}", "tool_error", loop.time() - start)
        return ToolResult(call.name, content, None, loop.time() - start)

    return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(calls))))

"""Tool use: the model calls tools in Hermes format, the environment runs them and answers, until it replies
without a call (its final answer) or a budget ends the episode.

A plugin usually overrides only `tools(row)` (and perhaps `setup` for its own opening messages):

    class Dictionary(ToolEnvironment):
        def tools(self, row):
            return [lookup, calculator]      # Tool objects, e.g. made with @tool

Malformed calls (invalid JSON, unknown tool, arguments that fail the schema), tool errors and timeouts go
back to the model as the tool's message, `error: ...`, and are counted by kind; `on_error = "end"` ends the
episode instead (stop reason `tool_<kind>`). A turn's calls run concurrently, results in call order. A tool's
output is cut to `tool_output_tokens` tokens (counted in tokens, not characters, since tokens are what the
context holds). Tool output is text: a `<|im_end|>` or `<tool_call>` it prints is encoded as ordinary tokens
(chat_encoding.py), so it can neither end its own turn nor forge another.

`mcp_servers` adds the tools of MCP servers, per episode or shared by the worker (mcp_tools.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from temper.configs.plugins import import_target
from temper.environments.calculator import calculator
from temper.environments.chat_encoding import encode_text
from temper.environments.mcp_tools import McpEpisode, McpServer, McpToolSource
from temper.environments.multi_turn import EpisodeStart, MultiTurnEnvironment, MultiTurnParams, StepResult
from temper.environments.python_tool import PythonRunner, python_tool
from temper.environments.tools import Tool, build_parser, run_calls


class ToolParams(MultiTurnParams):
    tools: list[str] = Field(default_factory=lambda: ["calculator"])
    """Tools offered: built-in "calculator", "python", or `module:attr` of a Tool (e.g. made with @tool)."""
    parser: str = "hermes"
    """Tool-call format: "hermes" (<tool_call>{json}</tool_call>, Qwen2/Qwen3) or `module:attr` of a parser."""
    max_tool_calls: int = Field(8, ge=0)
    """Tool calls per episode at most; a turn that asks for more ends the episode (stop "max_tool_calls")."""
    max_calls_per_turn: int = Field(4, ge=1)
    """Calls run per turn at most; further calls in the same turn are answered with an error."""
    tool_timeout_s: float = Field(10.0, gt=0)
    """Per call, unless the tool sets its own."""
    tool_output_tokens: int = Field(256, ge=1)
    """A tool's output is cut to this many tokens."""
    on_error: Literal["respond", "end"] = "respond"
    """A malformed call or a failing tool: answer the model with the error (default), or end the episode."""
    python_state: Literal["per_call", "per_episode"] = "per_call"
    """python tool: a fresh interpreter per call, or the episode's earlier cells carried over."""
    max_sandboxes: int = Field(2, ge=1)
    """python tool: sandboxes running at once in one rollout worker."""
    mcp_servers: list[McpServer] = Field(default_factory=list)
    """MCP servers whose tools are offered too, under the servers' own tool names (a name offered twice
    is an error), e.g. [{ name = "files", command = ["python", "-m", "srv"], scope = "episode" }]."""


BUILTIN_TOOLS = ("calculator", "python")


@dataclass
class ToolState:
    tools: dict[str, Tool]
    calls: int = 0
    mcp: McpEpisode | None = None
    """This episode's MCP connections, closed in teardown."""


class ToolEnvironment(MultiTurnEnvironment):
    Params = ToolParams

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        p = self.params
        self.parser = build_parser(p.parser)
        self.offer_tools = True
        self._runner = PythonRunner(p.max_sandboxes) if "python" in p.tools else None
        self._named: dict[str, Tool] = {}
        for name in p.tools:
            if name in BUILTIN_TOOLS:
                continue
            obj = import_target(name, "tool")
            if not isinstance(obj, Tool):
                raise TypeError(f"tool {name!r} is not a temper.environments.tools.Tool (decorate it with @tool)")
            self._named[name] = obj
        offered = [n for n in p.tools if n in BUILTIN_TOOLS] + [t.name for t in self._named.values()]
        self._mcp = McpToolSource(p.mcp_servers, offered)

    def without_tools(self) -> ToolEnvironment:
        """The same environment offering no tools: every call is answered "unknown tool" (an ablation)."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.offer_tools = False
        return other

    def tools(self, row: dict[str, Any]) -> list[Tool]:
        """The tools of one episode (built per episode, so a stateful tool can keep the episode's state)."""
        out = []
        for name in self.params.tools:
            if name == "calculator":
                out.append(calculator)
            elif name == "python":
                assert self._runner is not None
                out.append(python_tool(self._runner, self.params.python_state == "per_episode"))
            else:
                out.append(self._named[name])
        return out

    async def setup(self, row: dict[str, Any]) -> EpisodeStart:
        if not self.offer_tools:
            return EpisodeStart(self.messages(row), [], ToolState({}))
        tools = self.tools(row)
        if not self.params.mcp_servers:
            return EpisodeStart(self.messages(row), tools, ToolState({t.name: t for t in tools}))
        mcp = await self._mcp.open([t.name for t in tools])
        state = ToolState({t.name: t for t in [*tools, *mcp.callable]}, mcp=mcp)
        return EpisodeStart(self.messages(row), [*tools, *mcp.shown], state)

    async def teardown(self, state: ToolState) -> None:
        if state.mcp is not None:
            await self._mcp.close(state.mcp)

    async def aclose(self) -> None:
        await self._mcp.aclose()

    async def step(self, state: ToolState, messages: list[dict[str, Any]], reply: str) -> StepResult:
        p = self.params
        calls = self.parser.parse(reply)
        if not calls:
            return StepResult(done=True)  # a reply without a call is the final answer
        if state.calls + min(len(calls), p.max_calls_per_turn) > p.max_tool_calls:
            return StepResult(done=True, stop_reason="max_tool_calls")
        results = await run_calls(calls, state.tools, p.tool_timeout_s, p.max_calls_per_turn)
        state.calls += len(results)
        failed = [r.error for r in results if r.error]
        if failed and p.on_error == "end":
            return StepResult(done=True, stop_reason=f"tool_{failed[0]}", tool_results=results)
        observations = [{"role": "tool", "name": r.name, "content": self.truncate(r.content)} for r in results]
        return StepResult(observations, tool_results=results)

    def truncate(self, text: str) -> str:
        n = self.params.tool_output_tokens
        ids = encode_text(self.tokenizer, text)  # counted as the glue encodes it: special token text is text
        if len(ids) <= n:
            return text
        return self.tokenizer.decode(ids[:n]) + f"\n[truncated: {len(ids) - n} more tokens]"

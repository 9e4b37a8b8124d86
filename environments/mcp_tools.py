"""MCP tool servers as a tool source for the tool environment (`ToolParams.mcp_servers`).

An MCP server is a process (or an HTTP endpoint) with state, so where it lives decides what an episode can
see. `scope = "episode"` starts a fresh server per episode in setup and stops it in teardown (also when the
episode fails, times out or is cancelled): no episode sees another's state. `scope = "worker"` shares one
server among the rollout worker's episodes, started on first use in the worker's event loop and started
again for the next episode once a call has found it dead (or it failed to start). Over HTTP (`url`) there is no process to start: a scope is a
fresh MCP session per episode or one per worker.

Each of a server's tools becomes a `Tool` that `run_calls` runs like any other, so the per-call timeout,
the per-turn cap, output truncation in tokens and error counting are the tool environment's. The model
sees the server's own tool names and schemas (`list_tools`); two sources offering one name is a
configuration error, raised at start-up, not silently renamed. Result text is the tool message; other
content is described in text ("[image: 4 bytes, image/png]").

Faults are answers, never crashes of the run: a server that cannot start (bad command, exits, speaks no
MCP, or has not listed its tools within `startup_timeout_s`), that dies mid-episode, or that answers with
a protocol error reaches the model as `error: ...` of kind `mcp_unavailable` or `mcp_error` (a hung call
is a `timeout`; a result flagged isError is a `tool_error`, as a failing built-in tool). When a server
cannot start, the episode still shows the schemas of its last listing in this worker (a transient fault
does not change the prompt) and every call to its tools, or to the names in its `tools` subset, answers
`mcp_unavailable`; a server never listed and without a `tools` subset shows nothing.

The `mcp` SDK runs its transport in anyio task groups, which must be entered and left by one task; so each
connection is owned by a task of its own, and episodes only send requests through it.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from temper.configs.base import Strict
from temper.environments.tools import Tool, ToolError

log = logging.getLogger(__name__)


class McpServer(Strict):
    """One MCP server the tool environment offers the tools of: a command over stdio, or a URL."""

    name: str = Field(min_length=1)
    """Names the server in errors and logs (the tools keep their own names)."""
    command: list[str] | None = Field(None, min_length=1)
    """Start the server as this process and speak MCP over its stdin/stdout, e.g. ["python", "-m", "srv"]."""
    env: dict[str, str] = Field(default_factory=dict)
    """command: environment variables added to the few the SDK passes on (PATH, HOME, ...)."""
    cwd: str | None = None
    """command: the working directory of the process (default: the worker's)."""
    url: str | None = None
    """Connect to a running server over streamable HTTP instead, e.g. "http://127.0.0.1:8000/mcp"."""
    scope: Literal["episode", "worker"] = "episode"
    """"episode": a fresh server (or session, for url) per episode, stopped after it; "worker": one shared
    by the worker's episodes, started again after it dies."""
    startup_timeout_s: float = Field(20.0, gt=0)
    """A server that has not listed its tools by then is unavailable for that episode."""
    tools: list[str] | None = None
    """Offer only these of the server's tools (None: all it lists)."""

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if (self.command is None) == (self.url is None):
            raise ValueError(f"mcp_servers[{self.name!r}]: set exactly one of `command` (stdio) or `url` (HTTP)")
        if self.url is not None and (self.env or self.cwd is not None):
            raise ValueError(f"mcp_servers[{self.name!r}]: `env` and `cwd` go with `command`, not `url`")
        return self


def check_servers(servers: list[McpServer], other_tools: list[str]) -> None:
    """Config checks that need no server: unique names, no configured tool name offered twice."""
    if not servers:
        return
    if importlib.util.find_spec("mcp") is None:
        raise ValueError("mcp_servers needs the `mcp` package: pip install 'temper[mcp]'")
    names = [s.name for s in servers]
    if len(set(names)) != len(names):
        raise ValueError(f"mcp_servers: server names must be unique, got {names}")
    owner = {t: "tools" for t in other_tools}
    for s in servers:
        for t in s.tools or []:
            if t in owner:
                raise ValueError(f"mcp_servers[{s.name!r}].tools: {t!r} is also offered by {owner[t]}")
            owner[t] = f"mcp_servers[{s.name!r}]"


class _AnyArguments(BaseModel):
    """Unused: an MCP tool's arguments are checked by its server against its own schema."""


@dataclass(frozen=True)
class McpTool(Tool):
    """A tool of an MCP server: its schema is the server's JSON schema; arguments go to it as they are."""

    parameters: dict[str, Any] = field(default_factory=dict)

    def schema(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    async def run(self, arguments: dict[str, Any]) -> str:
        return await self.fn(arguments)


def _reason(e: BaseException) -> str:
    while isinstance(e, BaseExceptionGroup) and e.exceptions:  # anyio task groups wrap the real cause
        e = e.exceptions[0]
    return f"{type(e).__name__}: {e}".rstrip(": ")


def _size(data: str) -> int:
    try:
        return len(base64.b64decode(data, validate=True))
    except ValueError:
        return len(data)


def describe(content: list[Any], structured: Any = None) -> str:
    """A tool result's content as the text of the tool message: text as it is, anything else described."""
    parts = []
    for c in content:
        kind = getattr(c, "type", None)
        if kind == "text":
            parts.append(c.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind}: {_size(c.data)} bytes, {c.mime_type}]")
        elif kind == "resource":
            r = c.resource
            text = getattr(r, "text", None)
            parts.append(text if text is not None else f"[resource {r.uri}: {_size(r.blob)} bytes]")
        elif kind == "resource_link":
            parts.append(f"[resource link: {c.uri}]")
        else:
            parts.append(f"[{kind} content]")
    if not parts and structured is not None:
        return json.dumps(structured, default=str)
    return "\n".join(parts)


class McpConnection:
    """One MCP session (over stdio, with its server process), owned by one task of the loop that opened it.

    `started()` waits until the tools are listed or the start failed; `call` sends a tools/call; `stop`
    ends the session (the SDK closes the server's stdin, then terminates and kills its process group)."""

    def __init__(self, server: McpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.listed: list[Any] = []
        """The server's tools (mcp Tool objects) once started."""
        self.failure: str | None = None
        """Why the server is unavailable (could not start, connection lost); None while it is usable."""
        self._client: Any = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._own(), name=f"mcp:{server.name}")

    @property
    def usable(self) -> bool:
        """Starting or started, and not known to be dead."""
        return self.failure is None and not self._task.done()

    async def started(self) -> bool:
        await self._ready.wait()
        return self.failure is None

    async def _own(self) -> None:
        from mcp import Client, StdioServerParameters

        s = self.server
        target: Any = s.url
        if s.command is not None:
            target = StdioServerParameters(command=s.command[0], args=s.command[1:], env=s.env or None, cwd=s.cwd)
        try:
            async with asyncio.timeout(s.startup_timeout_s) as deadline, Client(target, cache=None) as client:
                self.listed = await _list_all(client)
                deadline.reschedule(None)  # started: from here on only `stop` ends it
                self._client = client
                self._ready.set()
                await self._stop.wait()
        except TimeoutError:
            self._fail(f"MCP server {s.name!r} did not start within {s.startup_timeout_s:g}s")
        except Exception as e:  # noqa: BLE001 - any fault makes the server unavailable, not the run fail
            how = "failed" if self._ready.is_set() else "could not start"
            self._fail(f"MCP server {s.name!r} {how}: {_reason(e)}")
        finally:
            if self.failure is None and not self._stop.is_set():
                self._fail(f"MCP server {s.name!r} stopped")
            self._ready.set()

    def _fail(self, why: str) -> None:
        """Mark it unavailable for good; the owner then leaves the session, which reaps what is left."""
        if self.failure is None:
            self.failure = why
            log.warning("%s", why)
        self._stop.set()

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        from mcp import MCPError
        from mcp_types import CONNECTION_CLOSED
        from pydantic import ValidationError

        if self.failure is not None or self._client is None:
            raise ToolError(self.failure or f"MCP server {self.server.name!r} is not started", "mcp_unavailable")
        try:
            result = await self._client.call_tool(name, arguments)
        except MCPError as e:
            if e.code == CONNECTION_CLOSED:
                self._fail(f"MCP server {self.server.name!r} closed the connection")
                raise ToolError(self.failure or str(e), "mcp_unavailable") from None
            raise ToolError(f"MCP server {self.server.name!r}: {e.message}", "mcp_error") from None
        except ValidationError as e:  # a result that is not a CallToolResult
            raise ToolError(f"MCP server {self.server.name!r} sent a malformed result: {e.error_count()} "
                            "validation errors", "mcp_error") from None
        except Exception as e:  # noqa: BLE001 - the transport failing under a call: the server is gone
            self._fail(f"MCP server {self.server.name!r} failed: {_reason(e)}")
            raise ToolError(self.failure or _reason(e), "mcp_unavailable") from None
        text = describe(result.content, result.structured_content)
        if result.is_error:
            raise ToolError(text or f"{name} failed")
        return text

    async def stop(self) -> None:
        """End the session and its process; bounded (the SDK escalates to SIGKILL within ~5 s)."""
        self._stop.set()
        done, _ = await asyncio.wait({self._task}, timeout=15)
        if not done:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5)


async def _list_all(client: Any) -> list[Any]:
    tools, cursor = [], None
    for _ in range(100):  # a server that pages forever still starts
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


@dataclass
class McpEpisode:
    """What one episode got from its MCP servers."""

    shown: list[Tool] = field(default_factory=list)
    """Tools whose schemas the model sees."""
    callable: list[Tool] = field(default_factory=list)
    """Every name a call may use (shown, plus a down server's configured names)."""
    own: list[McpConnection] = field(default_factory=list)
    """Episode-scope connections, stopped in teardown."""


class McpToolSource:
    """The MCP servers of one tool environment: per-episode connections, the worker's shared ones, and each
    server's last listing (offered, answering errors, when the server is down)."""

    def __init__(self, servers: list[McpServer], other_tools: list[str]) -> None:
        check_servers(servers, other_tools)
        self.servers = servers
        self._shared: dict[str, McpConnection] = {}
        self._last: dict[str, list[Any]] = {}

    def _worker(self, s: McpServer) -> McpConnection:
        conn = self._shared.get(s.name)
        if conn is None or conn.loop is not asyncio.get_running_loop() or not conn.usable:
            conn = self._shared[s.name] = McpConnection(s)  # a dead one's task has ended: nothing to stop
        return conn

    async def open(self, other_tools: list[str]) -> McpEpisode:
        """Start (or reuse) the servers and list their tools; `other_tools`: the episode's other tool names."""
        ep = McpEpisode()
        conns = []
        try:
            for s in self.servers:
                conn = McpConnection(s) if s.scope == "episode" else self._worker(s)
                if s.scope == "episode":
                    ep.own.append(conn)
                conns.append(conn)
            await asyncio.gather(*(c.started() for c in conns))
            owner = {t: "tools" for t in other_tools}
            for conn in conns:
                self._add(conn, ep, owner)
        except BaseException:  # cancelled while starting, or a name offered twice: stop what was started
            await asyncio.shield(self.close(ep))
            raise
        return ep

    def _add(self, conn: McpConnection, ep: McpEpisode, owner: dict[str, str]) -> None:
        s = conn.server
        up = conn.failure is None
        listed = conn.listed if up else self._last.get(s.name, [])
        if up:
            self._last[s.name] = listed
            missing = sorted(set(s.tools or []) - {t.name for t in listed})
            if missing:
                raise ValueError(f"mcp_servers[{s.name!r}].tools: the server offers no {missing}")
        names = {t.name: t for t in listed if s.tools is None or t.name in s.tools}
        label = f"mcp_servers[{s.name!r}]"
        for name in [*names, *(t for t in s.tools or [] if t not in names)]:
            if owner.setdefault(name, label) != label:
                raise ValueError(f"tool {name!r} is offered by {label} and by {owner[name]}: rename it on the "
                                 "server, or leave it out with `tools`")

            async def call(arguments: dict[str, Any], name: str = name) -> str:
                return await conn.call(name, arguments)

            info = names.get(name)
            tool = McpTool(name, (info.description or "") if info else "", _AnyArguments, call,
                           parameters=dict(info.input_schema) if info else {"type": "object"})
            ep.callable.append(tool)
            if info is not None:
                ep.shown.append(tool)

    async def close(self, ep: McpEpisode) -> None:
        await asyncio.gather(*(c.stop() for c in ep.own))

    async def aclose(self) -> None:
        """Stop the worker-scope servers (in the loop that started them)."""
        loop = asyncio.get_running_loop()
        shared, self._shared = self._shared, {}
        await asyncio.gather(*(c.stop() for c in shared.values() if c.loop is loop))

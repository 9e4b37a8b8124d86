"""The `python` tool: runs the model's code in the bubblewrap sandbox the code verifier uses.

One call is one fresh sandbox (no network, a private tmpfs, rlimits, a dedicated uid; see
rewards/sandbox/) and returns what the program printed, stdout then stderr. With `per_episode` state,
variables and definitions carry over between an episode's calls: each call runs the episode's earlier
successful cells again first, with their output discarded, then the new one. (No process outlives a call,
so a crashed or cancelled episode cannot leak one; the price is that earlier cells run again, so a cell
with randomness or a clock sees new values.)

Sandboxes run in worker threads, never on the event loop, and at most `max_sandboxes` at once per
environment. A cancelled call (episode stopped, Ctrl-C) kills its sandbox before the cancellation goes on.
"""

from __future__ import annotations

import asyncio
import threading

from pydantic import BaseModel, ConfigDict, Field

from temper.environments.tools import Tool, ToolError
from temper.rewards.sandbox import Sandbox


class PythonArgs(BaseModel):
    """Run Python code in a fresh sandbox and return what it prints (use print())."""

    model_config = ConfigDict(extra="forbid")
    code: str = Field(description="Python source to run; print() what you want to see")


class PythonRunner:
    """Shared by one environment: the sandbox and the cap on sandboxes running at once."""

    def __init__(self, max_sandboxes: int = 2, time_limit_s: float = 5.0, memory_mb: int = 256,
                 output_bytes: int = 16384, isolation: str = "bwrap") -> None:
        self.sandbox = Sandbox(isolation)  # raises SandboxUnavailable without bubblewrap, before any episode
        self.slots = asyncio.Semaphore(max_sandboxes)
        self.time_limit_s = time_limit_s
        self.memory_mb = memory_mb
        self.output_bytes = output_bytes

    async def run(self, code: str) -> tuple[bool, str]:
        """(ran without error, what it printed or why it failed)."""
        cancel = threading.Event()
        async with self.slots:
            work = asyncio.ensure_future(asyncio.to_thread(
                self.sandbox.run_program, code, time_limit_s=self.time_limit_s, memory_mb=self.memory_mb,
                output_bytes=self.output_bytes, cancel=cancel,
            ))
            try:
                outcome = await asyncio.shield(work)
            except asyncio.CancelledError:
                cancel.set()  # the sandbox thread kills bwrap's process group and the sandbox uid
                await asyncio.wait([work])
                raise
        if outcome.status == "ok":
            return True, outcome.stdout
        return False, f"{outcome.stdout}{outcome.error}".strip() or outcome.status


def python_tool(runner: PythonRunner, per_episode: bool = False, timeout_s: float | None = None) -> Tool:
    """A `python` Tool on `runner`; with per_episode, build one per episode (it keeps that episode's cells)."""
    cells: list[str] = []

    async def python(code: str) -> str:
        program = code
        if cells:  # replay earlier cells with their output discarded, then run the new one
            quiet = "import contextlib as _c, io as _io\nwith _c.redirect_stdout(_io.StringIO()):\n"
            program = quiet + "".join(f"    exec({c!r})\n" for c in cells) + code
        ok, text = await runner.run(program)
        if ok and per_episode:
            cells.append(code)
        if not ok:
            raise ToolError(text or "failed")
        return text

    return Tool.from_model("python", PythonArgs, python, timeout_s=timeout_s)

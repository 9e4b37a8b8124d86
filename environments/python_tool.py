"""The `python` tool: runs the model's code in the bubblewrap sandbox the code verifier uses.

One call is one fresh sandbox (no network, a private tmpfs, rlimits, a dedicated uid; see
rewards/sandbox.py) and returns what the program printed, stdout then stderr. With `per_episode` state,
variables and definitions carry over between an episode's calls: each call runs the episode's earlier
successful cells again first, with their output discarded, then the new one. (No process outlives a call,
so a crashed or cancelled episode cannot leak one; the price is that earlier cells run again, so a cell
with randomness or a clock sees new values.)

Sandboxes run in worker threads, never on the event loop, and at most `max_sandboxes` at once per
environment. A cancelled call (episode stopped, Ctrl-C) kills its sandbox before the cancellation goes on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from temper.environments.tools import Tool, ToolError


class PythonArgs(BaseModel):
    """Run Python code in a fresh sandbox and return what it prints (use print())."""

    model_config = ConfigDict(extra="forbid")
    code: str = Field(description="Python source to run; print() what you want to see")


class PythonRunner:
    """Shared by one environment: the sandbox and the cap on sandboxes running at once."""

    def __init__(self, max_sandboxes: int = 2, time_limit_s: float = 5.0, memory_mb: int = 256,
                 output_bytes: int = 16384, isolation: str = "bwrap") -> None:
        from temper.rewards.sandbox import Sandbox

        self.sandbox = Sandbox(isolation)  # raises SandboxUnavailable without bubblewrap, before any episode
        self.slots = asyncio.Semaphore(max_sandboxes)
        self.time_limit_s = time_limit_s
        self.memory_mb = memory_mb
        self.output_bytes = output_bytes

    def _job(self, code: str) -> dict[str, Any]:
        return {"nonce": secrets.token_hex(8), "mode": "stdio", "solution": code, "setup": "", "tests": [""],
                "time_limit": self.time_limit_s, "wall_limit": self.time_limit_s * 2,
                "memory_bytes": self.memory_mb << 20, "file_bytes": self.output_bytes, "nofile": 64}

    async def run(self, code: str) -> tuple[bool, str]:
        """(ran without error, what it printed or why it failed)."""
        job = self._job(code)
        cancel = threading.Event()
        async with self.slots:
            work = asyncio.ensure_future(asyncio.to_thread(
                self.sandbox.run, job, wall_timeout=self.time_limit_s * 2 + 5, stdout_cap=self.output_bytes * 2 + 65536,
                cancel=cancel,
            ))
            try:
                outcome = await asyncio.shield(work)
            except asyncio.CancelledError:
                cancel.set()  # the sandbox thread kills bwrap's process group and the sandbox uid
                await asyncio.wait([work])
                raise
        return _read_frame(outcome, job["nonce"])


def _read_frame(outcome: Any, nonce: str) -> tuple[bool, str]:
    for line in outcome.stdout.splitlines():
        try:
            frame = json.loads(line)
        except json.JSONDecodeError:
            continue
        if frame.get("nonce") != nonce or "status" not in frame:
            continue
        out = base64.b64decode(frame.get("stdout_b64", "")).decode("utf-8", "replace")
        if frame["status"] == "ok":
            return True, out
        err = frame.get("stderr_tail") or frame.get("error") or ""
        return False, f"{out}{err}".strip() or frame["status"]
    return False, "the sandbox timed out" if outcome.timed_out else "the sandbox returned nothing"


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

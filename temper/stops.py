"""How a run that stops early says so: one message with what died, the newest usable checkpoint, and the
exact command that resumes it. Never a traceback of Ray internals, never one exception raised while
handling another (the driver's cleanup holds signals and swallows its own errors; see temper/cleanup.py).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path


class RunError(RuntimeError):
    """A run that cannot go on for a reason the user can act on; the message is printed as is."""


class WorkersLost(RunError):
    """The rollout workers died for good: past rollout.max_restarts, or a replacement could not help."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `ray job stop`): stops a run as Ctrl-C does, and is told apart from it in summary.json."""


_sigterm_seen: list[int] = []


def on_sigterm(signum, frame) -> None:
    """`temper train`'s SIGTERM handler. Remembered as well as raised: inside a blocking ray.get/ray.wait Ray
    turns whatever KeyboardInterrupt the handler raises into a plain one."""
    _sigterm_seen.append(signum)
    raise Terminated


def ending_of(exc: BaseException | None) -> str:
    """How a run ended, as summary.json's `ending` says it: finished, sigterm, interrupt (Ctrl-C),
    worker_died or error."""
    if exc is None:
        return "finished"
    if isinstance(exc, Terminated) or (isinstance(exc, KeyboardInterrupt) and _sigterm_seen):
        return "sigterm"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupt"
    return "worker_died" if isinstance(exc, WorkersLost) else "error"


class RunStopped(Exception):
    """A run that ended before its last step. `reason` says what happened; the CLI adds how to resume."""

    def __init__(self, reason: str, run_dir: Path | None, checkpoint: Path | None, interrupted: bool = False,
                 step: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.run_dir = run_dir
        self.checkpoint = checkpoint
        self.interrupted = interrupted
        self.step = step

    def message(self, command: list[str]) -> str:
        """The console message; command: the `temper train ...` arguments the run was started with."""
        lines = [f"temper train: {'interrupted' if self.interrupted else 'stopped'}: {self.reason}"]
        if self.step is not None:
            lines.append(f"  last completed step: {self.step}")
        if self.run_dir is not None:
            lines.append(f"  run directory: {self.run_dir}")
        if self.checkpoint is not None:
            lines.append(f"  newest usable checkpoint: {self.checkpoint}")
            lines.append(f"  resume with: {resume_command(command, self.checkpoint)}")
        else:
            lines.append("  no checkpoint to resume from (checkpoint.every_steps = N writes them); start again with:")
            lines.append(f"    {shlex.join(_without_resume(command))}")
        return "\n".join(lines)


def _without_resume(command: list[str]) -> list[str]:
    out, skip = [], False
    for arg in command:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            out.append(arg)
    return out


def resume_command(command: list[str], checkpoint: Path) -> str:
    return shlex.join([*_without_resume(command), "--resume", str(checkpoint)])


ROLES = {"RolloutWorker": "a rollout worker", "RolloutWorkerActor": "a rollout worker", "Learner": "the learner",
         "LearnerGroup": "the learner", "ReplayBuffer": "the replay buffer"}


def _actor_death(text: str) -> str:
    """The useful part of Ray's ActorDiedError text: whose process, and how it ended."""
    cls = re.search(r"class_name: (\w+)", text)
    who = ROLES.get(cls.group(1), f"the {cls.group(1)} actor") if cls else "an actor"
    exit_type = re.search(r"Worker exit type: (\w+)", text)
    detail = re.search(r"Worker exit detail: (.*?)(?:\. |\n|$)", text)
    how = ": ".join(x.group(1) for x in (exit_type, detail) if x)
    pid = re.search(r"pid: (\d+)", text)
    return f"{who}'s process{f' (pid {pid.group(1)})' if pid else ''} died" + (f" ({how})" if how else "")


def describe(exc: BaseException) -> str:
    """One line (or a short paragraph) saying what failed, for any exception that ends a run."""
    import ray.exceptions as rex

    if isinstance(exc, RunError):
        return str(exc)
    if isinstance(exc, rex.RayTaskError):
        cause = exc.cause
        if isinstance(cause, rex.RayActorError):
            return _actor_death(str(cause))
        if isinstance(cause, (TimeoutError, RunError)):  # the buffer explains what it dropped and why
            return str(cause)
        where = re.search(r"ray::([\w.]+)\(\)", str(exc))  # the failing actor method, as Ray titles it
        return f"{where.group(1) if where else 'an actor'} raised {type(cause).__name__}: {cause}"
    if isinstance(exc, rex.RayActorError):
        return _actor_death(str(exc))
    if isinstance(exc, rex.GetTimeoutError):
        return f"an actor did not answer in time ({exc})"
    return f"{type(exc).__name__}: {exc}"

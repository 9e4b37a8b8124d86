"""CPU cores of their own for a CPU learner on a machine it shares with the engines.

On a CPU box every rollout engine's OpenMP threads are bound to one core (VLLM_CPU_OMP_THREADS_BIND, set in
temper/actors.py), but everything else floats: the rollout worker's vLLM front-end, its EngineCore (which
spin-waits on its model worker between engine steps), the scoring pool. In an async run they land on the
learner's core and stretch its step, and the learner's step is the run's pace. So in a private cluster
(every actor on this machine, a layout the driver knows) the learner's `num_threads` threads get the
highest-numbered cores no engine is bound to, and the rollout workers' processes keep off them. On the
2-core demo, with the rollout side moved by hand mid-run: 1.30 against 1.10-1.20 steps/s.

Linux only (sched_setaffinity); anywhere else nothing is pinned.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from temper.configs.schema import RunConfig

ENGINE_BIND = "VLLM_CPU_OMP_THREADS_BIND"


def engine_core(i: int) -> int:
    """The core rollout engine i's OpenMP threads are bound to (one core per engine, round robin)."""
    return i % (os.cpu_count() or 1)


def learner_cores(cfg: RunConfig, private_cluster: bool) -> list[int]:
    """The cores the learner gets to itself, or [] to pin nothing: not a private cluster (the driver cannot
    know the nodes' layout), a GPU learner or GPU engines, several learner ranks, engine binding set by hand,
    `learner.own_cores = false`, or fewer free cores than `learner.num_threads`."""
    lc, r = cfg.learner, cfg.ray
    if not (private_cluster and lc.own_cores and hasattr(os, "sched_setaffinity")) or ENGINE_BIND in os.environ:
        return []
    if lc.device == "cuda" or r.learner_gpus or r.worker_gpus or lc.world_size > 1:
        return []
    taken = {engine_core(i) for i in range(cfg.rollout.num_workers)}
    free = sorted(set(range(os.cpu_count() or 1)) - taken)
    return free[-lc.num_threads:] if len(free) >= lc.num_threads else []


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:  # the process has exited
        return []


def _children(pid: int) -> list[int]:
    kids = []
    for tid in _threads(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            kids += [int(k) for k in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return kids


def _tree(pid: int) -> list[int]:
    """pid and every process below it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def pin_self(cores: list[int]) -> None:
    """Every thread of this process (and whatever it starts later) on `cores`."""
    for tid in _threads(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cores)


def keep_off(cores: list[int]) -> int:
    """Take `cores` out of the allowed set of every thread of this process and every process below it
    (processes started later inherit it). A thread allowed only those cores keeps them: an engine bound to
    one by hand. Returns how many threads changed."""
    changed = 0
    for pid in _tree(os.getpid()):
        for tid in _threads(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                now = os.sched_getaffinity(tid)
                rest = now - set(cores)
                if rest and rest != now:
                    os.sched_setaffinity(tid, rest)
                    changed += 1
    return changed

"""Where a run's time goes: per step, per role, as metrics, an end-of-run summary and a trace file.

Per step the driver knows the learner's three phases (waiting for a batch, computing, syncing weights);
each engine and the buffer report spans of what they were doing (rollout/activity.py), drained once a
step. A step's window is [its get_batch call, the buffer's set_version]; everything is clipped to it, so
an engine's busy + paused + idle seconds add up to the step's seconds exactly.

The summary compares what the run achieved with what overlapping could give at best. With G the seconds
an engine needs to generate a batch (its busy time per step) and T the learner's (compute + weight sync
per step), a sync run takes G + T per step and a perfectly overlapped one max(G, T), so

    ideal speedup     = (G + T) / max(G, T)
    achieved speedup  = (G + T) / (measured seconds per step)
    overlap of ideal  = achieved / ideal = max(G, T) / (seconds per step)

A sync run achieves ~1.0x by construction; an async run shows how much of the possible overlap it got.
Time outside step windows (evals, checkpoints) is left out of every fraction.

trace.json is the Chrome Trace Event Format ("X" complete events, microseconds since the run started):
ui.perfetto.dev and chrome://tracing open it. Imports no torch/vllm; `drain` alone imports ray.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temper.rollout.activity import Span

ENGINE_STATES = ("busy", "paused", "eval")
BUFFER_REASONS = ("waiting_for_groups", "throttle", "capacity")
LEARNER_PHASES = ("wait for batch", "train", "weight sync")

# Trace processes, one per role; engines and buffer reasons are threads of theirs.
PID = {"learner": 1, "buffer": 2, "rollout": 3}


def clipped(spans: list[Span], lo: float, hi: float, name: str | None = None) -> float:
    """Seconds of `spans` (of one name, when given) inside [lo, hi]. Spans of one name never overlap."""
    return sum(max(0.0, min(s.end, hi) - max(s.start, lo)) for s in spans if name is None or s.name == name)


@dataclass
class StepTimes:
    """One step as the driver saw it, and what the engines and buffer did meanwhile (seconds)."""

    step: int
    start: float
    ready: float
    """The batch arrived (learner wait = ready - start)."""
    trained: float
    """train_step returned (compute = trained - ready); weight sync and set_version follow until end."""
    end: float
    engines: dict[int, dict[str, float]] = field(default_factory=dict)
    """Engine index -> busy / paused seconds in the window (eval too: engines evaluating mid-window)."""
    buffer: dict[str, float] = field(default_factory=dict)
    """Reason -> seconds anyone waited in the buffer for it in the window (rollout/buffer.py)."""
    tokens: int = 0
    """Policy tokens the buffer received during the step."""

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def metrics(self) -> dict[str, float]:
        """The step's `time/*` entries of metrics.jsonl."""
        m = {
            "time/learner_wait_s": self.ready - self.start,
            "time/learner_compute_s": self.trained - self.ready,
            "time/weight_sync_s": self.end - self.trained,
            "time/gen_tokens_per_s": self.tokens / max(self.seconds, 1e-9),
        }
        for i, e in sorted(self.engines.items()):
            busy, paused = e.get("busy", 0.0) + e.get("eval", 0.0), e.get("paused", 0.0)
            m.update({f"time/engine{i}_busy_s": busy, f"time/engine{i}_paused_s": paused,
                      f"time/engine{i}_idle_s": max(0.0, self.seconds - busy - paused)})
        m.update({f"time/buffer_{r}_s": self.buffer.get(r, 0.0) for r in BUFFER_REASONS})
        return m


def step_times(step: int, t: tuple[float, float, float, float], engine_spans: dict[int, list[Span]],
               buffer_spans: list[Span], tokens: int) -> StepTimes:
    """Clip the spans drained at the end of a step to its window t = (start, ready, trained, end)."""
    lo, hi = t[0], t[3]
    engines = {i: {s: clipped(spans, lo, hi, s) for s in ENGINE_STATES} for i, spans in engine_spans.items()}
    buffer = {r: clipped(buffer_spans, lo, hi, r) for r in BUFFER_REASONS}
    return StepTimes(step, *t, engines=engines, buffer=buffer, tokens=tokens)


def summarize(steps: list[StepTimes]) -> dict[str, Any]:
    """The run's fractions and the overlap against the ideal (module docstring); {} with no steps."""
    if not steps:
        return {}
    n = len(steps)
    window = max(sum(s.seconds for s in steps), 1e-9)
    wait = sum(s.ready - s.start for s in steps)
    compute = sum(s.trained - s.ready for s in steps)
    sync = sum(s.end - s.trained for s in steps)
    engines = sorted({i for s in steps for i in s.engines})
    per_engine = {}
    for i in engines:
        busy = sum(s.engines.get(i, {}).get("busy", 0.0) + s.engines.get(i, {}).get("eval", 0.0) for s in steps)
        paused = sum(s.engines.get(i, {}).get("paused", 0.0) for s in steps)
        per_engine[i] = {"busy_frac": busy / window, "paused_frac": paused / window,
                         "idle_frac": max(0.0, 1 - (busy + paused) / window), "busy_s": busy}

    def mean(key: str) -> float:  # over engines
        return sum(e[key] for e in per_engine.values()) / max(len(per_engine), 1)

    gen = mean("busy_s") / n  # G: an engine's seconds of generation per batch (engines work in parallel)
    train = (compute + sync) / n  # T
    step_s = window / n
    ideal = (gen + train) / max(gen, train) if max(gen, train) > 0 else 1.0
    achieved = (gen + train) / step_s if step_s > 0 else 1.0
    tokens = sum(s.tokens for s in steps)
    busy_total = sum(e["busy_s"] for e in per_engine.values())
    return {
        "steps": n,
        "seconds": window,
        "step_s": step_s,
        "learner": {"wait_s": wait / n, "compute_s": compute / n, "sync_s": sync / n, "idle_frac": wait / window},
        "engine": {"busy_frac": mean("busy_frac"), "paused_frac": mean("paused_frac"), "idle_frac": mean("idle_frac")},
        "engines": {str(i): {k: v for k, v in e.items() if k != "busy_s"} for i, e in per_engine.items()},
        "gen_s": gen,
        "train_s": train,
        "ideal_speedup": ideal,
        "achieved_speedup": achieved,
        "overlap_of_ideal": achieved / ideal,
        "tokens_per_s": tokens / window,
        "tokens_per_engine_busy_s": tokens / busy_total if busy_total > 0 else 0.0,
        "buffer_wait_s": {r: sum(s.buffer.get(r, 0.0) for s in steps) for r in BUFFER_REASONS},
    }


def describe(summary: dict[str, Any]) -> list[str]:
    """The few console lines of the end-of-run summary."""
    if not summary:
        return []
    ln, en = summary["learner"], summary["engine"]
    times = (f"time per step {summary['step_s']:.2f}s: learner waits {ln['wait_s']:.2f}s, trains "
             f"{ln['compute_s']:.2f}s, syncs weights {ln['sync_s']:.2f}s; idle: learner {ln['idle_frac']:.0%}, "
             f"engines {en['idle_frac']:.0%} (+{en['paused_frac']:.0%} paused for weight sync)")
    overlap = (f"overlap: {summary['achieved_speedup']:.2f}x over generate-then-train, ideal (G+T)/max(G,T) = "
               f"{summary['ideal_speedup']:.2f}x (G {summary['gen_s']:.2f}s, T {summary['train_s']:.2f}s): "
               f"{summary['overlap_of_ideal']:.0%} of ideal; engines generate "
               f"{summary['tokens_per_engine_busy_s']:,.0f} tok/s while busy")
    return [times, overlap]


class Timeline:
    """The driver's record of a run: its own spans (startup, evals, checkpoints, each step's phases), every
    engine's and the buffer's, and the steps' StepTimes."""

    def __init__(self, origin: float | None = None) -> None:
        self.origin = time.time() if origin is None else origin
        self.learner: list[Span] = []
        self.engines: dict[int, list[Span]] = defaultdict(list)
        self.buffer: list[Span] = []
        self.steps: list[StepTimes] = []

    def mark(self, name: str, start: float, end: float | None = None) -> None:
        """A span on the driver's track (startup, eval, checkpoint), ending now by default."""
        self.learner.append(Span(name, start, time.time() if end is None else end))

    @contextlib.contextmanager
    def during(self, name: str):
        """A driver span around a block (the trace nests the block's own spans under it)."""
        start = time.time()
        try:
            yield
        finally:
            self.mark(name, start)

    def step(self, step: int, t: tuple[float, float, float, float], engine_spans: dict[int, list[Span]],
             buffer_spans: list[Span], tokens: int) -> dict[str, float]:
        """Record one step (t = start, batch ready, trained, end); returns its `time/*` metrics."""
        for name, a, b in zip(LEARNER_PHASES, t, t[1:], strict=False):
            self.learner.append(Span(f"{name} (step {step})", a, b))
        self.add(engine_spans, buffer_spans)
        self.steps.append(step_times(step, t, engine_spans, buffer_spans, tokens))
        return self.steps[-1].metrics()

    def add(self, engine_spans: dict[int, list[Span]], buffer_spans: list[Span]) -> None:
        """Spans for the trace alone (outside any step: the evals before and after RL)."""
        for i, spans in engine_spans.items():
            self.engines[i].extend(spans)
        self.buffer.extend(buffer_spans)

    def summary(self) -> dict[str, Any]:
        return summarize(self.steps)

    def trace(self) -> dict[str, Any]:
        """Chrome Trace Event Format: one process per role, engines and buffer reasons as its threads."""
        def us(t: float) -> int:
            return round((t - self.origin) * 1e6)

        def x(span: Span, pid: int, tid: int, cat: str) -> dict[str, Any]:
            # Whole microseconds, the end rounded as a time of its own: a span that ends where the next
            # begins must not overlap it by a rounding error, or viewers nest the two wrongly.
            return {"name": span.name, "cat": cat, "ph": "X", "ts": us(span.start),
                    "dur": us(span.end) - us(span.start), "pid": pid, "tid": tid}

        events: list[dict[str, Any]] = []

        def name(pid: int, label: str, tid: int | None = None) -> None:
            if tid is None:
                events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": label}})
                events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}})
            else:
                events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": label}})

        name(PID["learner"], "learner (driver)")
        name(PID["learner"], "steps", 0)
        events += [x(s, PID["learner"], 0, "learner") for s in self.learner]
        name(PID["buffer"], "replay buffer")
        for tid, reason in enumerate(BUFFER_REASONS):
            name(PID["buffer"], reason.replace("_", " "), tid)
        events += [x(s, PID["buffer"], BUFFER_REASONS.index(s.name), "buffer") for s in self.buffer
                   if s.name in BUFFER_REASONS]
        name(PID["rollout"], "rollout engines")
        for i, spans in sorted(self.engines.items()):
            name(PID["rollout"], f"engine {i}", i)
            events += [x(s, PID["rollout"], i, "engine") for s in spans]
        for s in self.steps:
            events.append({"name": "generated tok/s", "ph": "C", "ts": us(s.end), "pid": PID["rollout"],
                           "args": {"tok/s": round(s.tokens / max(s.seconds, 1e-9), 1)}})
        return {"traceEvents": events, "displayTimeUnit": "ms",
                "otherData": {"origin_unix_s": self.origin, "source": "temper"}}

    def write_trace(self, path: str | Path) -> str:
        Path(path).write_text(json.dumps(self.trace()))
        return str(path)


def drain(pool: Any, buffer: Any, timeout: float | None = None) -> tuple[dict[int, list[Span]], list[Span]]:
    """Every live engine's spans (a temper.supervisor.WorkerPool) and the buffer's (its actor handle) since
    the last drain. A worker that died, is being replaced or does not answer in 10 s gives none: the pool
    replaces it, and its step reads as idle. timeout: for the buffer (a run that is ending: it may be hung)."""
    import ray

    refs = {i: w.drain_spans.remote() for i, w in enumerate(pool.workers) if i not in pool.starting}
    buffer_spans = ray.get(buffer.drain_spans.remote(), timeout=timeout)
    engines: dict[int, list[Span]] = {}
    for i, ref in refs.items():
        try:
            engines[i] = ray.get(ref, timeout=10)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            engines[i] = []
    return engines, buffer_spans


def describe_startup(startup: dict[str, Any]) -> str:
    """One line: where the time to the first step went (the learner and the engines start in parallel)."""
    engines = startup.get("engines") or []
    parts = ""
    if engines:
        def slowest(key: str) -> float:
            return max(e.get(key, 0.0) for e in engines)

        parts = (f" (importing vLLM {slowest('import_s'):.1f}s, engine processes + model load + KV cache "
                 f"{slowest('engine_s'):.1f}s, scoring pool {slowest('rest_s'):.1f}s)")
    ray_s = startup.get("ray_s")
    cores = startup.get("learner_cores")
    own = f"; the learner has core(s) {', '.join(map(str, cores))} to itself" if cores else ""
    return (f"start-up: Ray {ray_s:.1f}s" if ray_s is not None else "start-up:") + (
        f"; then in parallel the learner {startup['learner_s']:.1f}s and the engine(s) "
        f"{max(startup['workers_s'], default=0.0):.1f}s{parts}; weight-sync handshake {startup['handshake_s']:.1f}s"
        f"{own}")


def describe_phases(prepare_s: float, summary: dict[str, Any], total_s: float) -> str:
    """One line at the end of `temper train`: the run's phases in order, in seconds, and what they add up to.

    prepare_s: config, data checks and, when the demo's assets are not cached yet, its warm start. The rest
    (the last eval, the plot, the final save) is what the others leave of total_s."""
    startup = summary.get("startup") or {}
    up_s = (startup.get("ray_s") or 0.0) + max(startup.get("learner_s", 0.0), *startup.get("workers_s", [0.0])) \
        + startup.get("handshake_s", 0.0)
    parts = {"prepare": prepare_s, "start-up": up_s, "first eval": startup.get("first_eval_s", 0.0),
             "RL": summary.get("rl_seconds", 0.0)}
    parts["last eval and save"] = max(0.0, total_s - sum(parts.values()))
    return "phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in parts.items()) + f"; total {total_s:.1f}s"

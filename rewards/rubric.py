"""The reward rubric: a weighted sum of verifiers, as written in a run config's `[rewards]`, and the one
engine that scores samples with it.

`Rubric(cfg)` scores on `cfg.num_workers` killable processes (rewards/verifier_process.py), each call under
the hard `timeout_s`; `Rubric(cfg, processes=0)` scores in this process, with no timeout (`temper env
try`, tests). Both answer `score` (blocking) and `ascore` (awaited without blocking the event loop).
Verifiers with `isolation == "inline"` (they sandbox and time out their own work) always run in this
process's threads, at least as many as those verifiers' `concurrency` (an HTTP judge's calls mostly wait).

Before a sample goes to a process, the verifier's `quick` check (base.py) runs in the calling thread: a
verdict it reaches from the text alone, in linear time, needs no killable process and no heavy import.
For the math verifier that is an integer label against an integer answer (most GSM8K-style rows), so
`temper rewards score` on such a row answers without a process (they start on first need there), and
close() kills a process that never became ready instead of waiting for its imports to finish.

The breakdown is flat so that it logs as metrics and diffs line by line in `temper rewards replay`:
each term's score under its name (`term.name or term.verifier`), and the term's own breakdown under
`NAME/KEY`, e.g. {"math": 1.0, "math/verdict": "correct", "format": 1.0, "format/formatted": True}.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing as mp
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Self

from pydantic import ValidationError

from temper.configs.load import ConfigError
from temper.configs.schema import RewardsConfig, RewardTerm
from temper.rewards.base import Verifier, VerifyRequest, VerifyResult
from temper.rewards.registry import build_verifier, params_model, resolve_verifier
from temper.rewards.verifier_process import VerifierProcess, run_verifier


def term_name(term: RewardTerm) -> str:
    return term.name or term.verifier


def correct_term_name(cfg: RewardsConfig) -> str:
    """The breakdown key whose full score makes a sample "correct" (what accuracy counts)."""
    return cfg.correct_term or term_name(cfg.terms[0])


def validate_rewards_config(cfg: RewardsConfig) -> None:
    """Check every term's verifier exists and its params validate; ConfigError naming the field."""
    problems = []
    seen: set[str] = set()
    for i, term in enumerate(cfg.terms):
        where = f"rewards.terms[{i}]"
        try:
            obj = resolve_verifier(term.verifier)
        except Exception as e:  # noqa: BLE001 -- a broken plugin is a config error here
            problems.append(f"{where}.verifier: {e}")
            continue
        try:
            params_model(obj).model_validate(term.params)
        except ValidationError as e:
            for err in e.errors():
                loc = ".".join(str(p) for p in err["loc"])
                msg = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
                got = f" (got {err['input']!r})" if err["type"] != "extra_forbidden" and "input" in err else ""
                problems.append(f"{where}.params{'.' + loc if loc else ''}: {msg}{got}")
        name = term_name(term)
        if name in seen:
            problems.append(f"{where}.name: duplicate term name {name!r} (set `name` to tell them apart)")
        seen.add(name)
    if cfg.correct_term is not None and cfg.correct_term not in seen:
        problems.append(f"rewards.correct_term: {cfg.correct_term!r} is not a term name ({sorted(seen)})")
    if problems:
        raise ConfigError("invalid rewards config:\n  " + "\n  ".join(problems))


def combine(terms: list[tuple[str, float]], results: list[VerifyResult], correct_term: str) -> VerifyResult:
    """Weighted sum of per-term results (in term order) into one result with a flat breakdown; correct when
    the term named `correct_term` scored in full."""
    score, seconds = 0.0, 0.0
    breakdown: dict[str, Any] = {}
    errors = []
    for (name, weight), res in zip(terms, results, strict=True):
        score += weight * res.score
        seconds += res.seconds
        breakdown[name] = res.score
        for key, value in res.breakdown.items():
            breakdown[f"{name}/{key}"] = value
        if res.error:
            errors.append(f"{name}: {res.error}")
    return VerifyResult(score, breakdown, "; ".join(errors) or None, seconds, float(breakdown[correct_term]) >= 1.0)


def add_turn_rewards(result: VerifyResult, turn_rewards: tuple[float, ...] | list[float], weight: float) -> VerifyResult:
    """The environment's per-turn rewards, summed and weighted, added to the verifiers' total; the breakdown
    shows them as "env" (the sum) and "env/turns" (each turn's). Correctness stays the verifiers' call."""
    if not turn_rewards:
        return result
    total = float(sum(turn_rewards))
    breakdown = {**result.breakdown, "env": total, "env/turns": list(turn_rewards)}
    return replace(result, score=result.score + weight * total, breakdown=breakdown)


def _quick_check(name: str, params: dict[str, Any]) -> Callable[[VerifyRequest], VerifyResult | None] | None:
    """`request -> VerifyResult | None` running the verifier's own `quick`, or None when it has none."""
    cls = resolve_verifier(name)
    if not isinstance(cls, type):
        return None
    hook = inspect.getattr_static(cls, "quick", None)
    if not isinstance(hook, classmethod) or hook is inspect.getattr_static(Verifier, "quick"):
        return None  # the base's (no quick verdicts), or a plugin's own unrelated `quick`
    validated = params_model(cls).model_validate(params)

    def check(request: VerifyRequest) -> VerifyResult | None:
        start = time.perf_counter()
        try:
            result = cls.quick(validated, request)
        except Exception as e:  # noqa: BLE001 -- the same zero-with-the-reason a process would report
            return VerifyResult(0.0, {}, f"{type(e).__name__}: {e}", time.perf_counter() - start)
        if result is None:
            return None
        return VerifyResult(result.score, result.breakdown, result.error, time.perf_counter() - start)

    return check


class Rubric:
    """Scores requests with the terms of `cfg`; results in request order.

    processes: how many killable scoring processes (default `cfg.num_workers`, 0 there meaning all cores);
        0 here scores every term in this process's threads, with no timeout.
    start_workers: spawn the processes now, so that their imports overlap with each other and with the
        caller's own start-up (training); False spawns each on first need (`temper rewards`, where quick
        checks may decide every row and the next thing after construction is scoring anyway).
    """

    def __init__(self, cfg: RewardsConfig, processes: int | None = None, start_workers: bool = True) -> None:
        self.cfg = cfg
        validate_rewards_config(cfg)
        self.weights = [(term_name(t), t.weight) for t in cfg.terms]
        self.correct_term = correct_term_name(cfg)
        n = (cfg.num_workers or os.cpu_count() or 1) if processes is None else processes
        # Inline terms are built here; the others (and their heavy imports) live in the processes.
        self.inline = [n == 0 or getattr(resolve_verifier(t.verifier), "isolation", "process") == "inline"
                       for t in cfg.terms]
        self._inline_verifiers = {
            i: build_verifier(t.verifier, t.params) for i, t in enumerate(cfg.terms) if self.inline[i]
        }
        self._quick = {i: quick for i, t in enumerate(cfg.terms) if not self.inline[i]
                       and (quick := _quick_check(t.verifier, t.params)) is not None}
        indices = [i for i, inline in enumerate(self.inline) if not inline]
        ctx = mp.get_context("spawn")
        self._workers = [VerifierProcess(ctx, cfg.model_dump_json(), indices) for _ in range(n if indices else 0)]
        for w in self._workers if start_workers else []:
            w.start()
        self._idle: queue.Queue[VerifierProcess] = queue.Queue()
        for w in self._workers:
            self._idle.put(w)
        self._proc_exec = ThreadPoolExecutor(max(1, n), thread_name_prefix="reward-proc")
        waiting = sum(v.concurrency for v in self._inline_verifiers.values())  # e.g. judges' max_concurrency
        self._inline_exec = ThreadPoolExecutor(max(4, n, waiting), thread_name_prefix="reward-inline")
        self._lock = threading.Lock()
        self._stats = {"calls": 0, "errors": 0, "timeouts": 0, "crashes": 0, "seconds": 0.0}
        self._closed = False
        self._finalizer = weakref.finalize(self, Rubric._shutdown, self._workers, self._proc_exec, self._inline_exec)

    # ---- one (term, request) ---------------------------------------------------------------------

    def _in_process(self, index: int, request: VerifyRequest) -> VerifyResult:
        if index in self._quick and (result := self._quick[index](request)) is not None:
            self._count(result, "ok")
            return result
        worker = self._idle.get()
        try:
            result, outcome = worker.call(index, request, self.cfg.timeout_s)
        finally:
            self._idle.put(worker)
        self._count(result, outcome)
        return result

    def _in_thread(self, index: int, request: VerifyRequest) -> VerifyResult:
        result = run_verifier(self._inline_verifiers[index], request)
        self._count(result, "ok")
        return result

    def _count(self, result: VerifyResult, outcome: str) -> None:
        with self._lock:
            self._stats["calls"] += 1
            self._stats["errors"] += result.error is not None
            self._stats["timeouts"] += outcome == "timeout"
            self._stats["crashes"] += outcome == "crash"
            self._stats["seconds"] += result.seconds

    def _submit(self, requests: list[VerifyRequest]) -> list[list[Future[VerifyResult]]]:
        if self._closed:
            raise RuntimeError("Rubric is closed")
        return [
            [
                (self._inline_exec.submit(self._in_thread, i, r) if inline
                 else self._proc_exec.submit(self._in_process, i, r))
                for i, inline in enumerate(self.inline)
            ]
            for r in requests
        ]

    # ---- public ----------------------------------------------------------------------------------

    def score(self, requests: list[VerifyRequest]) -> list[VerifyResult]:
        """Score all requests in parallel; results in the same order."""
        futures = self._submit(requests)
        return [combine(self.weights, [f.result() for f in per_request], self.correct_term) for per_request in futures]

    async def ascore(self, requests: list[VerifyRequest]) -> list[VerifyResult]:
        """Like score, awaited without blocking the event loop (the work runs in threads/processes)."""
        futures = self._submit(requests)
        out = []
        for per_request in futures:
            results = await asyncio.gather(*(asyncio.wrap_future(f) for f in per_request))
            out.append(combine(self.weights, list(results), self.correct_term))
        return out

    def stats(self) -> dict[str, Any]:
        """Counts since construction: calls (term x sample), errors, timeouts, crashes, seconds."""
        with self._lock:
            return {**self._stats, "workers": len(self._workers)}

    @staticmethod
    def _shutdown(workers: list[VerifierProcess], *executors: ThreadPoolExecutor) -> None:
        for ex in executors:
            ex.shutdown(wait=False, cancel_futures=True)
        for w in workers:
            w.stop()

    def close(self) -> None:
        """Stop and reap every scoring process. Idempotent."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

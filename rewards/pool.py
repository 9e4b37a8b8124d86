"""Scoring many samples on all cores, each call under a hard timeout that kills the process.

Why processes and not SIGALRM: an alarm only fires on the main thread (rollout workers score from
threads inside an async Ray actor) and cannot interrupt C-level work (a sympy simplify stuck in a big
integer power). Here each worker is a spawned process (fork is unsafe in a multi-threaded actor) that
holds the rubric's verifiers; the parent sends it one (term, request) at a time and waits at most
`timeout_s`. Past that the worker is SIGKILLed and respawned, and the sample scores 0 with the reason.
Verifiers with `isolation == "inline"` (they sandbox and time out their own work) run in threads here.
Workers exit on close(), when the parent's pipe closes, and — watched by a thread — when the parent dies.

Before a sample goes to a worker, the verifier's `quick` check (base.py) runs here, in the calling thread:
a verdict it reaches from the text alone, in linear time, needs no killable process and no heavy import.
For the math verifier that is an integer label against an integer answer (most GSM8K-style rows), so
`temper rewards score` on such a row answers without a worker (it starts workers on first need), and
close() kills a worker that never became ready instead of waiting for its imports to finish.
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
from typing import Any, Self

from temper.configs.schema import RewardsConfig
from temper.rewards.base import Verifier, VerifyRequest, VerifyResult
from temper.rewards.registry import build_verifier, params_model, resolve_verifier
from temper.rewards.rubric import combine, correct_term_name, run_verifier, term_name, validate_rewards_config

STARTUP_TIMEOUT_S = 120.0  # importing sympy & co. in a fresh process; not part of any sample's budget


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(1)


def _worker_main(conn: Any, cfg_json: str, indices: list[int], parent_pid: int) -> None:
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    try:
        from temper.rewards.registry import build_verifier

        cfg = RewardsConfig.model_validate_json(cfg_json)
        verifiers = {i: build_verifier(cfg.terms[i].verifier, cfg.terms[i].params) for i in indices}
        conn.send(("ready", None))
    except Exception as e:  # noqa: BLE001 -- reported to the parent, which fails the calls
        conn.send(("ready", f"{type(e).__name__}: {e}"))
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        index, request = msg
        result = run_verifier(verifiers[index], request)
        try:
            conn.send(result)
        except Exception as e:  # noqa: BLE001 -- e.g. a breakdown value that does not pickle
            conn.send(VerifyResult(0.0, {}, f"result not serialisable: {type(e).__name__}: {e}", result.seconds))


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
        except Exception as e:  # noqa: BLE001 -- the same zero-with-the-reason a worker would report
            return VerifyResult(0.0, {}, f"{type(e).__name__}: {e}", time.perf_counter() - start)
        if result is None:
            return None
        return VerifyResult(result.score, result.breakdown, result.error, time.perf_counter() - start)

    return check


class _Worker:
    """One killable scoring process; respawned on the next call after a timeout or crash."""

    def __init__(self, ctx: Any, cfg_json: str, indices: list[int]) -> None:
        self.ctx, self.cfg_json, self.indices = ctx, cfg_json, indices
        self.proc: Any = None
        self.conn: Any = None
        self.ready = False

    def start(self) -> None:
        parent_conn, child_conn = self.ctx.Pipe()
        self.proc = self.ctx.Process(
            target=_worker_main, args=(child_conn, self.cfg_json, self.indices, os.getpid()), daemon=True
        )
        self.proc.start()
        child_conn.close()
        self.conn, self.ready = parent_conn, False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join(5)
            self.conn.close()
        self.proc = self.conn = None

    def stop(self) -> None:
        if self.proc is None:
            return
        if not self.ready:  # still importing (or never asked): nothing to finish, so do not wait for it
            self.kill()
            return
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(2)
        self.kill()

    def call(self, index: int, request: VerifyRequest, timeout_s: float) -> tuple[VerifyResult, str]:
        """(result, outcome) with outcome in ok / timeout / crash."""
        if self.proc is None or not self.proc.is_alive():
            self.kill()
            self.start()
        if not self.ready:
            if not self.conn.poll(STARTUP_TIMEOUT_S):
                self.kill()
                return VerifyResult(0.0, {}, "scoring worker did not start"), "crash"
            _, err = self.conn.recv()
            if err is not None:
                self.kill()
                return VerifyResult(0.0, {}, f"scoring worker failed to start: {err}"), "crash"
            self.ready = True
        start = time.perf_counter()
        try:
            self.conn.send((index, request))
            if self.conn.poll(timeout_s):
                return self.conn.recv(), "ok"
        except (EOFError, OSError):
            code = self.proc.exitcode if self.proc is not None else None
            self.kill()
            return VerifyResult(0.0, {}, f"scoring worker crashed (exit code {code})",
                                time.perf_counter() - start), "crash"
        self.kill()
        return VerifyResult(0.0, {}, f"timeout after {timeout_s}s", time.perf_counter() - start), "timeout"


class RewardScorer:
    """Scores requests with the rubric of `cfg` on `cfg.num_workers` processes (0 = all cores).

    start_workers: spawn the worker processes now, so that their imports overlap with each other and
    with the caller's own start-up (training); False spawns each on first need (`temper rewards`, where
    quick checks may decide every row and the next thing after construction is scoring anyway).
    """

    def __init__(self, cfg: RewardsConfig, start_workers: bool = True) -> None:
        self.cfg = cfg
        validate_rewards_config(cfg)
        self.weights = [(term_name(t), t.weight) for t in cfg.terms]
        self.correct_term = correct_term_name(cfg)
        # Only inline verifiers are built here: the others (and their heavy imports) live in the workers.
        self.inline = [getattr(resolve_verifier(t.verifier), "isolation", "process") == "inline" for t in cfg.terms]
        self._inline_verifiers = {
            i: build_verifier(t.verifier, t.params) for i, t in enumerate(cfg.terms) if self.inline[i]
        }
        self._quick = {i: quick for i, t in enumerate(cfg.terms) if not self.inline[i]
                       and (quick := _quick_check(t.verifier, t.params)) is not None}
        indices = [i for i, inline in enumerate(self.inline) if not inline]
        n = cfg.num_workers or os.cpu_count() or 1
        ctx = mp.get_context("spawn")
        self._workers = [_Worker(ctx, cfg.model_dump_json(), indices) for _ in range(n if indices else 0)]
        for w in self._workers if start_workers else []:
            w.start()
        self._idle: queue.Queue[_Worker] = queue.Queue()
        for w in self._workers:
            self._idle.put(w)
        self._proc_exec = ThreadPoolExecutor(max(1, n), thread_name_prefix="reward-proc")
        self._inline_exec = ThreadPoolExecutor(max(4, n), thread_name_prefix="reward-inline")
        self._lock = threading.Lock()
        self._stats = {"calls": 0, "errors": 0, "timeouts": 0, "crashes": 0, "seconds": 0.0}
        self._closed = False
        self._finalizer = weakref.finalize(self, RewardScorer._shutdown, self._workers,
                                           self._proc_exec, self._inline_exec)

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
            raise RuntimeError("RewardScorer is closed")
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

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc is not None]

    @staticmethod
    def _shutdown(workers: list[_Worker], *executors: ThreadPoolExecutor) -> None:
        for ex in executors:
            ex.shutdown(wait=False, cancel_futures=True)
        for w in workers:
            w.stop()

    def close(self) -> None:
        """Stop and reap every worker process. Idempotent."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

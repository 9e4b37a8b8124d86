"""The rollout workers of a run, kept alive: a dead or hung worker is replaced and its prompts re-issued.

The driver waits on everything (a batch, a train step, a weight sync, an eval) through `WorkerPool.wait`,
which polls the workers about once a second while it waits:

    a worker is dead      its `run()` call ended: the actor died (ActorDiedError, the process was killed)
                          or its engine died (EngineDied);
    a worker is hung      it holds groups in flight and finished none for rollout.stall_timeout_s (the
                          buffer's `worker_progress`): it is killed;
    then                  its in-flight groups go back to its queue in the buffer (rollout/dispatch.py), a
                          replacement actor starts a fresh engine, and once the engine is up and the learner
                          is idle (between steps) the learner re-handshakes with every engine and pushes its
                          current weights, and the replacement starts generating: the re-issued groups first.

Other workers keep generating throughout (the learner's weight sync skips a dead engine: actors.RayEngines).
A worker whose loop raised anything else (most groups failing: a bad dataset or environment) is not
replaced: that would fail again, so the run stops. Past rollout.max_restarts the run stops too.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import ray

from temper.actors import RayEngines, make_worker
from temper.cleanup import Teardown, remove_orphaned_shm
from temper.configs.schema import RunConfig
from temper.rollout.affinity import learner_cores
from temper.stops import RunError, WorkersLost, describe

POLL_S = 1.0
NOTE_EVERY_S = 60.0


def hung(progress: dict[int, dict[str, float]], starting: set[int], stall_s: float) -> list[tuple[int, str]]:
    """(worker, why) for each worker that holds groups in flight and finished none for over stall_s seconds.
    progress: the buffer's `worker_progress`; starting: workers being replaced (their groups are requeued)."""
    return [
        (i, (f"hung: {p['in_flight']:g} group(s) in flight and none finished in {p['idle_s']:.0f}s "
             f"(rollout.stall_timeout_s = {stall_s:g})"))
        for i, p in sorted(progress.items())
        if i not in starting and p["idle_s"] > stall_s
    ]


class WorkerPool:
    def __init__(self, cfg: RunConfig, teardown: Teardown, start_weights: str | None, start_version: int,
                 log=print) -> None:
        """teardown: the run's record of what it started, which already holds its buffer and learner actors;
        the workers this pool starts are added to it. start_weights/start_version: what every engine (a
        replacement's too) loads first: a checkpoint folder (None: model.path) and its version."""
        assert teardown.buffer is not None and teardown.learner is not None
        self.cfg, self.buffer, self.learner, self.log = cfg, teardown.buffer, teardown.learner, log
        self.teardown = teardown
        self.start_weights, self.start_version = start_weights, start_version
        n = cfg.rollout.num_workers
        self.workers = [self._new_actor(i) for i in range(n)]
        self.incarnations = [0] * n
        self.run_refs: dict[Any, int] = {}
        self.starting: dict[int, tuple[Any, Any]] = {}  # slot -> (replacement actor, its start() ref)
        self.running = False
        self.restarts: list[dict[str, Any]] = []
        self.step = start_version  # for log lines and the restart records
        self.backend = cfg.weight_sync.backend  # "auto" on CPU is decided by the handshake (start)
        self.startup: dict[str, Any] = {}
        self.learner_cores = learner_cores(cfg, bool(teardown.private_ray))  # [] pins nothing

    def _new_actor(self, i: int) -> Any:
        actor = make_worker(self.cfg, i, self.buffer)
        self.teardown.workers.append(actor)
        return actor

    @property
    def lost_groups(self) -> int:
        return sum(r["lost_groups"] for r in self.restarts)

    # ------------------------------------------------------------------ start, run, stop
    def start(self) -> None:
        """Start every engine (and the learner's vLLM import meanwhile), then the weight-transfer handshake."""
        refs = [w.start.remote(self.start_weights, self.start_version) for w in self.workers]
        refs.append(self.learner.prepare_sync.remote())
        t0, note = time.monotonic(), time.monotonic() + NOTE_EVERY_S
        pending, up_at = list(refs), {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
            up_at.update({r: time.monotonic() - t0 for r in ready})
            if pending and time.monotonic() > note:  # e.g. other jobs hold the resources this run needs
                free = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
                self.log(f"still starting after {time.monotonic() - t0:.0f}s: {len(pending)} of {len(refs)} actors "
                         f"not up (free in the cluster now: {free or 'no CPUs or GPUs'})")
                note += NOTE_EVERY_S
        *engines, _ = ray.get(refs)  # raises the first start failure
        self.teardown.engines_up.extend(self.workers)
        t1 = time.monotonic()
        self.backend = ray.get(self.learner.connect_engines.remote(RayEngines(self.workers), len(self.workers)))
        # Where start-up went (the learner and the engines start in parallel; summary.json "startup").
        self.startup = {"learner_s": up_at[refs[-1]], "workers_s": [up_at[r] for r in refs[:-1]],
                        "engines": engines, "handshake_s": time.monotonic() - t1, "learner_cores": self.learner_cores}
        if self.learner_cores:
            ray.get([self.learner.own_cores.remote(self.learner_cores),
                     *(w.keep_off_cores.remote(self.learner_cores) for w in self.workers)])

    def run(self) -> None:
        self.running = True
        for i, w in enumerate(self.workers):
            if i not in self.starting:
                self.run_refs[w.run.remote(self.incarnations[i])] = i

    def stop(self) -> None:
        """Ask every loop to finish and wait for them briefly; a worker that does not is killed by teardown."""
        with contextlib.suppress(Exception):
            ray.wait([w.stop.remote() for w in self.live()], num_returns=len(self.live()), timeout=30)
        with contextlib.suppress(Exception):
            ray.get(self.buffer.close.remote(), timeout=30)
        with contextlib.suppress(Exception):
            ray.wait(list(self.run_refs), num_returns=len(self.run_refs), timeout=60)
        self.run_refs.clear()
        self.running = False

    def live(self) -> list[Any]:
        return [w for i, w in enumerate(self.workers) if i not in self.starting]

    # ------------------------------------------------------------------ waiting while supervising
    def wait(self, ref: Any, version: int, learner_idle: bool) -> None:
        """Until `ref` is ready (not fetched), supervising the workers. learner_idle: a replacement may join
        now (the learner is between steps, holding `version`)."""
        while True:
            ready, _ = ray.wait([ref], timeout=POLL_S)
            self.check(version, learner_idle)
            if ready:
                return

    def get(self, ref: Any, version: int, learner_idle: bool) -> Any:
        self.wait(ref, version, learner_idle)
        return ray.get(ref)

    def check(self, version: int, learner_idle: bool) -> None:
        """One round: ended loops, hung workers, replacements that are ready."""
        if self.run_refs:
            ended, _ = ray.wait(list(self.run_refs), num_returns=len(self.run_refs), timeout=0)
            for ref in ended:
                self._died(self.run_refs.pop(ref), self._why_ended(ref))
        progress = ray.get(self.buffer.worker_progress.remote())
        for i, reason in hung(progress, set(self.starting), self.cfg.rollout.stall_timeout_s):
            self._drop_run_ref(i)
            with contextlib.suppress(Exception):
                ray.kill(self.workers[i], no_restart=True)
            self._died(i, reason)
        for i, (actor, start_ref) in list(self.starting.items()):
            if ray.wait([start_ref], timeout=0)[0] and learner_idle:
                self._join(i, actor, start_ref, version)

    def _why_ended(self, ref: Any) -> str:
        """A run() that ended while the run goes on: what killed it. Raises RunError when replacing the
        worker cannot help (its loop raised: most groups failing is the data or environment)."""
        from temper.rollout.worker import EngineDied

        try:
            ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, EngineDied):
                return str(e.cause)
            raise RunError(describe(e)) from None
        except ray.exceptions.RayActorError as e:
            return describe(e)
        return "its loop stopped unexpectedly"

    def _drop_run_ref(self, i: int) -> None:
        for ref, slot in list(self.run_refs.items()):
            if slot == i:
                del self.run_refs[ref]

    # ------------------------------------------------------------------ replacing a worker
    def _died(self, i: int, reason: str) -> None:
        limit = self.cfg.rollout.max_restarts
        if len(self.restarts) >= limit:
            raise WorkersLost(f"rollout worker {i}: {reason}; rollout.max_restarts = {limit} "
                           f"({len(self.restarts)} restart(s) used), so the run stops")
        old = self.starting.pop(i, (self.workers[i], None))[0]
        with contextlib.suppress(Exception):
            ray.kill(old, no_restart=True)
        requeued = ray.get(self.buffer.requeue_worker.remote(i))
        self.incarnations[i] = requeued["incarnation"]
        actor = self._new_actor(i)
        self.starting[i] = (actor, actor.start.remote(self.start_weights, self.start_version))
        self.restarts.append({"worker": i, "step": self.step, "reason": reason, "lost_groups": requeued["lost"],
                              "died_at": time.time(), "seconds": None})
        self.log(f"rollout worker {i} died at step {self.step}: {reason}. {requeued['lost']} group(s) it had in "
                 f"flight will be generated again; starting a replacement "
                 f"(restart {len(self.restarts)} of rollout.max_restarts = {limit})")

    def _join(self, i: int, actor: Any, start_ref: Any, version: int) -> None:
        del self.starting[i]
        try:
            ray.get(start_ref)
        except ray.exceptions.RayError as e:
            self.workers[i] = actor
            self._died(i, f"its replacement failed to start: {describe(e)}")
            return
        self.workers[i] = actor
        self.teardown.engines_up.append(actor)
        if self.learner_cores:
            ray.get(actor.keep_off_cores.remote(self.learner_cores))
        self.backend = ray.get(self.learner.connect_engines.remote(RayEngines(self.workers), len(self.workers)))
        if version != self.start_version:  # the engine holds the run's start weights: bring it to `version`
            ray.get(self.learner.sync_weights.remote(version))
        if self.running:
            self.run_refs[actor.run.remote(self.incarnations[i])] = i
        record = next(r for r in reversed(self.restarts) if r["worker"] == i)
        record["seconds"] = round(time.time() - record["died_at"], 1)
        self.log(f"rollout worker {i} replaced in {record['seconds']:.1f}s: a fresh engine at version {version}")
        remove_orphaned_shm(self.teardown.shm_before)  # the dead engine's segments

    # ------------------------------------------------------------------ eval across whatever is alive
    def evaluate(self, rows: list[dict[str, Any]], version: int, without_tools: bool = False) -> list[dict[str, Any]]:
        """Greedy episodes over `rows`, split across the live workers: per row {"correct", "tool_calls",
        "tool_errors"} (see RolloutWorker.evaluate); a part whose worker dies is redone on another (the learner
        is idle during evals, so a replacement may join meanwhile)."""
        n = len(self.workers)
        parts = {k: rows[k::n] for k in range(n) if rows[k::n]}
        done: dict[int, list[dict[str, Any]]] = {}
        while len(done) < len(parts):
            live = [i for i in range(n) if i not in self.starting]
            if not live:
                self.check(version, learner_idle=True)
                time.sleep(POLL_S)
                continue
            todo = [k for k in parts if k not in done]
            refs = {self.workers[live[j % len(live)]].evaluate.remote(parts[k], without_tools): (k, live[j % len(live)])
                    for j, k in enumerate(todo)}
            for ref, (k, i) in refs.items():
                self.wait(ref, version, learner_idle=True)
                try:
                    done[k] = ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    if i not in self.starting:  # not already seen dead through its run() call
                        self._drop_run_ref(i)
                        self._died(i, describe(e))
        return [item for k in sorted(done) for item in done[k]]

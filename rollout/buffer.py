"""The replay buffer: complete groups in, fresh batches out, and the throttle that bounds staleness.

Two mechanisms keep data fresh, as in AReaL:
- a *throttle* on the producer side: a worker may start a new group only while
  `started < (learner_version + max_staleness + 1) * batch_groups + dropped`, so workers can run at most
  `max_staleness` versions ahead of the learner (0 = sync mode: exactly one batch per version);
- a *filter* on the consumer side: `get_batch` drops any group whose oldest token is more than
  `max_staleness` versions older than the learner, whatever the throttle let through (partial rollouts
  that straddled several updates, a slow worker).
Dropped groups (stale, zero-variance, overflow) are counted by reason and reported with each batch.

With a `PromptDispatch` (rollout/dispatch.py) the buffer also decides which prompt each worker generates
next (`next_prompt`: a slot and a prompt in one step) and remembers what every worker has in flight, so
the driver can hand a dead worker's groups to its replacement (`requeue_worker`) and spot a hung one
(`worker_progress`); batches then come in issue order, so a sync-mode run is reproducible.

A plain asyncio class: tests drive it directly; temper/actors.py makes it a Ray actor, and workers reach it
through `RemoteBuffer` below.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, deque
from typing import Any

from temper.configs.schema import BufferConfig
from temper.rollout.activity import Activity, Span
from temper.rollout.dispatch import PromptDispatch, Ticket
from temper.rollout.types import Group, Sample, episode_metrics, json_default


class ReplayBuffer:
    def __init__(
        self, cfg: BufferConfig, batch_groups: int, rollouts_path: str | None = None,
        dispatch: PromptDispatch | None = None,
    ) -> None:
        self.cfg = cfg
        self.batch_groups = batch_groups
        self.dispatch = dispatch
        self.groups: deque[Group] = deque()
        self._seq: dict[str, int] = {}  # group_id -> issue order, for held groups that came through dispatch
        self._last_progress: dict[int, float] = {}  # worker -> monotonic time it last got or returned a group
        self._incarnation: dict[int, int] = {}  # worker -> how many times it was replaced
        self.late_duplicates = 0
        self.generated_tokens = 0  # policy tokens of every group put (kept here: a dead worker's count survives)
        self.failed_groups = 0
        self.learner_version = 0
        self.started = 0
        self.added = 0
        self.consumed = 0
        self.dropped: Counter[str] = Counter()
        self._dropped_since_batch: Counter[str] = Counter()
        self._batch_stats: dict[str, Any] = {}
        self._changed = asyncio.Condition()
        # Why anyone waits here (throttle, capacity, waiting_for_groups), drained by the driver each step.
        self.activity = Activity()
        self._rollouts = open(rollouts_path, "a") if rollouts_path else None  # noqa: SIM115 (closed in close())
        self._closed = False

    # ------------------------------------------------------------------ producer side
    def _allowance(self) -> int:
        return (self.learner_version + self.cfg.max_staleness + 1) * self.batch_groups + sum(self.dropped.values())

    async def acquire_slot(self) -> bool:
        """Wait until a worker may start one more group; False once the buffer is closed."""
        def free() -> bool:
            return self._closed or (self.started < self._allowance() and len(self.groups) < self.cfg.capacity_groups)

        async with self._changed:
            if not free():  # held: by the staleness throttle, or by a full buffer
                with self.activity.during("throttle" if self.started >= self._allowance() else "capacity"):
                    await self._changed.wait_for(free)
            if self._closed:
                return False
            self.started += 1
            return True

    async def next_prompt(self, worker: int, incarnation: int = 0) -> Ticket | None:
        """Wait for a slot, then the worker's next prompt from the dispatch. None once the buffer is closed, or
        when `incarnation` is not the worker's current one (a call from a worker since declared dead must not
        take a prompt that its replacement is owed)."""
        assert self.dispatch is not None, "next_prompt needs a PromptDispatch"
        if not await self.acquire_slot():
            return None
        async with self._changed:
            if incarnation != self._incarnation.get(worker, 0):
                self.started -= 1
                self._changed.notify_all()
                return None
            self._last_progress[worker] = time.monotonic()
            return self.dispatch.issue(worker)

    async def release_slot(self, group_id: str | None = None) -> None:
        """A started group was abandoned (its episode failed): give the slot back; its prompt is not retried."""
        async with self._changed:
            if self.dispatch is not None and group_id is not None:
                status, ticket = self.dispatch.finish(group_id)
                if status != "in_flight":
                    return  # its worker was declared dead and its slot already given back
                self._last_progress[ticket.worker] = time.monotonic()
            self.failed_groups += 1
            self.started -= 1
            self._changed.notify_all()

    def _accept(self, group: Group) -> bool:
        """Dispatch bookkeeping for a finished group; False for a late duplicate (see rollout/dispatch.py)."""
        if self.dispatch is None:
            return True
        status, ticket = self.dispatch.finish(group.group_id)
        if status == "unknown":
            self.late_duplicates += 1
            return False
        if status == "queued":  # its slot was given back when the worker was declared dead: take it again
            self.started += 1
        self._seq[group.group_id] = ticket.seq
        self._last_progress[ticket.worker] = time.monotonic()
        return True

    async def requeue_worker(self, worker: int) -> dict[str, int]:
        """The worker is dead: its in-flight groups go back to its queue and their slots are freed.

        Returns {"lost": groups that will be generated again, "incarnation": what its replacement passes to
        next_prompt}."""
        async with self._changed:
            lost = self.dispatch.requeue(worker) if self.dispatch is not None else 0
            self.started -= lost
            self._incarnation[worker] = self._incarnation.get(worker, 0) + 1
            self._last_progress.pop(worker, None)
            self._changed.notify_all()
            return {"lost": lost, "incarnation": self._incarnation[worker]}

    def worker_progress(self) -> dict[int, dict[str, float]]:
        """Per worker with groups in flight: how many, and seconds since it last got or returned one."""
        if self.dispatch is None:
            return {}
        now = time.monotonic()
        out = {}
        for w in range(len(self.dispatch.cursors)):
            n = self.dispatch.in_flight_count(w)
            if n:
                out[w] = {"in_flight": n, "idle_s": now - self._last_progress.get(w, now)}
        return out

    async def put(self, group: Group) -> None:
        async with self._changed:
            if not self._accept(group):
                return
            self.added += 1
            self.generated_tokens += sum(sum(s.loss_mask) for s in group.samples)
            if self._rollouts is not None:
                for s in group.samples:
                    self._rollouts.write(json.dumps(s.to_json(), default=json_default) + "\n")
                self._rollouts.flush()
            if self.cfg.drop_zero_variance and len(set(group.rewards)) == 1:
                self._drop("zero_variance")
                self._seq.pop(group.group_id, None)
            else:
                self.groups.append(group)
            self._changed.notify_all()

    # ------------------------------------------------------------------ consumer side
    def _drop(self, reason: str) -> None:
        self.dropped[reason] += 1
        self._dropped_since_batch[reason] += 1

    def _drop_stale(self) -> None:
        fresh = deque()
        for g in self.groups:
            if self.learner_version - g.min_version > self.cfg.max_staleness:
                self._drop("stale")
                self._seq.pop(g.group_id, None)
            else:
                fresh.append(g)
        self.groups = fresh

    async def set_version(self, version: int) -> None:
        """The learner published `version` to every worker: open the throttle for it."""
        async with self._changed:
            self.learner_version = version
            self._changed.notify_all()

    async def get_batch(self, n_groups: int, learner_version: int, timeout: float | None = None) -> list[Group]:
        """The oldest n fresh groups for a learner at `learner_version` (see `batch_stats` for the drops).

        Returns the groups alone so a Ray driver can hand the result straight to the learner actor.
        Raises TimeoutError when they do not arrive within `timeout` seconds (a dead or stuck worker)."""
        async with self._changed:
            self.learner_version = max(self.learner_version, learner_version)
            self._changed.notify_all()

            def ready() -> bool:
                self._drop_stale()
                return len(self.groups) >= n_groups or self._closed

            try:
                if not ready():
                    with self.activity.during("waiting_for_groups"):
                        await asyncio.wait_for(self._changed.wait_for(ready), timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"no batch of {n_groups} fresh groups within {timeout:.0f}s (buffer: {self.stats()}). "
                    "Workers crashed or stalled, or every group is dropped: with drop_zero_variance, a policy "
                    "that never (or always) earns reward gives nothing to train on."
                ) from None
            if len(self.groups) < n_groups:
                raise RuntimeError("buffer closed while the learner waited for a batch")
            batch = [self.groups.popleft() for _ in range(n_groups)]
            if self.dispatch is not None:
                batch.sort(key=lambda g: self._seq.pop(g.group_id))
            self.consumed += n_groups
            staleness = [learner_version - g.min_version for g in batch]
            self._batch_stats = {
                "batch/group_ids": [g.group_id for g in batch],
                "buffer/size": len(self.groups),
                "buffer/staleness_mean": sum(staleness) / len(staleness),
                "buffer/staleness_max": max(staleness),
                **episode_metrics([s for g in batch for s in g.samples]),
                **{f"buffer/dropped_{k}": v for k, v in self._dropped_since_batch.items()},
            }
            self._dropped_since_batch.clear()
            self._changed.notify_all()
            return batch

    def batch_stats(self) -> dict[str, Any]:
        """Staleness of the last batch and the groups dropped (by reason) since the batch before it."""
        return dict(self._batch_stats)

    # ------------------------------------------------------------------ bookkeeping
    def drain_spans(self) -> list[Span]:
        """When producers were held (throttle / capacity) or the learner waited (waiting_for_groups) since
        the last call (rollout/activity.py)."""
        return self.activity.drain()

    def stats(self) -> dict[str, Any]:
        return {
            "size": len(self.groups),
            "started": self.started,
            "added": self.added,
            "consumed": self.consumed,
            "learner_version": self.learner_version,
            "dropped": dict(self.dropped),
            "late_duplicates": self.late_duplicates,
            "generated_tokens": self.generated_tokens,
            "failed_groups": self.failed_groups,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: held groups, counters, and the dispatch's cursors and in-flight
        groups (JSON-serialisable)."""
        return {
            **self.stats(),
            "groups": [
                {"group_id": g.group_id, "seq": self._seq.get(g.group_id),
                 "samples": [s.to_json() for s in g.samples]}
                for g in self.groups
            ],
            "dispatch": self.dispatch.state_dict() if self.dispatch is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.groups = deque(
            Group(g["group_id"], tuple(Sample.from_json(s) for s in g["samples"])) for g in state["groups"]
        )
        self._seq = {g["group_id"]: g["seq"] for g in state["groups"] if g.get("seq") is not None}
        self.learner_version = state["learner_version"]
        self.added, self.consumed = state["added"], state["consumed"]
        self.dropped = Counter(state["dropped"])
        if self.dispatch is not None and state.get("dispatch"):
            self.dispatch.load_state_dict(state["dispatch"])  # in-flight groups come back queued
        # Groups in flight at save time hold no slot now: they take one again when issued.
        self.started = self.consumed + len(self.groups) + sum(self.dropped.values())

    async def close(self) -> None:
        async with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._rollouts is not None:
            self._rollouts.close()
            self._rollouts = None


class RemoteBuffer:
    """What a RolloutWorker needs of the buffer (`BufferLike`), forwarded to the buffer's Ray actor."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def acquire_slot(self) -> bool:
        return await self.handle.acquire_slot.remote()

    async def next_prompt(self, worker: int, incarnation: int = 0) -> Ticket | None:
        return await self.handle.next_prompt.remote(worker, incarnation)

    async def release_slot(self, group_id: str | None = None) -> None:
        await self.handle.release_slot.remote(group_id)

    async def put(self, group: Group) -> None:
        await self.handle.put.remote(group)

"""The replay buffer: complete groups in, fresh batches out, and the throttle that bounds staleness.

Two mechanisms keep data fresh, as in AReaL:
- a *throttle* on the producer side: a worker may start a new group only while
  `started < (learner_version + max_staleness + 1) * batch_groups + dropped`, so workers can run at most
  `max_staleness` versions ahead of the learner (0 = sync mode: exactly one batch per version);
- a *filter* on the consumer side: `get_batch` drops any group whose oldest token is more than
  `max_staleness` versions older than the learner, whatever the throttle let through (partial rollouts
  that straddled several updates, a slow worker).
Dropped groups (stale, zero-variance, overflow) are counted by reason and reported with each batch.

A plain asyncio class: tests drive it directly; temper/actors.py makes it a Ray actor, and workers reach it
through `RemoteBuffer` below.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, deque
from typing import Any

from temper.configs.schema import BufferConfig
from temper.rollout.types import Group, Sample, episode_metrics


class ReplayBuffer:
    def __init__(self, cfg: BufferConfig, batch_groups: int, rollouts_path: str | None = None) -> None:
        self.cfg = cfg
        self.batch_groups = batch_groups
        self.groups: deque[Group] = deque()
        self.learner_version = 0
        self.started = 0
        self.added = 0
        self.consumed = 0
        self.dropped: Counter[str] = Counter()
        self._dropped_since_batch: Counter[str] = Counter()
        self._batch_stats: dict[str, Any] = {}
        self._changed = asyncio.Condition()
        self._rollouts = open(rollouts_path, "a") if rollouts_path else None  # noqa: SIM115 (closed in close())
        self._closed = False

    # ------------------------------------------------------------------ producer side
    def _allowance(self) -> int:
        return (self.learner_version + self.cfg.max_staleness + 1) * self.batch_groups + sum(self.dropped.values())

    async def acquire_slot(self) -> bool:
        """Wait until a worker may start one more group; False once the buffer is closed."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._closed
                or (self.started < self._allowance() and len(self.groups) < self.cfg.capacity_groups)
            )
            if self._closed:
                return False
            self.started += 1
            return True

    async def release_slot(self) -> None:
        """A started group was abandoned (its episode failed): give the slot back."""
        async with self._changed:
            self.started -= 1
            self._changed.notify_all()

    async def put(self, group: Group) -> None:
        async with self._changed:
            self.added += 1
            if self._rollouts is not None:
                for s in group.samples:
                    self._rollouts.write(json.dumps(s.to_json()) + "\n")
                self._rollouts.flush()
            if self.cfg.drop_zero_variance and len(set(group.rewards)) == 1:
                self._drop("zero_variance")
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
            self.consumed += n_groups
            staleness = [learner_version - g.min_version for g in batch]
            self._batch_stats = {
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
    def stats(self) -> dict[str, Any]:
        return {
            "size": len(self.groups),
            "started": self.started,
            "added": self.added,
            "consumed": self.consumed,
            "learner_version": self.learner_version,
            "dropped": dict(self.dropped),
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: held groups and counters (JSON-serialisable)."""
        return {
            **self.stats(),
            "groups": [{"group_id": g.group_id, "samples": [s.to_json() for s in g.samples]} for g in self.groups],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.groups = deque(
            Group(g["group_id"], tuple(Sample.from_json(s) for s in g["samples"])) for g in state["groups"]
        )
        self.learner_version = state["learner_version"]
        self.added, self.consumed = state["added"], state["consumed"]
        self.dropped = Counter(state["dropped"])
        # Groups in flight at save time are lost; restart the throttle from what is held.
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

    async def release_slot(self) -> None:
        await self.handle.release_slot.remote()

    async def put(self, group: Group) -> None:
        await self.handle.put.remote(group)

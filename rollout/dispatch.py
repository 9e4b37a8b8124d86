"""Which prompt each rollout worker generates next, kept where it outlives the workers: in the buffer.

Each worker walks its own shard of the training rows (rows[i::num_workers]) epoch by epoch, in an order
shuffled by (seed, worker, epoch). That walk (epoch, the epoch's order, position) is a `ShardCursor`. The
`PromptDispatch` holds one cursor per worker and every group that was issued but has not come back:

- a worker that dies loses its in-flight groups; `requeue` puts them back at the front of its queue, and
  its replacement generates them first, so no prompt of the epoch is skipped;
- a group is accepted once: a dead worker's `put` that arrives after its group was issued again is a
  late duplicate, and is refused, so no prompt is trained twice;
- a checkpoint stores the cursors and the groups in flight (as queued), so a resumed run issues exactly
  the prompts an uninterrupted run would have, in the same order.

Most frameworks checkpoint a sampler's epoch and seed and lose what was in flight (the skipped/repeated
prompts NeMo-RL, AReaL and OpenRLHF users report); the in-flight set is the part that makes resume exact.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Ticket:
    """One issued group. group_id "w{worker}-e{epoch}-r{row}" is the same on every issue of that prompt."""

    group_id: str
    worker: int
    row: int
    """Index into the worker's shard."""
    seq: int
    """Issue order across all workers (kept when issued again); a batch is ordered by it."""


class ShardCursor:
    """One worker's walk over its shard: which epoch, that epoch's order, and how far into it."""

    def __init__(self, worker: int, size: int, seed: int, shuffle: bool) -> None:
        assert size > 0, "a worker's shard has no rows"
        self.worker, self.size, self.seed, self.shuffle = worker, size, seed, shuffle
        self.epoch = 0
        self.position = 0
        self.order = self._order(0)

    def _order(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        if self.shuffle:  # a string seed: the same order on every machine and Python version
            random.Random(f"temper-data-{self.seed}-{self.worker}-{epoch}").shuffle(order)
        return order

    def next(self) -> tuple[int, int]:
        """(epoch, row) of the next prompt; moves on."""
        if self.position == self.size:
            self.epoch, self.position = self.epoch + 1, 0
            self.order = self._order(self.epoch)
        row = self.order[self.position]
        self.position += 1
        return self.epoch, row

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "order": list(self.order), "position": self.position, "size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.order, self.position = state["epoch"], list(state["order"]), state["position"]


class PromptDispatch:
    """Cursors and in-flight groups of every worker (see the module docstring). Plain data: the buffer holds
    it and serialises every call."""

    def __init__(self, shard_sizes: list[int], seed: int, shuffle: bool) -> None:
        self.cursors = [ShardCursor(w, n, seed, shuffle) for w, n in enumerate(shard_sizes)]
        self.in_flight: dict[str, Ticket] = {}
        self.queued: list[deque[Ticket]] = [deque() for _ in shard_sizes]
        self.next_seq = 0

    @staticmethod
    def shard_sizes(num_rows: int, num_workers: int) -> list[int]:
        """len(rows[w::num_workers]) for each worker w."""
        return [len(range(w, num_rows, num_workers)) for w in range(num_workers)]

    def issue(self, worker: int) -> Ticket:
        """The worker's next group: one it lost, else the next of its shard."""
        if self.queued[worker]:
            ticket = self.queued[worker].popleft()
        else:
            epoch, row = self.cursors[worker].next()
            ticket = Ticket(f"w{worker}-e{epoch}-r{row}", worker, row, self.next_seq)
            self.next_seq += 1
        self.in_flight[ticket.group_id] = ticket
        return ticket

    def finish(self, group_id: str) -> tuple[Literal["in_flight", "queued", "unknown"], Ticket | None]:
        """A group came back (or failed). "in_flight": as expected. "queued": from a worker that was declared
        dead, before the group was issued again: taken off the queue. "unknown": a late duplicate."""
        if group_id in self.in_flight:
            return "in_flight", self.in_flight.pop(group_id)
        for queue in self.queued:
            for ticket in queue:
                if ticket.group_id == group_id:
                    queue.remove(ticket)
                    return "queued", ticket
        return "unknown", None

    def requeue(self, worker: int) -> int:
        """The worker died: its in-flight groups go to the front of its queue, in issue order. Returns how many."""
        lost = sorted((t for t in self.in_flight.values() if t.worker == worker), key=lambda t: t.seq)
        for t in lost:
            del self.in_flight[t.group_id]
        self.queued[worker].extendleft(reversed(lost))
        return len(lost)

    def in_flight_count(self, worker: int) -> int:
        return sum(t.worker == worker for t in self.in_flight.values())

    def state_dict(self) -> dict[str, Any]:
        """Cursors, and every group issued but not back (in flight or queued) as queued, in issue order."""
        pending = sorted([*self.in_flight.values(), *(t for q in self.queued for t in q)], key=lambda t: t.seq)
        return {
            "cursors": [c.state_dict() for c in self.cursors],
            "queued": [asdict(t) for t in pending],
            "next_seq": self.next_seq,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = [c["size"] for c in state["cursors"]]
        mine = [c.size for c in self.cursors]
        if saved != mine:
            raise ValueError(
                f"the checkpoint's prompt shards have {saved} rows per worker and this run's have {mine}: "
                "resume with the same data.train, data.on_bad_line and rollout.num_workers"
            )
        for cursor, s in zip(self.cursors, state["cursors"], strict=True):
            cursor.load_state_dict(s)
        self.in_flight = {}
        self.queued = [deque() for _ in self.cursors]
        for t in state["queued"]:
            self.queued[t["worker"]].append(Ticket(**t))
        self.next_seq = state["next_seq"]

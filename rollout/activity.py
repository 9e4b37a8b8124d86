"""Where a process's time goes, as wall-clock spans the driver collects every step (temper/timeline.py).

An engine is *busy* while at least one request is in it, *paused* while a weight update holds it (pause
wins over busy: requests wait), and idle otherwise; a buffer's producers are *held* while at least one
prompt request waits on the staleness throttle or a full buffer. Both are the same bookkeeping: a count
per state, and a span from the moment a count leaves zero until it returns to zero. Concurrent holders
of one state make one span, so spans never add up to more than the wall time they cover.

`drain()` hands over the spans closed since the last call and cuts every open one at that moment (the
rest is handed over next time), so nothing is reported twice and a long span shows up in every step it
covers. Times are `time.time()` seconds: the driver, engines and buffer share the clock on one node
(across nodes, spans are as aligned as the nodes' clocks).
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """One stretch of wall time in one state; crosses processes (Ray pickles it)."""

    name: str
    """The state: "busy", "paused", "throttle", "capacity", "waiting_for_groups", ..."""
    start: float
    """time.time() seconds."""
    end: float


class Activity:
    """Counts holders per state; a state is on while its count is above zero. Not thread-safe: one asyncio
    loop (a Ray async actor) drives it."""

    def __init__(self, clock=time.time, exclusive: tuple[str, ...] = ()) -> None:
        self.clock = clock
        self.exclusive = exclusive
        """States that hide all others while on (an engine paused for a weight update is not busy)."""
        self._count: Counter[str] = Counter()
        self._open: dict[str, float] = {}  # state -> when its current span started
        self._closed: list[Span] = []

    def _visible(self, name: str) -> bool:
        hidden = any(self._count[x] > 0 for x in self.exclusive if x != name)
        return self._count[name] > 0 and not hidden

    def _refresh(self) -> None:
        """Open or close spans so that exactly the visible states have one open."""
        now = self.clock()
        for name in list(self._count):
            if self._visible(name) and name not in self._open:
                self._open[name] = now
            elif not self._visible(name) and name in self._open:
                self._closed.append(Span(name, self._open.pop(name), now))

    def enter(self, name: str) -> None:
        self._count[name] += 1
        self._refresh()

    def leave(self, name: str) -> None:
        assert self._count[name] > 0, f"leave({name!r}) without enter"
        self._count[name] -= 1
        self._refresh()

    @contextmanager
    def during(self, name: str):
        self.enter(name)
        try:
            yield
        finally:
            self.leave(name)

    def drain(self) -> list[Span]:
        """Spans closed since the last drain, and every open span up to now (continued from now on)."""
        now = self.clock()
        out = self._closed + [Span(name, start, now) for name, start in self._open.items()]
        self._closed = []
        self._open = dict.fromkeys(self._open, now)
        return [s for s in out if s.end > s.start]

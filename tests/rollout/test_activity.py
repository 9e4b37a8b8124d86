"""Activity spans (rollout/activity.py) on a hand-driven clock, and the spans the buffer and worker record."""

import asyncio

from test_buffer import group

from temper.configs.schema import BufferConfig
from temper.rollout.activity import Activity, Span
from temper.rollout.buffer import ReplayBuffer


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_concurrent_holders_make_one_span():
    clock = Clock()
    a = Activity(clock)
    clock.t = 1
    a.enter("busy")
    clock.t = 2
    a.enter("busy")  # a second request while the first runs: still one busy stretch
    clock.t = 3
    a.leave("busy")
    clock.t = 5
    a.leave("busy")
    assert a.drain() == [Span("busy", 1, 5)]
    assert a.drain() == []


def test_pause_hides_busy_and_drain_cuts_open_spans():
    clock = Clock()
    a = Activity(clock, exclusive=("paused",))
    a.enter("busy")  # t=0
    clock.t = 2
    a.enter("paused")  # a weight update: the request in flight waits
    clock.t = 3
    a.leave("paused")
    clock.t = 4
    assert a.drain() == [Span("busy", 0, 2), Span("paused", 2, 3), Span("busy", 3, 4)]
    clock.t = 6
    a.leave("busy")
    assert a.drain() == [Span("busy", 4, 6)]  # the rest of the open span, not all of it again


def test_buffer_records_why_producers_and_learner_waited():
    async def main():
        buf = ReplayBuffer(BufferConfig(max_staleness=0), batch_groups=1)
        assert await buf.acquire_slot()  # the one group version 0 may start
        held = asyncio.create_task(buf.acquire_slot())  # the next waits for version 1: the throttle
        batch = asyncio.create_task(buf.get_batch(1, learner_version=0))  # nothing put yet: waits
        for _ in range(3):
            await asyncio.sleep(0)  # both reach their wait
        await buf.set_version(1)
        assert await held
        await buf.put(group("g1", 1))
        await asyncio.wait_for(batch, 10)
        return {s.name for s in buf.drain_spans()}

    assert asyncio.run(main()) == {"throttle", "waiting_for_groups"}

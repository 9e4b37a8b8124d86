"""Which prompt each worker gets, and what happens to a dead worker's groups: the dispatch alone, then
through the buffer (slots, late duplicates, stale callers, checkpoints), no Ray."""

import asyncio
import json

from temper.configs.schema import BufferConfig
from temper.rollout.buffer import ReplayBuffer
from temper.rollout.dispatch import PromptDispatch, ShardCursor
from temper.rollout.types import Group, Sample


def test_shard_sizes_split_rows_like_the_workers_do():
    assert PromptDispatch.shard_sizes(10, 3) == [len(range(10)[i::3]) for i in range(3)] == [4, 3, 3]


def test_a_cursor_visits_every_row_once_per_epoch_in_a_seeded_order():
    a, b = ShardCursor(0, 5, seed=7, shuffle=True), ShardCursor(0, 5, seed=7, shuffle=True)
    first = [a.next() for _ in range(10)]
    assert first == [b.next() for _ in range(10)]  # same seed, same order
    assert sorted(r for e, r in first if e == 0) == list(range(5))
    assert sorted(r for e, r in first if e == 1) == list(range(5))
    assert [r for e, r in first if e == 0] != [r for e, r in first if e == 1]  # reshuffled each epoch
    plain = ShardCursor(0, 3, seed=7, shuffle=False)
    assert [plain.next() for _ in range(4)] == [(0, 0), (0, 1), (0, 2), (1, 0)]


def test_a_dead_workers_groups_are_issued_first_and_in_order_to_its_replacement():
    d = PromptDispatch([4, 4], seed=0, shuffle=False)
    t = [d.issue(0) for _ in range(3)]
    other = d.issue(1)
    assert [x.group_id for x in t] == ["w0-e0-r0", "w0-e0-r1", "w0-e0-r2"] and other.group_id == "w1-e0-r0"
    assert d.finish("w0-e0-r1") == ("in_flight", t[1])
    assert d.requeue(0) == 2 and d.in_flight_count(0) == 0 and d.in_flight_count(1) == 1
    again = [d.issue(0) for _ in range(3)]
    assert [x.group_id for x in again] == ["w0-e0-r0", "w0-e0-r2", "w0-e0-r3"]
    assert [x.seq for x in again[:2]] == [t[0].seq, t[2].seq]  # the original issue order


def test_finish_tells_late_duplicates_apart():
    d = PromptDispatch([3], seed=0, shuffle=False)
    a = d.issue(0)
    d.requeue(0)
    assert d.finish(a.group_id) == ("queued", a)  # the dead worker's put beat its replacement: taken off the queue
    b = d.issue(0)
    assert b.group_id == "w0-e0-r1"
    d.requeue(0)
    assert d.issue(0) == b  # issued again to the replacement
    assert d.finish(b.group_id) == ("in_flight", b)
    assert d.finish(b.group_id) == ("unknown", None)  # the second copy


def test_state_round_trip_turns_in_flight_groups_into_queued_ones():
    d = PromptDispatch([3, 2], seed=1, shuffle=True)
    issued = [d.issue(0), d.issue(1), d.issue(0)]
    d.finish(issued[0].group_id)
    state = json.loads(json.dumps(d.state_dict()))
    r = PromptDispatch([3, 2], seed=1, shuffle=True)
    r.load_state_dict(state)
    assert r.issue(0) == issued[2] and r.issue(1) == issued[1]
    assert r.issue(0) == d.issue(0)  # then on along the same cursor


def test_restoring_into_different_shards_is_refused():
    d = PromptDispatch([3, 2], seed=1, shuffle=True)
    r = PromptDispatch([5], seed=1, shuffle=True)
    try:
        r.load_state_dict(d.state_dict())
    except ValueError as e:
        assert "rollout.num_workers" in str(e)
    else:
        raise AssertionError("a checkpoint of other shards was accepted")


# ------------------------------------------------------------------ through the buffer
def group(gid: str, version: int = 0) -> Group:
    s = Sample(id=f"{gid}-s0", group_id=gid, prompt="p", response="r", label="1", prompt_token_ids=(1,),
               completion_token_ids=(2, 3), logprobs=(-0.1, -0.2), loss_mask=(1, 1), versions=(version, version),
               reward=1.0, correct=True)
    return Group(gid, (s, s))


def buffer(sizes=(8,), staleness=0, batch=2) -> ReplayBuffer:
    return ReplayBuffer(BufferConfig(max_staleness=staleness), batch, dispatch=PromptDispatch(list(sizes), 0, False))


def test_requeue_frees_the_slots_so_a_replacement_can_generate_in_sync_mode():
    async def main():
        buf = buffer()
        a, b = await buf.next_prompt(0), await buf.next_prompt(0)
        blocked = asyncio.create_task(buf.next_prompt(0))  # sync mode: 2 slots per version
        await asyncio.sleep(0.05)
        assert not blocked.done()
        lost = await buf.requeue_worker(0)
        # the dead worker's waiting call gets nothing (its incarnation is over) ...
        assert await asyncio.wait_for(blocked, 1) is None
        # ... its replacement gets the lost groups, in order, and the throttle still holds at 2
        again = [await buf.next_prompt(0, lost["incarnation"]), await buf.next_prompt(0, lost["incarnation"])]
        third = asyncio.create_task(buf.next_prompt(0, lost["incarnation"]))
        await asyncio.sleep(0.05)
        assert not third.done()
        third.cancel()
        return lost, [a, b], again

    lost, first, again = asyncio.run(main())
    assert lost == {"lost": 2, "incarnation": 1} and again == first


def test_a_late_put_from_a_dead_worker_is_accepted_once():
    async def main():
        buf = buffer()
        t = await buf.next_prompt(0)
        inc = (await buf.requeue_worker(0))["incarnation"]
        await buf.put(group(t.group_id))  # the dead worker's put arrives after the requeue
        reissued = await buf.next_prompt(0, inc)  # the next prompt, not the one already back
        await buf.put(group(t.group_id))  # and a second copy is refused
        return t, reissued, buf.stats()

    t, reissued, stats = asyncio.run(main())
    assert reissued.group_id != t.group_id
    assert stats["size"] == 1 and stats["late_duplicates"] == 1 and stats["started"] == 2


def test_batches_come_in_issue_order_whatever_order_groups_finish_in():
    async def main():
        buf = buffer(batch=3)
        tickets = [await buf.next_prompt(0) for _ in range(3)]
        for t in reversed(tickets):
            await buf.put(group(t.group_id))
        batch = await buf.get_batch(3, 0)
        return [t.group_id for t in tickets], [g.group_id for g in batch], buf.batch_stats()

    issued, batch, stats = asyncio.run(main())
    assert batch == issued and stats["batch/group_ids"] == issued


def test_a_checkpoint_of_the_buffer_reissues_its_in_flight_groups(tmp_path):
    """The driver's checkpoint: held groups keep their place, in-flight ones are generated again first."""
    async def main():
        buf = buffer(batch=3)
        tickets = [await buf.next_prompt(0) for _ in range(3)]
        await buf.put(group(tickets[1].group_id))
        state = json.loads(json.dumps(buf.state_dict()))
        restored = buffer(batch=3)
        restored.load_state_dict(state)
        again = [await restored.next_prompt(0), await restored.next_prompt(0)]
        for t in again:
            await restored.put(group(t.group_id))
        batch = await restored.get_batch(3, 0)
        return tickets, again, [g.group_id for g in batch]

    tickets, again, batch = asyncio.run(main())
    assert again == [tickets[0], tickets[2]]
    assert batch == [t.group_id for t in tickets]


def test_worker_progress_reports_in_flight_groups_and_idle_time():
    async def main():
        buf = buffer(sizes=(4, 4), staleness=3)
        await buf.next_prompt(1)
        await asyncio.sleep(0.05)
        return buf.worker_progress()

    progress = asyncio.run(main())
    assert list(progress) == [1] and progress[1]["in_flight"] == 1 and progress[1]["idle_s"] >= 0.04

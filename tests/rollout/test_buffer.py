"""The replay buffer's throttle, staleness filter, drop accounting and save/restore, driven directly."""

import asyncio
import json

import pytest

from temper.configs.schema import BufferConfig
from temper.rollout.buffer import ReplayBuffer
from temper.rollout.types import Group, Sample


def group(gid: str, version: int, rewards=(0.0, 1.0), newest: int | None = None) -> Group:
    samples = tuple(
        Sample(
            id=f"{gid}-s{j}", group_id=gid, prompt="p", response="r", label="1",
            prompt_token_ids=(1, 2), completion_token_ids=(3,), logprobs=(-0.5,), loss_mask=(1,),
            versions=(version, version if newest is None else newest), reward=r, correct=r >= 1,
        )
        for j, r in enumerate(rewards)
    )
    return Group(gid, samples)


def run(coro):
    return asyncio.run(coro)


def test_get_batch_returns_oldest_groups_first():
    async def main():
        buf = ReplayBuffer(BufferConfig(max_staleness=1), batch_groups=2)
        for i in range(3):
            await buf.put(group(f"g{i}", 0))
        batch = await buf.get_batch(2, learner_version=0)
        return [g.group_id for g in batch], buf.stats()

    ids, stats = run(main())
    assert ids == ["g0", "g1"]
    assert stats["size"] == 1 and stats["consumed"] == 2


def test_stale_groups_are_dropped_and_counted():
    async def main():
        buf = ReplayBuffer(BufferConfig(max_staleness=1), batch_groups=1)
        await buf.put(group("old", 0))          # staleness 2 at version 2: dropped
        await buf.put(group("edge", 1))         # staleness 1: kept
        await buf.put(group("straddle", 0, newest=2))  # oldest token from v0: dropped
        batch = await buf.get_batch(1, learner_version=2)
        return [g.group_id for g in batch], buf.batch_stats(), buf.stats()

    ids, bstats, stats = run(main())
    assert ids == ["edge"]
    assert bstats["buffer/dropped_stale"] == 2
    assert bstats["buffer/staleness_max"] == 1
    assert stats["dropped"] == {"stale": 2}


def test_zero_variance_groups_dropped_when_asked():
    async def main():
        buf = ReplayBuffer(BufferConfig(drop_zero_variance=True), batch_groups=1)
        await buf.put(group("flat", 0, rewards=(1.0, 1.0)))
        await buf.put(group("useful", 0, rewards=(0.0, 1.0)))
        return [g.group_id for g in await buf.get_batch(1, 0)], buf.stats()["dropped"]

    ids, dropped = run(main())
    assert ids == ["useful"] and dropped == {"zero_variance": 1}


def test_throttle_sync_mode_allows_one_batch_per_version():
    """max_staleness=0: with batch_groups=2, exactly 2 slots until the learner publishes version 1."""

    async def main():
        buf = ReplayBuffer(BufferConfig(max_staleness=0), batch_groups=2)
        assert await buf.acquire_slot() and await buf.acquire_slot()
        third = asyncio.create_task(buf.acquire_slot())
        await asyncio.sleep(0.05)
        blocked = not third.done()
        await buf.set_version(1)
        return blocked, await asyncio.wait_for(third, 1)

    blocked, got = run(main())
    assert blocked and got


def test_throttle_async_mode_allows_staleness_plus_one_batches():
    async def main():
        buf = ReplayBuffer(BufferConfig(max_staleness=1), batch_groups=2)
        for _ in range(4):  # (0 + 1 + 1) * 2
            assert await buf.acquire_slot()
        fifth = asyncio.create_task(buf.acquire_slot())
        await asyncio.sleep(0.05)
        return fifth.done()

    assert run(main()) is False


def test_dropped_groups_return_their_slots():
    """A dropped group must not shrink what the learner can ever get (no deadlock)."""

    async def main():
        buf = ReplayBuffer(BufferConfig(max_staleness=0, drop_zero_variance=True), batch_groups=1)
        assert await buf.acquire_slot()
        await buf.put(group("flat", 0, rewards=(0.0, 0.0)))
        return await asyncio.wait_for(buf.acquire_slot(), 1)

    assert run(main()) is True


def test_close_releases_waiting_workers():
    async def main():
        buf = ReplayBuffer(BufferConfig(max_staleness=0), batch_groups=1)
        await buf.acquire_slot()
        waiting = asyncio.create_task(buf.acquire_slot())
        await asyncio.sleep(0.01)
        await buf.close()
        return await asyncio.wait_for(waiting, 1)

    assert run(main()) is False


def test_get_batch_times_out_when_nothing_arrives():
    async def main():
        buf = ReplayBuffer(BufferConfig(), batch_groups=1)
        await buf.get_batch(1, 0, timeout=0.05)

    with pytest.raises(TimeoutError, match="no batch of 1 fresh groups"):
        run(main())


def test_rollouts_are_written_as_jsonl(tmp_path):
    import json

    path = tmp_path / "rollouts.jsonl"

    async def main():
        buf = ReplayBuffer(BufferConfig(), batch_groups=1, rollouts_path=str(path))
        await buf.put(group("g", 3))
        await buf.close()

    run(main())
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 2
    assert rows[0]["versions"] == [3, 3] and rows[1]["reward"] == 1.0
    for key in ("id", "prompt", "response", "label", "metadata", "messages", "reward", "breakdown", "error"):
        assert key in rows[0]


def test_save_and_restore(tmp_path):
    async def main():
        buf = ReplayBuffer(BufferConfig(max_staleness=2), batch_groups=1)
        for i in range(3):
            await buf.put(group(f"g{i}", i))
        await buf.get_batch(1, learner_version=1)
        (tmp_path / "buf.json").write_text(json.dumps(buf.state_dict()))  # as the driver's checkpoint does
        restored = ReplayBuffer(BufferConfig(max_staleness=2), batch_groups=1)
        restored.load_state_dict(json.loads((tmp_path / "buf.json").read_text()))
        return buf.stats(), restored.stats(), [g.group_id for g in restored.groups], restored.groups[0]

    before, after, ids, first = run(main())
    assert ids == ["g1", "g2"]
    assert after["consumed"] == before["consumed"] == 1 and after["learner_version"] == 1
    assert isinstance(first.samples[0].versions, tuple) and first.samples[0].completion_token_ids == (3,)

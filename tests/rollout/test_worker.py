"""RolloutWorker's loop without Ray or vLLM: a fake engine (fixed answers) beside the real environment,
tokenizer, rubric and buffer. The real engine runs in test_engine.py and the real job tests."""

import asyncio

import pytest

from temper.configs.schema import BufferConfig, RunConfig
from temper.environments.single_turn import SingleTurnEnvironment
from temper.rewards.rubric import Rubric
from temper.rollout.buffer import ReplayBuffer
from temper.rollout.dispatch import PromptDispatch
from temper.rollout.engine import Completion
from temper.rollout.worker import RolloutWorker


class FakeEngine:
    """Answers `\\boxed{label}` for even-indexed samples and `\\boxed{0}` otherwise."""

    def __init__(self, tokenizer, answers):
        self.tokenizer = tokenizer
        self.answers = answers
        self.version = 3

    async def generate(self, prompt_ids, n, greedy=False, max_tokens=None):
        text = self.tokenizer.decode(prompt_ids)
        label = next(v for k, v in self.answers.items() if k in text)
        outs = []
        for i in range(n):
            reply = f"\\boxed{{{label if i % 2 == 0 else 0}}}"
            ids = tuple(self.tokenizer.encode(reply, add_special_tokens=False))
            outs.append(Completion(ids, (-0.1,) * len(ids), reply, "stop", (self.version,) * len(ids)))
        return outs


def one_shard(rows):
    return PromptDispatch(PromptDispatch.shard_sizes(len(rows), 1), seed=0, shuffle=True)


def make_worker(demo_assets, buffer, env_cls=SingleTurnEnvironment):
    from transformers import AutoTokenizer

    from temper.configs.data import load_rows

    cfg = RunConfig.model_validate(
        {"model": {"path": demo_assets["model"]}, "data": {"train": demo_assets["train"]},
         "rollout": {"group_size": 4, "max_concurrent_groups": 2}, "rewards": {"num_workers": 1}}
    )
    worker = RolloutWorker(cfg, 0, buffer)
    tok = AutoTokenizer.from_pretrained(demo_assets["model"])
    rows = load_rows(demo_assets["train"])
    worker.attach(FakeEngine(tok, {r["prompt"]: r["label"] for r in rows}), Rubric(cfg.rewards),
                  env_cls(env_cls.Params(), tok, "prompt", None))
    return worker, rows


class ClosingEnvironment(SingleTurnEnvironment):
    """Counts aclose(): the worker closes what its environment holds (an MCP server) when its loop ends."""

    closed = 0

    async def aclose(self):
        ClosingEnvironment.closed += 1


def test_loop_fills_the_buffer_with_scored_groups(demo_assets):
    async def main():
        worker, rows = make_worker(demo_assets, None, ClosingEnvironment)
        worker.buffer = buffer = ReplayBuffer(BufferConfig(max_staleness=0), batch_groups=3, dispatch=one_shard(rows))
        run = asyncio.create_task(worker.run())
        batch = await buffer.get_batch(3, learner_version=3, timeout=60)
        await worker.stop()
        await buffer.close()
        await run
        worker.rubric.close()
        return batch, worker.stats()

    batch, stats = asyncio.run(main())
    assert len(batch) == 3 and stats["finished_groups"] >= 3
    assert ClosingEnvironment.closed == 1
    for group in batch:
        assert [s.reward for s in group.samples] == [1.0, 0.0, 1.0, 0.0]
        assert [s.correct for s in group.samples] == [True, False, True, False]
        for s in group.samples:
            assert s.versions == (3, 3) and len(s.logprobs) == len(s.completion_token_ids) == sum(s.loss_mask)
            assert s.response.startswith("\\boxed{") and "label" not in s.metadata and "id" in s.metadata


def test_evaluate_is_greedy_and_scored(demo_assets):
    async def main():
        worker, rows = make_worker(demo_assets, None)
        items = await worker.evaluate(rows[:5])
        worker.rubric.close()
        return items

    # greedy = sample 0 = the right answer; the single-turn environment calls no tools
    assert asyncio.run(main()) == [{"correct": True, "tool_calls": 0, "tool_errors": 0}] * 5


class BrokenEnvironment(SingleTurnEnvironment):
    async def run_group(self, row, generate, n):
        raise KeyError("no such field")


def test_a_worker_whose_groups_keep_failing_stops_loudly(demo_assets):
    async def main():
        worker, rows = make_worker(demo_assets, None, BrokenEnvironment)
        worker.buffer = ReplayBuffer(BufferConfig(), batch_groups=64, dispatch=one_shard(rows))
        try:
            await asyncio.wait_for(worker.run(), 60)
        finally:
            worker.rubric.close()

    with pytest.raises(RuntimeError, match=r"groups failed, 0 succeeded; last error:[\s\S]*KeyError"):
        asyncio.run(main())


class DyingEngine(FakeEngine):
    """Answers the first `ok` requests, then dies as a vLLM engine does when its process is killed: every
    request fails and `errored` turns true."""

    def __init__(self, tokenizer, answers, ok):
        super().__init__(tokenizer, answers)
        self.ok = ok
        self.errored = False

    async def generate(self, prompt_ids, n, greedy=False, max_tokens=None):
        if self.ok <= 0:
            self.errored = True
            raise RuntimeError("EngineDeadError: EngineCore encountered an issue")
        self.ok -= 1
        await asyncio.sleep(0.01)
        return await super().generate(prompt_ids, n, greedy, max_tokens)


def test_a_dead_engine_ends_the_loop_and_keeps_its_groups_in_flight_for_a_replacement(demo_assets):
    from temper.rollout.worker import EngineDied

    async def main():
        worker, rows = make_worker(demo_assets, None)
        worker.engine = DyingEngine(worker.engine.tokenizer, worker.engine.answers, ok=3)
        worker.buffer = buffer = ReplayBuffer(BufferConfig(max_staleness=4), batch_groups=2, dispatch=one_shard(rows))
        try:
            with pytest.raises(EngineDied, match="the vLLM engine died: RuntimeError: EngineDeadError"):
                await asyncio.wait_for(worker.run(), 60)
        finally:
            worker.rubric.close()
        stats = buffer.stats()
        lost = await buffer.requeue_worker(0)
        return worker, stats, lost

    worker, stats, lost = asyncio.run(main())
    assert worker.failed_groups == 0  # a dead engine is not the groups' fault
    assert 1 <= stats["added"] <= 3 and stats["failed_groups"] == 0
    # every group it took and did not put (failed in the engine, or cancelled mid-scoring) is handed back
    assert lost["lost"] == stats["started"] - stats["added"] > 0


class PausingEngine(FakeEngine):
    async def weights_start(self):
        pass

    async def weights_finish(self, version):
        self.version = version


def test_worker_records_busy_eval_and_paused_spans(demo_assets):
    """What the driver's timeline drains each step: generating (busy), evaluating, paused for weights."""
    async def main():
        worker, rows = make_worker(demo_assets, None)
        worker.engine = PausingEngine(worker.engine.tokenizer, worker.engine.answers)
        await worker.evaluate(rows[:2])
        await worker.rollout_group("g0", rows[0])
        await worker.weights_start()
        await worker.weights_finish(4)
        worker.rubric.close()
        return worker.drain_spans(), worker.drain_spans()

    spans, again = asyncio.run(main())
    assert {s.name for s in spans} == {"eval", "busy", "paused"}
    assert all(s.end > s.start for s in spans) and again == []

"""The rubric scoring in killable processes: order, parallelism, hard timeouts that kill, crashes, async,
no lingering processes; and the same rubric scoring in this process (processes=0)."""

import asyncio
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import time

import pytest

from temper.configs.schema import RewardsConfig, RewardTerm
from temper.rewards.base import VerifyRequest
from temper.rewards.rubric import Rubric

PLUGIN = textwrap.dedent('''
    import os, time
    from pydantic import BaseModel
    from temper.rewards.base import Verifier, VerifyResult

    class Slow(Verifier):
        """Sleeps the number of seconds in the response; 'spin' burns CPU forever; 'exit' dies."""
        def verify(self, request):
            if request.response == "spin":
                while True:
                    pass
            if request.response == "exit":
                os._exit(3)
            if request.response == "raise":
                raise TypeError("bad input")
            t0 = time.time()
            time.sleep(float(request.response))
            return VerifyResult(1.0, {"pid": os.getpid(), "t0": t0, "t1": time.time()})

    class Inline(Verifier):
        isolation = "inline"
        def verify(self, request):
            return VerifyResult(1.0, {"pid": os.getpid()})

    class Quick(Verifier):
        """quick() decides 'q:SCORE' (and breaks on 'boom'); the rest goes to a worker that takes init_s to start."""
        class Params(BaseModel):
            init_s: float = 0.0

        def __init__(self, params=None):
            super().__init__(params)
            time.sleep(self.params.init_s)

        @classmethod
        def quick(cls, params, request):
            if request.response == "boom":
                raise ValueError("quick broke")
            if request.response.startswith("q:"):
                return VerifyResult(float(request.response[2:]), {"pid": os.getpid()})
            return None

        def verify(self, request):
            return VerifyResult(0.5, {"pid": os.getpid()})
''')


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "pool_fixture_verifiers.py").write_text(PLUGIN)
    sys.path.insert(0, str(folder))  # spawned workers inherit the parent's sys.path
    yield folder
    sys.path.remove(str(folder))


def _cfg(timeout_s=1.0, workers=2, *terms):
    return RewardsConfig(terms=list(terms) or [RewardTerm(verifier="pool_fixture_verifiers:Slow", name="Slow")],
                         timeout_s=timeout_s, num_workers=workers)


def _scoring_pids(before=()):
    """This process's live multiprocessing children (the rubrics' scoring processes), less those in `before`."""
    return sorted(p.pid for p in mp.active_children() if p.pid not in before)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is not alive
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.fixture(scope="module")
def scorer(plugin_path):
    with Rubric(_cfg()) as s:
        s.score([VerifyRequest(response="0")] * 2)  # wait for both workers to be up
        yield s


def test_order_and_parallelism(scorer):
    results = scorer.score([VerifyRequest(response="0.3", label=i) for i in range(4)])
    assert [r.score for r in results] == [1.0] * 4
    assert len({r.breakdown["Slow/pid"] for r in results}) == 2  # both workers used
    # ...at the same time: some two calls in different workers were asleep together
    spans = [(r.breakdown["Slow/pid"], r.breakdown["Slow/t0"], r.breakdown["Slow/t1"]) for r in results]
    assert any(p != q and a0 < b1 and b0 < a1 for p, a0, a1 in spans for q, b0, b1 in spans)


def test_timeout_kills_and_respawns(scorer):
    before = scorer.stats()
    pids = _scoring_pids()
    start = time.perf_counter()
    results = scorer.score([VerifyRequest(response="spin"), VerifyRequest(response="0")])
    assert time.perf_counter() - start < 15  # a hang guard: the 1 s timeout, not the spin, ended it (see error)
    assert results[0].score == 0.0 and results[0].error == "Slow: timeout after 1.0s"
    assert results[1].score == 1.0
    assert scorer.stats()["timeouts"] == before["timeouts"] + 1
    assert any(not _alive(p) for p in pids)  # the spinning process was killed, not left running
    again = scorer.score([VerifyRequest(response="0")] * 2)  # and the pool still works
    assert [r.score for r in again] == [1.0, 1.0]


def test_errors_and_crashes_are_zero_with_reason(scorer):
    raised, crashed = scorer.score([VerifyRequest(response="raise"), VerifyRequest(response="exit")])
    assert raised.score == 0.0 and raised.error == "Slow: TypeError: bad input"
    assert crashed.score == 0.0 and "crashed" in crashed.error
    assert scorer.stats()["errors"] >= 2 and scorer.stats()["crashes"] >= 1


def test_ascore_does_not_block_the_event_loop(scorer):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        results = await scorer.ascore([VerifyRequest(response="0.5")] * 2)
        task.cancel()
        return results, ticks

    results, ticks = asyncio.run(main())
    assert [r.score for r in results] == [1.0, 1.0]
    assert ticks >= 20  # ~50 ticks in 0.5 s if the loop stayed free


def test_inline_verifiers_run_in_the_parent(plugin_path):
    cfg = _cfg(1.0, 1, RewardTerm(verifier="pool_fixture_verifiers:Inline", name="Inline"))
    before = _scoring_pids()
    with Rubric(cfg) as s:
        assert _scoring_pids(before) == []  # no process terms, no processes
        (res,) = s.score([VerifyRequest(response="x")])
    assert res.breakdown["Inline/pid"] == os.getpid()


def test_quick_verdicts_come_from_the_caller_without_waiting_for_a_worker(plugin_path):
    slow_start = RewardTerm(verifier="pool_fixture_verifiers:Quick", name="Quick", params={"init_s": 120})
    start = time.perf_counter()
    before = _scoring_pids()
    with Rubric(_cfg(5.0, 1, slow_start)) as s:
        decided, broken = s.score([VerifyRequest(response="q:1"), VerifyRequest(response="boom")])
        pids = _scoring_pids(before)
    assert time.perf_counter() - start < 60  # a hang guard: neither the scores nor close() waited for the 120 s start
    assert decided.score == 1.0 and decided.breakdown["Quick/pid"] == os.getpid()
    assert broken.score == 0.0 and broken.error == "Quick: ValueError: quick broke"
    assert len(pids) == 1 and not _alive(pids[0])  # the still-starting worker was killed
    quick_term = RewardTerm(verifier="pool_fixture_verifiers:Quick", name="Quick")
    with Rubric(_cfg(5.0, 1, quick_term), start_workers=False) as s:
        s.score([VerifyRequest(response="q:0")])
        assert _scoring_pids(before) == []  # what `temper rewards` does: processes start on first need
        (undecided,) = s.score([VerifyRequest(response="x")])
        assert s.stats()["calls"] == 2 and len(_scoring_pids(before)) == 1
    assert undecided.score == 0.5 and undecided.breakdown["Quick/pid"] != os.getpid()  # verify() in a worker


def test_close_reaps_workers(plugin_path):
    before = _scoring_pids()
    s = Rubric(_cfg(1.0, 2))
    s.score([VerifyRequest(response="0")] * 2)
    pids = _scoring_pids(before)
    s.close()
    assert len(pids) == 2 and not any(_alive(p) for p in pids)


def test_workers_die_with_their_parent(plugin_path):
    script = textwrap.dedent(f'''
        import multiprocessing as mp, os, sys
        sys.path.insert(0, {str(plugin_path)!r})
        from temper.configs.schema import RewardsConfig, RewardTerm
        from temper.rewards.base import VerifyRequest
        from temper.rewards.rubric import Rubric
        if __name__ == "__main__":
            s = Rubric(RewardsConfig(terms=[RewardTerm(verifier="pool_fixture_verifiers:Slow", name="Slow")],
                                           num_workers=2, timeout_s=30))
            s.score([VerifyRequest(response="0")] * 2)
            print(" ".join(str(p.pid) for p in mp.active_children()), flush=True)
            os._exit(0)  # no close(), no atexit: a parent that dies
    ''')
    out = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2, out.stderr
    deadline = time.time() + 5
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def test_math_through_the_pool_many_samples():
    cfg = RewardsConfig(terms=[RewardTerm(verifier="math")], num_workers=1, timeout_s=10)
    reqs = [VerifyRequest(response=rf"\boxed{{{i}}}", label=i if i % 2 else i + 1) for i in range(100)]
    with Rubric(cfg) as s:
        results = s.score(reqs)
    assert [r.score for r in results] == [float(i % 2) for i in range(100)]


def test_processes_zero_scores_every_term_in_this_process(plugin_path):
    """What `temper env try` uses: no process is started, every verifier runs here, sync or async."""
    cfg = _cfg(1.0, 2, RewardTerm(verifier="pool_fixture_verifiers:Slow", name="Slow"),
               RewardTerm(verifier="pool_fixture_verifiers:Quick", name="Quick", weight=0.5))
    before = _scoring_pids()
    with Rubric(cfg, processes=0) as s:
        (res,) = s.score([VerifyRequest(response="0")])
        (again,) = asyncio.run(s.ascore([VerifyRequest(response="raise")]))
        assert _scoring_pids(before) == [] and s.stats()["workers"] == 0
    # Slow scores 1 and Quick's verify() 0.5 (its quick() leaves "0" undecided): 1 * 1 + 0.5 * 0.5
    assert res.score == 1.25 and res.breakdown["Slow/pid"] == res.breakdown["Quick/pid"] == os.getpid()
    assert again.error == "Slow: TypeError: bad input" and again.score == 0.25

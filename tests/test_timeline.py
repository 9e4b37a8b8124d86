"""The step timeline's arithmetic (temper/timeline.py) on hand-made spans, and its trace file's format."""

import json
from pathlib import Path

import pytest

from temper.rollout.activity import Span
from temper.timeline import Timeline, describe, step_times, summarize


def two_steps():
    """Step 1: [0, 3.5]: the learner waits 1 s, trains 2 s, syncs 0.5 s; engine 0 busy [-1, 1] (1 s inside the
    window), paused [3, 3.5], busy again [3.5, 3.8] (after the window: not this step's).
    Step 2: [4, 7]: waits 0.5 s, trains 2 s, syncs 0.5 s; engine 0 busy [3.8, 5] (1 s inside), paused [6.5, 7].
    The buffer's producers are held by the throttle over [2, 10]: 1.5 s of step 1, all 3 s of step 2."""
    throttle = [Span("throttle", 2, 10)]
    s1 = step_times(1, (0, 1, 3, 3.5), {0: [Span("busy", -1, 1), Span("paused", 3, 3.5), Span("busy", 3.5, 3.8)]},
                    throttle, tokens=100)
    s2 = step_times(2, (4, 4.5, 6.5, 7), {0: [Span("busy", 3.8, 5), Span("paused", 6.5, 7)]}, throttle, tokens=300)
    return s1, s2


def test_step_metrics_add_up_to_the_step():
    s1, _ = two_steps()
    m = s1.metrics()
    assert m["time/learner_wait_s"] == 1 and m["time/learner_compute_s"] == 2 and m["time/weight_sync_s"] == 0.5
    assert m["time/engine0_busy_s"] == 1 and m["time/engine0_paused_s"] == 0.5
    assert m["time/engine0_idle_s"] == 2  # 3.5 - 1 - 0.5
    assert m["time/buffer_throttle_s"] == 1.5 and m["time/buffer_waiting_for_groups_s"] == 0
    assert m["time/gen_tokens_per_s"] == pytest.approx(100 / 3.5)


def test_summary_fractions_and_overlap_by_hand():
    s = summarize(list(two_steps()))
    # window 6.5 s; learner waits 1.5, trains 4, syncs 1; engine busy 2, paused 1, idle 3.5
    assert s["seconds"] == 6.5 and s["step_s"] == 3.25
    assert s["learner"]["idle_frac"] == pytest.approx(1.5 / 6.5)
    assert s["engine"]["busy_frac"] == pytest.approx(2 / 6.5)
    assert s["engine"]["paused_frac"] == pytest.approx(1 / 6.5)
    assert s["engine"]["idle_frac"] == pytest.approx(3.5 / 6.5)
    # G = 2 s busy / 2 steps = 1; T = (4 + 1) / 2 = 2.5; ideal (1 + 2.5) / 2.5 = 1.4; achieved 3.5 / 3.25
    assert s["gen_s"] == 1 and s["train_s"] == 2.5
    assert s["ideal_speedup"] == pytest.approx(1.4)
    assert s["achieved_speedup"] == pytest.approx(3.5 / 3.25)
    assert s["overlap_of_ideal"] == pytest.approx(2.5 / 3.25)
    assert s["tokens_per_engine_busy_s"] == 200 and s["tokens_per_s"] == pytest.approx(400 / 6.5)
    assert s["buffer_wait_s"]["throttle"] == 4.5
    assert len(describe(s)) == 2 and "1.40x" in describe(s)[1]


def test_perfect_overlap_reaches_the_ideal():
    """Generation (1 s a batch) hidden entirely behind training (1 s): a step takes max(G, T) = 1 s."""
    steps = [step_times(k, (k, k, k + 1, k + 1), {0: [Span("busy", k, k + 1)]}, [], 10) for k in range(3)]
    s = summarize(steps)
    assert s["ideal_speedup"] == 2 and s["achieved_speedup"] == 2 and s["overlap_of_ideal"] == 1
    assert s["learner"]["idle_frac"] == 0 and s["engine"]["idle_frac"] == 0


def test_sync_mode_achieves_no_overlap():
    """Generate 1 s, then train 2 s: a step is G + T, which is 1.0x whatever the ideal."""
    steps = [step_times(k, (3 * k, 3 * k + 1, 3 * k + 3, 3 * k + 3), {0: [Span("busy", 3 * k, 3 * k + 1)]}, [], 10)
             for k in range(2)]
    s = summarize(steps)
    assert s["achieved_speedup"] == 1 and s["ideal_speedup"] == 1.5
    assert s["engine"]["idle_frac"] == pytest.approx(2 / 3)


def test_trace_is_chrome_trace_event_format(tmp_path):
    tl = Timeline(origin=100.0)
    tl.mark("start learner and engines", 100.0, 101.0)
    with tl.during("RL steps"):
        tl.step(1, (101.0, 101.5, 102.0, 102.25), {0: [Span("busy", 101.0, 101.5)], 1: [Span("paused", 102.0, 102.2)]},
                [Span("waiting_for_groups", 101.0, 101.5)], tokens=50)
    path = tl.write_trace(tmp_path / "trace.json")
    events = json.loads(Path(path).read_text())["traceEvents"]
    xs = [e for e in events if e["ph"] == "X"]
    for e in xs:
        assert {"name", "ts", "dur", "pid", "tid"} <= set(e) and e["dur"] >= 0
    by_name = {e["name"]: e for e in xs}
    assert by_name["wait for batch (step 1)"]["ts"] == 1e6 and by_name["wait for batch (step 1)"]["dur"] == 5e5
    assert by_name["weight sync (step 1)"]["dur"] == 2.5e5
    assert by_name["start learner and engines"]["ts"] == 0
    # engines are threads of one rollout process; the learner and buffer are processes of their own
    assert {e["tid"] for e in xs if e["cat"] == "engine"} == {0, 1}
    assert len({e["pid"] for e in xs}) == 3
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and "name" in e.get("args", {})}
    assert {"learner (driver)", "replay buffer", "rollout engines", "engine 0", "engine 1"} <= names
    assert next(e for e in events if e["ph"] == "C")["args"]["tok/s"] == 40.0  # 50 tokens in 1.25 s



def test_trace_spans_nest_on_every_track(tmp_path):
    """Phases that abut (a step's wait, train and sync; back-to-back busy spans) must not overlap by a rounding
    error in the file: trace viewers stack a span that starts before the last one ends inside it. Real
    epoch times with sub-microsecond parts, as a run has."""
    import random

    rng = random.Random(0)
    origin = 1796284450.0 + rng.random()
    tl, t = Timeline(origin=origin), origin
    for step in range(1, 201):
        times = [t]
        for _ in range(3):
            times.append(times[-1] + rng.uniform(0.01, 0.5))
        busy = [Span("busy", times[0], times[1]), Span("paused", times[1], times[2]), Span("busy", times[2], times[3])]
        tl.step(step, tuple(times), {0: busy}, [], tokens=1)
        t = times[3]
    tl.mark("RL steps", origin, t)
    tracks: dict[tuple, list] = {}
    for e in json.loads(Path(tl.write_trace(tmp_path / "trace.json")).read_text())["traceEvents"]:
        if e["ph"] == "X":
            tracks.setdefault((e["pid"], e["tid"]), []).append(e)
    assert len(tracks) == 2
    for events in tracks.values():
        open_ends: list[float] = []
        for e in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
            while open_ends and open_ends[-1] <= e["ts"]:
                open_ends.pop()
            assert not open_ends or e["ts"] + e["dur"] <= open_ends[-1], f"{e['name']} overlaps the span around it"
            open_ends.append(e["ts"] + e["dur"])

def test_startup_line_names_the_slowest_engine_of_each_phase():
    from temper.timeline import describe_startup

    startup = {"ray_s": 3.04, "learner_s": 12.0, "workers_s": [20.0, 25.0], "handshake_s": 0.5,
               "engines": [{"import_s": 8.0, "engine_s": 11.0, "rest_s": 1.0},
                           {"import_s": 9.0, "engine_s": 10.0, "rest_s": 6.0}]}
    assert describe_startup(startup) == (
        "start-up: Ray 3.0s; then in parallel the learner 12.0s and the engine(s) 25.0s (importing vLLM 9.0s, "
        "engine processes + model load + KV cache 11.0s, scoring pool 6.0s); weight-sync handshake 0.5s")
    assert describe_startup({**startup, "learner_cores": [2, 3]}).endswith(
        "weight-sync handshake 0.5s; the learner has core(s) 2, 3 to itself")


def test_phase_line_adds_up_to_the_total():
    from temper.timeline import describe_phases

    # start-up = Ray 3 + the slower of learner 12 / engines 20, 25 + handshake 0.5 = 28.5;
    # the rest = 100 - (10 + 28.5 + 4 + 50) = 7.5
    summary = {"rl_seconds": 50.0, "startup": {"ray_s": 3.0, "learner_s": 12.0, "workers_s": [20.0, 25.0],
                                               "handshake_s": 0.5, "first_eval_s": 4.0}}
    assert describe_phases(10.0, summary, 100.0) == (
        "phases: prepare 10.0s, start-up 28.5s, first eval 4.0s, RL 50.0s, last eval and save 7.5s; total 100.0s")

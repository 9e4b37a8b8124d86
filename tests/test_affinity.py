"""Which cores a CPU learner gets to itself (rollout/affinity.py), and that pinning and keeping off act on real
processes: every thread of this process, and every process below it, grandchildren included."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from temper.configs.load import load_config
from temper.rollout.affinity import ENGINE_BIND, learner_cores

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.delenv(ENGINE_BIND, raising=False)


@pytest.mark.parametrize(
    ("overrides", "private", "cores"),
    [
        ([], True, [3]),  # engine 0 on core 0; the learner's one thread takes the highest free core
        (["learner.num_threads=2"], True, [2, 3]),
        (["rollout.num_workers=3"], True, [3]),  # engines on 0, 1, 2
        (["rollout.num_workers=4"], True, []),  # every core has an engine
        (["rollout.num_workers=2", "learner.num_threads=3"], True, []),  # two free cores, three threads: pin none
        ([], False, []),  # a cluster the driver did not start: it cannot know where the actors run
        (["learner.own_cores=false"], True, []),
        (["learner.device=\"cuda\""], True, []),
        (["ray.worker_gpus=1"], True, []),
        (["learner.world_size=2"], True, []),
    ],
)
def test_learner_cores(four_cores, overrides, private, cores):
    assert learner_cores(load_config(DEMO, overrides), private) == cores


def test_engine_binding_set_by_hand_pins_nothing(four_cores, monkeypatch):
    monkeypatch.setenv(ENGINE_BIND, "0-1")
    assert learner_cores(load_config(DEMO, []), True) == []


# Run in a child interpreter: pinning the test process itself would pin the rest of the session.
PROBE = r"""
import json, os, subprocess, sys, threading, time
from temper.rollout.affinity import keep_off, pin_self

mode, cores = sys.argv[1], [int(c) for c in sys.argv[2].split(",")]
early = threading.Thread(target=time.sleep, args=(30,), daemon=True)
early.start()  # a thread that exists before the call
child = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys, time; subprocess.Popen(['sleep', '30']); time.sleep(30)"])
bound = subprocess.Popen(["sleep", "30"])  # bound by hand to the cores being taken away: keeps them
os.sched_setaffinity(bound.pid, cores)
time.sleep(1.0)  # the grandchild is up
if mode == "pin":
    pin_self(cores)
else:
    keep_off(cores)
late = subprocess.Popen(["sleep", "30"])  # started after the call: inherits
tree = {"self": os.getpid(), "child": child.pid, "bound": bound.pid, "late": late.pid}
grandkids = open(f"/proc/{child.pid}/task/{child.pid}/children").read().split()
tree["grandchild"] = int(grandkids[0])
out = {name: sorted({c for t in os.listdir(f"/proc/{pid}/task") for c in os.sched_getaffinity(int(t))})
       for name, pid in tree.items()}
out["threads_of_self"] = len(os.listdir(f"/proc/{os.getpid()}/task"))
for p in (child, bound, late):
    p.kill()
os.kill(tree["grandchild"], 9)
print(json.dumps(out))
"""


def probe(mode: str, cores: list[int]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode, ",".join(map(str, cores))],
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


needs_two = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to move work between")


@needs_two
def test_keep_off_moves_the_whole_tree_and_spares_a_process_bound_by_hand():
    allowed = sorted(os.sched_getaffinity(0))
    taken = allowed[-1:]
    rest = allowed[:-1]
    got = probe("keep_off", taken)
    assert got["self"] == rest and got["child"] == rest and got["grandchild"] == rest and got["late"] == rest
    assert got["bound"] == taken


@needs_two
def test_pin_self_pins_every_thread_and_what_starts_later():
    allowed = sorted(os.sched_getaffinity(0))
    got = probe("pin", allowed[-1:])
    assert got["threads_of_self"] >= 2
    assert got["self"] == allowed[-1:] and got["late"] == allowed[-1:]
    assert got["child"] == allowed  # pinning is this process's own: what it started before is left alone

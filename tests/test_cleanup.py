"""Teardown's sweeps, on real processes and real /dev/shm segments: what is in use is never touched."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from temper import cleanup

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")

HOLD = """
import sys, time
from multiprocessing import resource_tracker, shared_memory
seg = shared_memory.SharedMemory(create=True, size=4096)
resource_tracker.unregister(seg._name, "shared_memory")  # as a killed engine leaves it: nobody unlinks it
print(seg.name, flush=True)
time.sleep(float(sys.argv[1]))
"""


def hold_segment(seconds: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(seconds)], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip().lstrip("/")


def test_an_orphaned_segment_is_removed_and_one_in_use_is_kept():
    before = cleanup.shm_names()
    live, live_name = hold_segment(60)
    dead, dead_name = hold_segment(60)
    dead.kill()
    dead.wait()
    try:
        assert {live_name, dead_name} <= cleanup.shm_names()
        removed = cleanup.remove_orphaned_shm(before)
        assert dead_name in removed and live_name not in removed
        assert live_name in cleanup.shm_names() and dead_name not in cleanup.shm_names()
        assert cleanup.remove_orphaned_shm(cleanup.shm_names()) == []  # only what appeared since `before`
    finally:
        live.kill()
        live.wait()
        cleanup.remove_orphaned_shm(before)
    assert live_name not in cleanup.shm_names()


SEMAPHORE = """
import multiprocessing as mp, time
lock = mp.get_context("spawn").Lock()  # a named semaphore in /dev/shm (sem.mp-*) while the process lives
print("ok", flush=True)
time.sleep(60)
"""


def test_a_named_semaphore_in_use_is_kept():
    """glibc maps a semaphore under a temporary name before linking it to sem.mp-*: found by inode."""
    before = cleanup.shm_names()
    live = subprocess.Popen([sys.executable, "-c", SEMAPHORE], stdout=subprocess.PIPE, text=True)
    live.stdout.readline()
    try:
        (sem,) = {n for n in cleanup.shm_names() - before if n.startswith("sem.mp-")}
        assert sem not in cleanup.remove_orphaned_shm(before) and sem in cleanup.shm_names()
    finally:
        live.kill()
        live.wait()
    cleanup.remove_orphaned_shm(before)  # its process is gone: the sweep (or its resource tracker) removes it
    assert sem not in cleanup.shm_names()


def test_survivors_are_killed_by_pid_and_start_time():
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
    try:
        procs = [p for p in cleanup.descendants() if p[0] == child.pid]
        assert procs
        assert cleanup.kill_survivors(procs, grace_s=0.5) == [child.pid]
        assert not psutil.pid_exists(child.pid) or psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
        assert cleanup.kill_survivors([(os.getpid(), 0.0)], grace_s=0) == []  # same pid, other start time
    finally:
        child.kill()


def test_signals_are_held_during_cleanup():
    with cleanup.signals_held():
        os.kill(os.getpid(), signal.SIGTERM)  # ignored, not queued
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN


def test_weights_folders_of_dead_drivers_are_removed(tmp_path):
    mine = cleanup.weights_folder("unit")
    assert f"-{os.getpid()}-" in mine
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    while psutil.pid_exists(child.pid):  # reaped; make sure the pid is free
        time.sleep(0.05)
    base = os.path.dirname(mine)
    crashed = os.path.join(base, f"temper-unit-{child.pid}-abcd1234")
    os.mkdir(crashed)
    try:
        removed = cleanup.remove_dead_weights_folders()
        assert crashed in removed and mine not in removed and os.path.isdir(mine)
    finally:
        os.rmdir(mine)

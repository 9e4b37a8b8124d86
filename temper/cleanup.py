"""Leaving the machine as the run found it, however the run ends: a finish, an error, Ctrl-C or SIGTERM at
any phase, a killed worker.

vLLM engines create shared-memory segments (`/dev/shm/psm_*`) and semaphores (`/dev/shm/sem.mp-*`) that
outlive a killed process, and an interrupted start can leave actors that never got to shut their engine
down. So teardown is belt and braces: ask each engine to shut down, kill the actors, stop Ray, then kill
any process this driver started (its descendants, by pid and start time) that is still alive, and remove
the segments that appeared during the run and that no live process has open or mapped. Other runs on the
same machine keep theirs: a segment in use is never touched.

Teardown never raises and runs with SIGINT/SIGTERM held off: an exception raised while handling another
replaces it, and a second Ctrl-C in the middle of cleanup is what leaks the segments.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHM = "/dev/shm"
SHM_PREFIXES = ("psm_", "sem.mp-")


def shm_names() -> set[str]:
    return set(os.listdir(SHM)) if os.path.isdir(SHM) else set()


def in_use(paths: set[str], pids: list[int] | None = None) -> set[str]:
    """Which of these /dev/shm paths some live process (of `pids`, default: any) has open or mapped.

    Matched by inode, not by name: glibc's sem_open maps a temporary file that it then links to
    `sem.NAME`, so /proc/PID/maps shows the semaphore under a name that is gone; its inode is the same."""
    inodes: dict[tuple[int, int], str] = {}
    for path in paths:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            inodes[(st.st_dev, st.st_ino)] = path
    shm_dev = os.stat(SHM).st_dev if os.path.isdir(SHM) else None
    used: set[str] = set()
    for pid in map(str, pids) if pids is not None else os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    st = os.stat(f"/proc/{pid}/fd/{fd}")
                    if (st.st_dev, st.st_ino) in inodes:
                        used.add(inodes[(st.st_dev, st.st_ino)])
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                fields = line.split(None, 5)  # address perms offset dev inode [path]
                if len(fields) == 6 and fields[5].startswith(SHM + "/"):
                    major, minor = (int(x, 16) for x in fields[3].split(":"))
                    key = (os.makedev(major, minor), int(fields[4]))
                    if key in inodes:
                        used.add(inodes[key])
                    elif shm_dev is not None and (shm_dev, int(fields[4])) in inodes:
                        used.add(inodes[(shm_dev, int(fields[4]))])
    return used


def remove_orphaned_shm(before: set[str]) -> list[str]:
    """Remove vLLM/multiprocessing segments created since `before` that no live process uses; their names."""
    new = {os.path.join(SHM, n) for n in shm_names() - before if n.startswith(SHM_PREFIXES)}
    orphans = sorted(new - in_use(new))
    for path in orphans:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return [os.path.basename(p) for p in orphans]


def weights_folder(run_name: str) -> str:
    """A fresh folder for the weights the learner publishes: /dev/shm/temper-NAME-PID-XXXX (the driver's pid,
    so a later run can tell a crashed run's folder from a live one's)."""
    base = SHM if os.path.isdir(SHM) and os.access(SHM, os.W_OK) else tempfile.gettempdir()
    return tempfile.mkdtemp(prefix=f"temper-{run_name}-{os.getpid()}-", dir=base)


def remove_dead_weights_folders() -> list[str]:
    """Remove weights folders whose driver is gone (a SIGKILLed run cannot clean up after itself)."""
    import psutil

    removed = []
    for base in {SHM, tempfile.gettempdir()}:
        for path in Path(base).glob("temper-*-*-*"):
            m = re.fullmatch(r"temper-.+-(\d+)-[^-]+", path.name)
            if m and path.is_dir() and not psutil.pid_exists(int(m.group(1))):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(str(path))
    return removed


def descendants() -> list[tuple[int, float]]:
    """(pid, start time) of every live process this one started, directly or not."""
    import psutil

    with contextlib.suppress(psutil.Error):
        return [(p.pid, p.create_time()) for p in psutil.Process().children(recursive=True)]
    return []


def kill_survivors(procs: list[tuple[int, float]], grace_s: float = 5.0) -> list[int]:
    """SIGKILL those of `procs` still alive after grace_s (the same pid and start time: never a reused pid)."""
    import psutil

    def alive() -> list[psutil.Process]:
        out = []
        for pid, started in procs:
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
        return out

    deadline = time.monotonic() + grace_s
    while (left := alive()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(left, timeout=5)  # gone before their folders are removed, or they write into them again
    return [p.pid for p in left]


@contextlib.contextmanager
def signals_held():
    """SIGINT and SIGTERM ignored inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@dataclass
class Teardown:
    """What a run has started so far, filled in as it starts things; `run()` stops all of it."""

    shm_before: set[str] = field(default_factory=shm_names)
    procs_before: list[tuple[int, float]] = field(default_factory=descendants)
    """This process's children from before the run (a test's own engine): never killed here."""
    private_ray: str | None = None
    """The temp folder of a Ray cluster this process started (and must stop)."""
    weights_root: str | None = None
    run_dir: Path | None = None
    workers: list[Any] = field(default_factory=list)
    """Every rollout worker actor ever created, replacements included."""
    engines_up: list[Any] = field(default_factory=list)
    """Those whose engine finished starting (asked to shut it down; the others are killed straight away:
    an engine still being built blocks its actor, so the request would only wait)."""
    learner: Any = None
    buffer: Any = None

    def run(self) -> None:
        with signals_held():
            self._run()

    def _run(self) -> None:
        import ray

        started = [p for p in descendants() if p not in self.procs_before]
        if ray.is_initialized():
            # Engines first: a killed vLLM actor leaks its segments. Learner: its weight transfer (NCCL groups).
            with contextlib.suppress(Exception):
                refs = [w.shutdown.remote() for w in self.engines_up]
                ray.wait(refs, num_returns=len(refs), timeout=60)
            if self.learner is not None:
                with contextlib.suppress(Exception):
                    ray.wait([self.learner.cleanup.remote()], timeout=60)
            for actor in [*self.workers, self.learner, self.buffer]:
                if actor is not None:
                    with contextlib.suppress(Exception):
                        ray.kill(actor)
        with contextlib.suppress(Exception):
            ray.shutdown()  # disconnects; also stops the cluster when this process started it
        kill_survivors(started)
        if len(self.engines_up) < len(self.workers) and not started:
            time.sleep(3)  # on a cluster we joined: killed actors' engine processes take a moment to exit
        if self.weights_root:
            shutil.rmtree(self.weights_root, ignore_errors=True)
        if self.private_ray:
            logs = Path(self.private_ray) / "session_latest" / "logs"
            if self.run_dir is not None and logs.is_dir():
                with contextlib.suppress(OSError, shutil.Error):
                    if (self.run_dir / "ray-logs").is_symlink():  # the link to them while the run lived
                        (self.run_dir / "ray-logs").unlink()
                    shutil.copytree(logs, self.run_dir / "ray-logs", ignore_dangling_symlinks=True, dirs_exist_ok=True)
            shutil.rmtree(self.private_ray, ignore_errors=True)
        with contextlib.suppress(Exception):
            remove_orphaned_shm(self.shm_before)

"""What a killed run leaves in /dev/shm, reaped by the next run on the machine (or by `temper clean`).

A run that is SIGKILLed with its whole process group (the OOM killer, a lost node, `kill -9`) cleans up
nothing: vLLM's 160 MB `psm_*` broadcast segment and multiprocessing's `sem.mp-*` semaphores stay in /dev/shm
until reboot, and a later run cannot tell them from another live run's. So a run writes down, as they
appear, the segments its own processes hold, in a small record named by its pid and start time:

    $TEMPER_SHM_RECORDS or /tmp/temper-shm-records/PID.json   {"pid", "started", "segments": [names]}

(/tmp, like /dev/shm, is per machine and outlives the run.) `reap` removes a recorded segment only when the
run that recorded it is dead (its pid gone or reused) and no live process has it open or mapped; a segment
nobody recorded is never touched. A run that ends normally removes its record with its segments.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from temper.cleanup import SHM, SHM_PREFIXES, in_use, shm_names

RECORDS_ENV = "TEMPER_SHM_RECORDS"


def records_dir() -> Path:
    return Path(os.environ.get(RECORDS_ENV) or Path(tempfile.gettempdir()) / "temper-shm-records")


def _start_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _alive(pid: int, started: float) -> bool:
    """The same process (pid and start time), not a later one that reused the pid."""
    now = _start_time(pid)
    return now is not None and abs(now - started) < 0.01


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)  # never half a record, even if this run is killed while writing it


@dataclass
class ShmRecord:
    """This run's record: `update` as segments appear, `close` once teardown has removed what it could."""

    before: set[str]
    """/dev/shm names from before the run: never this run's."""
    pid: int = field(default_factory=os.getpid)
    segments: set[str] = field(default_factory=set)

    @property
    def path(self) -> Path:
        return records_dir() / f"{self.pid}.json"

    def update(self) -> None:
        """Record the new vLLM/multiprocessing segments that this process or one it started holds (open or
        mapped). Cheap when nothing appeared: one listdir."""
        from temper.cleanup import descendants

        new = {n for n in shm_names() - self.before - self.segments if n.startswith(SHM_PREFIXES)}
        if not new:
            return
        ours = in_use({os.path.join(SHM, n) for n in new}, pids=[self.pid, *(p for p, _ in descendants())])
        if ours:
            self.segments |= {os.path.basename(p) for p in ours}
            _write(self.path, {"pid": self.pid, "started": _start_time(self.pid), "segments": sorted(self.segments)})

    def close(self) -> None:
        """After teardown: forget the segments that are gone; the record goes once none is left."""
        left = sorted(n for n in self.segments if os.path.exists(os.path.join(SHM, n)))
        if left:
            _write(self.path, {"pid": self.pid, "started": _start_time(self.pid), "segments": left})
        else:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


@dataclass(frozen=True)
class Reaped:
    name: str
    bytes: int
    pid: int
    """The dead run that recorded it."""


def reap() -> list[Reaped]:
    """Remove every recorded segment whose run is dead and that no live process has open or mapped."""
    removed: list[Reaped] = []
    folder = records_dir()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
            pid, started, names = int(record["pid"]), float(record["started"]), list(record["segments"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: it names nothing we may remove
        if _alive(pid, started):
            continue
        paths = {os.path.join(SHM, n) for n in names if n.startswith(SHM_PREFIXES) and "/" not in n}
        paths = {p for p in paths if os.path.exists(p)}
        kept = in_use(paths) if paths else set()
        for p in sorted(paths - kept):
            with contextlib.suppress(OSError):
                size = os.stat(p).st_size
                os.unlink(p)
                removed.append(Reaped(os.path.basename(p), size, pid))
        if kept:
            _write(path, {**record, "segments": sorted(os.path.basename(p) for p in kept)})
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return removed


def describe(removed: list[Reaped]) -> str:
    total = sum(r.bytes for r in removed)
    runs = sorted({r.pid for r in removed})
    return (f"removed {len(removed)} shared-memory segment(s), {total / 2**20:.1f} MiB, left in /dev/shm by "
            f"dead run(s) {', '.join(map(str, runs))}")

"""The shared-memory record of runs (temper/shm_records.py) on real /dev/shm files and real processes: a dead
run's recorded segment is reaped, and nothing else is: not a segment nobody recorded, not one a live process
holds open, not one of a run that is still alive. The real-run version (a SIGKILLed process group) is in
test_faults.py."""

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from temper import shm_records

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")


@pytest.fixture
def records(tmp_path, monkeypatch):
    monkeypatch.setenv(shm_records.RECORDS_ENV, str(tmp_path / "records"))
    return tmp_path / "records"


@pytest.fixture
def segments():
    """Make /dev/shm/psm_temper-test-* files of a given size; removes what is left afterwards."""
    made: list[Path] = []

    def make(size: int) -> str:
        path = Path("/dev/shm") / f"psm_temper-test-{secrets.token_hex(4)}"
        path.write_bytes(b"\0" * size)
        made.append(path)
        return path.name

    yield make
    for path in made:
        path.unlink(missing_ok=True)


def dead_pid() -> tuple[int, float]:
    """The pid and start time of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(proc.pid).create_time()
    proc.wait()
    return proc.pid, started


def write_record(folder: Path, pid: int, started: float, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{pid}.json"
    path.write_text(json.dumps({"pid": pid, "started": started, "segments": names}))
    return path


def test_a_dead_runs_recorded_segment_is_reaped_and_nothing_else(records, segments):
    recorded, held, unrecorded = segments(4096), segments(100), segments(10)
    pid, started = dead_pid()
    record = write_record(records, pid, started, [recorded, held, "psm_never-existed"])
    with open(f"/dev/shm/{held}", "rb"):  # a live process (this one) has it open
        removed = shm_records.reap()
        assert [(r.name, r.bytes, r.pid) for r in removed] == [(recorded, 4096, pid)]
        assert not os.path.exists(f"/dev/shm/{recorded}")
        assert os.path.exists(f"/dev/shm/{held}") and os.path.exists(f"/dev/shm/{unrecorded}")
        # the record keeps what is still in use, for a later reap
        assert json.loads(record.read_text())["segments"] == [held]
    removed = shm_records.reap()
    assert [r.name for r in removed] == [held] and not record.exists()
    assert os.path.exists(f"/dev/shm/{unrecorded}")  # never recorded: never touched
    assert shm_records.describe(removed).startswith("removed 1 shared-memory segment(s), 0.0 MiB")


def test_a_live_runs_record_is_left_alone(records, segments):
    name = segments(64)
    me = psutil.Process()
    write_record(records, me.pid, me.create_time(), [name])
    assert shm_records.reap() == []
    assert os.path.exists(f"/dev/shm/{name}")


def test_a_reused_pid_counts_as_dead(records, segments):
    """Same pid, another start time: the run that recorded it is gone."""
    name = segments(64)
    me = psutil.Process()
    write_record(records, me.pid, me.create_time() - 1000, [name])
    assert [r.name for r in shm_records.reap()] == [name]


def test_a_run_records_only_the_segments_its_processes_hold(records, segments):
    before = set(os.listdir("/dev/shm"))
    mine, not_mine = segments(256), segments(256)
    record = shm_records.ShmRecord(before)
    child = subprocess.Popen([sys.executable, "-c", f"f = open('/dev/shm/{mine}', 'rb'); input()"],
                             stdin=subprocess.PIPE)
    try:
        for _ in range(100):  # until the child has it open
            record.update()
            if record.segments:
                break
            time.sleep(0.05)
        assert record.segments == {mine}
        data = json.loads(record.path.read_text())
        assert data["pid"] == os.getpid() and data["segments"] == [mine]
    finally:
        child.communicate(b"\n", timeout=10)
    assert not_mine not in record.segments
    os.unlink(f"/dev/shm/{mine}")
    record.close()  # every recorded segment gone: the record goes too
    assert not record.path.exists()


def test_temper_clean_prints_what_it_removed(records, segments):
    name = segments(1000)
    pid, started = dead_pid()
    write_record(records, pid, started, [name])
    env = {**os.environ, shm_records.RECORDS_ENV: str(records)}
    out = subprocess.run([str(Path(sys.executable).parent / "temper"), "clean"], capture_output=True, text=True,
                         env=env, timeout=60, check=True).stdout
    assert f"removed /dev/shm/{name} (1,000 bytes) of dead run {pid}" in out
    assert "temper clean: removed 1 shared-memory segment(s)" in out
    assert not os.path.exists(f"/dev/shm/{name}")

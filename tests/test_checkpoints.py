"""Checkpoints are complete or absent; --resume finds the newest complete one (no Ray: plain writers)."""

import json
import os
import subprocess
import sys

import pytest

from temper import checkpoints
from temper.configs.load import ConfigError


def fill_all(folder):
    for name in ("buffer.json", "learner_state.pt", "config.json"):
        (folder / name).write_text("{}")
    return {"version": int(folder.name.split("-")[1].split(".")[0])}


def test_a_written_checkpoint_is_complete_and_nothing_temporary_remains(tmp_path):
    out = checkpoints.write(tmp_path / "run" / "checkpoints", 3, fill_all)
    assert out == tmp_path / "run" / "checkpoints" / "step-3" and checkpoints.is_complete(out)
    assert json.loads((out / "checkpoint.json").read_text())["version"] == 3
    assert [p.name for p in out.parent.iterdir()] == ["step-3"]


def test_a_failure_during_the_write_leaves_the_previous_checkpoint_newest(tmp_path):
    run = tmp_path / "run"
    checkpoints.write(run / "checkpoints", 2, fill_all)

    def half(folder):
        (folder / "learner_state.pt").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoints.write(run / "checkpoints", 4, half)
    assert checkpoints.newest(run) == run / "checkpoints" / "step-2"
    assert not (run / "checkpoints" / "step-4").exists()


def test_a_process_killed_mid_write_leaves_only_a_hidden_folder_that_later_writes_remove(tmp_path):
    """A real SIGKILL between filling the folder and the rename (the moment the rename exists for)."""
    run = tmp_path / "run"
    checkpoints.write(run / "checkpoints", 2, fill_all)
    code = f"""
import os, signal, sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
from pathlib import Path
from temper import checkpoints
from test_checkpoints import fill_all
checkpoints.write(Path({str(run / "checkpoints")!r}), 4, fill_all,
                  before_rename=lambda _: os.kill(os.getpid(), signal.SIGKILL))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == -9, proc.stderr
    (partial,) = (run / "checkpoints").glob(".step-4.tmp-*")
    assert checkpoints.is_complete(partial)  # every file was there; only the rename was missing
    assert checkpoints.newest(run) == run / "checkpoints" / "step-2"
    assert checkpoints.resolve_resume(str(run), tmp_path, "run") == run / "checkpoints" / "step-2"
    assert checkpoints.remove_partial(run) == [partial] and not partial.exists()


def test_keep_last_prunes_the_oldest(tmp_path):
    for step in (2, 4, 6, 8):
        checkpoints.write(tmp_path / "run" / "checkpoints", step, fill_all, keep_last=2)
    assert [s for s, _ in checkpoints.complete(tmp_path / "run")] == [6, 8]


def test_an_incomplete_step_folder_from_an_older_writer_is_not_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    checkpoints.write(run / "checkpoints", 2, fill_all)
    (run / "checkpoints" / "step-4").mkdir()
    (run / "checkpoints" / "step-4" / "config.json").write_text("{}")
    assert checkpoints.newest(run) == run / "checkpoints" / "step-2"


def make_run(base, name, stamp, steps=()):
    run = base / f"{name}-{stamp}"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("")
    for s in steps:
        checkpoints.write(run / "checkpoints", s, fill_all)
    return run


def test_resume_accepts_a_checkpoint_a_run_folder_or_latest(tmp_path):
    old = make_run(tmp_path, "demo", "20250101-120000", steps=(2, 4))
    make_run(tmp_path, "demo", "20250102-120000")  # newer, but crashed before its first checkpoint
    make_run(tmp_path, "other", "20250103-120000", steps=(6,))  # another config's run
    assert checkpoints.resolve_resume(str(old / "checkpoints" / "step-2"), tmp_path, "demo") == old / "checkpoints" / "step-2"
    assert checkpoints.resolve_resume(str(old), tmp_path, "demo") == old / "checkpoints" / "step-4"
    assert checkpoints.resolve_resume("latest", tmp_path, "demo") == old / "checkpoints" / "step-4"
    newest = make_run(tmp_path, "demo", "20250104-120000", steps=(8,))
    assert checkpoints.resolve_resume("latest", tmp_path, "demo") == newest / "checkpoints" / "step-8"


def test_resume_errors_say_what_is_missing(tmp_path):
    empty = make_run(tmp_path, "demo", "20250101-120000")
    with pytest.raises(ConfigError, match="the run .* has no complete checkpoint"):
        checkpoints.resolve_resume(str(empty), tmp_path, "demo")
    with pytest.raises(ConfigError, match="--resume latest: no run of 'nope' under"):
        checkpoints.resolve_resume("latest", tmp_path, "nope")
    with pytest.raises(ConfigError, match="does not exist"):
        checkpoints.resolve_resume(str(tmp_path / "missing"), tmp_path, "demo")

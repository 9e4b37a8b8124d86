"""Checkpoints that are complete or absent, and finding the one to resume from.

A checkpoint is written into a hidden temporary folder beside its final place (`.step-N.tmp-PID`) and
renamed to `step-N` by one `os.replace` only once every file is in it, so a crash at any moment leaves
either the complete checkpoint or none: never a newest `step-N` that fails to load. Leftover temporary
folders are removed by the next write. `keep_last` prunes old ones after each successful write.

`temper train CONFIG --resume X` takes X as a checkpoint folder, a run folder (its newest complete
checkpoint) or `latest` (the newest run of that config name that has one).

No Ray here: the driver passes a `fill(folder)` that asks the actors to write their parts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temper.configs.load import ConfigError

INFO = "checkpoint.json"
"""In each checkpoint folder: {"version": N, "step": N, "time": ...}; written last, inside the temp folder."""
REQUIRED = (INFO, "buffer.json", "learner_state.pt", "config.json")
"""Files every complete checkpoint has (config.json is the policy's, from save_pretrained)."""
_STEP = re.compile(r"step-(\d+)")


def write(checkpoints: Path, step: int, fill: Callable[[Path], dict[str, Any]], keep_last: int = 0,
          before_rename: Callable[[Path], None] | None = None) -> Path:
    """Write checkpoint `step` under `checkpoints/` atomically; returns its folder.

    fill(folder) writes every part but INFO into the folder and returns what INFO records.
    before_rename(folder): called with the complete temporary folder (the fault-injection point)."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    for stale in checkpoints.glob(".step-*.tmp-*"):  # a crash in an earlier write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = checkpoints / f".step-{step}.tmp-{os.getpid()}"
    final = checkpoints / f"step-{step}"
    tmp.mkdir()
    try:
        info = {**fill(tmp), "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_synced(tmp / INFO, json.dumps(info))
        if before_rename is not None:
            before_rename(tmp)
        if final.exists():  # written again (a resumed run re-reaching a step): the new one wins
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(checkpoints)
    if keep_last:
        for _, old in complete(checkpoints.parent)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_partial(run_dir: Path) -> list[Path]:
    """Remove temporary checkpoint folders of a run whose writer is gone (it crashed mid-write)."""
    import psutil

    removed = []
    for tmp in (run_dir / "checkpoints").glob(".step-*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def is_complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in REQUIRED)


def complete(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint of a run, oldest first."""
    found = []
    folder = run_dir / "checkpoints"
    if folder.is_dir():
        for p in folder.iterdir():
            m = _STEP.fullmatch(p.name)
            if m and p.is_dir() and is_complete(p):
                found.append((int(m.group(1)), p))
    return sorted(found)


def newest(run_dir: Path) -> Path | None:
    found = complete(run_dir)
    return found[-1][1] if found else None


def runs_of(runs_base: Path, name: str) -> list[Path]:
    """Run folders NAME-YYYYmmdd-HHMMSS[-k] under runs_base, oldest first."""
    pattern = re.compile(re.escape(name) + r"-\d{8}-\d{6}(-\d+)?")
    if not runs_base.is_dir():
        return []
    runs = [p for p in runs_base.iterdir() if p.is_dir() and pattern.fullmatch(p.name)]
    return sorted(runs, key=lambda p: (p.name[len(name) + 1 : len(name) + 16], p.stat().st_mtime))


def resolve_resume(arg: str, runs_base: Path, name: str) -> Path:
    """--resume X -> the checkpoint folder to start from (see the module docstring); ConfigError if none."""
    if arg == "latest":
        for run in reversed(runs_of(runs_base, name)):
            if (ckpt := newest(run)) is not None:
                return ckpt
        raise ConfigError(f"--resume latest: no run of {name!r} under {runs_base} has a complete checkpoint "
                          "(checkpoint.every_steps writes them)")
    path = Path(arg).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"--resume: {path} does not exist")
    if is_complete(path):
        return path
    if (path / "checkpoints").is_dir() or (path / "metrics.jsonl").is_file():  # a run folder
        if (ckpt := newest(path)) is not None:
            return ckpt
        raise ConfigError(f"--resume: the run {path} has no complete checkpoint (checkpoint.every_steps writes them)")
    missing = ", ".join(f for f in REQUIRED if not (path / f).is_file())
    raise ConfigError(f"--resume: {path} is neither a run folder nor a temper checkpoint (missing {missing})")


def version_of(ckpt: Path) -> int:
    return json.loads((ckpt / INFO).read_text())["version"]

"""Where a run's results go, so they outlive the process that wrote them.

Under `ray job submit --working-dir .` the driver runs inside Ray's temporary copy of that folder
(`/tmp/ray/session_*/runtime_resources/working_dir_files/...`), which Ray deletes with the session: a
relative `logging.run_dir` there would vanish with the model, metrics and plot. So a relative run_dir is
taken from, in order: `$TEMPER_RUNS` when set; `~/temper-runs` under a submitted job; the current
directory otherwise (a person running `temper train` in their project expects `./runs`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

DEFAULT_SUBMITTED_BASE = "~/temper-runs"


def submitted_job() -> bool:
    """True when this process is the entrypoint of a `ray job submit` job."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by Ray's job supervisor for the entrypoint
    if raw:
        try:
            if json.loads(raw).get("metadata", {}).get("job_submission_id"):
                return True
        except ValueError:
            pass
    return "/runtime_resources/" in os.getcwd()


def runs_base(run_dir: str) -> tuple[Path, str | None]:
    """The absolute parent folder of this config's runs, and why it is not `run_dir` as written (or None)."""
    path = Path(run_dir).expanduser()
    if path.is_absolute():
        return path, None
    if os.environ.get("TEMPER_RUNS"):
        return Path(os.environ["TEMPER_RUNS"]).expanduser().resolve() / path, "from $TEMPER_RUNS"
    if submitted_job():
        why = ("under `ray job submit` the working dir is a temporary copy that Ray deletes; "
               "set $TEMPER_RUNS or an absolute logging.run_dir to choose")
        return Path(DEFAULT_SUBMITTED_BASE).expanduser().resolve() / path, why
    return path.resolve(), None


def new_run_dir(base: Path, name: str) -> Path:
    """base/NAME-YYYYmmdd-HHMMSS, with -2, -3 ... when runs start within the same second."""
    base.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for k in range(1, 1000):
        run_dir = base / (stem if k == 1 else f"{stem}-{k}")
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot make a run directory under {base}")

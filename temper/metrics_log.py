"""Per-step metrics, written where people look: metrics.jsonl (the source of truth, one JSON object a
step), TensorBoard event files in the run directory (on by default), and Weights & Biases when asked for.

TensorBoard gets scalars only, written with the `tensorboard` package's own event writer: no TensorFlow
and no torch in the driver. W&B is an optional extra (`pip install 'temper[wandb]'`), imported only when
`logging.wandb.mode` is "online" or "offline"; offline runs land in RUN_DIR/wandb/ for `wandb sync`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path
from typing import Any, Self

from temper.configs.schema import LoggingConfig


def check_wandb(cfg: LoggingConfig) -> None:
    """Raise ValueError before the run starts when W&B is asked for but not installed."""
    if cfg.wandb.mode != "disabled" and importlib.util.find_spec("wandb") is None:
        raise ValueError(f"logging.wandb.mode = {cfg.wandb.mode!r} needs the wandb package, which is not "
                         "installed: pip install 'temper[wandb]' (or set logging.wandb.mode = \"disabled\")")


def scalars(m: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics record (lists, strings and NaNs left out; bools as 0/1)."""
    out = {}
    for k, v in m.items():
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, int | float) and math.isfinite(v):
            out[k] = float(v)
    return out


class TensorBoardLog:
    """Scalars into RUN_DIR/events.out.tfevents.*, so `tensorboard --logdir runs/` lists every run."""

    def __init__(self, run_dir: Path) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.writer = EventFileWriter(str(run_dir))

    def log(self, values: dict[str, float], step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        self.writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))

    def close(self) -> None:
        self.writer.close()


class WandbLog:
    def __init__(self, cfg: LoggingConfig, run_dir: Path, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError as e:  # check_wandb catches this before the run; a broken install lands here
            raise RuntimeError(f"logging.wandb.mode = {cfg.wandb.mode!r}: cannot import wandb ({e}); "
                               "pip install 'temper[wandb]'") from None
        w = cfg.wandb
        self.run = wandb.init(project=w.project, entity=w.entity, name=w.name or run_dir.name, tags=w.tags,
                              mode=w.mode, dir=str(run_dir), config=config)

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def summary(self, values: dict[str, float]) -> None:
        self.run.summary.update(values)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class MetricsLog:
    """A context manager: `with MetricsLog(cfg.logging, run_dir, config) as log: log.step(m)`."""

    def __init__(self, cfg: LoggingConfig, run_dir: Path, config: dict[str, Any]) -> None:
        self.file = (run_dir / "metrics.jsonl").open("w")
        self.tb = TensorBoardLog(run_dir) if cfg.tensorboard else None
        self.wandb = WandbLog(cfg, run_dir, config) if cfg.wandb.mode != "disabled" else None

    def __enter__(self) -> Self:
        return self

    def step(self, m: dict[str, Any]) -> None:
        """One step's record: a line of metrics.jsonl, and its scalars everywhere else."""
        self.file.write(json.dumps(m) + "\n")
        self.file.flush()
        self.scalars(scalars({k: v for k, v in m.items() if k != "step"}), m["step"])

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Scalars for the dashboards only (e.g. held-out accuracy before and after RL)."""
        if self.tb is not None:
            self.tb.log(values, step)
        if self.wandb is not None:
            self.wandb.log(values, step)

    def summary(self, summary: dict[str, Any]) -> None:
        """The end-of-run numbers, as W&B run summary (TensorBoard has no such thing: summary.json has them)."""
        if self.wandb is not None:
            flat = {}
            for k, v in summary.items():
                if isinstance(v, dict):
                    flat.update({f"{k}/{k2}": v2 for k2, v2 in scalars(v).items()})
                else:
                    flat.update(scalars({k: v}))
            self.wandb.summary(flat)

    def __exit__(self, kind, exc, tb) -> None:
        self.close(failed=kind is not None)

    def close(self, failed: bool) -> None:
        """failed: the run ended early (W&B marks the run so)."""
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.close(failed=failed)

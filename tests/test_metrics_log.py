"""metrics.jsonl, TensorBoard event files and the W&B option (temper/metrics_log.py), without a run."""

import json
import sys

import pytest
from pydantic import ValidationError

from temper.configs.schema import LoggingConfig
from temper.metrics_log import MetricsLog, check_wandb, scalars


def read_tensorboard(run_dir):
    """(tag, step, value) of every scalar in the run folder's event file, read as TensorBoard reads it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (path,) = run_dir.glob("events.out.tfevents.*")
    acc = EventAccumulator(str(path))
    acc.Reload()
    return [(tag, e.step, e.value) for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)]


def test_steps_go_to_jsonl_and_tensorboard(tmp_path):
    with MetricsLog(LoggingConfig(), tmp_path, {}) as log:
        log.scalars({"eval/heldout_accuracy": 0.25}, 0)
        log.step({"step": 1, "reward/mean": 0.5, "batch/group_ids": ["g0"], "learner/ok": True})
        log.step({"step": 2, "reward/mean": 0.75, "batch/group_ids": ["g1"], "learner/ok": False})
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["batch/group_ids"] for m in lines] == [["g0"], ["g1"]]  # the source of truth keeps everything
    assert sorted(read_tensorboard(tmp_path)) == [
        ("eval/heldout_accuracy", 0, 0.25), ("learner/ok", 1, 1.0), ("learner/ok", 2, 0.0),
        ("reward/mean", 1, 0.5), ("reward/mean", 2, 0.75),
    ]


def test_tensorboard_can_be_turned_off(tmp_path):
    with MetricsLog(LoggingConfig(tensorboard=False), tmp_path, {}) as log:
        log.step({"step": 1, "reward/mean": 0.5})
    assert not list(tmp_path.glob("events.out.tfevents.*")) and (tmp_path / "metrics.jsonl").is_file()


def test_scalars_keep_finite_numbers_only():
    assert scalars({"a": 1, "b": 2.5, "c": float("nan"), "d": "x", "e": [1], "f": True}) == {"a": 1.0, "b": 2.5, "f": 1.0}


def test_wandb_config_is_typed():
    cfg = LoggingConfig.model_validate({"wandb": {"mode": "offline", "project": "p", "tags": ["a"]}})
    assert cfg.wandb.mode == "offline" and cfg.wandb.project == "p"
    assert LoggingConfig().wandb.mode == "disabled"
    with pytest.raises(ValidationError):
        LoggingConfig.model_validate({"wandb": {"mode": "sometimes"}})
    with pytest.raises(ValidationError):
        LoggingConfig.model_validate({"wandb": {"projekt": "p"}})


def test_wandb_asked_for_but_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    check_wandb(LoggingConfig())  # not asked for: fine
    with pytest.raises(ValueError, match=r"logging.wandb.mode = 'offline' needs the wandb package.*temper\[wandb\]"):
        check_wandb(LoggingConfig.model_validate({"wandb": {"mode": "offline"}}))


def test_wandb_offline_run_writes_into_the_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = LoggingConfig.model_validate({"wandb": {"mode": "offline", "project": "temper-test"}})
    with MetricsLog(cfg, tmp_path, {"seed": 0}) as log:
        log.step({"step": 1, "reward/mean": 0.5})
        log.summary({"lift": 0.1, "timeline": {"step_s": 0.8}})
    assert list((tmp_path / "wandb").glob("offline-run-*"))

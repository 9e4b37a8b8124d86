"""Everything a run can check before it costs anything: the config against the files it names.

Cheap checks first, expensive work last. A malformed line in `data.train` must be reported in two seconds,
not after the demo's warm start (77 s on a cold cache), Ray's start or an engine's. So the order is: the data
files the config names (every line parsed, errors naming file and line), the plugins and their params, the
checkpoint to resume from; then, only when all of that holds, the demo's assets (a model and data it makes
itself), whose generated files are read last. Nothing here starts Ray or an actor: every mistake is a
ConfigError naming the field, file and line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temper import checkpoints
from temper.configs.data import DataError, load_prompts
from temper.configs.load import ConfigError
from temper.configs.schema import RunConfig
from temper.metrics_log import check_wandb
from temper.runs import runs_base

DATA_FIELDS = ("data.train", "data.eval")


@dataclass
class Prepared:
    """A config checked against the files it names, with what the run reads before any actor starts."""

    cfg: RunConfig
    train_rows: int
    eval_rows: list[dict[str, Any]]
    skipped: dict[str, list[str]] = field(default_factory=dict)
    """data.train / data.eval -> "file:line: why" of each bad line left out (data.on_bad_line = "skip")."""
    runs_base: Path = Path("runs")
    resume: Path | None = None
    """The checkpoint folder to continue from."""
    start: int = 0
    """The version (= step) the run starts at: the checkpoint's, or 0."""
    started_at: float = field(default_factory=time.time)
    """When preparing began (the run's phase times count from here)."""
    seconds: float = 0.0
    """How long preparing took: reading the data, and building the demo's assets when they are not cached."""


@dataclass
class DataRead:
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """data.train / data.eval -> the usable rows."""
    skipped: dict[str, list[str]] = field(default_factory=dict)


def prepare(cfg: RunConfig, log=print, resume: str | None = None) -> Prepared:
    """Read and check every data line, validate plugin params, find the checkpoint to resume from, then fill
    in demo assets. Before any actor: every mistake here is a ConfigError naming the field, file and line."""
    t0 = time.time()
    data = read_data(cfg, DATA_FIELDS, log)  # the files the user named; the demo's own come after it
    if cfg.model.path:
        check_model(cfg.model.path)
    check_plugins(cfg)
    base, _ = runs_base(cfg.logging.run_dir)
    p = Prepared(cfg, 0, [], runs_base=base, started_at=t0)
    if resume:
        find_resume(p, resume)
    if cfg.demo.enabled:
        p.cfg = cfg = with_demo_assets(cfg, log)
        demo_fields = tuple(name for name in DATA_FIELDS if name not in data.rows)
        more = read_data(cfg, demo_fields, log)
        data.rows.update(more.rows)
        data.skipped.update(more.skipped)
    check_model(cfg.model.path)
    train = data.rows.get("data.train", [])
    if len(train) < cfg.rollout.num_workers:
        raise ConfigError(f"data.train: {len(train)} usable rows for rollout.num_workers = "
                          f"{cfg.rollout.num_workers}: every worker needs at least one")
    p.train_rows, p.eval_rows, p.skipped = len(train), data.rows.get("data.eval", []), data.skipped
    p.seconds = time.time() - t0
    return p


def with_demo_assets(cfg: RunConfig, log) -> RunConfig:
    """The demo's model and data (built once, then cached) wherever the config leaves model.path or data empty.
    The one place a run builds demo assets: the slow part of a first demo run (its warm start)."""
    from temper.demos.assets import ensure_demo_assets

    paths = ensure_demo_assets(cfg.demo, log=log)
    return cfg.model_copy(
        update={
            "model": cfg.model.model_copy(update={"path": cfg.model.path or paths["model"]}),
            "data": cfg.data.model_copy(
                update={"train": cfg.data.train or paths["train"], "eval": cfg.data.eval or paths["eval"]}
            ),
        }
    )


def read_data(cfg: RunConfig, names: tuple[str, ...], log) -> DataRead:
    """Every line of the data files among `names` that the config sets, parsed and checked."""
    d = cfg.data
    out = DataRead()
    for name in names:
        value = d.train if name == "data.train" else d.eval
        if not value:
            continue
        if not Path(value).expanduser().exists():
            raise ConfigError(f"{name}: file not found: {value}")
        try:
            read = load_prompts(value, d.prompt_key, d.label_key, d.on_bad_line)
        except DataError as e:
            hint = " (or set data.on_bad_line = \"skip\")" if d.on_bad_line == "error" else ""
            raise ConfigError(f"{name}: {e}{hint}") from None
        out.rows[name] = read.rows
        if read.skipped:
            out.skipped[name] = read.skipped
            log(f"{name}: skipped {len(read.skipped)} bad line(s) (data.on_bad_line = \"skip\"); "
                f"first: {read.skipped[0]}")
    return out


def check_model(path: str) -> None:
    model = Path(path).expanduser()
    if not (model / "config.json").is_file():
        raise ConfigError(f"model.path: {model} is not a Hugging Face model folder (no config.json)")


def check_plugins(cfg: RunConfig) -> None:
    """Verifiers, the environment and its params, the W&B settings: each resolved and validated."""
    from temper.environments.registry import resolve_environment
    from temper.rewards.rubric import validate_rewards_config

    validate_rewards_config(cfg.rewards)
    try:
        check_wandb(cfg.logging)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        env_cls = resolve_environment(cfg.environment.name)
        env_cls.Params.model_validate(cfg.environment.params)
    except Exception as e:  # noqa: BLE001 - any plugin/params failure is a config error here
        raise ConfigError(f"environment: {e}") from None
    if cfg.eval.without_tools and not hasattr(env_cls, "without_tools"):
        raise ConfigError(f"eval.without_tools: environment {cfg.environment.name!r} offers no tools to take away "
                          "(use a tool environment, e.g. name = \"tool\")")


def find_resume(p: Prepared, resume: str) -> None:
    """p.resume and p.start from --resume (a checkpoint, a run folder or "latest"); removes the partial
    checkpoint a crash left in that run's folder."""
    p.resume = checkpoints.resolve_resume(resume, p.runs_base, p.cfg.name)
    p.start = checkpoints.version_of(p.resume)
    if p.resume.parent.name == "checkpoints":
        checkpoints.remove_partial(p.resume.parent.parent)
    if p.start >= p.cfg.learner.steps:
        raise ConfigError(f"--resume: the checkpoint {p.resume} is at step {p.start} and learner.steps = "
                          f"{p.cfg.learner.steps}: nothing left to train (raise learner.steps)")

"""`temper train`: the job driver. The whole async RL loop, top to bottom.

    buffer <- workers (each loops: prompt -> group of episodes -> rewards -> buffer)
    for step in 1..N:
        batch  = buffer.get_batch(batch_groups, version)     # waits; drops stale groups
        metrics = learner.train_step(batch)                   # GRPO-family loss, one optimizer step
        learner.sync_weights(version + 1)                     # vLLM weight-transfer API: shm/ray/ipc/nccl
                                                              # between engine steps; requests survive
        buffer.set_version(version + 1)                       # opens the staleness throttle

Workers never wait for the learner except through the buffer's throttle, so generation overlaps training
(max_staleness >= 1) or alternates with it (max_staleness = 0, sync mode). Every wait goes through the
worker pool (temper/supervisor.py), which replaces a dead or hung worker meanwhile. Before anything
starts, every data line is read and checked and the cluster is asked whether it can ever hold the run;
however the run ends, temper/cleanup.py leaves no actor, process or /dev/shm segment behind, and a run
that stops early says what died and how to resume (temper/stops.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temper import checkpoints
from temper.cleanup import (
    Teardown,
    descendants,
    kill_survivors,
    remove_dead_weights_folders,
    signals_held,
    weights_folder,
)
from temper.configs.data import DataError, load_prompts
from temper.configs.load import ConfigError
from temper.configs.schema import RunConfig
from temper.metrics_log import MetricsLog, check_wandb
from temper.report import describe_eval, eval_record, plot_run
from temper.runs import new_run_dir, runs_base
from temper.stops import RunError, RunStopped, describe
from temper.timeline import Timeline, describe_startup, drain
from temper.timeline import describe as describe_timeline

__all__ = ["ConfigError", "Prepared", "RunError", "RunStopped", "prepare", "train"]

CRASH_ENV = "TEMPER_CRASH_AT"
"""Fault injection for tests: "checkpoint:N" SIGKILLs the driver once checkpoint step-N is complete in its
temporary folder, just before the rename that publishes it (tests/test_faults.py)."""


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


def prepare(cfg: RunConfig, log=print, resume: str | None = None) -> Prepared:
    """Fill in demo assets, read and check every data line, validate plugin params, find the checkpoint to
    resume from. Before any actor: every mistake here is a ConfigError naming the field, file and line."""
    from temper.environments.registry import resolve_environment
    from temper.rewards.rubric import validate_rewards_config

    if cfg.demo.enabled:
        from temper.demos.assets import ensure_demo_assets

        paths = ensure_demo_assets(cfg.demo, log=log)
        cfg = cfg.model_copy(
            update={
                "model": cfg.model.model_copy(update={"path": cfg.model.path or paths["model"]}),
                "data": cfg.data.model_copy(
                    update={"train": cfg.data.train or paths["train"], "eval": cfg.data.eval or paths["eval"]}
                ),
            }
        )
    model = Path(cfg.model.path).expanduser()
    if not (model / "config.json").is_file():
        raise ConfigError(f"model.path: {model} is not a Hugging Face model folder (no config.json)")
    rows: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, list[str]] = {}
    d = cfg.data
    for name, value in (("data.train", d.train), ("data.eval", d.eval)):
        if not value:
            continue
        if not Path(value).expanduser().exists():
            raise ConfigError(f"{name}: file not found: {value}")
        try:
            read = load_prompts(value, d.prompt_key, d.label_key, d.on_bad_line)
        except DataError as e:
            hint = " (or set data.on_bad_line = \"skip\")" if d.on_bad_line == "error" else ""
            raise ConfigError(f"{name}: {e}{hint}") from None
        rows[name] = read.rows
        if read.skipped:
            skipped[name] = read.skipped
            log(f"{name}: skipped {len(read.skipped)} bad line(s) (data.on_bad_line = \"skip\"); first: {read.skipped[0]}")
    if len(rows["data.train"]) < cfg.rollout.num_workers:
        raise ConfigError(f"data.train: {len(rows['data.train'])} usable rows for rollout.num_workers = "
                          f"{cfg.rollout.num_workers}: every worker needs at least one")
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
    base, _ = runs_base(cfg.logging.run_dir)
    p = Prepared(cfg, len(rows["data.train"]), rows.get("data.eval", []), skipped, base)
    if resume:
        p.resume = checkpoints.resolve_resume(resume, base, cfg.name)
        p.start = checkpoints.version_of(p.resume)
        if p.resume.parent.name == "checkpoints":
            checkpoints.remove_partial(p.resume.parent.parent)
        if p.start >= cfg.learner.steps:
            raise ConfigError(f"--resume: the checkpoint {p.resume} is at step {p.start} and learner.steps = "
                              f"{cfg.learner.steps}: nothing left to train (raise learner.steps)")
    return p


def connect_ray(cfg: RunConfig, teardown: Teardown, log=print) -> bool:
    """Join the cluster of `ray job submit` / `ray start` when there is one (ray.address = "local": never);
    else start a private one. Returns True for a private cluster.

    A private cluster keeps its files (and its address) in its own temp folder, so another `temper train`
    on the same machine never joins it by accident and dies when this run stops it; teardown removes it."""
    import ray

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    # The console shows temper's own lines; engine warnings and loader output stay in the worker logs
    # (see `ray_logs_dir`). Errors in actors still reach the driver as exceptions.
    quiet = {"log_to_driver": False, "logging_level": "WARNING"}
    target = None if address == "local" else address or ray_start_cluster()
    if target:
        try:
            with _sigterm_kept():
                ray.init(address=target, **quiet)
            return False
        except ConnectionError:
            if address:
                raise
    _start_private_cluster(cfg, teardown, quiet, log)
    return True


def ray_start_cluster() -> str | None:
    """The address of the cluster `ray start` last started on this machine (Ray's own record of it), or None.

    Not ray.init(address="auto"): that also joins any Ray cluster it finds running here, another
    `temper train`'s private one included, which then dies under this run when that run ends."""
    from ray._private.utils import read_ray_address  # where `ray start` records it; RAY_TMPDIR respected

    return read_ray_address()


@contextlib.contextmanager
def _sigterm_kept():
    """ray.init replaces the SIGTERM handler (with sys.exit, and its core worker's with one that aborts the
    process): put the caller's back, so `kill` and `ray job stop` clean up as Ctrl-C does."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _start_private_cluster(cfg: RunConfig, teardown: Teardown, quiet: dict[str, Any], log) -> None:
    import ray

    from temper import resources

    try:  # CPUs are known before the cluster starts: a run that can never fit is refused at once
        resources.check_local(cfg)
    except RuntimeError as e:
        raise ConfigError(str(e)) from None
    # The driver's pid in the name tells one run's cluster folder from another's on a shared machine.
    teardown.private_ray = tempfile.mkdtemp(prefix=f"temper-ray-{os.getpid()}-", dir="/tmp")
    # Ray >= 2.59 secures local clusters with a token and saves it to ~/.ray/auth_token, where a later
    # `ray start --head` would pick it up and `ray job submit` would then be refused. A per-run token in
    # the environment keeps this private cluster secured without leaving that file behind.
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    for attempt in (1, 2):
        before = descendants()
        try:
            with _sigterm_kept():
                ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, _temp_dir=teardown.private_ray, **quiet)
            return
        except Exception as e:
            # Ray gives its raylet a fixed 30 s to register; a busy machine can miss that once.
            if attempt == 2 or "timed out during startup" not in str(e):
                raise
            log("the local Ray cluster missed Ray's 30 s start-up window (a busy machine?); starting it again")
            ray.shutdown()
            kill_survivors([p for p in descendants() if p not in before], grace_s=1)


def ray_logs_dir() -> str | None:
    """Where this Ray session writes every actor's stdout/stderr (worker-*.out/.err), on the head node."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # no public API names the session folder
    return os.path.join(node.get_session_dir_path(), "logs") if node is not None else None


def evaluate(pool, rows: list[dict[str, Any]], step: int, version: int, without_tools: bool = False) -> dict[str, Any]:
    """Greedy accuracy over `rows` with 95% intervals, and tool-call/tool-error rates for tool environments.
    without_tools: the environment offering no tools (an ablation of tool environments)."""
    return eval_record(step, pool.evaluate(rows, version, without_tools), without_tools)


def train(cfg: RunConfig, log=print, resume: str | None = None, prepared: Prepared | None = None) -> dict[str, Any]:
    """Run a whole job; returns the summary that is also written to RUN_DIR/summary.json.

    resume: a checkpoint folder, a run folder (its newest complete checkpoint) or "latest" (see
    temper/checkpoints.py): the learner's weights, optimizer and lr schedule, the engines' weights, the
    buffer's groups and every worker's data cursor; steps N+1..learner.steps. prepared: `prepare`'s result
    when the caller already has it. Raises ConfigError before anything starts, RunStopped after."""
    from temper import resources

    p = prepared or prepare(cfg, log=log, resume=resume)
    cfg = p.cfg
    teardown = Teardown()
    progress: dict[str, Any] = {"step": None}
    try:
        t_ray = time.time()
        private = connect_ray(cfg, teardown, log)
        progress["ray_s"] = time.time() - t_ray
        try:
            resources.check(cfg, private, log=log)
        except RuntimeError as e:
            raise ConfigError(str(e)) from None
        teardown.run_dir = run_dir = new_run_dir(p.runs_base, cfg.name)
        (run_dir / "config.json").write_text(cfg.model_dump_json(indent=1))
        _, why = runs_base(cfg.logging.run_dir)
        log(f"run directory: {run_dir}" + (f" ({why})" if why else ""))
        summary = _run(p, run_dir, teardown, progress, log)
        log(f"run directory: {run_dir}")
        return summary
    except ConfigError:
        raise
    except BaseException as e:  # every way a started run ends becomes one RunStopped
        with signals_held():  # a second Ctrl-C must not replace this exception with another
            stopped = _stopped(e, teardown.run_dir, p.resume, progress["step"])
        raise stopped from e
    finally:
        teardown.run()


def _stopped(e: BaseException, run_dir: Path | None, resumed_from: Path | None, step: int | None) -> RunStopped:
    """The message for a run that ended early, with the newest checkpoint it can resume from."""
    ckpt = (checkpoints.newest(run_dir) if run_dir else None) or resumed_from
    if isinstance(e, KeyboardInterrupt):
        return RunStopped("stopped by a signal (Ctrl-C or SIGTERM); engines, actors and /dev/shm cleaned up",
                          run_dir, ckpt, interrupted=True, step=step)
    reason = describe(e)
    if not isinstance(e, (RunError, TimeoutError)) and run_dir is not None:
        import ray.exceptions as rex

        if not isinstance(e, rex.RayError):  # a bug in the driver: keep the traceback for the report
            (run_dir / "error.log").write_text("".join(traceback.format_exception(e)))
            reason += f" (traceback in {run_dir / 'error.log'})"
    return RunStopped(reason, run_dir, ckpt, step=step)


def _run(p: Prepared, run_dir: Path, teardown: Teardown, progress: dict[str, Any], log) -> dict[str, Any]:
    """Actors up, the first eval, the loop, the last eval and the summary."""
    import ray

    from temper.actors import make_buffer, make_learner
    from temper.rollout.dispatch import PromptDispatch
    from temper.supervisor import WorkerPool

    cfg, start = p.cfg, p.start
    start_weights = str(p.resume) if p.resume else None  # the learner's and the engines' (None: model.path)
    remove_dead_weights_folders()
    teardown.weights_root = weights_folder(cfg.name)
    rollouts = str(run_dir / "rollouts.jsonl") if cfg.logging.save_rollouts else None
    dispatch = PromptDispatch(PromptDispatch.shard_sizes(p.train_rows, cfg.rollout.num_workers), cfg.seed,
                              cfg.data.shuffle)
    teardown.buffer = buffer = make_buffer(cfg, rollouts, dispatch)
    teardown.learner = learner = make_learner(cfg, teardown.weights_root, start_weights)
    pool = WorkerPool(cfg, buffer, learner, start_weights, start, teardown, log)
    timeline = Timeline()  # where the time goes: trace.json and the summary's `timeline`
    t0 = time.time()
    if p.resume:
        try:
            ray.get(buffer.load_state_dict.remote(json.loads((p.resume / "buffer.json").read_text())))
        except ray.exceptions.RayTaskError as e:
            raise RunError(f"--resume {p.resume}: {e.cause}") from None
        log(f"resuming from {p.resume} (step {start})")
    log("starting the learner and rollout worker(s) (vLLM engines)")
    pool.start()
    timeline.mark("start learner and engines", t0)
    log(f"{len(pool.workers)} rollout worker(s) with vLLM engines and the learner up in {time.time() - t0:.1f}s"
        f" (weight sync: {pool.backend})")
    pool.startup["ray_s"] = progress.get("ray_s")
    log(describe_startup(pool.startup))
    where = f" (copied to {run_dir / 'ray-logs'} at the end)" if teardown.private_ray else ""
    log(f"engine and worker logs: {ray_logs_dir()}{where}")

    with MetricsLog(cfg.logging, run_dir, cfg.model_dump(mode="json")) as metrics:
        evals: list[dict[str, Any]] = []
        if p.eval_rows:
            t0 = time.time()
            log(f"held-out eval {_at(start)} on {len(p.eval_rows)} rows")
            evals.append(evaluate(pool, p.eval_rows, start, start))
            log(f"held-out accuracy {_at(start)}: {describe_eval(evals[0])}  [{time.time() - t0:.1f}s]")
            if cfg.eval.without_tools:
                evals.append(evaluate(pool, p.eval_rows, start, start, without_tools=True))
                log(f"held-out accuracy {_at(start)}, no tools: {describe_eval(evals[-1])}")
            timeline.mark("eval", t0)
            pool.startup["first_eval_s"] = time.time() - t0
            metrics.scalars({"eval/heldout_accuracy": evals[0]["accuracy"]}, start)
        progress["step"] = start
        steps = _loop(cfg, run_dir, buffer, learner, pool, p.eval_rows, evals, log, start, progress, timeline, metrics)
        return _finish(cfg, p, run_dir, learner, buffer, pool, evals, steps, log, timeline, metrics)


def _at(step: int) -> str:
    return "before RL" if step == 0 else f"at step {step} (resumed)"


def _loop(cfg, run_dir, buffer, learner, pool, eval_rows, evals, log, start: int, progress, timeline: Timeline,
          metrics: MetricsLog) -> list[dict[str, Any]]:
    import ray
    from tqdm import tqdm

    steps: list[dict[str, Any]] = []
    version = start
    run_start = time.time()
    bar = tqdm(total=cfg.learner.steps, initial=start, desc="RL steps", disable=not cfg.logging.progress_bar,
               dynamic_ncols=True)
    pool.run()
    tokens = ray.get(buffer.stats.remote())["generated_tokens"]
    timeline.add(*drain(pool, buffer))  # the engines' spans of the first eval
    try:
        with timeline.during("RL steps"):
            for step in range(start + 1, cfg.learner.steps + 1):
                t_step = time.time()
                pool.step = step
                batch = buffer.get_batch.remote(cfg.learner.batch_groups, version, cfg.buffer.batch_timeout_s)
                pool.wait(batch, version, learner_idle=True)  # a replaced worker rejoins only here
                t_ready = time.time()
                m = pool.get(learner.train_step.remote(batch), version, learner_idle=False)
                t_sync = time.time()
                version = m["version"]
                pool.wait(learner.sync_weights.remote(version), version, learner_idle=False)
                ray.get(buffer.set_version.remote(version))
                t_end = time.time()
                m.update(_step_metrics(buffer, pool, step, t_step, t_sync, run_start))
                engine_spans, buffer_spans = drain(pool, buffer)
                m.update(timeline.step(step, (t_step, t_ready, t_sync, t_end), engine_spans, buffer_spans,
                                       m["rollout/generated_tokens"] - tokens))
                tokens = m["rollout/generated_tokens"]
                if eval_rows and cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step < cfg.learner.steps:
                    t0 = time.time()
                    rows = eval_rows[: cfg.eval.limit] if cfg.eval.limit else eval_rows
                    evals.append(evaluate(pool, rows, step, version))
                    m["eval/accuracy"] = evals[-1]["accuracy"]
                    timeline.mark("eval", t0)
                if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0:
                    t0 = time.time()
                    _checkpoint(cfg, learner, buffer, run_dir, step)
                    timeline.mark("checkpoint", t0)
                metrics.step(m)
                steps.append(m)
                progress["step"] = step
                bar.update(1)
                bar.set_postfix(
                    reward=f"{m['reward/mean']:.2f}",
                    acc=f"{m['reward/accuracy']:.2f}",
                    stale=f"{m['buffer/staleness_mean']:.2f}",
                    tok_s=f"{m['rollout/tokens_per_s']:.0f}",
                    restarts=len(pool.restarts),
                )
    finally:
        bar.close()
    pool.stop()
    return steps


def _step_metrics(buffer, pool, step: int, t_step: float, t_sync: float, run_start: float) -> dict[str, Any]:
    import ray

    stats = ray.get(buffer.stats.remote())
    now = time.time()
    return {
        **ray.get(buffer.batch_stats.remote()),
        "step": step,
        "step_seconds": now - t_step,
        "weight_sync_seconds": now - t_sync,
        # since RL started: per-step deltas read 0 whenever the throttle held the workers
        "rollout/tokens_per_s": stats["generated_tokens"] / max(now - run_start, 1e-9),
        "rollout/generated_tokens": stats["generated_tokens"],
        "rollout/failed_groups": stats["failed_groups"],
        "rollout/restarts": len(pool.restarts),
        "rollout/lost_groups": pool.lost_groups,
        "elapsed_seconds": now - run_start,
    }


def _checkpoint(cfg: RunConfig, learner, buffer, run_dir: Path, step: int) -> Path:
    """Learner (HF weights + optimizer + schedule), buffer (held groups, data cursors, groups in flight) and
    the version, published atomically (temper/checkpoints.py); `temper train --resume RUN_DIR`."""
    import ray

    from temper.rollout.types import json_default

    def fill(folder: Path) -> dict[str, Any]:
        ray.get(learner.save_checkpoint.remote(str(folder)))
        state = ray.get(buffer.state_dict.remote())
        (folder / "buffer.json").write_text(json.dumps(state, default=json_default))
        return {"version": state["learner_version"]}

    def crash_here(_: Path) -> None:
        if os.environ.get(CRASH_ENV) == f"checkpoint:{step}":
            import signal

            os.kill(os.getpid(), signal.SIGKILL)

    return checkpoints.write(run_dir / "checkpoints", step, fill, cfg.checkpoint.keep_last, before_rename=crash_here)


def _finish(cfg, p: Prepared, run_dir, learner, buffer, pool, evals, steps, log, timeline: Timeline,
            metrics: MetricsLog) -> dict[str, Any]:
    import ray

    rl_seconds = steps[-1]["elapsed_seconds"] if steps else 0.0
    summary: dict[str, Any] = {"steps": len(steps), "rl_seconds": round(rl_seconds, 1), "run_dir": str(run_dir)}
    if p.eval_rows:
        before = evals[0]
        log(f"held-out eval after RL on {len(p.eval_rows)} rows")
        step = before["step"] + len(steps)
        t0 = time.time()
        after = evaluate(pool, p.eval_rows, step, step)
        timeline.mark("eval", t0)
        evals.append(after)
        metrics.scalars({"eval/heldout_accuracy": after["accuracy"]}, step)
        summary.update({"heldout_before": before, "heldout_after": after, "lift": after["accuracy"] - before["accuracy"]})
        log(f"held-out accuracy {_at(before['step'])}: {describe_eval(before)}")
        log(f"held-out accuracy after  RL: {describe_eval(after)}")
        if cfg.eval.without_tools:
            no_tools = [e for e in evals if e.get("without_tools")]
            no_tools.append(evaluate(pool, p.eval_rows, step, step, without_tools=True))
            evals.append(no_tools[-1])
            summary.update({"heldout_before_without_tools": no_tools[0], "heldout_after_without_tools": no_tools[-1]})
            log(f"held-out accuracy after  RL, no tools: {describe_eval(no_tools[-1])}")
        log(f"lift: {summary['lift']:+.1%} in {len(steps)} steps ({rl_seconds:.0f}s of RL)")
    if steps:
        keys = ["step_seconds", "rollout/tokens_per_s", "learner/logp_mismatch", "buffer/staleness_mean"]
        summary["means"] = {k: sum(m[k] for m in steps) / len(steps) for k in keys}
        summary["plot"] = plot_run(steps, evals, run_dir / "progress.png")
        summary["timeline"] = timeline.summary()
        for line in describe_timeline(summary["timeline"]):
            log(line)
    timeline.add(*drain(pool, buffer))
    summary["trace"] = timeline.write_trace(run_dir / "trace.json")
    tensorboard = f"; TensorBoard: tensorboard --logdir {run_dir.parent}" if cfg.logging.tensorboard else ""
    log(f"plot: {run_dir / 'progress.png'}; timeline: {summary['trace']} (ui.perfetto.dev){tensorboard}")
    summary["startup"] = pool.startup
    summary["buffer"] = ray.get(buffer.stats.remote())
    summary["restarts"] = [{k: v for k, v in r.items() if k != "died_at"} for r in pool.restarts]
    summary["lost_groups"] = pool.lost_groups
    summary["skipped_lines"] = p.skipped
    if pool.restarts:
        secs = [r["seconds"] for r in pool.restarts if r["seconds"] is not None]
        log(f"rollout worker restarts: {len(pool.restarts)} ({', '.join(f'{s:.1f}s' for s in secs)}); "
            f"{pool.lost_groups} in-flight group(s) generated again")
    if cfg.checkpoint.save_final:
        log(f"saving the final model to {run_dir / 'final_model'}")
        summary["final_model"] = ray.get(learner.save_hf.remote(str(run_dir / "final_model")))
    (run_dir / "evals.json").write_text(json.dumps(evals, indent=1))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    metrics.summary(summary)
    return summary

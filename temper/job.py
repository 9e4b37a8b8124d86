"""`temper train`: the job driver. The whole async RL loop, top to bottom.

    buffer <- workers (each loops: prompt -> group of episodes -> rewards -> buffer)
    for step in 1..N:
        batch  = buffer.get_batch(batch_groups, version)     # waits; drops stale groups
        metrics = learner.train_step(batch)                   # GRPO-family loss, one optimizer step
        learner.sync_weights(version + 1)                     # vLLM weight-transfer API: shm / ipc / nccl
                                                              # between engine steps; requests survive
        buffer.set_version(version + 1)                       # opens the staleness throttle

Workers never wait for the learner except through the buffer's throttle, so generation overlaps training
(max_staleness >= 1) or alternates with it (max_staleness = 0, sync mode).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from temper.configs.data import DataError, load_rows
from temper.configs.load import ConfigError
from temper.configs.schema import RunConfig
from temper.report import describe_eval, eval_record, plot_run

CHECKPOINT_INFO = "checkpoint.json"
"""In each checkpoint folder: {"version": N}, the step it was written after."""


class RunError(RuntimeError):
    """A run that cannot go on for a reason the user can act on; the CLI prints it without a traceback."""


def prepare(cfg: RunConfig, log=print) -> RunConfig:
    """Fill in demo assets, check every path the run reads, validate plugin params. Before any actor."""
    from temper.environments.registry import resolve_environment
    from temper.rewards.rubric import validate_rewards_config

    if cfg.demo.enabled:
        from temper.demo import ensure_demo_assets

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
    for field, value in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval)):
        if value and not Path(value).expanduser().is_file():
            raise ConfigError(f"{field}: file not found: {value}")
        if value:  # read every line now: a bad one is named here, not after the cluster and engines start
            try:
                load_rows(value, required=(cfg.data.prompt_key,))
            except DataError as e:
                raise ConfigError(f"{field}: {e}") from None
    validate_rewards_config(cfg.rewards)
    try:
        env_cls = resolve_environment(cfg.environment.name)
        env_cls.Params.model_validate(cfg.environment.params)
    except Exception as e:  # noqa: BLE001 - any plugin/params failure is a config error here
        raise ConfigError(f"environment: {e}") from None
    if cfg.eval.without_tools and not hasattr(env_cls, "without_tools"):
        raise ConfigError(f"eval.without_tools: environment {cfg.environment.name!r} offers no tools to take away "
                          "(use a tool environment, e.g. name = \"tool\")")
    return cfg


def connect_ray(cfg: RunConfig) -> str | None:
    """Join the cluster of `ray job submit` / `ray start` when there is one; else start a private one.

    A private cluster keeps its files (and its address) in its own temp folder, so another `temper train`
    on the same machine never joins it by accident and dies when this run stops it. Returns that folder
    when this process started the cluster (and must stop it), else None."""
    import ray

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    # The console shows temper's own lines; engine warnings and loader output stay in the worker logs
    # (see `ray_logs_dir`). Errors in actors still reach the driver as exceptions.
    quiet = {"log_to_driver": False, "logging_level": "WARNING"}
    if address:
        ray.init(address=address, **quiet)
        return None
    try:
        ray.init(address="auto", **quiet)  # a `ray start --head` cluster on this machine
        return None
    except ConnectionError:
        temp_dir = tempfile.mkdtemp(prefix="temper-ray-", dir="/tmp")
        # Ray >= 2.59 secures local clusters with a token and saves it to ~/.ray/auth_token, where a later
        # `ray start --head` would pick it up and `ray job submit` would then be refused. A per-run token in
        # the environment keeps this private cluster secured without leaving that file behind.
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, _temp_dir=temp_dir, **quiet)
        return temp_dir


def ray_logs_dir() -> str | None:
    """Where this Ray session writes every actor's stdout/stderr (worker-*.out/.err), on the head node."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # no public API names the session folder
    return os.path.join(node.get_session_dir_path(), "logs") if node is not None else None


def evaluate(workers: list[Any], rows: list[dict[str, Any]], step: int, without_tools: bool = False) -> dict[str, Any]:
    """Greedy accuracy over `rows`, split across the workers; with tool-call and tool-error rates.
    without_tools: the environment offers no tools (tool environments only)."""
    import ray

    parts = ray.get([w.evaluate.remote(rows[i :: len(workers)], without_tools) for i, w in enumerate(workers)])
    return eval_record(step, [item for p in parts for item in p], without_tools)


def _shm_root(run_name: str) -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    return tempfile.mkdtemp(prefix=f"temper-{run_name}-", dir=base)


def read_checkpoint(path: str, cfg: RunConfig) -> tuple[Path, int]:
    """A checkpoint folder written by this driver -> (its absolute path, its version = step)."""
    ckpt = Path(path).expanduser().resolve()
    missing = [f for f in (CHECKPOINT_INFO, "buffer.json", "learner_state.pt", "config.json") if not (ckpt / f).is_file()]
    if missing:
        raise ConfigError(f"--resume: {ckpt} is not a temper checkpoint (missing {', '.join(missing)})")
    version = json.loads((ckpt / CHECKPOINT_INFO).read_text())["version"]
    if version >= cfg.learner.steps:
        raise ConfigError(f"--resume: the checkpoint is at step {version} and learner.steps = {cfg.learner.steps}: "
                          "nothing left to train (raise learner.steps)")
    return ckpt, version


def train(cfg: RunConfig, log=print, resume: str | None = None) -> dict[str, Any]:
    """Run a whole job; returns the summary that is also written to RUN_DIR/summary.json.

    resume: a checkpoint folder (RUN_DIR/checkpoints/step-N) to continue from: the learner's weights,
    optimizer and lr schedule, the engines' weights, the buffer's held groups; steps N+1..learner.steps."""
    import ray

    from temper.actors import RayEngines, make_buffer, make_learner, make_workers

    cfg = prepare(cfg, log=log)
    ckpt, start = read_checkpoint(resume, cfg) if resume else (None, 0)
    start_weights = str(ckpt) if ckpt else None  # the learner's and the engines' (None: model.path)
    run_dir = Path(cfg.logging.run_dir).expanduser() / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(cfg.model_dump_json(indent=1))
    log(f"run directory: {run_dir.resolve()}")
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    weights_root = _shm_root(cfg.name)
    private_ray = connect_ray(cfg)
    workers: list[Any] = []
    learner = buffer = None
    try:
        rollouts = str((run_dir / "rollouts.jsonl").resolve()) if cfg.logging.save_rollouts else None
        buffer = make_buffer(cfg, rollouts)
        workers = make_workers(cfg, buffer)
        learner = make_learner(cfg, weights_root, start_weights)
        t0 = time.time()
        if ckpt:
            ray.get(buffer.load_state_dict.remote(json.loads((ckpt / "buffer.json").read_text())))
            log(f"resuming from {ckpt} (step {start})")
        ray.get([w.start.remote(start_weights, start) for w in workers] + [learner.prepare_sync.remote()])
        ray.get(learner.connect_engines.remote(RayEngines(workers), len(workers)))
        log(f"{len(workers)} rollout worker(s) with vLLM engines and the learner up in {time.time() - t0:.1f}s"
            f" (weight sync: {cfg.weight_sync.backend})")
        where = f" (copied to {run_dir / 'ray-logs'} at the end)" if private_ray else ""
        log(f"engine and worker logs: {ray_logs_dir()}{where}")

        eval_rows = load_rows(cfg.data.eval) if cfg.data.eval else []
        evals: list[dict[str, Any]] = []
        if eval_rows:
            t0 = time.time()
            evals.append(evaluate(workers, eval_rows, start))
            log(f"held-out accuracy {_at(start)}: {describe_eval(evals[0])}  [{time.time() - t0:.1f}s]")
            if cfg.eval.without_tools:
                evals.append(evaluate(workers, eval_rows, start, without_tools=True))
                log(f"held-out accuracy {_at(start)}, no tools: {describe_eval(evals[-1])}")

        summary = _loop(cfg, run_dir, buffer, workers, learner, eval_rows, evals, log, start)
        log(f"run directory: {run_dir.resolve()}")
        return summary
    finally:
        _shutdown(workers, learner, buffer, private_ray, weights_root, shm_before, run_dir)


def _at(step: int) -> str:
    return "before RL" if step == 0 else f"at step {step} (resumed)"


def _loop(cfg, run_dir, buffer, workers, learner, eval_rows, evals, log, start: int) -> dict[str, Any]:
    import ray
    from tqdm import tqdm

    run_refs = {w.run.remote(): i for i, w in enumerate(workers)}
    metrics_file = (run_dir / "metrics.jsonl").open("w")
    steps: list[dict[str, Any]] = []
    version = start
    start_tokens = sum(s["generated_tokens"] for s in ray.get([w.stats.remote() for w in workers]))
    run_start = time.time()
    bar = tqdm(total=cfg.learner.steps, initial=start, desc="RL steps", disable=not cfg.logging.progress_bar,
               dynamic_ncols=True)
    try:
        for step in range(start + 1, cfg.learner.steps + 1):
            t_step = time.time()
            batch = buffer.get_batch.remote(cfg.learner.batch_groups, version, cfg.buffer.batch_timeout_s)
            train_ref = learner.train_step.remote(batch)
            done, _ = ray.wait([train_ref, *run_refs], num_returns=1)
            if done[0] in run_refs:  # a worker loop ended before the learner: that is a crash
                try:
                    ray.get(done[0])
                except ray.exceptions.RayTaskError as e:
                    raise RunError(str(e.cause)) from None
                raise RunError(f"rollout worker {run_refs[done[0]]} stopped unexpectedly")
            try:
                m = ray.get(train_ref)
            except ray.exceptions.RayTaskError as e:
                if isinstance(e.cause, TimeoutError):  # the buffer explains what it dropped and why
                    raise RunError(str(e.cause)) from None
                raise
            t_sync = time.time()
            version = m["version"]
            ray.get(learner.sync_weights.remote(version))
            ray.get(buffer.set_version.remote(version))
            sync_seconds = time.time() - t_sync
            stats = ray.get([w.stats.remote() for w in workers])
            tokens = sum(s["generated_tokens"] for s in stats)
            now = time.time()
            m.update(ray.get(buffer.batch_stats.remote()))
            m.update(
                {
                    "step": step,
                    "step_seconds": now - t_step,
                    "weight_sync_seconds": sync_seconds,
                    # since RL started: per-step deltas read 0 whenever the throttle held the workers
                    "rollout/tokens_per_s": (tokens - start_tokens) / max(now - run_start, 1e-9),
                    "rollout/failed_groups": sum(s["failed_groups"] for s in stats),
                    "elapsed_seconds": now - run_start,
                }
            )
            if eval_rows and cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step < cfg.learner.steps:
                rows = eval_rows[: cfg.eval.limit] if cfg.eval.limit else eval_rows
                evals.append(evaluate(workers, rows, step))
                m["eval/accuracy"] = evals[-1]["accuracy"]
            if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0:
                _checkpoint(learner, buffer, run_dir / "checkpoints" / f"step-{step}")
            metrics_file.write(json.dumps(m) + "\n")
            metrics_file.flush()
            steps.append(m)
            bar.update(1)
            bar.set_postfix(
                reward=f"{m['reward/mean']:.2f}",
                acc=f"{m['reward/accuracy']:.2f}",
                stale=f"{m['buffer/staleness_mean']:.2f}",
                tok_s=f"{m['rollout/tokens_per_s']:.0f}",
                mismatch=f"{m['learner/logp_mismatch']:.1e}",
            )
    finally:
        bar.close()
        metrics_file.close()
        ray.get([w.stop.remote() for w in workers])
        ray.get(buffer.close.remote())
        ray.get(list(run_refs), timeout=120)
    return _finish(cfg, run_dir, learner, buffer, workers, eval_rows, evals, steps, time.time() - run_start, log)


def _checkpoint(learner, buffer, out: Path) -> None:
    """Learner (HF weights + optimizer + schedule), buffer, and the version; `temper train --resume out`."""
    import ray

    out.mkdir(parents=True, exist_ok=True)
    ray.get(learner.save_checkpoint.remote(str(out)))
    state = ray.get(buffer.state_dict.remote())
    (out / "buffer.json").write_text(json.dumps(state))
    (out / CHECKPOINT_INFO).write_text(json.dumps({"version": state["learner_version"]}))


def _finish(cfg, run_dir, learner, buffer, workers, eval_rows, evals, steps, rl_seconds, log) -> dict[str, Any]:
    import ray

    summary: dict[str, Any] = {"steps": len(steps), "rl_seconds": round(rl_seconds, 1), "run_dir": str(run_dir)}
    if eval_rows:
        before = evals[0]
        after = evaluate(workers, eval_rows, before["step"] + len(steps))
        evals.append(after)
        summary.update({"heldout_before": before, "heldout_after": after, "lift": after["accuracy"] - before["accuracy"]})
        log(f"held-out accuracy {_at(before['step'])}: {describe_eval(before)}")
        log(f"held-out accuracy after  RL: {describe_eval(after)}")
        if cfg.eval.without_tools:
            no_tools = [e for e in evals if e.get("without_tools")]
            no_tools.append(evaluate(workers, eval_rows, after["step"], without_tools=True))
            evals.append(no_tools[-1])
            summary.update({"heldout_before_without_tools": no_tools[0], "heldout_after_without_tools": no_tools[-1]})
            log(f"held-out accuracy after  RL, no tools: {describe_eval(no_tools[-1])}")
        log(f"lift: {summary['lift']:+.1%} in {len(steps)} steps ({rl_seconds:.0f}s of RL)")
    if steps:
        keys = ["step_seconds", "rollout/tokens_per_s", "learner/logp_mismatch", "buffer/staleness_mean"]
        summary["means"] = {k: sum(m[k] for m in steps) / len(steps) for k in keys}
        summary["plot"] = plot_run(steps, evals, run_dir / "progress.png")
        log(f"plot: {summary['plot']}")
    summary["buffer"] = ray.get(buffer.stats.remote())
    if cfg.checkpoint.save_final:
        summary["final_model"] = ray.get(learner.save_hf.remote(str(run_dir / "final_model")))
    (run_dir / "evals.json").write_text(json.dumps(evals, indent=1))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _shutdown(workers, learner, buffer, private_ray: str | None, weights_root: str, shm_before: set[str],
              run_dir: Path) -> None:
    """Stop engines explicitly (a killed vLLM actor leaks /dev/shm segments) and the learner's weight
    transfer (NCCL groups), then every actor and Ray. learner/buffer are None when never created. A private
    cluster's logs are copied into RUN_DIR/ray-logs before its folder is removed."""
    import ray

    with contextlib.suppress(Exception):
        ray.get([w.shutdown.remote() for w in workers], timeout=60)
    if learner is not None:
        with contextlib.suppress(Exception):
            ray.get(learner.cleanup.remote(), timeout=60)
    for actor in [*workers, learner, buffer]:
        if actor is not None:
            with contextlib.suppress(Exception):
                ray.kill(actor)
    shutil.rmtree(weights_root, ignore_errors=True)
    with contextlib.suppress(Exception):
        ray.shutdown()  # disconnects; also stops the cluster when this process started it
    if private_ray:
        logs = Path(private_ray) / "session_latest" / "logs"
        with contextlib.suppress(OSError):
            shutil.copytree(logs, run_dir / "ray-logs", ignore_dangling_symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(private_ray, ignore_errors=True)
    if os.path.isdir("/dev/shm"):
        for name in set(os.listdir("/dev/shm")) - shm_before:
            if name.startswith("psm_"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join("/dev/shm", name))

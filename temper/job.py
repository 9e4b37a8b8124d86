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
starts, every data line is read and checked (temper/prepare.py) and the cluster is asked whether it can ever
hold the run (temper/cluster.py). However the run ends (finished, an error, Ctrl-C, SIGTERM, workers dead
for good) it writes trace.json and summary.json with that ending, temper/cleanup.py leaves no actor, process
or /dev/shm segment behind, and a run that stops early says what died and how to resume (temper/stops.py).
A run killed outright cannot clean up: the segments it recorded are reaped by the next run
(temper/shm_records.py).

The job is a `Run`: what it has started, its progress and its results are its fields, and `Run.train` reads
as the list above.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

from temper import checkpoints, shm_records
from temper.cleanup import Teardown, remove_dead_weights_folders, signals_held, weights_folder
from temper.cluster import connect_ray, ray_logs_dir
from temper.configs.load import ConfigError
from temper.configs.schema import RunConfig
from temper.metrics_log import MetricsLog
from temper.prepare import Prepared, prepare
from temper.report import describe_eval, eval_record, plot_run
from temper.runs import new_run_dir, runs_base
from temper.stops import RunError, RunStopped, describe, ending_of
from temper.timeline import Timeline, describe_phases, describe_startup, drain
from temper.timeline import describe as describe_timeline

__all__ = ["ConfigError", "Prepared", "Run", "RunError", "RunStopped", "prepare", "train"]

CRASH_ENV = "TEMPER_CRASH_AT"
"""Fault injection for tests: "checkpoint:N" SIGKILLs the driver once checkpoint step-N is complete in its
temporary folder, just before the rename that publishes it (tests/test_faults.py)."""


def train(cfg: RunConfig, log=print, resume: str | None = None, prepared: Prepared | None = None) -> dict[str, Any]:
    """Run a whole job; returns the summary that is also written to RUN_DIR/summary.json.

    resume: a checkpoint folder, a run folder (its newest complete checkpoint) or "latest" (see
    temper/checkpoints.py): the learner's weights, optimizer and lr schedule, the engines' weights, the
    buffer's groups and every worker's data cursor; steps N+1..learner.steps. prepared: `prepare`'s result
    when the caller already has it. Raises ConfigError before anything starts, RunStopped after."""
    return Run(prepared or prepare(cfg, log=log, resume=resume), log).train()


def _at(step: int) -> str:
    return "before RL" if step == 0 else f"at step {step} (resumed)"


class Run:
    """One job. Its fields are the whole state of the loop: what it started (for teardown), where it is
    (version, step) and what it measured (steps, evals, timeline)."""

    def __init__(self, p: Prepared, log=print) -> None:
        self.p, self.cfg, self.log = p, p.cfg, log
        self.teardown = Teardown()
        self.shm = shm_records.ShmRecord(self.teardown.shm_before)
        self.run_dir: Path | None = None
        self.buffer: Any = None
        self.learner: Any = None
        self.pool: Any = None  # temper.supervisor.WorkerPool
        self.metrics: MetricsLog | None = None
        self.timeline = Timeline()  # where the time goes: trace.json and the summary's `timeline`
        self.ray_s: float | None = None
        self.version = p.start
        self.step: int | None = None
        """The last completed step (None before RL starts)."""
        self.steps: list[dict[str, Any]] = []  # each step's metrics
        self.evals: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.tokens = 0  # generated tokens counted at the last step's end
        self.rl_start = 0.0
        self.bar: Any = None  # tqdm over the steps

    # ------------------------------------------------------------------ the job, top to bottom
    def train(self) -> dict[str, Any]:
        try:
            self.start()
            self.first_eval()
            self.start_rl()
            with self.timeline.during("RL steps"):
                for step in range(self.p.start + 1, self.cfg.learner.steps + 1):
                    self.train_step(step)
            self.pool.stop()
            self.last_eval()
            self.finish()
            self.write_results(ending_of(None))
            self.log(describe_phases(self.p.seconds, self.summary, time.time() - self.p.started_at))
            self.log(f"run directory: {self.run_dir}")
            return self.summary
        except ConfigError:
            raise
        except BaseException as e:  # every way a started run ends becomes one RunStopped
            with signals_held():  # a second Ctrl-C must not replace this exception with another
                stopped = self.stopped(e)
                with contextlib.suppress(Exception):
                    self.write_results(ending_of(e), stopped.reason)
            raise stopped from e
        finally:
            self.close()

    def start(self) -> None:
        """Ray, the run directory, the buffer, the learner and the engines."""
        from temper import resources
        from temper.actors import make_buffer, make_learner
        from temper.rollout.dispatch import PromptDispatch
        from temper.supervisor import WorkerPool

        self.reap_dead_runs()
        cfg, p = self.cfg, self.p
        t_ray = time.time()
        private = connect_ray(cfg, self.teardown, self.log)
        self.ray_s = time.time() - t_ray
        try:
            resources.check(cfg, private, log=self.log)
        except RuntimeError as e:
            raise ConfigError(str(e)) from None
        self.teardown.run_dir = self.run_dir = run_dir = new_run_dir(p.runs_base, cfg.name)
        (run_dir / "config.json").write_text(cfg.model_dump_json(indent=1))
        _, why = runs_base(cfg.logging.run_dir)
        self.log(f"run directory: {run_dir}" + (f" ({why})" if why else ""))
        self.metrics = MetricsLog(cfg.logging, run_dir, cfg.model_dump(mode="json"))

        start_weights = str(p.resume) if p.resume else None  # the learner's and the engines' (None: model.path)
        remove_dead_weights_folders()
        self.teardown.weights_root = weights_folder(cfg.name)
        rollouts = str(run_dir / "rollouts.jsonl") if cfg.logging.save_rollouts else None
        dispatch = PromptDispatch(PromptDispatch.shard_sizes(p.train_rows, cfg.rollout.num_workers), cfg.seed,
                                  cfg.data.shuffle)
        self.teardown.buffer = self.buffer = make_buffer(cfg, rollouts, dispatch)
        self.teardown.learner = self.learner = make_learner(cfg, self.teardown.weights_root, start_weights)
        self.pool = WorkerPool(cfg, self.teardown, start_weights, p.start, self.log)
        if p.resume:
            self.load_buffer(p.resume)
        self.start_engines()

    def reap_dead_runs(self) -> None:
        """What runs killed outright on this machine left in /dev/shm (temper/shm_records.py)."""
        removed = shm_records.reap()
        if removed:
            self.log(shm_records.describe(removed))

    def load_buffer(self, checkpoint: Path) -> None:
        import ray

        try:
            ray.get(self.buffer.load_state_dict.remote(json.loads((checkpoint / "buffer.json").read_text())))
        except ray.exceptions.RayTaskError as e:
            raise RunError(f"--resume {checkpoint}: {e.cause}") from None
        self.log(f"resuming from {checkpoint} (step {self.p.start})")

    def start_engines(self) -> None:
        t0 = time.time()
        self.log("starting the learner and rollout worker(s) (vLLM engines)")
        self.pool.start()
        self.shm.update()  # the engines' segments exist from here on
        self.timeline.mark("start learner and engines", t0)
        self.log(f"{len(self.pool.workers)} rollout worker(s) with vLLM engines and the learner up in "
                 f"{time.time() - t0:.1f}s (weight sync: {self.pool.backend})")
        self.pool.startup["ray_s"] = self.ray_s
        self.log(describe_startup(self.pool.startup))
        self.log(f"engine and worker logs: {self.link_ray_logs()}")

    def link_ray_logs(self) -> str:
        """Where engine and Ray output goes (never the console). A private cluster's session logs are linked as
        RUN_DIR/ray-logs while the run lives (readable even if it is killed) and copied there at the end."""
        logs = ray_logs_dir()
        if not self.teardown.private_ray or logs is None:
            return str(logs)
        with contextlib.suppress(OSError):
            (self.run_dir / "ray-logs").symlink_to(logs, target_is_directory=True)
        return f"{self.run_dir / 'ray-logs'} (Ray's session logs; copied there when the run ends)"

    def first_eval(self) -> None:
        rows, start = self.p.eval_rows, self.p.start
        if rows:
            t0 = time.time()
            self.log(f"held-out eval {_at(start)} on {len(rows)} rows")
            self.evals.append(self.evaluate(rows, start))
            self.log(f"held-out accuracy {_at(start)}: {describe_eval(self.evals[0])}  [{time.time() - t0:.1f}s]")
            if self.cfg.eval.without_tools:
                self.evals.append(self.evaluate(rows, start, without_tools=True))
                self.log(f"held-out accuracy {_at(start)}, no tools: {describe_eval(self.evals[-1])}")
            self.timeline.mark("eval", t0)
            self.pool.startup["first_eval_s"] = time.time() - t0
            self.metrics.scalars({"eval/heldout_accuracy": self.evals[0]["accuracy"]}, start)
        self.step = start

    def start_rl(self) -> None:
        """The workers' loops start generating; the progress bar."""
        import ray
        from tqdm import tqdm

        self.rl_start = time.time()
        self.bar = tqdm(total=self.cfg.learner.steps, initial=self.p.start, desc="RL steps",
                        disable=not self.cfg.logging.progress_bar, dynamic_ncols=True)
        self.pool.run()
        self.tokens = ray.get(self.buffer.stats.remote())["generated_tokens"]
        self.timeline.add(*drain(self.pool, self.buffer))  # the engines' spans of the first eval

    def train_step(self, step: int) -> None:
        """One batch, one optimizer step, the new weights to every engine; then eval/checkpoint when due."""
        import ray

        cfg, pool, learner, buffer = self.cfg, self.pool, self.learner, self.buffer
        t_step = time.time()
        pool.step = step
        batch = buffer.get_batch.remote(cfg.learner.batch_groups, self.version, cfg.buffer.batch_timeout_s)
        pool.wait(batch, self.version, learner_idle=True)  # a replaced worker rejoins only here
        t_ready = time.time()
        m = pool.get(learner.train_step.remote(batch), self.version, learner_idle=False)
        t_sync = time.time()
        self.version = m["version"]
        pool.wait(learner.sync_weights.remote(self.version), self.version, learner_idle=False)
        ray.get(buffer.set_version.remote(self.version))
        t_end = time.time()
        m.update(self.step_metrics(step, t_step, t_sync))
        engine_spans, buffer_spans = drain(pool, buffer)
        m.update(self.timeline.step(step, (t_step, t_ready, t_sync, t_end), engine_spans, buffer_spans,
                                    m["rollout/generated_tokens"] - self.tokens))
        self.tokens = m["rollout/generated_tokens"]
        if self.due(cfg.eval.every_steps, step) and self.p.eval_rows and step < cfg.learner.steps:
            t0 = time.time()
            rows = self.p.eval_rows[: cfg.eval.limit] if cfg.eval.limit else self.p.eval_rows
            self.evals.append(self.evaluate(rows, step))
            m["eval/accuracy"] = self.evals[-1]["accuracy"]
            self.timeline.mark("eval", t0)
        if self.due(cfg.checkpoint.every_steps, step):
            t0 = time.time()
            self.checkpoint(step)
            self.timeline.mark("checkpoint", t0)
        self.metrics.step(m)
        self.steps.append(m)
        self.step = step
        self.shm.update()  # a replaced worker's engine makes new segments
        self.bar.update(1)
        self.bar.set_postfix(reward=f"{m['reward/mean']:.2f}", acc=f"{m['reward/accuracy']:.2f}",
                             stale=f"{m['buffer/staleness_mean']:.2f}", tok_s=f"{m['rollout/tokens_per_s']:.0f}",
                             restarts=len(pool.restarts))

    def last_eval(self) -> None:
        rows = self.p.eval_rows
        if not rows:
            return
        before = self.evals[0]
        self.log(f"held-out eval after RL on {len(rows)} rows")
        step = before["step"] + len(self.steps)
        t0 = time.time()
        after = self.evaluate(rows, step)
        self.timeline.mark("eval", t0)
        self.evals.append(after)
        self.metrics.scalars({"eval/heldout_accuracy": after["accuracy"]}, step)
        self.summary.update({"heldout_before": before, "heldout_after": after,
                             "lift": after["accuracy"] - before["accuracy"]})
        self.log(f"held-out accuracy {_at(before['step'])}: {describe_eval(before)}")
        self.log(f"held-out accuracy after  RL: {describe_eval(after)}")
        if self.cfg.eval.without_tools:
            no_tools = [e for e in self.evals if e.get("without_tools")]
            no_tools.append(self.evaluate(rows, step, without_tools=True))
            self.evals.append(no_tools[-1])
            self.summary.update({"heldout_before_without_tools": no_tools[0],
                                 "heldout_after_without_tools": no_tools[-1]})
            self.log(f"held-out accuracy after  RL, no tools: {describe_eval(no_tools[-1])}")
        self.log(f"lift: {self.summary['lift']:+.1%} in {len(self.steps)} steps ({self.rl_seconds():.0f}s of RL)")

    def finish(self) -> None:
        """The plot, the timeline's summary lines, restarts, and the final model."""
        import ray

        run_dir = self.run_dir
        if self.steps:
            self.summary["plot"] = plot_run(self.steps, self.evals, run_dir / "progress.png")
            for line in describe_timeline(self.timeline.summary()):
                self.log(line)
        tensorboard = f"; TensorBoard: tensorboard --logdir {run_dir.parent}" if self.cfg.logging.tensorboard else ""
        self.log(f"plot: {run_dir / 'progress.png'}; timeline: {run_dir / 'trace.json'} (ui.perfetto.dev){tensorboard}")
        if self.pool.restarts:
            secs = [r["seconds"] for r in self.pool.restarts if r["seconds"] is not None]
            self.log(f"rollout worker restarts: {len(self.pool.restarts)} ({', '.join(f'{s:.1f}s' for s in secs)}); "
                     f"{self.pool.lost_groups} in-flight group(s) generated again")
        if self.cfg.checkpoint.save_final:
            self.log(f"saving the final model to {run_dir / 'final_model'}")
            self.summary["final_model"] = ray.get(self.learner.save_hf.remote(str(run_dir / "final_model")))

    # ------------------------------------------------------------------ on every ending
    def write_results(self, ending: str, reason: str | None = None) -> None:
        """trace.json, evals.json and summary.json (with `ending`: finished, sigterm, interrupt, worker_died or
        error), however the run ended. Never raises: what cannot be gathered any more is left out."""
        if self.run_dir is None:
            return  # stopped before the run had a folder
        s = self.summary
        s.update({"ending": ending, "steps": len(self.steps), "last_step": self.step,
                  "rl_seconds": round(self.rl_seconds(), 1), "run_dir": str(self.run_dir)})
        if reason is not None:
            s["reason"] = reason
        if self.steps:
            keys = ["step_seconds", "rollout/tokens_per_s", "learner/logp_mismatch", "buffer/staleness_mean"]
            s["means"] = {k: sum(m[k] for m in self.steps) / len(self.steps) for k in keys}
            s["timeline"] = self.timeline.summary()
        if self.pool is not None:
            with contextlib.suppress(Exception):  # dead or hung actors: the trace keeps the driver's spans
                self.timeline.add(*drain(self.pool, self.buffer, timeout=10))
            s.update({"startup": self.pool.startup, "lost_groups": self.pool.lost_groups,
                      "restarts": [{k: v for k, v in r.items() if k != "died_at"} for r in self.pool.restarts]})
        with contextlib.suppress(Exception):
            s["trace"] = self.timeline.write_trace(self.run_dir / "trace.json")
        with contextlib.suppress(Exception):
            import ray

            s["buffer"] = ray.get(self.buffer.stats.remote(), timeout=10)
        s["skipped_lines"] = self.p.skipped
        (self.run_dir / "evals.json").write_text(json.dumps(self.evals, indent=1))
        (self.run_dir / "summary.json").write_text(json.dumps(s, indent=1))
        if self.metrics is not None:
            with contextlib.suppress(Exception):
                self.metrics.summary(s)

    def stopped(self, e: BaseException) -> RunStopped:
        """The message for a run that ended early, with the newest checkpoint it can resume from."""
        run_dir = self.run_dir
        ckpt = (checkpoints.newest(run_dir) if run_dir else None) or self.p.resume
        if isinstance(e, KeyboardInterrupt):
            return RunStopped("stopped by a signal (Ctrl-C or SIGTERM); engines, actors and /dev/shm cleaned up",
                              run_dir, ckpt, interrupted=True, step=self.step)
        reason = describe(e)
        if not isinstance(e, (RunError, TimeoutError)) and run_dir is not None:
            import ray.exceptions as rex

            if not isinstance(e, rex.RayError):  # a bug in the driver: keep the traceback for the report
                (run_dir / "error.log").write_text("".join(traceback.format_exception(e)))
                reason += f" (traceback in {run_dir / 'error.log'})"
        return RunStopped(reason, run_dir, ckpt, step=self.step)

    def close(self) -> None:
        """The progress bar, the metrics files, every actor and process, the shared-memory record."""
        with signals_held():
            if self.bar is not None:
                self.bar.close()
            if self.metrics is not None:
                with contextlib.suppress(Exception):
                    self.metrics.close(failed=self.summary.get("ending") != "finished")
        self.teardown.run()
        with signals_held(), contextlib.suppress(Exception):
            self.shm.close()

    # ------------------------------------------------------------------ helpers of the loop
    def evaluate(self, rows: list[dict[str, Any]], step: int, without_tools: bool = False) -> dict[str, Any]:
        """Greedy accuracy over `rows` with 95% intervals, and tool-call/tool-error rates for tool environments.
        without_tools: the environment offering no tools (an ablation of tool environments)."""
        return eval_record(step, self.pool.evaluate(rows, self.version, without_tools), without_tools)

    @staticmethod
    def due(every: int, step: int) -> bool:
        return bool(every) and step % every == 0

    def rl_seconds(self) -> float:
        return self.steps[-1]["elapsed_seconds"] if self.steps else 0.0

    def step_metrics(self, step: int, t_step: float, t_sync: float) -> dict[str, Any]:
        import ray

        stats = ray.get(self.buffer.stats.remote())
        now = time.time()
        return {
            **ray.get(self.buffer.batch_stats.remote()),
            "step": step,
            "step_seconds": now - t_step,
            "weight_sync_seconds": now - t_sync,
            # since RL started: per-step deltas read 0 whenever the throttle held the workers
            "rollout/tokens_per_s": stats["generated_tokens"] / max(now - self.rl_start, 1e-9),
            "rollout/generated_tokens": stats["generated_tokens"],
            "rollout/failed_groups": stats["failed_groups"],
            "rollout/restarts": len(self.pool.restarts),
            "rollout/lost_groups": self.pool.lost_groups,
            "elapsed_seconds": now - self.rl_start,
        }

    def checkpoint(self, step: int) -> Path:
        """Learner (HF weights + optimizer + schedule), buffer (held groups, data cursors, groups in flight) and
        the version, published atomically (temper/checkpoints.py); `temper train --resume RUN_DIR`."""
        import ray

        from temper.rollout.types import json_default

        def fill(folder: Path) -> dict[str, Any]:
            ray.get(self.learner.save_checkpoint.remote(str(folder)))
            state = ray.get(self.buffer.state_dict.remote())
            (folder / "buffer.json").write_text(json.dumps(state, default=json_default))
            return {"version": state["learner_version"]}

        def crash_here(_: Path) -> None:
            if os.environ.get(CRASH_ENV) == f"checkpoint:{step}":
                import signal

                os.kill(os.getpid(), signal.SIGKILL)

        return checkpoints.write(self.run_dir / "checkpoints", step, fill, self.cfg.checkpoint.keep_last,
                                 before_rename=crash_here)

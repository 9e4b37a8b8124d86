"""`temper report` on run folders made here with synthetic but well-formed files (the real job tests make
real ones): the table's numbers by hand, the picture, several runs compared, and no torch/vllm/ray."""

import json
import subprocess
import sys

import pytest
from conftest import REPO

from temper.cli import main
from temper.report import wilson_interval
from temper.report_cli import lift_interval, load_run, mean_interval, short_labels, smooth, table


def eval_rec(step, correct, n):
    lo, hi = wilson_interval(correct, n)
    return {"step": step, "correct": correct, "n": n, "accuracy": correct / n, "ci_low": lo, "ci_high": hi}


def fake_run(root, name, staleness, step_s, after_correct, steps=20):
    """A run folder as `temper train` leaves it: batches of 4 groups x 4 samples, held-out n=100."""
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"buffer": {"max_staleness": staleness},
                                               "learner": {"batch_groups": 4}, "rollout": {"group_size": 4}}))
    with (d / "metrics.jsonl").open("w") as f:
        for k in range(1, steps + 1):
            acc = 0.5 if k > steps - 10 else 0.25  # the last 10 steps: 8 of 16 samples correct each
            f.write(json.dumps({"step": k, "reward/mean": acc, "reward/accuracy": acc, "step_seconds": step_s,
                                "elapsed_seconds": k * step_s, "buffer/staleness_mean": float(staleness),
                                "time/learner_wait_s": 0.1, "time/learner_compute_s": step_s - 0.2,
                                "time/weight_sync_s": 0.1, "time/gen_tokens_per_s": 1000.0,
                                "batch/group_ids": ["g"]}) + "\n")
    (d / "evals.json").write_text(json.dumps([eval_rec(0, 30, 100), eval_rec(steps, after_correct, 100)]))
    timeline = {"learner": {"idle_frac": 0.1}, "engine": {"idle_frac": 0.4, "paused_frac": 0.05},
                "achieved_speedup": 1.2, "ideal_speedup": 1.5, "overlap_of_ideal": 0.8}
    (d / "summary.json").write_text(json.dumps({"steps": steps, "timeline": timeline}))
    return d


def test_interval_arithmetic_by_hand():
    m, lo, hi = mean_interval([1.0, 2.0, 3.0])  # sd 1, se 1/sqrt(3): half-width 1.96/sqrt(3) = 1.1316
    assert m == 2 and lo == pytest.approx(2 - 1.1316, abs=1e-4) and hi == pytest.approx(2 + 1.1316, abs=1e-4)
    after = {"accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6}
    before = {"accuracy": 0.3, "ci_low": 0.22, "ci_high": 0.4}
    d, lo, hi = lift_interval(after, before)  # Newcombe: 0.2 -+ sqrt(0.1^2 + 0.1^2), sqrt(0.1^2 + 0.08^2)
    assert d == pytest.approx(0.2) and lo == pytest.approx(0.2 - 0.141421, abs=1e-6)
    assert hi == pytest.approx(0.2 + 0.128062, abs=1e-6)
    assert smooth([0, 2, 4, 6], 2) == [0, 1, 3, 5]


def test_one_run_table_and_picture(tmp_path, capsys):
    run = fake_run(tmp_path, "demo-1", 1, 0.8, 45)
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "demo-1 (async, staleness 1)" in out
    # held-out 30/100 before and 45/100 after, Wilson: 21.9%-39.6% and 35.6%-54.8%
    assert "30.0% (21.9%-39.6%)" in out and "45.0% (35.6%-54.8%)" in out
    # the last 10 steps pool 160 samples, 80 correct: Wilson 42.3%-57.7%
    lo, hi = wilson_interval(80, 160)
    assert f"50.0% ({lo:.1%}-{hi:.1%})" in out
    assert "0.800 (0.800-0.800)" in out  # step time: no spread
    assert "1.20x / 1.50x (80%)" in out
    assert (run / "report.png").stat().st_size > 10_000


def test_several_runs_side_by_side(tmp_path, capsys, monkeypatch):
    runs = [fake_run(tmp_path, "sync", 0, 1.0, 40), fake_run(tmp_path, "async", 1, 0.7, 44)]
    out_png = tmp_path / "compare.png"
    assert main(["report", *map(str, runs), "--out", str(out_png)]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "sync (sync)" in header and "async (async, staleness 1)" in header
    assert out_png.stat().st_size > 10_000
    text = table([load_run(r) for r in runs])
    assert text.count("\n") >= 10 and "lift (points)" in text


def test_picture_labels_are_the_modes_when_they_tell_runs_apart(tmp_path):
    sync, fast, slow = (fake_run(tmp_path, n, s, 1.0, 40) for n, s in (("r0", 0), ("r1", 1), ("r2", 1)))
    assert short_labels([load_run(sync), load_run(fast)]) == ["sync", "async, staleness 1"]
    assert short_labels([load_run(fast), load_run(slow)]) == ["r1 (async, staleness 1)", "r2 (async, staleness 1)"]


def test_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a temper run folder (no metrics.jsonl)" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{oops\n')
    assert main(["report", str(tmp_path)]) == 2
    assert "metrics.jsonl:2: not valid JSON" in capsys.readouterr().err


def test_report_imports_no_torch_vllm_or_ray(tmp_path):
    run = fake_run(tmp_path, "r", 0, 1.0, 40)
    code = ("import sys; from temper.cli import main; rc = main(['report', sys.argv[1]]); "
            "print('heavy:', sorted(m for m in ('torch', 'vllm', 'ray') if m in sys.modules)); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(run)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "heavy: []" in proc.stdout

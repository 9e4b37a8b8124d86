"""`temper rewards list/score/check/replay` on real files, through main() and as a subprocess."""

import json
import os
import subprocess
import sys

import pytest

from temper.rewards.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _run(*args):
    return subprocess.run([sys.executable, "-m", "temper.rewards.cli", *args], check=False, capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_list_imports_no_torch_vllm_ray():
    # What keeps it fast (measured in the README, not here: these machines are noisy) is what it never imports.
    code = ("from temper.rewards.cli import main; import sys; main(['list']); "
            "print('HEAVY', [m for m in ('torch', 'vllm', 'ray') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    assert "math" in out.stdout and "format" in out.stdout and "code" in out.stdout


def test_score_one_integer_row_needs_no_worker_and_no_sympy():
    """`temper rewards score` on a GSM8K-style row: the pool's quick check answers in this process, so no
    worker is spawned and sympy never loads (README "Debugging rewards": 0.54 s against 2.19 s before).
    Checked by what was imported, not by wall time, which the shared CI machines make unreliable."""
    code = ("import sys; from temper.rewards.cli import main; "
            "main(['score', '--verifier', 'math', '--response', r'so \\boxed{2}', '--label', '2', '--format', 'json']); "
            "print('LOADED', [m for m in ('sympy', 'multiprocessing.popen_spawn_posix') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[0])["rows"][0]["reward"] == 1.0
    assert "LOADED []" in out.stdout


def test_list_json(capsys):
    assert main(["list", "--format", "json"]) == 0
    infos = {i["name"]: i for i in json.loads(capsys.readouterr().out)}
    assert infos["math"]["params"]["require_boxed"]["default"] is False


def test_score_file(tmp_path, capsys):
    rows = [
        {"id": "a", "prompt": "1+1?", "response": r"so \boxed{2}", "label": 2, "source": "toy"},
        {"id": "b", "response": r"\boxed{3}", "label": "2"},
        {"id": "c", "response": "", "label": "2"},
        {"id": "d", "response": r"\boxed{2}", "label": None},
    ]
    src, dst = _write(tmp_path / "rows.jsonl", rows), tmp_path / "out.jsonl"
    assert main(["score", "--verifier", "math", "--input", src, "--output", str(dst), "--workers", "1"]) == 0
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [r["reward"] for r in out] == [1.0, 0.0, 0.0, 0.0]
    assert out[0]["source"] == "toy" and out[0]["breakdown"]["math/verdict"] == "correct"
    assert out[2]["error"] is None and "label" in out[3]["error"]
    assert all(set(r) >= {"reward", "breakdown", "error", "seconds"} for r in out)
    summary = capsys.readouterr().out
    assert "rows 4" in summary and "mean reward 0.2500" in summary and "errors 1" in summary


def test_score_one_sample_json(capsys):
    argv = ["score", "--verifier", "math", "--response", r"\boxed{85}", "--label", "85", "--format", "json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["rows"] == 1 and out["rows"][0]["reward"] == 1.0


def test_score_params_and_misuse(tmp_path, capsys):
    argv = ["score", "--verifier", "math", "--params", '{"require_boxed": true}', "--response", "85",
            "--label", "85", "--format", "json"]
    assert main(argv) == 0 and json.loads(capsys.readouterr().out)["rows"][0]["reward"] == 0.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"response": "1", "label": 1}\n{not json\n')
    assert main(["score", "--verifier", "math", "--input", str(bad)]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    _write(bad, [{"response": "1", "label": 1}, {"label": 1}])
    assert main(["score", "--verifier", "math", "--input", str(bad)]) == 2
    assert f"{bad}:2: missing field 'response'" in capsys.readouterr().err
    assert main(["score", "--verifier", "math", "--input", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["score", "--verifier", "nope", "--response", "1", "--label", "1"]) == 2
    assert "unknown verifier" in capsys.readouterr().err
    assert main(["score", "--verifier", "math", "--params", '{"modee": 1}', "--response", "1", "--label", "1"]) == 2
    assert "params.modee" in capsys.readouterr().err
    assert main(["score", "--verifier", "math"]) == 2
    assert main(["bogus"]) == 2


def test_check_lists_bad_rows(tmp_path, capsys):
    rows = [
        {"id": 1, "prompt": "?", "label": "1,000"},
        {"id": 2, "prompt": "?", "label": r"\frac{\sqrt{3}}{2}"},
        {"id": 3, "prompt": "?", "label": r"\frac{}{}"},
        {"id": 4, "prompt": "?", "label": "12", "solution": r"... so \boxed{13}"},
        {"id": 5, "prompt": "?", "label": None},
    ]
    src = _write(tmp_path / "data.jsonl", rows)
    assert main(["check", "--verifier", "math", "--input", src, "--format", "json", "--workers", "1"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert [b["line"] for b in out["bad"]] == [3, 4, 5]
    assert out["bad"][0]["problem"] == "unparsable label" and out["bad"][1]["problem"] == "reference not accepted"
    good = _write(tmp_path / "good.jsonl", rows[:2])
    assert main(["check", "--verifier", "math", "--input", good, "--workers", "1"]) == 0
    assert "0 of 2 rows fail" in capsys.readouterr().out


def test_replay_with_changed_params_and_config(tmp_path, capsys):
    rollouts = [
        {"id": "s1", "prompt": "?", "response": "the answer is 85", "label": 85, "metadata": {}, "messages": None,
         "reward": 1.0, "breakdown": {"math": 1.0}, "error": None, "token_ids": [1, 2], "logprobs": [-0.1]},
        {"id": "s2", "prompt": "?", "response": r"\boxed{85}", "label": 85, "metadata": {}, "messages": None,
         "reward": 1.0, "breakdown": {"math": 1.0}, "error": None},
    ]
    src = _write(tmp_path / "rollouts.jsonl", rollouts)
    argv = ["replay", src, "--verifier", "math", "--params", "{\"require_boxed\": true}", "--format", "json", "--workers", "1"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    changed = [c for c in out["changes"] if c["old_reward"] != c["new_reward"]]
    assert [(c["id"], c["old_reward"], c["new_reward"]) for c in changed] == [("s1", 1.0, 0.0)]
    assert changed[0]["breakdown_diff"]["math"] == [1.0, 0.0]
    assert out["summary"]["changed_reward"] == 1

    config = tmp_path / "run.toml"
    config.write_text('[demo]\nenabled = true\n\n[[rewards.terms]]\nverifier = "math"\n\n'
                      '[[rewards.terms]]\nverifier = "format"\nweight = 0.5\n')
    assert main(["replay", src, "--config", str(config), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "1 of 2 samples changed reward" in text  # s1: 1.0 -> 1.0 + 0.5 * 0; s2: 1.0 -> 1.0 + 0.5 * 1
    assert main(["replay", src]) == 2


def test_cli_as_a_process(tmp_path):
    src = _write(tmp_path / "rows.jsonl", [{"response": r"\boxed{1/2}", "label": "0.5"}])
    out = _run("score", "--verifier", "math", "--input", src, "--output", str(tmp_path / "o.jsonl"), "--workers", "1")
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "o.jsonl").read_text())["reward"] == 1.0
    assert _run("score", "--input", src).returncode == 2


@pytest.mark.parametrize("timeout", ["0", "-1"])
def test_bad_timeout_is_misuse(timeout):
    assert main(["score", "--verifier", "math", "--response", "1", "--label", "1", "--timeout", timeout]) == 2


def test_replay_rescores_a_multi_turn_rollout_with_its_turn_rewards(tmp_path, capsys):
    """A tool episode as rollouts.jsonl stores it: the final reply, the message trace, the environment's
    turn rewards (added back with rewards.turn_reward_weight) and its info."""
    messages = [{"role": "user", "content": "What is 347 * 58?"},
                {"role": "assistant", "content": '<tool_call>{"name": "calculator", "arguments": '
                                                 '{"expression": "347 * 58"}}</tool_call>'},
                {"role": "tool", "name": "calculator", "content": "20126"},
                {"role": "assistant", "content": r"\boxed{20126}"}]
    row = {"id": "t1", "prompt": "What is 347 * 58?", "response": r"\boxed{20126}", "label": "20126",
           "metadata": {}, "messages": messages, "turn_rewards": [0.25, 0.0], "info": {"calls": 1},
           "spans": [{"role": "assistant", "start": 0, "end": 66}], "reward": 1.25,
           "breakdown": {"math": 1.0, "env": 0.25}, "error": None}
    src = _write(tmp_path / "rollouts.jsonl", [row])
    assert main(["replay", src, "--verifier", "math", "--format", "json", "--workers", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["changed_reward"] == 0 and out["summary"]["mean_reward"] == 1.25
    config = tmp_path / "run.toml"
    config.write_text('[demo]\nenabled = true\n\n[rewards]\nturn_reward_weight = 2.0\n\n'
                      '[[rewards.terms]]\nverifier = "math"\n')
    assert main(["replay", src, "--config", str(config), "--format", "json", "--workers", "1"]) == 0
    (change,) = json.loads(capsys.readouterr().out)["changes"]
    assert (change["old_reward"], change["new_reward"]) == (1.25, 1.5)

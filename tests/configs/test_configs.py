"""Every recipe parses; every kind of config mistake is one clear message naming file/line/field."""

import subprocess
import sys
from pathlib import Path

import pytest

from temper.configs.load import ConfigError, load_config, parse_override
from temper.configs.schema import RunConfig

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "configs").rglob("*.toml"))


def test_there_are_recipes():
    assert any(p.name == "demo.toml" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)


def test_readme_toml_blocks_are_toml():
    """A reader copies these: each ```toml block of the README must parse as TOML 1.0 (Python's tomllib)."""
    import re
    import tomllib

    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    assert len(blocks) >= 5
    for block in blocks:
        tomllib.loads(block)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_has_valid_reward_params(path):
    from temper.rewards.rubric import validate_rewards_config

    validate_rewards_config(load_config(path).rewards)


def test_overrides_are_typed(tmp_path):
    cfg = load_config(REPO / "configs/demo.toml", ["learner.optimizer.lr=1e-4", "rollout.group_size=4", "name=my-run"])
    assert cfg.learner.optimizer.lr == 1e-4
    assert cfg.rollout.group_size == 4
    assert cfg.name == "my-run"


def test_override_of_union_member(tmp_path):
    cfg = load_config(REPO / "configs/demo.toml", ["algorithm.advantage.type=rloo"])
    assert cfg.algorithm.advantage.type == "rloo"


def _write(tmp_path, text):
    p = tmp_path / "run.toml"
    p.write_text(text)
    return p


def test_unknown_key_names_file_line_and_field(tmp_path):
    p = _write(tmp_path, "[demo]\nenabled = true\n\n[learner]\nstepz = 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}:5: learner.stepz: unknown key" in str(e.value)


def test_wrong_type_names_line_and_value(tmp_path):
    p = _write(tmp_path, "[demo]\nenabled = true\n[learner.optimizer]\nlr = \"fast\"\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}:4: learner.optimizer.lr" in str(e.value) and "'fast'" in str(e.value)


def test_constraint_violation_in_override_names_the_override(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "configs/demo.toml", ["rollout.group_size=1"])
    assert "--set rollout.group_size=1: rollout.group_size" in str(e.value)
    assert "greater than or equal to 2" in str(e.value)


def test_weight_sync_backend_needs_gpus_named_where_it_was_set(tmp_path):
    p = _write(tmp_path, "[demo]\nenabled = true\n\n[weight_sync]\nbackend = \"nccl\"\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}:4: weight_sync: backend = 'nccl' moves weights between GPUs" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "configs/demo.toml", ['weight_sync.backend="ipc"'])
    assert "--set weight_sync.backend=\"ipc\": weight_sync: backend = 'ipc'" in str(e.value)
    # auto resolves from [ray] when the config loads on GPUs; on CPU when the learner meets the engines
    assert load_config(REPO / "configs/demo.toml").weight_sync.backend == "auto"  # shm or ray, by placement
    gpus = load_config(REPO / "configs/demo.toml", ["ray.learner_gpus=0.5", "ray.worker_gpus=0.5"])
    assert gpus.weight_sync.backend == "ipc"


def test_scale_out_fields(tmp_path):
    cfg = load_config(REPO / "configs/demo.toml", [
        "learner.world_size=2", "rollout.num_workers=3", 'weight_sync.backend="ray"', "weight_sync.bucket_mb=64",
        "ray.worker_resources.rollout_node=1", "ray.learner_resources.learner_node=1",
        'ray.learner_placement="STRICT_PACK"',
    ])
    assert cfg.learner.world_size == 2 and cfg.weight_sync.backend == "ray"  # the object store needs no GPU
    assert cfg.ray.worker_resources == {"rollout_node": 1} and cfg.ray.learner_resources == {"learner_node": 1}
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "configs/demo.toml", ["rollout.engine.tensor_parallel_size=2"])
    assert "tensor_parallel_size = 2 needs ray.worker_gpus >= 2" in str(e.value)
    gpus = load_config(REPO / "configs/demo.toml", ["rollout.engine.tensor_parallel_size=2", "ray.worker_gpus=2",
                                                    "ray.learner_gpus=1"])
    assert gpus.rollout.engine.tensor_parallel_size == 2 and gpus.weight_sync.backend == "nccl"
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "configs/demo.toml", ["learner.world_size=0"])
    assert "learner.world_size" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "configs/demo.toml", ["learner.world_size=2", "ray.learner_gpus=0.5", "ray.worker_gpus=0.5"])
    assert "learner.world_size = 2 needs whole GPUs per rank (ray.learner_gpus = 0.5)" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "configs/demo.toml", ["learner.world_size=2", "ray.learner_cpus=0"])
    assert "all of them are 0" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "configs/demo.toml", ['ray.learner_placement="ANYWHERE"'])
    assert "ray.learner_placement" in str(e.value)


def test_unknown_override_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(REPO / "configs/demo.toml", ["learner.nope=1"])
    assert "learner.nope: unknown key" in str(e.value)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        parse_override("learner.lr")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml_names_line(tmp_path):
    p = _write(tmp_path, "[learner]\nsteps = = 3\n")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 2"):
        load_config(p)


def test_model_and_data_required_without_demo(tmp_path):
    p = _write(tmp_path, "name = 'x'\n")
    with pytest.raises(ConfigError, match="model.path is required"):
        load_config(p)


def test_bad_verifier_params_fail_at_load(tmp_path):
    from temper.rewards.rubric import validate_rewards_config

    p = _write(tmp_path, "[demo]\nenabled = true\n[[rewards.terms]]\nverifier = 'math'\nparams = { requre_boxed = true }\n")
    with pytest.raises(ConfigError, match=r"rewards.terms\[0\].params"):
        validate_rewards_config(load_config(p).rewards)


def _temper(*args, cwd=REPO):
    exe = Path(sys.executable).with_name("temper")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


def test_cli_reports_config_errors_without_traceback(tmp_path):
    p = _write(tmp_path, "[demo]\nenabled = true\n[learner]\nstepz = 3\n")
    r = _temper("train", str(p))
    assert r.returncode == 2
    assert "learner.stepz: unknown key" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_missing_model_folder(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "1+1?", "label": "2"}\n')
    p = _write(tmp_path, f"[model]\npath = '{tmp_path / 'no-model'}'\n[data]\ntrain = '{data}'\n")
    r = _temper("train", str(p))
    assert r.returncode == 2 and "model.path" in r.stderr and "Traceback" not in r.stderr


def test_cli_missing_data_file(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    p = _write(tmp_path, f"[model]\npath = '{model}'\n[data]\ntrain = '{tmp_path / 'missing.jsonl'}'\n")
    r = _temper("train", str(p))
    assert r.returncode == 2 and "data.train: file not found" in r.stderr


def test_check_config_prints_resolved(tmp_path):
    r = _temper("check-config", "configs/demo.toml", "--set", "learner.steps=7")
    assert r.returncode == 0, r.stderr
    assert '"steps": 7' in r.stdout


def test_data_special_tokens_defaults_to_text_and_is_checked(tmp_path):
    assert load_config(REPO / "configs/demo.toml").data.special_tokens == "text"
    assert load_config(REPO / "configs/demo.toml", ["data.special_tokens=tokens"]).data.special_tokens == "tokens"
    p = _write(tmp_path, "[demo]\nenabled = true\n[data]\nspecial_tokens = \"ids\"\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}:4: data.special_tokens" in str(e.value) and "'ids'" in str(e.value)

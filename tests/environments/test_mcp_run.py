"""The tool demo with its calculator on an MCP server (mcp_tool_demo.toml) trains 2 real steps: the session's
vLLM engine samples groups, the learner steps, one server answers all the worker's episodes (a scripted call
checks its answer), and it is gone once the environment is closed. As tests/test_algorithm_recipes.py does for the recipes in configs/."""

import asyncio
import math
import os
import time
from pathlib import Path

import pytest
from conftest import REPO, VENV_BIN, local_engines, tiny_overrides
from test_mcp import Scripted, call

from temper.configs.data import load_rows
from temper.configs.load import load_config
from temper.learner.learner import Learner
from temper.prepare import prepare
from temper.rewards.rubric import Rubric
from temper.rollout.groups import make_environment
from temper.rollout.worker import RolloutWorker

pytestmark = pytest.mark.slow
pytest.importorskip("mcp")


def test_tool_demo_on_an_mcp_server_trains_two_real_steps(tmp_path, demo_assets, shared_engine, monkeypatch):
    monkeypatch.chdir(REPO)  # the config names its server by a path in the repository
    monkeypatch.setenv("PATH", f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")  # "python": this venv's
    config = REPO / "tests/environments/mcp_tool_demo.toml"
    cfg = prepare(load_config(config, tiny_overrides(demo_assets["demo"], tmp_path)), log=lambda *_: None).cfg
    engine = shared_engine
    engine.run(engine.load_weights(cfg.model.path, 0))
    learner = Learner(cfg, str(tmp_path / "weights"))
    learner.connect_engines(local_engines(engine), 1)
    worker = RolloutWorker(cfg, 0, None)
    env = make_environment(cfg, engine.tokenizer)
    with Rubric(cfg.rewards) as rubric:
        worker.attach(engine, rubric, env)
        rows = load_rows(cfg.data.train)[:4]

        async def groups_of(step: int):
            return await asyncio.gather(*(worker.rollout_group(f"s{step}-{i}", r) for i, r in enumerate(rows)))

        steps = []
        for step in (1, 2):
            groups = engine.run(groups_of(step))
            steps.append(learner.train_step(list(groups)))
            learner.sync_weights(steps[-1]["version"])
            assert len(servers()) == 1  # one for all the worker's episodes
        # The demo model's template shows no tools; a scripted call shows the worker's server answering.
        scripted = Scripted(engine.tokenizer, [call("calculator", expression="347 * 58"), "done"])
        ep = engine.run(env.run_episode(rows[0], scripted))
        assert [m["content"] for m in ep.messages if m["role"] == "tool"] == ["20126"]
        assert len(servers()) == 1
        engine.run(env.aclose())
    assert [m["version"] for m in steps] == [1, 2]
    assert all(math.isfinite(m["learner/loss"]) and m["learner/tokens"] > 0 for m in steps)
    deadline = time.monotonic() + 10
    while servers() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert servers() == []


def servers() -> list[int]:
    """Live MCP test-server processes started by this process."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[1]) == os.getpid() and b"mcp_servers.py" in cmdline:
            out.append(int(stat.parent.name))
    return out

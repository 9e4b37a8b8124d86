"""Shared, expensive fixtures: one tiny demo model folder per test session."""

import os

import pytest

from configs.schema import DemoConfig

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_demo(cache_dir: str) -> DemoConfig:
    """An untrained (no warm start) 2-head Qwen2: real tokenizer, real folder, seconds to build."""
    return DemoConfig(
        enabled=True, cache_dir=cache_dir, n_train=64, n_eval=16, sft_max_steps=0, hidden_size=64, num_layers=1
    )


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory):
    from learner.demo import ensure_demo_assets

    cfg = tiny_demo(str(tmp_path_factory.mktemp("demo-cache")))
    return {**ensure_demo_assets(cfg, log=lambda *_: None), "demo": cfg}

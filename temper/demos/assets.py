"""The demo assets' cache: a folder per settings, built once, reused in milliseconds after.

The key is a hash of every DemoConfig field but cache_dir, and ASSETS_VERSION: bump it when the way
assets are made changes, and old caches are then ignored. `DONE.json` (the warm start's outcome) is
written last, so a build that died half-way is redone rather than reused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from temper.configs.schema import DemoConfig

ASSETS_VERSION = 5


def demo_key(cfg: DemoConfig) -> str:
    settings = cfg.model_dump_json(exclude={"cache_dir"})
    return hashlib.sha256(f"{ASSETS_VERSION}{settings}".encode()).hexdigest()[:12]


def ensure_demo_assets(cfg: DemoConfig, log=print) -> dict[str, str]:
    """Build (or reuse) the demo model folder and data; return {"model", "train", "eval"} paths."""
    root = Path(cfg.cache_dir).expanduser() / demo_key(cfg)
    done = root / "DONE.json"
    paths = {"model": str(root / "model"), "train": str(root / "train.jsonl"), "eval": str(root / "heldout.jsonl")}
    if done.exists():
        return paths
    log(f"building demo model and data in {root} (cached for later runs)")
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny matmuls: a second thread only adds sync overhead and contention
    if cfg.task == "calculator":
        from temper.demos import calculator

        info = calculator.build(cfg, root, log=log)
    else:
        from temper.demos import addition

        info = addition.build(cfg, root, log=log)
    done.write_text(json.dumps(info, indent=1))
    log(f"demo assets ready: {info}")
    return paths

"""Shared, expensive fixtures: one tiny demo model folder per test session."""

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from temper.configs.schema import DemoConfig

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_demo(cache_dir: str) -> DemoConfig:
    """An untrained (no warm start) 2-head Qwen2: real tokenizer, real folder, seconds to build."""
    return DemoConfig(
        enabled=True, cache_dir=cache_dir, n_train=64, n_eval=16, sft_max_steps=0, hidden_size=64, num_layers=1
    )


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory):
    from temper.demos.assets import ensure_demo_assets

    cfg = tiny_demo(str(tmp_path_factory.mktemp("demo-cache")))
    return {**ensure_demo_assets(cfg, log=lambda *_: None), "demo": cfg}


REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def our_shm(before: set[str], prefixes: tuple[str, ...] | None = None) -> set[str]:
    """Segments a run left in /dev/shm (other runs on this machine may add theirs meanwhile: only names that
    appeared since `before`, start with one of `prefixes` (default: vLLM's and multiprocessing's) and that no
    live process uses count)."""
    from temper.cleanup import SHM_PREFIXES, in_use, shm_names

    new = {os.path.join("/dev/shm", n) for n in shm_names() - before if n.startswith(prefixes or SHM_PREFIXES)}
    return {os.path.basename(p) for p in new - in_use(new)}


def tiny_overrides(demo: DemoConfig, run_dir: Path) -> list[str]:
    """KEY=VALUE overrides that shrink any demo-based recipe to a seconds-long real job."""
    sets = [
        f"demo.cache_dir={json.dumps(demo.cache_dir)}", f"demo.n_train={demo.n_train}", f"demo.n_eval={demo.n_eval}",
        "demo.sft_max_steps=0", f"demo.hidden_size={demo.hidden_size}", f"demo.num_layers={demo.num_layers}",
        f"logging.run_dir={json.dumps(str(run_dir))}", "logging.progress_bar=false",
        "learner.batch_groups=4", "rollout.group_size=4", "rollout.engine.kv_cache_gb=0.25",
        "eval.every_steps=0", "ray.num_cpus=2", "rewards.num_workers=1",
    ]
    return sets


def tiny_job_overrides(demo: DemoConfig, run_dir: Path) -> list[str]:
    """The same as `temper train` arguments."""
    return [x for s in tiny_overrides(demo, run_dir) for x in ("--set", s)]


SYNC_JOB_SETS = ("learner.steps=4", "buffer.max_staleness=0", "checkpoint.every_steps=2", "eval.every_steps=2",
                 "eval.limit=8", "ray.address=local")
"""A 4-step sync-mode job with checkpoints at 2 and 4: the short real job, and the uninterrupted run that
exact resume is compared with (tests/test_faults.py runs it again with a crash and resumes)."""


def sync_job_args(run_root: Path, demo: DemoConfig, *sets: str, extra=()) -> list[str]:
    """`temper train configs/demo.toml` with SYNC_JOB_SETS (then `sets`), writing under run_root."""
    return [str(VENV_BIN / "temper"), "train", "configs/demo.toml", *tiny_job_overrides(demo, run_root),
            *[x for s in (*SYNC_JOB_SETS, *sets) for x in ("--set", s)], *extra]


def job_env(**extra: str) -> dict[str, str]:
    """The environment for a job that starts its own cluster (no RAY_ADDRESS)."""
    return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **extra}


def run_sync_job(run_root: Path, demo: DemoConfig, *sets: str, extra=()) -> subprocess.CompletedProcess:
    return subprocess.run(sync_job_args(run_root, demo, *sets, extra=extra), cwd=REPO, capture_output=True,
                          text=True, timeout=900, env=job_env(), check=False)


@pytest.fixture(scope="session")
def sync_job(tmp_path_factory, demo_assets):
    """One uninterrupted SYNC_JOB_SETS run shared by the tests that read its outputs: (process, run dir,
    /dev/shm names before it)."""
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    root = tmp_path_factory.mktemp("sync-job")
    proc = run_sync_job(root, demo_assets["demo"])
    runs = sorted(root.glob("demo-*"))
    return proc, runs[-1] if runs else None, shm_before


@pytest.fixture(scope="session")
def shared_engine(demo_assets):
    """The one vLLM engine of the test session, on an event loop in a background thread.

    `shared_engine.run(coro)` runs a coroutine on that loop. Tests that change its weights say so; tests that
    need the original weights reload them from demo_assets["model"]."""
    import asyncio
    import threading

    from temper.configs.schema import EngineConfig, SamplingConfig
    from temper.rollout.engine import Engine

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro, timeout=300):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def build():
        eng = Engine(
            demo_assets["model"], EngineConfig(kv_cache_gb=0.25, max_model_len=256),
            SamplingConfig(max_tokens=8), "float32", seed=0,
        )
        await eng.init()
        return eng

    eng = run(build())
    eng.run = run
    yield eng
    eng.shutdown()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def hf_logprobs(model, prompt_ids, completion_ids) -> list[float]:
    """Log-probs of completion_ids after prompt_ids under an HF model (an independent forward pass)."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)], device=device)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    n = len(prompt_ids)
    return [logp[n - 1 + j, t].item() for j, t in enumerate(completion_ids)]


def prompt_ids(engine, text="What is 12 + 34?"):
    """The chat-templated token ids of one user question, by the engine's tokenizer."""
    tok = engine.tokenizer
    chat = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    return tok.encode(chat, add_special_tokens=False)


def local_engines(*engines):
    """The learner's weight-sync `invoke` (learner/weight_sync.py) over in-process engines on their loops."""

    def invoke(method, kwargs):
        return [e.run(getattr(e, method)(**kw)) for e, kw in zip(engines, kwargs, strict=True)]

    return invoke


@pytest.fixture(scope="session")
def ray_cluster():
    """A `ray start --head` cluster of our own (private temp dir, free ports), as a user would run."""
    from temper.learner.weight_sync import free_port

    temp_dir = tempfile.mkdtemp(prefix="temper-test-ray-", dir="/tmp")
    port, dash = free_port(), free_port()
    # An explicit token: the same whether or not this machine has a ~/.ray/auth_token already.
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    subprocess.run(
        [str(VENV_BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2", f"--temp-dir={temp_dir}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats"],
        check=True, capture_output=True, env=env, timeout=180,
    )
    try:
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "env": env, "temp_dir": temp_dir}
    finally:
        stop_cluster_in(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop_cluster_in(temp_dir: str) -> None:
    """Stop the Ray cluster whose files are under temp_dir, by pid: every process naming that folder on its
    command line (GCS, raylet, agents, workers) and all they started. Not `ray stop`, which stops every Ray
    process on the machine, other people's included."""
    import psutil

    ours = []
    for p in psutil.process_iter(["cmdline"]):
        if any(temp_dir in arg for arg in p.info["cmdline"] or ()):
            ours.append(p)
    for p in list(ours):
        with contextlib.suppress(psutil.Error):
            ours += p.children(recursive=True)
    for p in ours:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(ours, timeout=20)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=10)


def pytest_collection_modifyitems(config, items):
    """GPU tests run only where CUDA is present (never in CI)."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in gpu_items:
            item.add_marker(skip)

"""Weight sync through vLLM's weight-transfer API (learner/weight_sync.py).

The protocol with recording engines (what each engine is asked, in what order, with which NCCL ranks),
then the real thing: a learner step pushed into the session's vLLM engine through the shm backend,
after which the engine's log-probs are the learner's to fp32 precision and carry the new version."""

import pytest
import torch
from conftest import hf_logprobs, local_engines, prompt_ids
from test_learner import make_cfg, sample_from

from temper.learner.learner import Learner
from temper.rollout.types import Group


class Recorder:
    """Engines that only write down the calls they get."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, dict]] = []

    def __call__(self, method, kwargs):
        self.calls.extend((method, i, kw) for i, kw in enumerate(kwargs))
        return [None] * len(kwargs)


def test_shm_sync_protocol_versions_and_pruning(demo_assets, tmp_path):
    from safetensors.torch import load_file

    learner = Learner(make_cfg(demo_assets), str(tmp_path / "w"))
    engines = Recorder()
    assert learner.connect_engines(engines, num_engines=2) == "shm"  # auto on CPU
    assert engines.calls == [("weights_init", 0, {"init_info": {}}), ("weights_init", 1, {"init_info": {}})]

    paths = []
    for version in (1, 2, 3):
        engines.calls.clear()
        learner.sync_weights(version)
        methods = [(m, i) for m, i, _ in engines.calls]
        assert methods == [("weights_start", 0), ("weights_start", 1), ("weights_update", 0), ("weights_update", 1),
                           ("weights_finish", 0), ("weights_finish", 1)]
        assert engines.calls[-1][2] == {"version": version}
        paths.append(engines.calls[2][2]["update_info"]["path"])
    tensors = load_file(f"{paths[-1]}/model-00000.safetensors")  # one bucket: the model is far under 256 MB
    assert "model.embed_tokens.weight" in tensors and "lm_head.weight" not in tensors  # tied: sent once
    assert torch.equal(tensors["model.norm.weight"], learner.model.model.norm.weight.detach())
    assert [p.name for p in (tmp_path / "w").iterdir()] == ["send-3"]  # older versions pruned
    learner.cleanup()
    assert not (tmp_path / "w").exists()


def test_nccl_ranks_one_group_for_all_engines():
    """vLLM's NCCL trainer puts every engine at rank_offset 1; with several engines each needs its own ranks."""
    from temper.learner.weight_sync import EngineClient

    engines = Recorder()
    client = EngineClient(engines, num_engines=3, engine_world_size=2)  # e.g. 3 engines of tensor-parallel 2
    client.init_weight_transfer_engine({"master_port": 1234, "rank_offset": 1, "world_size": 7})
    offsets = [kw["init_info"]["rank_offset"] for _, _, kw in engines.calls]
    assert offsets == [1, 3, 5]  # learner = rank 0; engine i holds ranks 1 + 2i and 2 + 2i of 7
    assert {kw["init_info"]["world_size"] for _, _, kw in engines.calls} == {7}


def with_backend(cfg, backend: str):
    """cfg with weight_sync.backend set past the schema (which would refuse these): the learner's own checks
    are what is under test."""
    return cfg.model_copy(update={"weight_sync": cfg.weight_sync.model_copy(update={"backend": backend})})


def test_unknown_backend_is_a_clear_error(demo_assets, tmp_path):
    cfg = with_backend(make_cfg(demo_assets), "carrier-pigeon")
    learner = Learner(cfg, str(tmp_path / "w"))
    with pytest.raises(ValueError, match="weight_sync.backend"):
        learner.connect_engines(Recorder(), 1)


@pytest.mark.slow
def test_learner_step_reaches_the_real_engine(demo_assets, tmp_path, shared_engine):
    engine = shared_engine
    engine.run(engine.load_weights(demo_assets["model"], 0))  # the weights the learner starts from
    cfg = make_cfg(demo_assets, optimizer={"lr": 1e-2})
    assert cfg.weight_sync.backend == "auto"  # on CPU: shm or ray, by where the engines are
    learner = Learner(cfg, str(tmp_path / "w"))
    assert learner.connect_engines(local_engines(engine), 1) == "shm"
    group = Group("g", (sample_from(learner, "g", 0, [70, 71], 1.0), sample_from(learner, "g", 1, [80], 0.0)))
    learner.train_step([group])
    ids = prompt_ids(engine, "What is 3 + 4?")
    (before,) = engine.run(engine.generate(ids, 1, greedy=True))

    try:
        seconds = learner.sync_weights(learner.version)
        (after,) = engine.run(engine.generate(ids, 1, greedy=True))
    finally:
        engine.run(engine.load_weights(demo_assets["model"], 0))  # leave the shared engine as found
    learner.model.eval()
    expected = hf_logprobs(learner.model, ids, after.token_ids)
    assert after.versions == (1, 1)
    assert after.logprobs == pytest.approx(expected, abs=1e-4)  # the engine now computes the learner's policy
    assert before.logprobs != pytest.approx(hf_logprobs(learner.model, ids, before.token_ids), abs=1e-4)
    print(f"shm weight sync: {seconds * 1000:.0f} ms")


def test_gpu_backends_handshake_info_and_cpu_refusal(demo_assets, tmp_path):
    """What the learner would send for ipc/nccl (built on CPU; the transfer itself is in test_gpu_path.py)."""
    from temper.learner.weight_sync import EngineClient, trainer_init_info

    client = EngineClient(Recorder(), num_engines=3, engine_world_size=2)
    nccl = trainer_init_info("nccl", client, str(tmp_path), packed=True)
    assert (nccl.rank, nccl.world_size, nccl.packed) == (0, 7, True) and nccl.master_port > 0  # 1 + 3 * 2 ranks
    assert trainer_init_info("ipc", client, str(tmp_path), packed=False).packed is False
    cfg = with_backend(make_cfg(demo_assets), "ipc")
    learner = Learner(cfg, str(tmp_path / "w"))
    with pytest.raises(ValueError, match="learner is on cpu"):
        learner.connect_engines(Recorder(), 1)


def test_auto_is_shm_on_one_node_and_ray_across_nodes(demo_assets, tmp_path):
    """On CPU `auto` is decided when the learner meets the engines: by whether they share its Ray node."""

    class Elsewhere(Recorder):
        def all_on_this_node(self) -> bool:
            return False

    class Here(Recorder):
        def all_on_this_node(self) -> bool:
            return True

    learner = Learner(make_cfg(demo_assets), str(tmp_path / "w"))
    assert learner.weights_backend(Here()) == "shm"
    assert learner.weights_backend(Recorder()) == "shm"  # in-process engines (tests): this node
    assert learner.weights_backend(Elsewhere()) == "ray"
    engines = Elsewhere()
    assert learner.connect_engines(engines, 2) == "ray"
    assert [m for m, _, _ in engines.calls] == ["weights_init", "weights_init"]


@pytest.mark.slow
def test_engine_loads_a_bucket_sent_as_bytes(demo_assets, tmp_path, shared_engine):
    """The engine side of the `ray` backend: one bucket of safetensors bytes in the update message (what a
    rollout worker actor hands its engine after pulling the bucket from the object store)."""
    from safetensors.torch import save

    from temper.learner.weight_sync import LearnerWeights

    engine = shared_engine
    engine.run(engine.load_weights(demo_assets["model"], 0))
    learner = Learner(make_cfg(demo_assets, optimizer={"lr": 1e-2}), str(tmp_path / "w"))
    learner.train_step([Group("g", (sample_from(learner, "g", 0, [70, 71], 1.0), sample_from(learner, "g", 1, [80], 0.0)))])
    buckets = list(LearnerWeights(learner.model, torch.float32, bucket_bytes=64 << 10).buckets())
    assert len(buckets) > 1
    ids = prompt_ids(engine, "What is 3 + 4?")
    try:
        engine.run(engine.weights_start())
        for bucket in buckets:
            engine.run(engine.weights_update({"data": save(dict(bucket))}))
        engine.run(engine.weights_finish(1))
        (after,) = engine.run(engine.generate(ids, 1, greedy=True))
    finally:
        engine.run(engine.load_weights(demo_assets["model"], 0))
    learner.model.eval()
    assert after.versions == (1, 1)
    assert after.logprobs == pytest.approx(hf_logprobs(learner.model, ids, after.token_ids), abs=1e-4)

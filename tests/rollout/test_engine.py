"""The real vLLM engine (one per test session) against an fp32 HF forward pass of the same weights:
sampled-token log-probs agree, a weight reload takes effect (tied lm_head included), and a request in
flight during a reload survives it and reports both weight versions."""

import asyncio

import pytest
import torch
from conftest import hf_logprobs, prompt_ids

pytestmark = pytest.mark.slow


@pytest.fixture
def engine(shared_engine):
    return shared_engine


async def stream(engine, ids, params):
    """vLLM's own outputs of one request on the engine (as Engine.generate sends it, with `params` as given)."""
    from uuid import uuid4

    from vllm.inputs import TokensPrompt

    async for out in engine.llm.generate(TokensPrompt(prompt_token_ids=ids), params, uuid4().hex):
        yield out


def test_sampled_logprobs_match_hf(engine, demo_assets):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(demo_assets["model"], dtype=torch.float32)
    ids = prompt_ids(engine)
    outs = engine.run(engine.generate(ids, 4))
    assert len(outs) == 4
    for c in outs:
        assert len(c.logprobs) == len(c.token_ids) > 0
        assert c.versions == (engine.version, engine.version)
        assert c.logprobs == pytest.approx(hf_logprobs(model, ids, c.token_ids), abs=1e-4)


def test_reload_takes_effect_including_tied_lm_head(engine, demo_assets, tmp_path):
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(demo_assets["model"], dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the embedding is the lm_head: both move
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(tmp_path / "model.safetensors"))
    engine.run(engine.load_weights(str(tmp_path), 7))
    ids = prompt_ids(engine, "What is 55 + 21?")
    (c,) = engine.run(engine.generate(ids, 1, greedy=True))
    assert c.versions == (7, 7)
    assert c.logprobs == pytest.approx(hf_logprobs(model, ids, c.token_ids), abs=1e-4)


def test_in_flight_request_survives_a_reload(engine, demo_assets, tmp_path):
    from safetensors.torch import load_file, save_file

    src = load_file(f"{demo_assets['model']}/model.safetensors")
    save_file({k: v for k, v in src.items() if k != "lm_head.weight"}, str(tmp_path / "model.safetensors"))
    start = engine.version

    async def scenario():
        # Stream the request (vLLM's own generate, temper's conversion) and reload once its first token is out:
        # a fixed sleep raced the tiny demo model, which can finish all 200 tokens before the reload starts.
        from vllm.sampling_params import RequestOutputKind

        from temper.rollout.engine import sampling_params

        params = sampling_params(engine.sampling, 1, max_tokens=200)
        params.output_kind = RequestOutputKind.CUMULATIVE
        params.ignore_eos = True  # an early stop would end it before the reload
        reload, final = None, None
        async for out in stream(engine, prompt_ids(engine), params):
            final = out
            if reload is None and out.outputs[0].token_ids and not out.finished:
                reload = asyncio.create_task(engine.load_weights(str(tmp_path), start + 1))
        assert reload is not None, "the request finished before its first streamed output"
        await reload
        return engine.completions(final)

    (c,) = engine.run(scenario())
    print("in-flight completion:", len(c.token_ids), "tokens, versions", c.versions, c.finish_reason)
    assert c.versions == (start, start + 1)


def test_text_decoded_once_matches_vllms_own_detokenizer(engine):
    """With no stop strings vLLM does not detokenize (the front-end's time goes to the engine instead); each
    completion's text, decoded once at the end (Engine.completions), is what vLLM's incremental detokenizer
    writes for the same tokens (seeded sampling from the untrained model: any token, special ones included)."""
    from temper.rollout.engine import sampling_params

    assert not engine.sampling.stop

    async def sample(ids, detokenize):
        params = sampling_params(engine.sampling, 8, max_tokens=48)
        assert params.detokenize is False
        params.detokenize, params.seed = detokenize, 1234
        async for out in stream(engine, ids, params):
            final = out
        return final

    checked = 0
    for q in ["What is 12 + 34?", "Tell me a story.", "7 + 8 = ?", ""]:
        ids = prompt_ids(engine, q)
        mine = engine.completions(engine.run(sample(ids, False)))
        theirs = sorted(engine.run(sample(ids, True)).outputs, key=lambda c: c.index)
        for m, t in zip(mine, theirs, strict=True):
            assert m.token_ids == tuple(t.token_ids)
            assert m.text == t.text
            checked += len(m.text)
    assert checked > 500, "the completions had almost no text to compare"

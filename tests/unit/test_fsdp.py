"""FSDP2 ranks (gloo, 2 processes) against one process on the full batch: same loss, same weights after
AdamW, a saved folder plain transformers loads with the same logits, and an exact resume."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from transformers import AutoModelForCausalLM

from cascade_rl.engines.base import TrainBatch, TrainSequence
from cascade_rl.engines.fsdp import shard_sequences
from cascade_rl.engines.local import LocalPolicy
from cascade_rl.engines.training import OptimSettings
from cascade_rl.model.load import load, save
from cascade_rl.model.tiny import build_tiny
from tests.conftest import TINY_QWEN3, small_corpus

OPTIM = OptimSettings(lr=1e-2, total_steps=6, weight_decay=0.1, warmup_steps=1)
STEPS = 3


def _sequences() -> list[TrainSequence]:
    """Seven rollouts in four groups, uneven lengths: ranks get unequal micro-batch counts (fillers run)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(7):
        n = 10 + 5 * i
        tokens = torch.randint(5, 500, (n,), generator=g).tolist()
        advantage = float(torch.randn(1, generator=g))
        values = {"advantages": [0.0] * 4 + [advantage] * (n - 4), "inf_logprobs": [0.0] * n}
        out.append(TrainSequence(tokens, [0] * 4 + [1] * (n - 4), values, group=i // 2))
    return out


def _batch(seqs: list[TrainSequence], part: list[int] | None = None) -> TrainBatch:
    tokens = float(sum(sum(s.mask[1:]) for s in seqs))
    return TrainBatch([seqs[i] for i in part] if part is not None else seqs, tokens, float(len(seqs)))


def _rank(rank: int, world: int, port: int, folder: str, out: str) -> None:
    import torch.distributed as dist

    from cascade_rl.algo.losses import summarize_metrics
    from cascade_rl.engines.fsdp import FSDPPolicy, init_distributed

    torch.set_num_threads(1)
    mesh = init_distributed(rank, world, "127.0.0.1", port)
    model, tokenizer = load(folder, dtype=torch.float32)
    policy = FSDPPolicy(model, tokenizer, OPTIM, mesh=mesh, token_budget=64)
    seqs, part = _sequences(), shard_sequences(_sequences(), world)[rank]

    def step() -> tuple[float, float]:
        mine = policy.microbatch_metrics(_batch(seqs, part), "grpo")
        every: list[list[dict[str, float]]] = [[] for _ in range(world)]
        dist.all_gather_object(every, mine)
        loss = summarize_metrics([m for ms in every for m in ms])["loss"]
        return loss, policy.optim_step()["grad_norm"]

    record = {"steps": [step() for _ in range(STEPS - 1)]}
    policy.save_state(Path(out) / "state")
    record["steps"].append(step())
    record["logprobs"] = policy.logprobs(seqs[:3])
    policy.save(Path(out) / "saved")
    final = policy.full_state_dict()
    policy.load_state(Path(out) / "state")  # back one step: the replayed step must be the same step
    record["replayed"] = step()
    replayed = policy.full_state_dict()
    # one sequence for two ranks: rank 1 has nothing and runs fillers only (no deadlock, no gradient)
    lonely = [seqs[0]] if rank == 0 else []
    record["lonely_logprobs"] = policy.logprobs(lonely)
    lonely_metrics = policy.microbatch_metrics(TrainBatch(lonely, float(sum(seqs[0].mask[1:])), 1.0), "grpo")
    record["lonely_loss"] = sum(m["loss"] for m in lonely_metrics)
    policy.optimizer.zero_grad(set_to_none=True)
    if rank == 0:
        record["max_replay_diff"] = max(float((final[k] - replayed[k]).abs().max()) for k in final)
        torch.save(record, Path(out) / "record.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    model, tokenizer = build_tiny("qwen3", corpus=small_corpus(), vocab_size=600, **TINY_QWEN3)
    assert model.config.tie_word_embeddings  # the tied head is the case FSDP's root unit must gather
    folder = str(save(model, tokenizer, root / "init"))
    module, tok = load(folder, dtype=torch.float32)
    single = LocalPolicy(module, tok, OPTIM, token_budget=64)
    seqs = _sequences()
    steps = []
    for _ in range(STEPS):
        loss = single.forward_backward(_batch(seqs), "grpo")["loss"]
        steps.append((loss, single.optim_step()["grad_norm"]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, folder, str(root)), nprocs=2)
    return {"single": single, "steps": steps, "root": root, "fsdp": torch.load(root / "record.pt")}


def test_two_ranks_take_the_step_one_process_takes(runs):
    for (loss, norm), (loss2, norm2) in zip(runs["steps"], runs["fsdp"]["steps"], strict=True):
        assert loss2 == pytest.approx(loss, abs=1e-6)
        assert norm2 == pytest.approx(norm, rel=1e-5)
    saved = AutoModelForCausalLM.from_pretrained(runs["root"] / "saved", dtype=torch.float32)
    single = runs["single"].model.state_dict()
    worst = max(float((v - single[k]).abs().max()) for k, v in saved.state_dict().items())
    assert worst < 5e-5  # three AdamW steps at lr 1e-2 (Adam's ~lr * sign(g) magnifies rounding)


def test_the_saved_folder_loads_in_plain_transformers_with_the_ranks_logits(runs):
    saved = AutoModelForCausalLM.from_pretrained(runs["root"] / "saved", dtype=torch.float32).eval()
    for seq, ranked in zip(_sequences()[:3], runs["fsdp"]["logprobs"], strict=True):
        with torch.no_grad():
            logits = saved(torch.tensor([seq.tokens])).logits[0, :-1]
        plain = torch.log_softmax(logits, -1).gather(-1, torch.tensor(seq.tokens[1:])[:, None])[:, 0]
        plain = plain * torch.tensor(seq.mask[1:], dtype=torch.float32)
        assert torch.allclose(plain, torch.tensor(ranked[1:]), atol=1e-5)


def test_a_distributed_checkpoint_resumes_the_exact_step(runs):
    assert runs["fsdp"]["replayed"] == runs["fsdp"]["steps"][-1]
    assert runs["fsdp"]["max_replay_diff"] == 0.0


def test_sequences_are_split_by_tokens_with_groups_whole():
    seqs = [TrainSequence([1] * n, [1] * n, group=g) for n, g in [(10, 0), (10, 0), (30, None), (5, 1), (5, 1)]]
    assert shard_sequences(seqs, 2) == [[2], [0, 1, 3, 4]]


def test_a_tied_head_is_saved_once(runs):
    from safetensors import safe_open

    with safe_open(runs["root"] / "saved" / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names


def test_a_rank_without_sequences_runs_fillers_and_scores_nothing(runs):
    single = runs["single"]
    seq = _sequences()[0]
    assert runs["fsdp"]["lonely_logprobs"][0] == pytest.approx(single.logprobs([seq])[0], abs=1e-5)
    expected = single.forward_backward(TrainBatch([seq], float(sum(seq.mask[1:])), 1.0), "grpo")["loss"]
    single.optimizer.zero_grad(set_to_none=True)
    assert runs["fsdp"]["lonely_loss"] == pytest.approx(expected, abs=1e-6)


def test_a_separate_generator_syncs_from_gathered_weights_with_a_tied_head(runs):
    """A generator beside a remote policy gets ``full_state_dict`` (the tied head left out) and must re-tie."""
    import copy

    from cascade_rl.engines.local import LocalGenerator

    class Remote:
        def __init__(self, policy: LocalPolicy) -> None:
            self.policy = policy

        def full_state_dict(self) -> dict[str, torch.Tensor]:
            return self.policy.full_state_dict()

    single = runs["single"]
    assert "lm_head.weight" not in single.full_state_dict()
    stale, _ = load(str(runs["root"] / "init"), dtype=torch.float32)
    generator = LocalGenerator(stale)
    generator.sync(Remote(single), 7)
    assert generator.version == 7
    for name, value in single.model.state_dict().items():
        assert torch.equal(stale.state_dict()[name], value), name
    assert stale.lm_head.weight is stale.model.embed_tokens.weight
    with pytest.raises(KeyError, match="missing"):
        broken = copy.deepcopy(single.full_state_dict())
        del broken["model.norm.weight"]
        generator.sync(type("R", (), {"full_state_dict": lambda self: broken})(), 8)

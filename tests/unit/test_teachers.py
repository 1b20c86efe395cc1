"""MOPD teachers from the ledger: one resolver for domains, one scorer per distinct checkpoint."""

from __future__ import annotations

import json

from cascade_rl.config import load_config
from cascade_rl.eval.ledger import Ledger, LedgerRow
from cascade_rl.loops.pipeline import build_teachers

USER = [{"role": "user", "content": "2 + 3?"}]


class Backend:
    """Records which teachers it was asked to load (a scorer is whatever the router is handed)."""

    def __init__(self) -> None:
        self.loaded: list[tuple[str, bool]] = []

    def scorer(self, model: str, *, offload: bool = False) -> str:
        self.loaded.append((model, offload))
        return f"scorer:{model}"


def test_a_mixed_prompt_file_routes_each_record_domain_to_its_own_teacher(tmp_path):
    path = tmp_path / "mix.jsonl"
    rows = [
        {"messages": USER, "spec": {"type": "math", "answer": "5"}, "domain": "olympiad"},
        {"messages": USER, "spec": {"type": "math", "answer": "5"}, "domain": "algebra"},
        {"messages": USER, "spec": {"type": "math", "answer": "5"}},  # the file's stem: 'mix'
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(
        {
            "eval": {"domains": [{"path": str(path)}], "validation": [{"path": str(path)}]},
            "stages": [{"type": "mopd", "prompts": [{"path": str(path)}], "teachers_on_demand": True}],
        }
    )
    ledger = Ledger()
    ledger.add(LedgerRow("base", "ckpt/base", {}, validation={"olympiad:direct": 0.9, "algebra:direct": 0.9}))
    ledger.add(
        LedgerRow("a", "ckpt/a", {}, validation={"olympiad:direct": 0.5, "algebra:direct": 0.2, "mix:direct": 0.1})
    )
    ledger.add(
        LedgerRow("b", "ckpt/b", {}, validation={"olympiad:direct": 0.4, "algebra:direct": 0.6, "mix:direct": 0.3})
    )
    backend = Backend()
    router, used = build_teachers(config.stages[0], config, ledger, backend)
    # the domains are the records' (never the file stem alone), each chosen on validation, base excluded
    assert used == {"domains": {"algebra": "ckpt/b", "mix": "ckpt/b", "olympiad": "ckpt/a"}, "default": None}
    assert {d: router.teacher_for(d) for d in ("olympiad", "algebra", "mix")} == {
        "olympiad": "olympiad",
        "algebra": "algebra",
        "mix": "mix",
    }
    # each distinct checkpoint is loaded once (and held, offloaded between uses), not once per domain or step
    assert sorted(backend.loaded) == [("ckpt/a", True), ("ckpt/b", True)]

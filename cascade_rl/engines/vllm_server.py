"""A vLLM engine in its own process (and, on a CPU machine, its own virtualenv), driven by ``engines.vllm``.

Run as a script by the interpreter that has vLLM (``python vllm_server.py HOST PORT``, the auth key on
stdin); it imports only the standard library, torch and vLLM, so it needs neither this package nor its
transformers pin. Requests arrive as pickled ``(method, kwargs)`` tuples over a
``multiprocessing.connection``; each is answered with ``("ok", result)`` or ``("error", traceback)``.

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), which gives direct access to the
worker for in-place weight reloads, and returns log-probs of the distribution it sampled from
(``logprobs_mode="processed_logprobs"``: temperature included).
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from multiprocessing.connection import Client
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM would otherwise reserve most of the RAM


class Server:
    def __init__(self) -> None:
        self.llm: Any = None
        self.tied = False

    def start(self, *, model: str, dtype: str, seed: int, settings: dict[str, Any]) -> dict[str, Any]:
        import vllm

        self.llm = vllm.LLM(
            model=model,
            dtype=dtype,
            seed=seed,
            logprobs_mode="processed_logprobs",
            skip_tokenizer_init=False,
            **settings,
        )
        hf_config = self.llm.llm_engine.model_config.hf_config
        self.tied = bool(getattr(hf_config, "tie_word_embeddings", False))
        return {"vllm": vllm.__version__, "tied": self.tied}

    def generate(
        self, *, prompts: list[list[int]], sampling: dict[str, Any], seeds: list[int]
    ) -> list[list[tuple[list[int], list[float], str]]]:
        from vllm import SamplingParams, TokensPrompt

        params = [SamplingParams(**sampling, seed=s, logprobs=0, ignore_eos=True, detokenize=False) for s in seeds]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        result = []
        for out in outputs:
            rows = []
            for c in out.outputs:
                tokens = list(c.token_ids)
                logprobs = [float(step[t].logprob) for step, t in zip(c.logprobs or [], tokens, strict=True)]
                rows.append((tokens, logprobs, "stop" if c.finish_reason == "stop" else "length"))
            result.append(rows)
        return result

    def score(self, *, sequences: list[list[int]]) -> list[list[float]]:
        """log p(token_j | tokens_<j) at T = 1 for every j >= 1 (vLLM's prompt log-probs are untempered)."""
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, temperature=1.0)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences], params, use_tqdm=False)
        result = []
        for seq, out in zip(sequences, outputs, strict=True):
            steps = out.prompt_logprobs or []
            result.append([0.0] + [float(steps[j][t].logprob) for j, t in enumerate(seq) if j > 0])
        return result

    def load_weights(self, *, weights: list[tuple[str, Any]]) -> dict[str, Any]:
        """Replace the weights in place (one call for the whole model), then drop cached prefixes."""
        worker = self._worker()
        worker.reload_weights(weights_iterator=iter(weights))
        if self.tied:  # the reload leaves a tied head holding the OLD embedding: tie it again
            model = worker.model_runner.get_model()
            model.lm_head.weight = model.model.embed_tokens.weight
            model.lm_head.quant_method.process_weights_after_loading(model.lm_head)
        self.llm.reset_prefix_cache()
        return {"tensors": len(weights)}

    def _worker(self) -> Any:
        try:
            return self.llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker
        except AttributeError as err:
            raise RuntimeError(
                "in-place weight reload needs the in-process engine (one worker, VLLM_ENABLE_V1_MULTIPROCESSING=0)"
            ) from err

    def stop(self) -> None:
        self.llm = None


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    authkey = bytes.fromhex(sys.stdin.readline().strip())
    conn = Client((host, port), authkey=authkey)
    server = Server()
    while True:
        try:
            method, kwargs = pickle.loads(conn.recv_bytes())
        except EOFError:
            return
        try:
            reply = ("ok", getattr(server, method)(**kwargs))
        except Exception:
            reply = ("error", traceback.format_exc())
        conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
        if method == "stop":
            return


if __name__ == "__main__":
    main()

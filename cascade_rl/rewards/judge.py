"""Generative pairwise judges (``type: judge`` rewards): the RLHF reward of Nemotron-Cascade 2.

A judge model reads a prompt and two of its group's responses and scores both; a response's reward
is how often it beats the responses it is compared with. Only relative quality within a group matters
to GRPO, so a pairwise verdict (is A better than B?) is all the signal needed, and it is far easier for
a judge to give reliably than an absolute score.

Recipe block::

    reward:
      type: judge
      args: {model: path/or/hf-folder, strategy: circular, length_penalty: 0.1}

The judge model (``model``) is either

* a model spec the stage's backend loads (an HF folder, a ``.gguf`` file, ``smollm2``, ``tiny:<family>``):
  the judge prompt is rendered in the Cascade-2 chat format in non-thinking mode and decoded greedily
  on the backend's eval generator, all comparisons in batches of ``batch_size`` prompts; or
* an OpenAI-compatible endpoint base URL (``http://host:8000``, e.g. a vLLM server; a trailing ``/v1``
  is accepted): each comparison is a ``POST {url}/v1/chat/completions`` with ``temperature: 0`` and
  ``max_tokens: max_new_tokens``, ``concurrency`` requests at a time. The served model's name is the
  URL's fragment (``http://host:8000#Qwen/Qwen3-32B``) or ``endpoint_model``; with neither, the first
  model ``GET {url}/v1/models`` lists.

The judge prompt (``judge_messages``) is a system message (``SYSTEM_PROMPT``: compare the two
responses for helpfulness, correctness and following the request's instructions, answer with ONLY
``{"A": <1-10>, "B": <1-10>}``) and a user message holding the conversation as plain text (``User: ...``,
``Assistant: ...``, ending with the last user request) and the two answers, each between
``[The Start of Response X]`` and ``[The End of Response X]``. An answer is the ``content`` of the
parsed trajectory (``parse_completion(final_text, thinking=group.thinking)``): the judge never sees a
think block, a tool-call block or special tokens.

Comparisons within a group of K responses: ``circular`` judges pairs (i, (i + 1) % K) for every i
(2K verdicts; one pair when K == 2), ``all_pairs`` every i < j (K (K - 1) verdicts). Every pair is
judged in both orders (i as A, then as B), so a judge that prefers one position gives every response
exactly 0.5 rather than a reward that depends on where it was placed. Identical judge prompts (a group
whose responses repeat) are judged once, since decoding is greedy.

Reward of response i, over its comparisons C_i (both orders)::

    outcome(c) = 1 if i's score > the other's, 0.5 on a tie or an unparseable verdict, 0 if lower
    base_i     = mean_{c in C_i} outcome(c)                       (0.5 when K == 1: nothing to compare)
    reward_i   = clip(base_i - length_penalty * max(0, len_i - mean_len) / max(mean_len, 1), 0, 1)

where ``len`` is the response's ``model_tokens`` and ``mean_len`` its group's mean: with a penalty,
responses longer than their group's mean lose reward in proportion to the excess (judges favour length).
``RewardResult.info``: ``judge_comparisons``, ``judge_wins``, ``judge_ties`` (parsed, equal scores) and
``judge_unparsed`` (verdicts ``parse_verdict`` could not read).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from cascade_rl.chat import encode_prompt, parse_completion
from cascade_rl.engines.base import Generator, SamplingParams
from cascade_rl.rewards.base import RewardResult
from cascade_rl.rewards.reward_fn import RewardContext, register_reward
from cascade_rl.types import Completion, TrajectoryGroup

logger = logging.getLogger(__name__)

Strategy = Literal["circular", "all_pairs"]
Verdict = tuple[float, float]

SYSTEM_PROMPT = (
    "You are an impartial judge. You are shown a conversation between a user and an assistant, and two "
    "candidate responses (Response A and Response B) to the user's last request. Compare them for "
    "helpfulness, correctness and how well they follow the request's instructions. Do not let the order "
    "of the responses, their length or their style sway you. Rate each response from 1 (worst) to 10 "
    '(best) and answer with ONLY a JSON object of the form {"A": <1-10>, "B": <1-10>}, nothing else.'
)
_ANSWER_REMINDER = 'Answer with ONLY a JSON object: {"A": <1-10>, "B": <1-10>}'
_ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def _message_text(message: Mapping[str, Any]) -> str:
    """Plain text of a chat message: string content, the text parts of a list, and its tool calls."""
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, Sequence):
        text = "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    else:
        text = ""
    for call in message.get("tool_calls") or ():
        fn = call.get("function", call) if isinstance(call, Mapping) else {}
        args = fn.get("arguments", {})
        args_text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False, default=str)
        text += f"\n[tool call] {fn.get('name', '?')}({args_text})"
    return text.strip()


def render_conversation(messages: Sequence[Mapping[str, Any]]) -> str:
    """The prompt's messages as ``Role: text`` paragraphs (the judge reads plain text, not the chat format)."""
    parts = []
    for message in messages:
        role = str(message.get("role", "user"))
        parts.append(f"{_ROLE_LABELS.get(role, role.capitalize())}: {_message_text(message)}")
    return "\n\n".join(parts)


def judge_messages(messages: Sequence[Mapping[str, Any]], answer_a: str, answer_b: str) -> list[dict[str, str]]:
    """The judge's chat: the system instruction and one user message with the conversation and both answers."""
    user = (
        f"[Conversation]\n{render_conversation(messages)}\n\n"
        f"[The Start of Response A]\n{answer_a}\n[The End of Response A]\n\n"
        f"[The Start of Response B]\n{answer_b}\n[The End of Response B]\n\n"
        f"{_ANSWER_REMINDER}"
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# ----------------------------------------------------------------------------------------- verdicts

UNPARSED_WARNING = 0.2  # share of a call's verdicts above which the judge warns (they all score as ties)
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_NUMERIC = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*")
_A_KEYS = frozenset({"a", "response_a", "score_a", "assistant_a"})
_B_KEYS = frozenset({"b", "response_b", "score_b", "assistant_b"})
# "A: 7", "**B**: 4", "Response A = 6", "'A': 7" (a Python-style dict). The letter itself is upper-case
# only: a lower-case "a: 3" is too likely to be prose.
_LINE_SCORE = re.compile(
    r"(?i)(?<![A-Za-z0-9_])(?:(?:response|score|assistant)[\s_]*)?[\"'*]*(?-i:([AB]))[\"'*]*\s*[:=]\s*[\"'*]*"
    r"(-?\d+(?:\.\d+)?)(?!\.?\d|[eE][+-]?\d)"
)


def _strip_reasoning(text: str) -> str:
    """Drop the judge's reasoning: closed think blocks, text before a lone ``</think>`` (the prompt opened
    the block), and everything after an unclosed ``<think>`` (a verdict there was never given)."""
    text = _THINK_BLOCK.sub("", text)
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    return text.split("<think>", 1)[0]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):  # JSON true is an int to Python, never a score
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str) and (m := _NUMERIC.fullmatch(value)):
        return float(m.group(1))
    return None


def _object_scores(obj: Mapping[Any, Any]) -> Verdict | None:
    a = b = None
    for key, value in obj.items():
        if not isinstance(key, str):
            continue
        name = re.sub(r"[\s\-]+", "_", key.strip().lower())
        if a is None and name in _A_KEYS:
            a = _number(value)
        elif b is None and name in _B_KEYS:
            b = _number(value)
    return (a, b) if a is not None and b is not None else None


def parse_verdict(text: str) -> Verdict | None:
    """The judge's (score A, score B), or None when the text holds no readable verdict.

    The last JSON object (by where it ends, so an outer object wins over one nested in it) with
    numeric scores for A and B, after dropping reasoning; else the last ``A: n`` and ``B: n`` lines.
    """
    text = _strip_reasoning(text)
    decoder = json.JSONDecoder()
    best: tuple[int, Verdict] | None = None
    for match in re.finditer(r"\{", text):
        try:
            obj, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and (scores := _object_scores(obj)) is not None and (best is None or end > best[0]):
            best = (end, scores)
    if best is not None:
        return best[1]
    found: dict[str, float] = {}
    for match in _LINE_SCORE.finditer(text):
        found[match.group(1)] = float(match.group(2))  # later lines overwrite earlier ones: the last wins
    return (found["A"], found["B"]) if "A" in found and "B" in found else None


# -------------------------------------------------------------------------------------- comparisons


def comparison_pairs(k: int, strategy: Strategy) -> list[tuple[int, int]]:
    """The ordered (A, B) comparisons of a group of ``k`` responses: every pair in both orders."""
    if k < 2:
        return []
    if strategy == "circular" and k > 2:
        pairs = [(i, (i + 1) % k) for i in range(k)]
    else:  # all_pairs, or circular with k == 2 (its one pair)
        pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    return [order for i, j in pairs for order in ((i, j), (j, i))]


def length_penalties(lengths: Sequence[int], coef: float) -> list[float]:
    """``coef * max(0, len_i - mean) / max(mean, 1)`` for each length of a group."""
    if not lengths or coef == 0:
        return [0.0] * len(lengths)
    mean = sum(lengths) / len(lengths)
    return [coef * max(0.0, n - mean) / max(mean, 1.0) for n in lengths]


def group_rewards(
    group: TrajectoryGroup,
    verdicts: Sequence[tuple[tuple[int, int], Verdict | None]],
    length_penalty: float = 0.0,
) -> list[RewardResult]:
    """Rewards of one group from its ordered comparisons ``((a, b), verdict)`` (module docstring formula).

    A truncated response scores 0 (as under a verifier) and is in no comparison; the length penalty's
    mean is over the others."""
    k = len(group.trajectories)
    live = [i for i, t in enumerate(group.trajectories) if not t.truncated]
    n, wins, ties, unparsed = [0] * k, [0] * k, [0] * k, [0] * k
    for (a, b), verdict in verdicts:
        for me, mine, theirs in ((a, 0, 1), (b, 1, 0)):
            n[me] += 1
            if verdict is None:
                unparsed[me] += 1
            elif verdict[mine] > verdict[theirs]:
                wins[me] += 1
            elif verdict[mine] == verdict[theirs]:
                ties[me] += 1
    lengths = [group.trajectories[i].model_tokens for i in live]
    penalty = dict(zip(live, length_penalties(lengths, length_penalty), strict=True))
    results = []
    for i in range(k):
        if i not in penalty:
            results.append(RewardResult(0.0, {"reason": "truncated"}))
            continue
        base = (wins[i] + 0.5 * (ties[i] + unparsed[i])) / n[i] if n[i] else 0.5
        info = {"judge_comparisons": n[i], "judge_wins": wins[i], "judge_ties": ties[i], "judge_unparsed": unparsed[i]}
        results.append(RewardResult(min(1.0, max(0.0, base - penalty[i])), info))
    return results


# ----------------------------------------------------------------------------------------- endpoint


RETRIED_HTTP = frozenset({408, 409, 429})  # besides 5xx: time-outs, conflicts and rate limits pass


class JudgeEndpointError(RuntimeError):
    """The judge endpoint could not be reached or answered something that is not a chat completion."""


def is_endpoint(model: str) -> bool:
    return model.startswith(("http://", "https://"))


class _Endpoint:
    """A client of an OpenAI-compatible chat-completions server (standard library only)."""

    def __init__(
        self, url: str, name: str | None, *, timeout_s: float, retries: int, concurrency: int, api_key_env: str | None
    ) -> None:
        base, _, fragment = url.partition("#")
        if fragment and name and fragment != name:
            raise ValueError(f"judge endpoint model named twice: {fragment!r} in the URL, {name!r} as endpoint_model")
        base = base.rstrip("/")
        self.base = base[: -len("/v1")] if base.endswith("/v1") else base
        self.name = fragment or name
        self.timeout_s, self.retries, self.concurrency = timeout_s, retries, concurrency
        self.headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ValueError(
                    f"judge endpoint {url}: the environment variable {api_key_env} (api_key_env) is not set"
                )
            self.headers["Authorization"] = f"Bearer {key}"

    def complete_all(self, requests: Sequence[list[dict[str, str]]], max_tokens: int) -> list[str]:
        if not requests:
            return []
        if self.name is None:
            self.name = self._served_model()
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)))
        futures = [pool.submit(self._complete, messages, max_tokens) for messages in requests]
        try:
            return [future.result() for future in futures]
        finally:  # the first failure ends the call: queued requests are cancelled, not waited for
            pool.shutdown(wait=False, cancel_futures=True)

    def _served_model(self) -> str:
        listing = self._request("/v1/models", None)
        try:
            return str(listing["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise JudgeEndpointError(f"judge endpoint {self.base}/v1/models lists no model: {listing!r:.300}") from None

    def _complete(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        body = {"model": self.name, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
        data = self._request("/v1/chat/completions", body)
        try:
            content = data["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise JudgeEndpointError(
                f"judge endpoint {self.base}/v1/chat/completions answered no chat completion: {data!r:.300}"
            ) from None
        return content if isinstance(content, str) else ""  # content is null when only reasoning came back

    def _request(self, path: str, body: Mapping[str, Any] | None) -> Any:
        """GET (no body) or POST JSON, retrying transient failures (unreachable, timeouts, 5xx) with backoff."""
        url = self.base + path
        payload = None if body is None else json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(url, data=payload, headers=self.headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:300]
                error = JudgeEndpointError(f"judge endpoint {url} answered HTTP {exc.code}: {detail}")
                if exc.code < 500 and exc.code not in RETRIED_HTTP:  # a bad request will not get better
                    raise error from None
                wait = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            except (urllib.error.URLError, OSError) as exc:  # refused, DNS, timeouts (TimeoutError is an OSError)
                reason = getattr(exc, "reason", exc)
                error, wait = JudgeEndpointError(f"judge endpoint {url} is unreachable: {reason}"), 0.0
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise JudgeEndpointError(f"judge endpoint {url} answered something that is not JSON: {exc}") from None
            if attempt < self.retries:
                time.sleep(max(wait, 0.5 * 2**attempt))
        raise error


def _retry_after(value: str | None) -> float:
    """Seconds a ``Retry-After`` header asks for (capped at a minute; a date or garbage: 0)."""
    try:
        return min(max(float(value or 0), 0.0), 60.0)
    except ValueError:
        return 0.0


# ------------------------------------------------------------------------------------------- reward


@register_reward("judge")
class PairwiseJudge:
    """Pairwise generative judge over each group's responses (see the module docstring).

    Args:
        context: the stage's reward context; its backend loads a local ``model``.
        model: a model spec for the backend, or an OpenAI-compatible endpoint base URL (``http(s)://``,
            optionally ``#served-model-name``).
        strategy: ``circular`` (2K verdicts per group of K) or ``all_pairs`` (K (K - 1)).
        length_penalty: coefficient of the above-mean-length penalty (0 = off).
        max_new_tokens: the judge's generation budget per verdict.
        prefill: text that starts the judge's answer (local judges), e.g. ``'{"A": '``: a small model that
            would not otherwise answer in the verdict's shape completes it; the verdict is read from
            ``prefill`` + what the judge wrote.
        batch_size: prompts per ``generate`` call on a local judge.
        generator, tokenizer: an already-built local judge (tests, embedding); ``model`` is then a label.
        endpoint_model: the served model name of an endpoint (instead of the URL fragment).
        concurrency, timeout_s, retries: the endpoint's requests in flight, per-request timeout (seconds) and
            retries of a transient failure (unreachable, time-out, 408 / 409 / 429, 5xx; ``Retry-After`` honoured).
        api_key_env: the environment variable holding the endpoint's bearer token (never the token itself:
            the resolved recipe is written into the run folder).
    """

    def __init__(
        self,
        context: RewardContext | None = None,
        *,
        model: str,
        strategy: Strategy = "circular",
        length_penalty: float = 0.0,
        max_new_tokens: int = 64,
        batch_size: int = 32,
        prefill: str = "",
        generator: Generator | None = None,
        tokenizer: Any = None,
        endpoint_model: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        retries: int = 2,
        api_key_env: str | None = None,
    ) -> None:
        if strategy not in ("circular", "all_pairs"):
            raise ValueError(f"judge strategy must be 'circular' or 'all_pairs', got {strategy!r}")
        if length_penalty < 0 or max_new_tokens < 1 or batch_size < 1 or concurrency < 1 or retries < 0:
            raise ValueError(
                "judge needs length_penalty >= 0, max_new_tokens >= 1, batch_size >= 1, concurrency >= 1 and "
                f"retries >= 0; got {length_penalty}, {max_new_tokens}, {batch_size}, {concurrency}, {retries}"
            )
        self.model, self.strategy, self.length_penalty = str(model), strategy, length_penalty
        self.max_new_tokens, self.batch_size, self.prefill = max_new_tokens, batch_size, prefill
        self._endpoint: _Endpoint | None = None
        self._generator: Generator | None = None
        self._tokenizer = tokenizer
        self._closed = False
        if is_endpoint(self.model):
            if generator is not None or prefill:
                raise ValueError(f"judge model {self.model!r} is an endpoint URL: no generator or prefill with it")
            self._endpoint = _Endpoint(
                self.model,
                endpoint_model,
                timeout_s=timeout_s,
                retries=retries,
                concurrency=concurrency,
                api_key_env=api_key_env,
            )
            return
        backend = context.backend if context is not None else None
        if (generator is None or tokenizer is None) and backend is None:
            raise ValueError(f"judge model {self.model!r} needs a backend to load it (RewardContext.backend)")
        self._generator = generator if generator is not None else backend.eval_generator(self.model, batch_size)
        if self._tokenizer is None:
            self._tokenizer = backend.tokenizer(self.model)

    def __call__(self, groups: Sequence[TrajectoryGroup]) -> list[list[RewardResult]]:
        if self._closed:
            raise RuntimeError("the judge was closed")
        jobs: list[tuple[int, tuple[int, int], int]] = []  # (group, (a, b), index of its distinct request)
        requests: list[list[dict[str, str]]] = []
        seen: dict[str, int] = {}
        for g, group in enumerate(groups):
            live = [i for i, t in enumerate(group.trajectories) if not t.truncated]
            answers = {
                i: parse_completion(group.trajectories[i].final_text, thinking=group.thinking).content for i in live
            }
            for a, b in ((live[x], live[y]) for x, y in comparison_pairs(len(live), self.strategy)):
                messages = judge_messages(group.prompt.messages, answers[a], answers[b])
                key = json.dumps(messages)
                if key not in seen:
                    seen[key] = len(requests)
                    requests.append(messages)
                jobs.append((g, (a, b), seen[key]))
        verdicts = [parse_verdict(text) for text in self._complete(requests)]
        unparsed = sum(v is None for v in verdicts)
        if unparsed > UNPARSED_WARNING * len(verdicts):
            logger.warning(
                "judge %s: %d of %d verdicts unparseable, scored as ties (raise max_new_tokens, or use a judge that "
                'answers {"A": n, "B": n})',
                self.model,
                unparsed,
                len(verdicts),
            )
        per_group: list[list[tuple[tuple[int, int], Verdict | None]]] = [[] for _ in groups]
        for g, pair, r in jobs:
            per_group[g].append((pair, verdicts[r]))
        return [group_rewards(group, per_group[g], self.length_penalty) for g, group in enumerate(groups)]

    def _complete(self, requests: Sequence[list[dict[str, str]]]) -> list[str]:
        if self._endpoint is not None:
            return self._endpoint.complete_all(requests, self.max_new_tokens)
        return self._generate(requests)

    def _generate(self, requests: Sequence[list[dict[str, str]]]) -> list[str]:
        """Greedy verdicts from the local judge, ``batch_size`` prompts per ``generate`` call."""
        assert self._generator is not None
        eos = getattr(self._tokenizer, "eos_token_id", None)
        params = SamplingParams(
            n=1, temperature=0.0, max_new_tokens=self.max_new_tokens, stop_token_ids=() if eos is None else (eos,)
        )
        start_ids = self._tokenizer(self.prefill, add_special_tokens=False)["input_ids"] if self.prefill else []
        prompts = [
            encode_prompt(self._tokenizer, messages, None, enable_thinking=False) + start_ids for messages in requests
        ]
        texts: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            outputs = self._generator.generate(chunk, params)
            if len(outputs) != len(chunk) or any(not samples for samples in outputs):
                raise RuntimeError(f"judge generator returned {len(outputs)} results for {len(chunk)} prompts")
            texts.extend(self.prefill + self._decode(samples[0]) for samples in outputs)
        return texts

    def _decode(self, completion: Completion) -> str:
        if completion.text or not completion.tokens:
            return completion.text
        return self._tokenizer.decode(list(completion.tokens), skip_special_tokens=False)

    def close(self) -> None:
        """Drop the judge model (its generator) so its memory can be freed; the judge cannot be called again."""
        self._generator = None
        self._endpoint = None
        self._closed = True

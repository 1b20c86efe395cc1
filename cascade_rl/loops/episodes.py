"""Episodes stepped in batches: the multi-turn part of the rollout half.

All active episodes of a batch advance together, one batched ``generate`` call per turn; an
episode leaves the batch when its environment ends it, when a turn hits the per-turn token budget,
or when the turn or context budget is spent.

Token in, token out: an episode's tokens are the prompt ids, then each model turn exactly as the
generator sampled it (mask 1, with its behaviour log-probs), then each observation (the environment's
tool responses, rendered by the chat template after the turn's ``<|im_end|>`` up to the next
generation prompt; mask 0). Nothing is decoded and re-encoded, so the trainer scores exactly the
tokens the model was conditioned on and produced. The conversation is append-only: where the chat
template would rewrite history (thinking mode drops the reasoning of turns before the LAST USER
message), an episode keeps what the model saw when it wrote each turn. Tool responses sit in user
turns on the wire but are ``tool`` messages, so within a tool-using episode the template drops
nothing and the two agree; an environment that answers with user messages gets the append-only
view, which is what the model was conditioned on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from cascade_rl.chat import parse_completion, render_continuation
from cascade_rl.engines.base import Generator, SamplingParams
from cascade_rl.envs import Env, StepResult, make_env
from cascade_rl.types import Completion, Prompt, Trajectory, TrajectoryGroup


@dataclass(frozen=True)
class Budget:
    """Limits of one episode: model turns, and tokens in all (prompt, turns and observations)."""

    max_turns: int = 1
    max_context_tokens: int | None = None  # None: no limit but the per-turn one


@dataclass
class Episode:
    """One episode under way: the token record the trainer will see, and its environment."""

    prompt: Prompt
    env: Env
    tokens: list[int]
    thinking: bool = False
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turns: list[tuple[int, int]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    version: int = 0
    truncated: bool = False
    failed: bool = False
    done: bool = False
    reward: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mask = [0] * len(self.tokens)
        self.logprobs = [0.0] * len(self.tokens)

    def add_turn(self, completion: Completion, text: str) -> None:
        start = len(self.tokens)
        self.tokens += completion.tokens
        self.mask += [1] * len(completion.tokens)
        self.logprobs += completion.logprobs
        self.turns.append((start, len(self.tokens)))
        self.texts.append(text)
        self.version = completion.policy_version

    def add_observation(self, ids: Sequence[int]) -> None:
        self.tokens += ids
        self.mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)

    def end(self, *, truncated: bool = False, reason: str | None = None) -> None:
        self.done, self.truncated = True, truncated
        if reason:
            self.info["ended"] = reason

    def trajectory(self) -> Trajectory:
        return Trajectory(
            tokens=tuple(self.tokens),
            loss_mask=tuple(self.mask),
            behaviour_logprobs=tuple(self.logprobs),
            turns=tuple(self.turns),
            texts=tuple(self.texts),
            truncated=self.truncated,
            domain=self.prompt.domain,
            policy_version=self.version,
            reward=self.reward or 0.0,
            info=dict(self.info),
            failed=self.failed,
        )


Encoder = Callable[[Prompt, Sequence[dict[str, Any]], bool], list[int]]  # prompt ids of a conversation, thinking mode
ThinkingMode = bool | Literal["mixed"]


def thinking_for(mode: ThinkingMode, prompt: Prompt) -> bool:
    """A prompt's thinking mode; ``mixed`` gives half the prompts each mode (fixed per prompt, by its uid)."""
    if mode == "mixed":
        key = prompt.uid or repr(prompt.messages)
        return hashlib.sha256(key.encode("utf-8")).digest()[0] % 2 == 0
    return bool(mode)


def _turn_seed(seed: int, turn: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{turn}".encode()).digest()[:7], "big")


class EpisodeRunner:
    """Runs episodes of prompts in batches: the first turn of every episode of a prompt shares its prefill."""

    def __init__(
        self,
        generator: Generator,
        tokenizer: PreTrainedTokenizerBase,
        thinking: ThinkingMode,
        budget: Budget = Budget(),
        env_args: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.generator, self.tokenizer, self.thinking = generator, tokenizer, thinking
        self.budget = budget
        self.env_args = dict(env_args or {})

    def run(
        self, prompts: Sequence[Prompt], encode: Encoder, params: SamplingParams, first_index: int = 0
    ) -> list[TrajectoryGroup]:
        """``params.n`` episodes per prompt as ``TrajectoryGroup``s (rewards from environments only)."""
        episodes: list[list[Episode]] = []
        try:
            for prompt in prompts:
                envs = [make_env(prompt.env, prompt, **self.env_args.get(prompt.env, {})) for _ in range(params.n)]
                thinking = thinking_for(self.thinking, prompt)
                ids = encode(prompt, envs[0].reset(), thinking)  # reset is a function of the prompt: encode once
                episodes.append([Episode(prompt, env, list(ids), thinking) for env in envs])
            first = self.generator.generate([row[0].tokens for row in episodes], params)
            for row, samples in zip(episodes, first, strict=True):
                for episode, completion in zip(row, samples, strict=True):
                    self._took_turn(episode, completion)
            self._continue([e for row in episodes for e in row], params)
            return [
                TrajectoryGroup(p, tuple(e.trajectory() for e in row), first_index + g, row[0].thinking)
                for g, (p, row) in enumerate(zip(prompts, episodes, strict=True))
            ]
        finally:
            for episode in (e for row in episodes for e in row):
                episode.env.close()

    def _continue(self, episodes: list[Episode], params: SamplingParams) -> None:
        """Later turns: every still-active episode takes one more turn per batched generate call."""
        turn, limit = 1, self.budget.max_context_tokens
        active = [e for e in episodes if not e.done]
        while active:
            turn += 1
            if limit is not None:  # a turn goes on only if a whole one still fits the context budget
                for e in active:
                    if len(e.tokens) + params.max_new_tokens > limit:
                        e.end(truncated=True, reason="context_tokens")
                active = [e for e in active if not e.done]
                if not active:
                    break
            call = replace(params, n=1, seed=_turn_seed(params.seed, turn))
            completions = self.generator.generate([e.tokens for e in active], call)
            for episode, (completion,) in zip(active, completions, strict=True):
                self._took_turn(episode, completion)
            active = [e for e in active if not e.done]

    def _took_turn(self, episode: Episode, completion: Completion) -> None:
        """Record the turn, then let the environment answer it (or end the episode)."""
        text = self.tokenizer.decode(list(completion.tokens), skip_special_tokens=False)
        episode.add_turn(completion, text)
        if completion.finish_reason == "length":
            return episode.end(truncated=True, reason="turn_tokens")
        try:
            result = episode.env.step(parse_completion(text, thinking=episode.thinking))
        except Exception as exc:  # the environment itself broke (infrastructure), not the model
            episode.failed = True
            episode.info["env_error"] = repr(exc)[:500]
            return episode.end(reason="env_failure")
        self._apply(episode, result)

    def _apply(self, episode: Episode, result: StepResult) -> None:
        episode.info.update(result.info)
        if result.done:
            episode.reward = result.reward
            return episode.end(reason="env")
        if len(episode.turns) >= self.budget.max_turns:
            return episode.end(truncated=True, reason="max_turns")
        text = render_continuation(list(result.messages), enable_thinking=episode.thinking)
        episode.add_observation(self.tokenizer(text, add_special_tokens=False)["input_ids"])

"""The pairwise judge: comparisons, position-bias cancelling, verdict parsing, length penalty, batching, endpoint."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cascade_rl.engines.base import SamplingParams
from cascade_rl.rewards.judge import (
    JudgeEndpointError,
    PairwiseJudge,
    comparison_pairs,
    judge_messages,
    length_penalties,
    parse_verdict,
)
from cascade_rl.rewards.reward_fn import RewardContext, build_reward, reward_types, score_groups
from cascade_rl.types import Completion, Prompt, Trajectory, TrajectoryGroup

_SECTION = r"\[The Start of Response {0}\]\n(.*?)\n\[The End of Response {0}\]"

VerdictFn = Callable[[str, str], str]


def responses_in(text: str) -> tuple[str, str]:
    """The two answers a judge prompt shows (decoded ids or the endpoint's user message)."""
    a = re.search(_SECTION.format("A"), text, re.DOTALL)
    b = re.search(_SECTION.format("B"), text, re.DOTALL)
    assert a and b, text
    return a.group(1), b.group(1)


def bangs(a: str, b: str) -> str:
    """A scripted judge: a response's score is its number of '!'."""
    return json.dumps({"A": a.count("!"), "B": b.count("!")})


class ScriptedJudge:
    """A fake ``Generator``: decodes each judge prompt and answers ``verdict(answer_a, answer_b)``."""

    def __init__(self, tokenizer, verdict: VerdictFn = bangs) -> None:
        self.tokenizer, self.verdict = tokenizer, verdict
        self.calls: list[int] = []
        self.params: list[SamplingParams] = []
        self.seen: list[tuple[str, str]] = []

    def generate(self, prompts, params):
        self.calls.append(len(prompts))
        self.params.append(params)
        out = []
        for ids in prompts:
            pair = responses_in(self.tokenizer.decode(ids, skip_special_tokens=False))
            self.seen.append(pair)
            tokens = self.tokenizer(self.verdict(*pair) + "<|im_end|>", add_special_tokens=False)["input_ids"]
            out.append([Completion(tuple(tokens), (0.0,) * len(tokens), "stop")])
        return out


def make_group(
    texts: list[str], lengths: list[int] | None = None, thinking: bool = False, truncated: tuple[int, ...] = ()
) -> TrajectoryGroup:
    prompt = Prompt(({"role": "user", "content": "Say something enthusiastic."},), {}, "chat")
    trajectories = []
    for i, text in enumerate(texts):
        n = lengths[i] if lengths else 2
        cut = i in truncated
        trajectories.append(Trajectory(tuple(range(n)), (1,) * n, (0.0,) * n, ((0, n),), (text,), cut, "chat"))
    return TrajectoryGroup(prompt, tuple(trajectories), thinking=thinking)


def judge(tokenizer, verdict: VerdictFn = bangs, **kwargs) -> tuple[PairwiseJudge, ScriptedJudge]:
    gen = ScriptedJudge(tokenizer, verdict)
    return PairwiseJudge(model="scripted", generator=gen, tokenizer=tokenizer, **kwargs), gen


def scores(results) -> list[list[float]]:
    return [[round(r.score, 9) for r in rs] for rs in results]


# --------------------------------------------------------------------------------- (a) exact rewards


def test_circular_and_all_pairs_on_a_group_of_three(tokenizer):
    group = make_group(["a!!!<|im_end|>", "b!<|im_end|>", "c!!<|im_end|>"])  # scores 3, 1, 2
    # K = 3: circular pairs (0,1), (1,2), (2,0) are all the pairs, so both strategies agree.
    # r0 (3) beats r1 and r2 in both orders: 4/4 = 1; r1 (1) loses all 4: 0; r2 (2) beats r1 twice
    # and loses to r0 twice: 2/4 = 0.5.
    for strategy in ("circular", "all_pairs"):
        fn, gen = judge(tokenizer, strategy=strategy)
        results = fn([group])
        assert scores(results) == [[1.0, 0.0, 0.5]]
        assert results[0][2].info == {"judge_comparisons": 4, "judge_wins": 2, "judge_ties": 0, "judge_unparsed": 0}
        assert sum(gen.calls) == 6  # 3 pairs x 2 orders


def test_circular_and_all_pairs_differ_on_a_group_of_four(tokenizer):
    group = make_group(["w!!!!", "x!", "y!!!", "z!!"])  # scores 4, 1, 3, 2
    # circular pairs (0,1), (1,2), (2,3), (3,0): r0 beats r1 and r3 -> 4/4; r1 loses to r0, r2 -> 0;
    # r2 beats r1 and r3 -> 4/4; r3 loses to r2 and r0 -> 0.
    fn, gen = judge(tokenizer, strategy="circular")
    assert scores(fn([group])) == [[1.0, 0.0, 1.0, 0.0]]
    assert sum(gen.calls) == 8
    # all pairs: r0 beats all three -> 6/6; r1 loses all -> 0; r2 beats r1, r3, loses r0 -> 4/6;
    # r3 beats r1, loses r0, r2 -> 2/6.
    fn, gen = judge(tokenizer, strategy="all_pairs")
    assert scores(fn([group])) == [[1.0, 0.0, round(4 / 6, 9), round(2 / 6, 9)]]
    assert sum(gen.calls) == 12


def test_ties_score_half(tokenizer):
    # scores 2, 2, 1: r0 ties r1 twice (0.5 + 0.5) and beats r2 twice (1 + 1): 3/4 = 0.75, same for r1; r2: 0.
    results = judge(tokenizer)[0]([make_group(["p!!", "q!!", "r!"])])
    assert scores(results) == [[0.75, 0.75, 0.0]]
    assert results[0][0].info == {"judge_comparisons": 4, "judge_wins": 2, "judge_ties": 2, "judge_unparsed": 0}


def test_groups_of_one_and_two(tokenizer):
    fn, gen = judge(tokenizer)
    results = fn([make_group(["alone!"]), make_group(["s!", "t!!"])])
    # K = 1: 0.5 without a call; K = 2: one pair in both orders, r1 (2) beats r0 (1) twice.
    assert scores(results) == [[0.5], [0.0, 1.0]]
    assert results[0][0].info["judge_comparisons"] == 0 and results[1][0].info["judge_comparisons"] == 2
    assert sum(gen.calls) == 2
    fn, gen = judge(tokenizer)
    assert scores(fn([make_group(["only"])])) == [[0.5]] and gen.calls == []


def test_the_judge_sees_only_the_answers(tokenizer):
    # the think blocks are full of '!': the judge must never see them
    plain = make_group(["<think>great!!!!!!</think>ok!<|im_end|>", "<think>!</think>fine!!<|im_end|>"])
    thinking = make_group(["so many!!!!!!</think>yes!!<|im_end|>", "hmm</think>no!<|im_end|>"], thinking=True)
    fn, gen = judge(tokenizer)
    assert scores(fn([plain, thinking])) == [[0.0, 1.0], [1.0, 0.0]]
    assert {pair for pair in gen.seen} == {("ok!", "fine!!"), ("fine!!", "ok!"), ("yes!!", "no!"), ("no!", "yes!!")}


def test_the_judge_prompt_holds_the_conversation():
    conversation = (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]},
    )
    system, user = judge_messages(conversation, "Red.", "Blue.")
    assert system["role"] == "system" and '{"A": <1-10>, "B": <1-10>}' in system["content"]
    assert "helpfulness, correctness" in system["content"]
    assert user["content"].startswith(
        "[Conversation]\nSystem: Be brief.\n\nUser: Hi\n\nAssistant: Hello!\n\nUser: Name a colour.\n\n"
    )
    assert responses_in(user["content"]) == ("Red.", "Blue.")


# ------------------------------------------------------------------------------------ (b) position bias


@pytest.mark.parametrize("strategy", ["circular", "all_pairs"])
def test_a_judge_that_always_prefers_position_a_gives_everyone_half(tokenizer, strategy):
    # every pair is judged in both orders: each response wins once (as A) and loses once (as B) per pair
    fn, _ = judge(tokenizer, lambda a, b: '{"A": 9, "B": 1}', strategy=strategy)
    results = fn([make_group(["a!!!", "b", "c!"]), make_group(["d", "e!!!!", "f", "g!!"])])
    assert scores(results) == [[0.5] * 3, [0.5] * 4]
    assert all(r.info["judge_wins"] * 2 == r.info["judge_comparisons"] for rs in results for r in rs)


# ------------------------------------------------------------------------------------- (c) unparseable


def test_unparseable_verdicts_are_counted_ties(tokenizer):
    def verdict(a: str, b: str) -> str:  # rambles without a verdict whenever a '?' response is involved
        return "Hard to say, both have merit." if "?" in a + b else bangs(a, b)

    results = judge(tokenizer, verdict)[0]([make_group(["x!!!", "y!", "z??"])])
    # r0: beats r1 twice, 2 unparsed vs r2: (2 + 0.5 * 2) / 4 = 0.75
    # r1: loses to r0 twice, 2 unparsed vs r2: (0 + 0.5 * 2) / 4 = 0.25
    # r2: all 4 comparisons unparsed: 0.5
    assert scores(results) == [[0.75, 0.25, 0.5]]
    infos = [r.info for r in results[0]]
    assert [i["judge_unparsed"] for i in infos] == [2, 2, 4]
    assert [i["judge_wins"] for i in infos] == [2, 0, 0] and [i["judge_ties"] for i in infos] == [0, 0, 0]


# --------------------------------------------------------------------------------------- (d) verdicts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"A": 7, "B": 4}', (7.0, 4.0)),
        ('After comparing, A is better. {"A": 8, "B": 5} That is my verdict.', (8.0, 5.0)),
        ('```json\n{"A": 6, "B": 9}\n```', (6.0, 9.0)),
        ('<think>maybe {"A": 1, "B": 10}</think>\n{"A": 9, "B": 2}', (9.0, 2.0)),
        ('A leans ahead {"A": 1, "B": 2}</think>{"A": 5, "B": 4}', (5.0, 4.0)),  # the prompt opened <think>
        ('{"a": 3, "b": 3}', (3.0, 3.0)),
        ('{"Response_A": 5, "response_b": 7}', (5.0, 7.0)),
        ('{"score_a": "8", "Score_B": " 6.5 "}', (8.0, 6.5)),
        ('{"A": "7/10", "B": 3.5}', (7.0, 3.5)),
        ('First guess {"A": 2, "B": 9}.\nOn reflection: {"A": 7, "B": 3}', (7.0, 3.0)),  # the last one wins
        ('{"verdict": {"A": 4, "B": 6}, "reason": "B is clearer"}', (4.0, 6.0)),
        ('{"A": 7, "B": 4}<|im_end|>', (7.0, 4.0)),
        ("A: 7\nB: 4", (7.0, 4.0)),
        ("A: 7.\nB: 4.", (7.0, 4.0)),  # a full stop after a score is punctuation, not a decimal point
        ("Response A: 7. Response B: 4.", (7.0, 4.0)),
        ("A = 7, B = 4.", (7.0, 4.0)),
        ('{"A": 1e400, "B": 2}', None),  # an infinite score is no score, and "1" is not read out of "1e400"
        ("**Response A**: 6/10\n**Response B**: 8/10", (6.0, 8.0)),
        ("{'A': 7, 'B': 4}", (7.0, 4.0)),  # a Python-style dict, read by the line fallback
        ("Both responses are fine.", None),
        ("", None),
        ('{"A": "good", "B": "bad"}', None),
        ('{"A": 7}', None),
        ('{"A": true, "B": false}', None),
        ('<think>I would say {"A": 9, "B": 1} but', None),  # never closed: reasoning, not a verdict
    ],
)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


# ----------------------------------------------------------------------------------- (e) length penalty


def test_length_penalty(tokenizer):
    # lengths 10, 20, 30: mean 20; coef 0.5 penalises only r2: 0.5 * (30 - 20) / 20 = 0.25
    assert length_penalties([10, 20, 30], 0.5) == [0.0, 0.0, 0.25]
    # mean 1/3 < 1: divided by 1, not the mean: 2 * (1 - 1/3) / 1 = 4/3
    assert length_penalties([0, 0, 1], 2.0) == [0.0, 0.0, pytest.approx(4 / 3)]
    assert length_penalties([5, 50], 0.0) == [0.0, 0.0]

    tie = judge(tokenizer, lambda a, b: '{"A": 5, "B": 5}', length_penalty=0.5)[0]
    assert scores(tie([make_group(["a", "b", "c"], lengths=[10, 20, 30])])) == [[0.5, 0.5, 0.25]]
    # scores 3, 1, 2 -> base 1, 0, 0.5 (first test); lengths 30, 10, 20, mean 20, coef 0.3:
    # r0: 1 - 0.3 * 10 / 20 = 0.85; r1, r2: no excess length -> 0, 0.5
    fn = judge(tokenizer, length_penalty=0.3)[0]
    assert scores(fn([make_group(["a!!!", "b!", "c!!"], lengths=[30, 10, 20])])) == [[0.85, 0.0, 0.5]]
    # clipped at 0: lengths 10, 10, 100 (mean 40), coef 2: r2 = 0.5 - 2 * 60 / 40 = -2.5 -> 0
    steep = judge(tokenizer, lambda a, b: '{"A": 5, "B": 5}', length_penalty=2.0)[0]
    assert scores(steep([make_group(["a", "b", "c"], lengths=[10, 10, 100])])) == [[0.5, 0.5, 0.0]]


# ------------------------------------------------------------------------------------------ (f) batching


def test_comparisons_are_batched_across_groups(tokenizer):
    groups = [make_group(["a!", "b!!", "c!!!", "d!!!!"]), make_group(["e!!!!", "f!!!", "g!!", "h!"])]
    # each group: 4 circular pairs x 2 orders = 8 comparisons; 16 in all -> 2 calls of 8 prompts
    fn, gen = judge(tokenizer, batch_size=8, max_new_tokens=17)
    results = fn(groups)
    assert gen.calls == [8, 8]
    assert gen.params[0] == SamplingParams(
        n=1, temperature=0.0, max_new_tokens=17, stop_token_ids=(tokenizer.eos_token_id,)
    )
    # circular on scores 1, 2, 3, 4: r0 loses to r1 and r3 (0); r1 beats r0, loses r2 (0.5); r2 likewise;
    # r3 beats r2 and r0 (1). The second group is the first reversed.
    assert scores(results) == [[0.0, 0.5, 0.5, 1.0], [1.0, 0.5, 0.5, 0.0]]
    fn, gen = judge(tokenizer, batch_size=5)
    fn(groups)
    assert gen.calls == [5, 5, 5, 1]


def test_identical_judge_prompts_are_judged_once(tokenizer):
    fn, gen = judge(tokenizer)
    results = fn([make_group(["same!"] * 3)])  # 6 comparisons, one distinct prompt
    assert gen.calls == [1]
    assert scores(results) == [[0.5] * 3] and results[0][0].info["judge_ties"] == 4


def test_truncated_responses_score_zero_and_are_compared_with_nothing(tokenizer):
    fn, gen = judge(tokenizer)
    (results,) = fn([make_group(["a!!!", "b!", "c!!!!!"], truncated=(2,))])
    # a and b alone: one pair in both orders, a has more bangs; c (the most bangs) was cut off
    assert [r.score for r in results] == [1.0, 0.0, 0.0] and results[2].info == {"reason": "truncated"}
    assert gen.calls == [2] and all("c!!!!!" not in a + b for a, b in gen.seen)


def test_a_prefilled_answer_is_continued_and_read_with_its_start(tokenizer):
    class Prefilled(ScriptedJudge):
        def generate(self, prompts, params):
            self.texts = [self.tokenizer.decode(ids, skip_special_tokens=False) for ids in prompts]
            return super().generate(prompts, params)

    # the judge writes only the rest of the object: '{"A": ' is already in its answer
    gen = Prefilled(tokenizer, lambda a, b: f'{a.count("!")}, "B": {b.count("!")}}}')
    fn = PairwiseJudge(model="scripted", generator=gen, tokenizer=tokenizer, prefill='{"A": ')
    assert scores(fn([make_group(["a!!", "b!"])])) == [[1.0, 0.0]]
    assert all(text.endswith('<|im_start|>assistant\n<think></think>{"A": ') for text in gen.texts)
    with pytest.raises(ValueError, match="no generator or prefill"):
        PairwiseJudge(model="http://127.0.0.1:1#m", prefill="{")


def test_mostly_unparseable_verdicts_are_warned_about(tokenizer, caplog):
    fn, _ = judge(tokenizer, lambda a, b: "Both are lovely.")
    with caplog.at_level("WARNING", logger="cascade_rl.rewards.judge"):
        (results,) = fn([make_group(["a!", "b!!"])])
    assert [r.score for r in results] == [0.5, 0.5] and results[0].info["judge_unparsed"] == 2
    assert "2 of 2 verdicts unparseable" in caplog.text


# ------------------------------------------------------------------------------------------ (g) endpoint


class _ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ChatHandler)
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        self.rate_limited = 0  # requests still to be answered 429 (with Retry-After: 0)
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()


class _ChatHandler(BaseHTTPRequestHandler):
    server: _ChatServer

    def log_message(self, format, *args) -> None:  # keep the test output quiet
        pass

    def _reply(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply(200, {"object": "list", "data": [{"id": "served-judge", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions" or body["model"] == "missing":
            self._reply(404, {"error": {"message": f"The model `{body['model']}` does not exist."}})
            return
        server = self.server
        with server.lock:
            server.auth.append(self.headers.get("Authorization"))
            limited = server.rate_limited > 0
            server.rate_limited -= limited
        if limited:
            self.send_response(429)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with server.lock:
            server.bodies.append(body)
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        time.sleep(0.02)  # long enough for concurrent requests to overlap
        with server.lock:
            server.in_flight -= 1
        verdict = bangs(*responses_in(body["messages"][1]["content"]))
        self._reply(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": verdict}}]})


@pytest.fixture
def chat_server() -> Iterator[_ChatServer]:
    server = _ChatServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_an_endpoint_judge(chat_server):
    url = f"http://127.0.0.1:{chat_server.server_address[1]}"
    fn = PairwiseJudge(model=f"{url}#judge-x", max_new_tokens=12, concurrency=2)
    results = score_groups(fn, [make_group(["a!!!", "b!", "c!!"]), make_group(["d!", "e!!", "f!!!", "g!!!!"])])
    # the first group as in the first test; the second is the batching test's first group
    assert scores(results) == [[1.0, 0.0, 0.5], [0.0, 0.5, 0.5, 1.0]]
    assert len(chat_server.bodies) == 6 + 8 and chat_server.max_in_flight <= 2
    body = chat_server.bodies[0]
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("judge-x", 0, 12)
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    fn.close()


def test_an_endpoint_judge_finds_the_served_model(chat_server):
    url = f"http://127.0.0.1:{chat_server.server_address[1]}/v1/"  # an OpenAI base_url works as well
    assert scores(PairwiseJudge(model=url)([make_group(["s!", "t!!"])])) == [[0.0, 1.0]]
    assert {b["model"] for b in chat_server.bodies} == {"served-judge"}
    named = PairwiseJudge(model=url, endpoint_model="judge-y")
    named([make_group(["s!", "t!!"])])
    assert chat_server.bodies[-1]["model"] == "judge-y"


def test_endpoint_errors_name_the_url(chat_server):
    port = chat_server.server_address[1]
    with pytest.raises(JudgeEndpointError, match=rf"127\.0\.0\.1:{port}/v1/chat/completions answered HTTP 404"):
        PairwiseJudge(model=f"http://127.0.0.1:{port}#missing")([make_group(["s!", "t!!"])])
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    fn = PairwiseJudge(model=f"http://127.0.0.1:{closed}#m", timeout_s=1.0, retries=0)
    with pytest.raises(JudgeEndpointError, match=rf"127\.0\.0\.1:{closed}/v1/chat/completions is unreachable"):
        fn([make_group(["s!", "t!!"])])
    with pytest.raises(ValueError, match="named twice"):
        PairwiseJudge(model="http://127.0.0.1:1#a", endpoint_model="b")


# ------------------------------------------------------------------------------------------ (h) registry


class FakeBackend:
    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.loaded: list[tuple[str, int]] = []
        self.gen = ScriptedJudge(tokenizer)

    def eval_generator(self, model, batch_size):
        self.loaded.append((model, batch_size))
        return self.gen

    def tokenizer(self, model):
        return self.tok


def test_the_judge_is_built_through_the_registry(tokenizer):
    assert "judge" in reward_types()
    backend = FakeBackend(tokenizer)
    fn = build_reward("judge", RewardContext(backend=backend), model="m", strategy="all_pairs")
    assert isinstance(fn, PairwiseJudge) and backend.loaded == [("m", 32)]
    # all pairs on scores 4, 1, 3, 2 (second test): 6/6, 0, 4/6, 2/6
    assert scores(fn([make_group(["w!!!!", "x!", "y!!!", "z!!"])])) == [[1.0, 0.0, round(4 / 6, 9), round(2 / 6, 9)]]
    fn.close()
    assert fn._generator is None
    with pytest.raises(RuntimeError, match="closed"):
        fn([make_group(["a", "b"])])


def test_bad_arguments_are_refused(tokenizer):
    with pytest.raises(ValueError, match="needs a backend"):
        PairwiseJudge(model="m")
    with pytest.raises(ValueError, match="strategy"):
        PairwiseJudge(RewardContext(backend=FakeBackend(tokenizer)), model="m", strategy="round_robin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size >= 1"):
        PairwiseJudge(RewardContext(backend=FakeBackend(tokenizer)), model="m", batch_size=0)


def test_comparison_pairs():
    assert comparison_pairs(1, "circular") == []
    assert comparison_pairs(2, "circular") == [(0, 1), (1, 0)]
    assert comparison_pairs(3, "circular") == [(0, 1), (1, 0), (1, 2), (2, 1), (2, 0), (0, 2)]
    assert len(comparison_pairs(5, "circular")) == 10 and len(comparison_pairs(5, "all_pairs")) == 20


def test_rate_limits_are_retried_and_the_key_comes_from_the_environment(chat_server, monkeypatch):
    url = f"http://127.0.0.1:{chat_server.server_address[1]}#judge-x"
    chat_server.rate_limited = 2
    monkeypatch.setenv("JUDGE_TEST_KEY", "s3cret")
    fn = PairwiseJudge(model=url, retries=2, concurrency=1, api_key_env="JUDGE_TEST_KEY")
    assert scores(fn([make_group(["s!", "t!!"])])) == [[0.0, 1.0]]
    assert len(chat_server.auth) == 2 + 2 and set(chat_server.auth) == {"Bearer s3cret"}  # 2 answered 429 first
    chat_server.rate_limited = 5
    with pytest.raises(JudgeEndpointError, match="answered HTTP 429"):
        PairwiseJudge(model=url, retries=1, concurrency=1)([make_group(["s!", "t!!"])])
    monkeypatch.delenv("JUDGE_TEST_KEY")
    with pytest.raises(ValueError, match="JUDGE_TEST_KEY"):
        PairwiseJudge(model=url, api_key_env="JUDGE_TEST_KEY")

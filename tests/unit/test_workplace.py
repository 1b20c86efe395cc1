"""The workplace domain: tools on an in-memory state, a state-and-answer reward, reference episodes, splits."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import random
import re

import pytest

from cascade_rl.chat import ParsedCompletion, parse_completion, render_with_spans, tokenize_conversation
from cascade_rl.chat.parse import parse_value
from cascade_rl.chat.tokenize import GIVEN_OPENERS
from cascade_rl.data.tasks import Problem, make_split, split_of
from cascade_rl.data.tasks.workplace import WorkplaceTask
from cascade_rl.envs import ENVS, make_env
from cascade_rl.envs.base import StepResult
from cascade_rl.envs.workplace import TOOLS, Workplace, WorkplaceEnv, values_of
from cascade_rl.rewards import SpecError
from cascade_rl.types import ToolCall

DIFFICULTIES = (0, 1, 2)
PARTS = ("sft", "rl", "validation", "test")
# Split sizes are modest: validation is 5% of the space, so each of its problems costs ~20 draws.
SIZES = {"sft": 40, "rl": 24, "validation": 10, "test": 24}


@functools.cache
def problems(split: str, difficulty: int, n: int | None = None) -> tuple[Problem, ...]:
    return tuple(make_split("workplace", split, n or SIZES[split], seed=0, difficulty=difficulty))  # type: ignore[arg-type]


def every_problem(difficulty: int) -> list[Problem]:
    return [p for part in PARTS for p in problems(part, difficulty)]


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9@]+", text.lower()))


def turn(*calls: tuple[str, dict]) -> ParsedCompletion:
    return ParsedCompletion(content="", tool_calls=tuple(ToolCall(n, a) for n, a in calls))


def answer(text: str) -> ParsedCompletion:
    return ParsedCompletion(content=text)


def trace_calls(problem: Problem) -> list[list[tuple[str, dict]]]:
    """The trace's tool-call turns, as (name, arguments) lists."""
    return [
        [(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"]]
        for m in problem.trace
        if m["role"] == "assistant" and m.get("tool_calls")
    ]


def replay_rendered(problem: Problem, thinking: bool) -> tuple[list[str], StepResult]:
    """Each rendered assistant turn, parsed as the model's completion, steps a fresh env."""
    record = problem.sft_record(thinking)
    text, spans = render_with_spans(record["messages"], record["tools"], enable_thinking=thinking)
    env = make_env("workplace", problem.to_prompt())
    responses, result = [], None
    for span in spans:
        body = text[span.start : span.end]
        opener = next(o for o in GIVEN_OPENERS if body.startswith(o))
        parsed = parse_completion(body[len(opener) :], thinking=thinking)
        assert not parsed.errors, parsed.errors
        assert result is None or not result.done
        result = env.step(parsed)
        responses += [m["content"] for m in result.messages]
    assert result is not None and result.done
    return responses, result


# -- reference episodes ----------------------------------------------------------------------------


class _AnyText:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other.strip())


ANY_TEXT = _AnyText()


@pytest.mark.parametrize("thinking", [True, False])
@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_the_trace_replays_exactly_and_scores_one(difficulty, thinking):
    for problem in every_problem(difficulty):
        responses, result = replay_rendered(problem, thinking)
        assert responses == [m["content"] for m in problem.trace if m["role"] == "tool"], problem.user_text
        assert result.reward == 1.0, (problem.user_text, result.info)
        assert result.info["reason"] == "ok" and result.info["tool_errors"] == 0
        assert result.info["tool_calls"] == sum(map(len, trace_calls(problem)))
        assert problem.trace[-1] == {"role": "assistant", "content": problem.answer, "reasoning": ANY_TEXT}


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_problems_are_well_formed(difficulty):
    for problem in every_problem(difficulty):
        assert problem.env == "workplace" and problem.to_prompt().env == "workplace"
        assert problem.spec["type"] == "workplace"
        WorkplaceEnv.check_spec(problem.spec)
        assert json.loads(json.dumps(problem.spec)) == problem.spec
        assert problem.uid.startswith(f"workplace-{difficulty}-")
        assert problem.reasoning == problem.trace[0]["reasoning"]
        offered = {t["function"]["name"] for t in problem.tools}
        used = {name for calls in trace_calls(problem) for name, _ in calls}
        assert used < offered <= set(TOOLS)  # at least one distractor tool
        # every assistant turn has reasoning for thinking mode; tool turns have no text content
        assert all(m.get("reasoning") for m in problem.trace if m["role"] == "assistant")


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_the_needed_values_come_only_from_lookups(difficulty):
    """What the final action or answer needs (an address, a value, a ticket id) is not in the request."""
    for problem in every_problem(difficulty):
        goal, said = problem.spec["goal"], words(problem.user_text)
        needed = [e["to"] for e in goal.get("emails", [])] + [e["value"] for e in goal.get("emails", [])]
        needed += list(goal.get("tickets", {})) + [c.get("owner") for c in goal.get("tickets", {}).values()]
        needed += [e["room"] for e in goal.get("events", [])]
        needed += [goal["answer"]["value"]] if "answer" in goal else []
        assert not said & {v for v in needed if v}, (problem.user_text, goal)
        # and the goal is not met by doing nothing
        env = WorkplaceEnv(problem.to_prompt())
        assert env.step(answer("")).reward == 0.0


def test_same_request_over_different_worlds():
    """A request recurs over fresh worlds: the uid tells the problems apart, and the goals differ."""
    task = WorkplaceTask()
    by_text: dict[str, list[Problem]] = {}
    for i in range(150):
        p = task.generate(random.Random(f"worlds/{i}"), 0)
        by_text.setdefault(p.user_text, []).append(p)
    repeats = [ps for ps in by_text.values() if len(ps) > 1]
    assert repeats  # the smallest templates have a few dozen texts
    assert all(len({p.uid for p in ps}) == len(ps) for ps in repeats)
    assert any(len({json.dumps(p.spec["goal"], sort_keys=True) for p in ps}) > 1 for ps in repeats)


# -- the reward ------------------------------------------------------------------------------------


def email_problems(difficulty: int = 0) -> list[Problem]:
    """Problems whose whole goal is one email."""
    return [p for p in every_problem(difficulty) if set(p.spec["goal"]) == {"emails"}]


def other_value(problem: Problem, kind: str, value: str) -> str:
    return sorted(values_of(Workplace.from_dict(problem.spec["state"]), kind) - {value})[0]


def finish_after(problem: Problem, *turns: ParsedCompletion, final: str = "Sent.") -> StepResult:
    env = WorkplaceEnv(problem.to_prompt())
    for t in turns:
        assert not env.step(t).done
    return env.step(answer(final))


def test_wrong_emails_score_zero_with_the_reason():
    cases = email_problems()
    assert len(cases) >= 20
    for problem in cases:
        (goal,) = problem.spec["goal"]["emails"]
        to, value, kind = goal["to"], goal["value"], goal["kind"]
        wrong_to = other_value(problem, "email", to)
        wrong_value = other_value(problem, kind, value)
        assert finish_after(problem, turn(("send_email", {"to": to, "body": value}))).reward == 1.0

        result = finish_after(problem, turn(("send_email", {"to": wrong_to, "body": value})))
        assert (result.reward, result.info["reason"]) == (0.0, "missing_email")
        assert f"an unrequested email was sent to {wrong_to}" in result.info["failures"]

        result = finish_after(problem, turn(("send_email", {"to": to, "body": wrong_value})))
        assert (result.reward, result.info["reason"]) == (0.0, "wrong_email"), result.info
        assert result.info["failures"] == [f"the email to {to} does not name {value!r}"]

        hedge = " ".join(sorted(values_of(Workplace.from_dict(problem.spec["state"]), kind)))
        result = finish_after(problem, turn(("send_email", {"to": to, "body": hedge})))
        assert (result.reward, result.info["reason"]) == (0.0, "wrong_email")
        assert "also names" in result.info["failures"][0]

        twice = turn(("send_email", {"to": to, "body": value}), ("send_email", {"to": to, "body": value}))
        assert finish_after(problem, twice).info["reason"] == "extra_email"
        assert finish_after(problem, turn(("send_email", {"to": to, "body": f"it is {value}"}))).reward == 1.0


def test_wrong_answers_and_wrong_tickets_score_zero():
    checked = 0
    for problem in every_problem(0):
        goal = problem.spec["goal"]
        if "answer" in goal and "tickets" not in goal:
            value, kind = goal["answer"]["value"], goal["answer"]["kind"]
            wrong = other_value(problem, kind, value)
            assert finish_after(problem, final=f"It is {value}.").reward == 1.0
            result = finish_after(problem, final=f"It is {wrong}.")
            assert (result.reward, result.info["reason"]) == (0.0, "wrong_answer")
            assert finish_after(problem, final=f"It is {value} or {wrong}.").info["reason"] == "wrong_answer"
            checked += 1
        if "tickets" in goal:
            ((tid, change),) = goal["tickets"].items()
            owner = goal["answer"]["value"]
            other = next(t for t in problem.spec["state"]["tickets"] if t != tid)
            right = turn(("update_ticket", {"id": tid, **change}))
            assert finish_after(problem, right, final=f"{owner} owns it.").reward == 1.0
            result = finish_after(problem, turn(("update_ticket", {"id": other, **change})), final=f"{owner} owns it.")
            assert (result.reward, result.info["reason"]) == (0.0, "ticket_mismatch")
            result = finish_after(problem, right, final="Done.")
            assert (result.reward, result.info["reason"]) == (0.0, "wrong_answer")
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_saying_it_was_done_is_not_doing_it(difficulty):
    """Lookups made, the action only claimed: the final answer repeats every value and still scores 0."""
    for problem in every_problem(difficulty):
        goal = problem.spec["goal"]
        if not (goal.get("emails") or goal.get("tickets") or goal.get("events")):
            continue
        env = WorkplaceEnv(problem.to_prompt())
        for calls in trace_calls(problem):
            if any(name in ("send_email", "update_ticket", "create_event") for name, _ in calls):
                break
            env.step(turn(*calls))
        claim = f"I did it: {json.dumps(goal)} {problem.answer}"
        result = env.step(answer(claim))
        assert result.reward == 0.0
        assert result.info["reason"] in ("missing_email", "ticket_mismatch", "event_mismatch")


def test_tool_errors_come_back_as_responses_and_the_episode_goes_on():
    problem = next(p for p in email_problems() if p.user_text.startswith("Email") and "the" in p.user_text)
    offered = {t["function"]["name"] for t in problem.tools}
    hidden = next(n for n in TOOLS if n not in offered)  # implemented, but not offered in this episode
    env = WorkplaceEnv(problem.to_prompt())
    bad = turn(
        ("fly_kite", {}),
        (hidden, {}),
        ("find_contact", {"name": "zed"}),
        ("find_contact", {"name": 7}),
        ("send_email", {"to": problem.spec["goal"]["emails"][0]["to"]}),
        ("send_email", {"to": "zed@mail", "body": "hi"}),
    )
    result = env.step(bad)
    assert not result.done
    texts = [m["content"] for m in result.messages]
    assert all(t.startswith("error: ") for t in texts), texts
    assert "unknown tool 'fly_kite'" in texts[0] and f"unknown tool {hidden!r}" in texts[1]
    assert "no contact named 'zed'; the contacts are: " in texts[2]
    assert "bad arguments for find_contact" in texts[3]
    assert "'body' is a required property" in texts[4]
    assert "is not a known address" in texts[5]
    assert result.info == {"tool_calls": 6, "tool_errors": 6}
    assert env.state()["sent"] == []  # a failed call changes nothing
    for calls in trace_calls(problem):
        env.step(turn(*calls))
    final = env.step(answer(problem.answer))
    assert final.reward == 1.0
    assert (final.info["tool_calls"], final.info["tool_errors"]) == (6 + sum(map(len, trace_calls(problem))), 6)


def test_tools_read_and_change_the_state():
    state = {
        "contacts": {"ann": {"email": "lamp@mail", "team": "red"}, "bob": {"email": "cup@mail", "team": "blue"}},
        "events": [{"title": "demo", "day": "monday", "time": "9am", "room": "oslo", "host": "ann"}],
        "tickets": {"t3": {"topic": "wifi", "status": "open", "owner": "bob"}},
    }
    world = Workplace.from_dict(state)
    assert world.find_contact(" Ann") == {"email": "lamp@mail", "team": "red"}
    assert world.team_members("blue") == ["bob"]
    assert world.list_events("monday") == [{"title": "demo", "time": "9am", "room": "oslo"}]
    assert world.find_ticket("wifi") == {"id": "t3", "status": "open", "owner": "bob"}
    assert world.update_ticket("t3", owner="ann") == {"topic": "wifi", "status": "open", "owner": "ann"}
    assert world.list_tickets("ann") == {"t3": "open"} and world.list_tickets("bob") == {}
    assert world.create_event("sync", "monday", "10am", "oslo") == "booked sync"
    with pytest.raises(Exception, match="room oslo is taken on monday at 9am by demo"):
        world.create_event("gym", "monday", "9am", "oslo")
    with pytest.raises(Exception, match="give a new status, a new owner or both"):
        world.update_ticket("t3")
    assert world.send_email("lamp@mail", "hi") == "sent to lamp@mail"
    assert state["tickets"]["t3"]["owner"] == "bob" and "sent" not in state  # the source dict is untouched


def test_episodes_are_independent():
    problem = email_problems()[0]
    before = copy.deepcopy(problem.spec)
    prompt = dataclasses.replace(problem.to_prompt(), tools=None)  # every tool offered
    first, second = WorkplaceEnv(prompt), WorkplaceEnv(prompt)
    ticket, was = next(iter(before["state"]["tickets"].items()))
    status = next(s for s in ("open", "blocked") if s != was["status"])
    goal = before["goal"]["emails"][0]
    first.step(turn(("send_email", {"to": goal["to"], "body": goal["value"]})))
    changed = first.step(turn(("update_ticket", {"id": ticket, "status": status})))
    assert json.loads(changed.messages[0]["content"])["status"] == status
    assert first.state() != before["state"]
    assert second.state() == before["state"] and problem.spec == before
    assert first.step(answer("Sent.")).info["reason"] == "ticket_mismatch"
    assert second.step(answer("Sent.")).info["reason"] == "missing_email"
    # a replay on a third episode is untouched by both
    _, result = replay_rendered(problem, thinking=False)
    assert result.reward == 1.0


def test_the_environment_is_registered_and_checks_its_spec():
    assert ENVS["workplace"] is WorkplaceEnv and WorkplaceEnv.rewards_itself is True
    problem = email_problems()[0]
    assert isinstance(make_env("workplace", problem.to_prompt()), WorkplaceEnv)


def _spec_with(problem: Problem, edit) -> dict:
    spec = copy.deepcopy(problem.spec)
    edit(spec)
    return spec


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda s: s.update(type="tool_call"), "'type'"),
        (lambda s: s["state"].pop("contacts"), "'state.contacts'"),
        (lambda s: s["state"]["events"][0].update(room=3), "'state.events.0.room'"),
        (lambda s: s["state"]["events"][0].pop("host"), "'state.events.0'"),
        (lambda s: s.update(goal={}), "'goal'"),
        (lambda s: s["goal"]["emails"][0].update(kind="colour"), "'goal.emails.0.kind'"),
        (lambda s: s["goal"]["emails"][0].update(value="two words"), "'goal.emails.0.value'"),
        (lambda s: s["goal"].update(tickets={"t99": {"status": "closed"}}), "'goal.tickets.t99'"),
        (lambda s: s["goal"].update(answer={"value": "x", "kind": "mood"}), "'goal.answer.kind'"),
    ],
)
def test_malformed_specs_name_the_field(edit, field):
    problem = email_problems()[0]
    spec = _spec_with(problem, edit)
    with pytest.raises(SpecError, match=re.escape(field)):
        WorkplaceEnv.check_spec(spec)
    with pytest.raises(SpecError):
        WorkplaceEnv(dataclasses.replace(problem.to_prompt(), spec=spec))


# -- SFT records -----------------------------------------------------------------------------------


@pytest.mark.parametrize("thinking", [True, False])
@pytest.mark.parametrize("difficulty", [0, 2])
def test_sft_supervises_every_assistant_turn_and_no_tool_response(tokenizer, difficulty, thinking):
    for problem in problems("sft", difficulty)[:12]:
        record = problem.sft_record(thinking)
        messages, tools = record["messages"], record["tools"]
        assert messages[: len(problem.messages)] == list(problem.messages)
        assert all("reasoning" not in m for m in messages)
        assert all(("reasoning_content" in m) == (thinking and m["role"] == "assistant") for m in messages)
        ids, mask = tokenize_conversation(tokenizer, messages, tools, enable_thinking=thinking)
        text, spans = render_with_spans(messages, tools, enable_thinking=thinking)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        assert encoded["input_ids"] == ids
        # the supervised runs of tokens are the assistant turns, one run each, exactly what the model writes
        runs, current = [], []
        for token, m in zip(ids, mask, strict=True):
            if m:
                current.append(token)
            elif current:
                runs, current = [*runs, current], []
        runs += [current] if current else []
        written = []
        for span in spans:
            body = text[span.start : span.end]
            written.append(body[len(next(o for o in GIVEN_OPENERS if body.startswith(o))) :])
        assert [tokenizer.decode(r) for r in runs] == written
        assert len(spans) == sum(m["role"] == "assistant" for m in problem.trace)
        # no token of a tool response is supervised
        pos = 0
        for content in (m["content"] for m in problem.trace if m["role"] == "tool"):
            block = f"<tool_response>\n{content}\n</tool_response>"
            start = text.index(block, pos)
            pos = start + len(block)
            inside = [m for (s, _), m in zip(encoded["offset_mapping"], mask, strict=True) if start <= s < pos]
            assert inside and not any(inside)
        supervised = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
        assert "<tool_response>" not in supervised


# -- splits and size -------------------------------------------------------------------------------


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_splits_are_disjoint(difficulty):
    texts = {part: {p.user_text for p in problems(part, difficulty)} for part in PARTS}
    for i, a in enumerate(PARTS):
        assert all(split_of("workplace", t) == a for t in texts[a])
        assert len(texts[a]) == SIZES[a]  # no repeats while the space lasts
        for b in PARTS[i + 1 :]:
            assert not texts[a] & texts[b], (a, b)
    assert problems("test", difficulty) == tuple(make_split("workplace", "test", 24, seed=0, difficulty=difficulty))


def test_difficulty_zero_stays_small():
    drawn = problems("sft", 0, 120)
    lengths = [len(p.user_text) for p in drawn]
    assert max(lengths) < 80 and sum(lengths) / len(lengths) < 50
    for problem in drawn:
        turns = trace_calls(problem)
        assert 2 <= len(turns) <= 3 and all(len(t) == 1 for t in turns)  # one call per turn
        state = problem.spec["state"]
        assert 3 <= len(state["contacts"]) <= 5 and 2 <= len(state["events"]) <= 4 and 2 <= len(state["tickets"]) <= 4
        assert len(problem.tools) == len({n for t in turns for n, _ in t}) + 1
        for _, arguments in (c for t in turns for c in t):
            for value in arguments.values():  # one lowercase word that survives the XML round trip
                assert re.fullmatch(r"[a-z0-9@]+", value) and parse_value(value) == value
        assert len(problem.answer) <= 20


@pytest.mark.parametrize("difficulty", [1, 2])
def test_harder_levels_need_more_calls_and_bigger_worlds(difficulty):
    drawn = problems("sft", difficulty)
    for problem in drawn:
        assert 3 <= sum(map(len, trace_calls(problem))) <= 4
        assert len(problem.spec["state"]["contacts"]) >= 5
    mean = sum(len(p.user_text) for p in drawn) / len(drawn)
    assert mean > sum(len(p.user_text) for p in problems("sft", 0)) / len(problems("sft", 0))
    if difficulty == 2:
        assert all(len(p.tools) == len(TOOLS) for p in drawn)
        assert any(len(t) > 1 for p in drawn for t in trace_calls(p))  # independent calls share a turn

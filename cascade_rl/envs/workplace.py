"""``workplace``: a small in-memory workplace (contacts, calendar, tickets, outbox) worked through tools.

The state lives in the prompt's spec, ``{"type": "workplace", "state": ..., "goal": ...}``; every
episode builds its own ``Workplace`` from it, so episodes never see each other's changes. The tools
read and change that copy; a turn without tool calls ends the episode and ``finish`` judges it.

State (JSON)::

    {"contacts": {"ann": {"email": "lamp@mail", "team": "red"}, ...},
     "events": [{"title": "demo", "day": "monday", "time": "9am", "room": "oslo", "host": "ann"}, ...],
     "tickets": {"t7": {"topic": "wifi", "status": "open", "owner": "bob"}, ...},
     "sent": []}                                    # optional: emails already in the outbox

Goal (JSON; every part optional, at least one given)::

    {"emails": [{"to": "lamp@mail", "value": "oslo", "kind": "room"}],   # one email each, naming value
     "tickets": {"t7": {"status": "closed"}},                             # the changes to make
     "events": [{"title": "sync", "day": "friday", "time": "2pm", "room": "oslo"}],   # events to book
     "answer": {"value": "bob", "kind": "name"}}                          # what the final answer names

Reward rule (``judge``): 1.0 when the final state is exactly the initial state with the goal's
changes made (each goal email sent once to its address, its body naming the value; no other email;
the goal's ticket changes and no other; the goal's events booked and no other) and, when the goal
asks for an answer, the final answer names the value; 0.0 otherwise. A text "names" a value when the
value is one of its words and no other value of the same kind in the workplace is (listing every room
is not an answer). Only the state and the final answer are judged, never the call text: an answer
that says it sent the email without sending it scores 0. There is no partial credit: a lookup that
is never acted on is worth nothing to the user, and crediting lookups would reward calls for their
own sake; ``info`` says which part failed instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cascade_rl.chat import ParsedCompletion
from cascade_rl.envs.base import StepResult, register_env
from cascade_rl.envs.tools import Tool, ToolEnv, ToolError, tool_schema
from cascade_rl.rewards import SpecError
from cascade_rl.types import Prompt

STATUSES = ("open", "closed", "blocked", "pending")
# The kinds of value a goal email or answer must name; the values of a kind are gathered from the state.
KINDS = ("name", "email", "team", "title", "day", "time", "room", "id", "topic", "status")
ME = "me"  # the host of events booked by the model
WORD = re.compile(r"[a-z0-9@]+")  # a value is one such word, so "naming it" is a word test


def _s(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


TOOLS: dict[str, dict[str, Any]] = {
    t["function"]["name"]: t
    for t in (
        tool_schema("find_contact", "Look up a contact's email and team.", {"name": _s("Contact name")}, ["name"]),
        tool_schema("team_members", "List the people on a team.", {"team": _s("Team name")}, ["team"]),
        tool_schema("find_event", "Look up an event's day, time, room and host.", {"title": _s("Event title")},
                    ["title"]),
        tool_schema("list_events", "List the events on a day.", {"day": _s("Weekday")}, ["day"]),
        tool_schema("create_event", "Book an event in a room.",
                    {"title": _s("Event title"), "day": _s("Weekday"), "time": _s("Start time"),
                     "room": _s("Room")}, ["title", "day", "time", "room"]),
        tool_schema("get_ticket", "Look up a ticket by id.", {"id": _s("Ticket id")}, ["id"]),
        tool_schema("find_ticket", "Find the ticket about a topic.", {"topic": _s("Ticket topic")}, ["topic"]),
        tool_schema("list_tickets", "List a person's tickets and their status.", {"owner": _s("Contact name")},
                    ["owner"]),
        tool_schema("update_ticket", "Change a ticket's status or owner.",
                    {"id": _s("Ticket id"), "status": {**_s("New status"), "enum": list(STATUSES)},
                     "owner": _s("New owner")}, ["id"]),
        tool_schema("send_email", "Send an email to an address.",
                    {"to": _s("Email address"), "body": _s("Message text"), "subject": _s("Subject line")},
                    ["to", "body"]),
    )
}  # fmt: skip
TOOL_ORDER = tuple(TOOLS)


@dataclass(frozen=True)
class Contact:
    email: str
    team: str


@dataclass(frozen=True)
class Event:
    title: str
    day: str
    time: str
    room: str
    host: str


@dataclass(frozen=True)
class Ticket:
    topic: str
    status: str
    owner: str


@dataclass(frozen=True)
class Email:
    to: str
    body: str
    subject: str = ""


def _key(text: str) -> str:
    """Lookups forgive case and surrounding space: the model should not lose a task to ' Ann'."""
    return text.strip().lower()


def _listing(names: Any) -> str:
    return ", ".join(sorted(names)) or "none"


@dataclass
class Workplace:
    """The mutable state of one episode; its public methods named in ``TOOLS`` are the tools."""

    contacts: dict[str, Contact]
    events: list[Event]
    tickets: dict[str, Ticket]
    sent: list[Email] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Workplace:
        """A fresh state from the spec's JSON (nothing is shared with ``data``)."""
        return cls(
            contacts={name: Contact(**c) for name, c in data["contacts"].items()},
            events=[Event(**e) for e in data["events"]],
            tickets={tid: Ticket(**t) for tid, t in data["tickets"].items()},
            sent=[Email(**m) for m in data.get("sent", [])],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "contacts": {n: vars(c).copy() for n, c in self.contacts.items()},
            "events": [vars(e).copy() for e in self.events],
            "tickets": {t: vars(k).copy() for t, k in self.tickets.items()},
            "sent": [vars(m).copy() for m in self.sent],
        }

    # -- tools -------------------------------------------------------------------------------------

    def find_contact(self, name: str) -> dict[str, str]:
        contact = self.contacts.get(_key(name))
        if contact is None:
            raise ToolError(f"no contact named {name!r}; the contacts are: {_listing(self.contacts)}")
        return {"email": contact.email, "team": contact.team}

    def team_members(self, team: str) -> list[str]:
        members = sorted(n for n, c in self.contacts.items() if c.team == _key(team))
        if not members:
            teams = {c.team for c in self.contacts.values()}
            raise ToolError(f"no team named {team!r}; the teams are: {_listing(teams)}")
        return members

    def _event(self, title: str) -> Event:
        for event in self.events:
            if event.title == _key(title):
                return event
        raise ToolError(f"no event titled {title!r}; the events are: {_listing(e.title for e in self.events)}")

    def find_event(self, title: str) -> dict[str, str]:
        event = self._event(title)
        return {"day": event.day, "time": event.time, "room": event.room, "host": event.host}

    def list_events(self, day: str) -> list[dict[str, str]]:
        found = sorted((e for e in self.events if e.day == _key(day)), key=lambda e: e.title)
        return [{"title": e.title, "time": e.time, "room": e.room} for e in found]

    def create_event(self, title: str, day: str, time: str, room: str) -> str:
        event = Event(_key(title), _key(day), _key(time), _key(room), ME)
        if not all((event.title, event.day, event.time, event.room)):
            raise ToolError("title, day, time and room must not be empty")
        if any(e.title == event.title for e in self.events):
            raise ToolError(f"an event titled {event.title!r} already exists")
        for e in self.events:
            if (e.room, e.day, e.time) == (event.room, event.day, event.time):
                raise ToolError(f"room {e.room} is taken on {e.day} at {e.time} by {e.title}")
        self.events.append(event)
        return f"booked {event.title}"

    def _ticket(self, id: str) -> Ticket:
        ticket = self.tickets.get(_key(id))
        if ticket is None:
            raise ToolError(f"no ticket {id!r}; the tickets are: {_listing(self.tickets)}")
        return ticket

    def get_ticket(self, id: str) -> dict[str, str]:
        ticket = self._ticket(id)
        return {"topic": ticket.topic, "status": ticket.status, "owner": ticket.owner}

    def find_ticket(self, topic: str) -> dict[str, str]:
        for tid, ticket in sorted(self.tickets.items()):
            if ticket.topic == _key(topic):
                return {"id": tid, "status": ticket.status, "owner": ticket.owner}
        raise ToolError(
            f"no ticket about {topic!r}; the topics are: {_listing(t.topic for t in self.tickets.values())}"
        )

    def list_tickets(self, owner: str) -> dict[str, str]:
        if _key(owner) not in self.contacts:
            raise ToolError(f"no contact named {owner!r}; the contacts are: {_listing(self.contacts)}")
        return {tid: t.status for tid, t in sorted(self.tickets.items()) if t.owner == _key(owner)}

    def update_ticket(self, id: str, status: str | None = None, owner: str | None = None) -> dict[str, str]:
        ticket = self._ticket(id)
        if status is None and owner is None:
            raise ToolError("give a new status, a new owner or both")
        if owner is not None and _key(owner) not in self.contacts:
            raise ToolError(f"no contact named {owner!r}; the contacts are: {_listing(self.contacts)}")
        changes = {"status": status, "owner": None if owner is None else _key(owner)}
        self.tickets[_key(id)] = replace(ticket, **{k: v for k, v in changes.items() if v is not None})
        return self.get_ticket(id)

    def send_email(self, to: str, body: str, subject: str = "") -> str:
        address = _key(to)
        if address not in {c.email for c in self.contacts.values()}:
            raise ToolError(f"{to!r} is not a known address; find_contact gives a contact's email")
        if not body.strip():
            raise ToolError("the body is empty")
        self.sent.append(Email(address, body, subject))
        return f"sent to {address}"


# -- the reward ------------------------------------------------------------------------------------


def values_of(world: Workplace, kind: str) -> set[str]:
    """Every value of one kind the workplace holds (what a hedging text might list)."""
    events, tickets = world.events, world.tickets.values()
    by_kind: dict[str, set[str]] = {
        "name": set(world.contacts) | {e.host for e in events} | {t.owner for t in tickets},
        "email": {c.email for c in world.contacts.values()},
        "team": {c.team for c in world.contacts.values()},
        "title": {e.title for e in events},
        "day": {e.day for e in events},
        "time": {e.time for e in events},
        "room": {e.room for e in events},
        "id": set(world.tickets),
        "topic": {t.topic for t in tickets},
        "status": set(STATUSES) | {t.status for t in tickets},
    }
    return by_kind[kind] - {ME}


def naming_problem(text: str, value: str, others: set[str]) -> str | None:
    """Why ``text`` does not name ``value`` alone (None when it does)."""
    words = set(WORD.findall(text.lower()))
    if value not in words:
        return f"does not name {value!r}"
    extra = sorted((words & others) - {value})
    return f"also names {', '.join(extra)}" if extra else None


@dataclass
class _Verdict:
    checked: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (reason code, detail)

    def fail(self, reason: str, detail: str) -> None:
        self.failures.append((reason, detail))


def _check_emails(goal: list[Mapping[str, str]], start: Workplace, end: Workplace, verdict: _Verdict) -> None:
    new = end.sent[len(start.sent) :]
    wanted = {e["to"] for e in goal}
    for e in goal:
        verdict.checked.append(f"one email to {e['to']} naming {e['value']}")
        got = [m for m in new if m.to == e["to"]]
        if not got:
            verdict.fail("missing_email", f"no email was sent to {e['to']}")
        elif len(got) > 1:
            verdict.fail("extra_email", f"{len(got)} emails were sent to {e['to']}, not one")
        elif problem := naming_problem(got[0].body, e["value"], values_of(start, e["kind"])):
            verdict.fail("wrong_email", f"the email to {e['to']} {problem}")
    verdict.checked.append("no other email")
    for address in sorted({m.to for m in new} - wanted):
        verdict.fail("extra_email", f"an unrequested email was sent to {address}")


def _check_tickets(goal: Mapping[str, Mapping[str, str]], start: Workplace, end: Workplace, verdict: _Verdict) -> None:
    verdict.checked.append("tickets: " + (", ".join(f"{t} {dict(c)}" for t, c in sorted(goal.items())) or "unchanged"))
    expected = {tid: replace(t, **goal.get(tid, {})) for tid, t in start.tickets.items()}
    for tid in sorted(set(expected) | set(end.tickets)):
        want, got = expected.get(tid), end.tickets.get(tid)
        if want != got:
            verdict.fail("ticket_mismatch", f"ticket {tid} is {got and vars(got)}, expected {want and vars(want)}")


def _check_events(goal: list[Mapping[str, str]], start: Workplace, end: Workplace, verdict: _Verdict) -> None:
    verdict.checked.append("events: " + (", ".join(f"book {e['title']}" for e in goal) or "unchanged"))
    expected = {e.title: e for e in start.events} | {e["title"]: Event(**e, host=ME) for e in goal}
    got = {e.title: e for e in end.events}
    for title in sorted(set(expected) | set(got)):
        want, have = expected.get(title), got.get(title)
        if want != have:
            verdict.fail("event_mismatch", f"event {title} is {have and vars(have)}, expected {want and vars(want)}")


def judge(goal: Mapping[str, Any], start: Workplace, end: Workplace, answer: str) -> tuple[float, dict[str, Any]]:
    """The episode's reward (see the module docstring) and what was checked."""
    verdict = _Verdict()
    _check_emails(goal.get("emails", []), start, end, verdict)
    _check_tickets(goal.get("tickets", {}), start, end, verdict)
    _check_events(goal.get("events", []), start, end, verdict)
    if "answer" in goal:
        value = goal["answer"]["value"]
        verdict.checked.append(f"the answer names {value}")
        if problem := naming_problem(answer, value, values_of(start, goal["answer"]["kind"])):
            verdict.fail("wrong_answer", f"the answer {problem}")
    reason = verdict.failures[0][0] if verdict.failures else "ok"
    info = {"reason": reason, "checked": verdict.checked, "failures": [d for _, d in verdict.failures]}
    return (0.0 if verdict.failures else 1.0), info


# -- spec validation -------------------------------------------------------------------------------


def _fail(where: str, what: str, got: Any) -> SpecError:
    return SpecError(f"workplace spec: field {where!r} must be {what}, got {got!r:.200}")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, "an object", value)
    return value


def _records(value: Any, where: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """``value`` is an object whose fields are exactly ``keys`` (plus any of ``optional``), all strings."""
    record = _mapping(value, where)
    missing, unknown = set(keys) - set(record), set(record) - set(keys) - set(optional)
    if missing or unknown:
        raise _fail(where, f"an object with the fields {', '.join(keys)}", dict(record))
    for key, item in record.items():
        if not isinstance(item, str) or (key in keys and not item):
            raise _fail(f"{where}.{key}", "a non-empty string", item)


def _check_state(state: Any) -> None:
    state = _mapping(state, "state")
    for name, contact in _mapping(state.get("contacts"), "state.contacts").items():
        _records(contact, f"state.contacts.{name}", ("email", "team"))
    events = state.get("events")
    if not isinstance(events, list):
        raise _fail("state.events", "a list of events", events)
    for i, event in enumerate(events):
        _records(event, f"state.events.{i}", ("title", "day", "time", "room", "host"))
    if len({e["title"] for e in events}) != len(events):
        raise _fail("state.events", "events with distinct titles", [e["title"] for e in events])
    tickets = _mapping(state.get("tickets"), "state.tickets")
    for tid, ticket in tickets.items():
        _records(ticket, f"state.tickets.{tid}", ("topic", "status", "owner"))
    if len({t["topic"] for t in tickets.values()}) != len(tickets):
        raise _fail("state.tickets", "tickets with distinct topics", dict(tickets))
    sent = state.get("sent", [])
    if not isinstance(sent, list):
        raise _fail("state.sent", "a list of emails", sent)
    for i, email in enumerate(sent):
        _records(email, f"state.sent.{i}", ("to", "body"), ("subject",))


def _check_value(value: Any, where: str) -> None:
    """A goal value must be one word, or no text could ever name it."""
    record = _mapping(value, where)
    if not isinstance(record.get("value"), str) or not WORD.fullmatch(record["value"]):
        raise _fail(f"{where}.value", "one lowercase word", record.get("value"))
    if record.get("kind") not in KINDS:
        raise _fail(f"{where}.kind", f"one of {', '.join(KINDS)}", record.get("kind"))


def _check_goal(goal: Any, state: Mapping[str, Any]) -> None:
    goal = _mapping(goal, "goal")
    unknown = set(goal) - {"emails", "tickets", "events", "answer"}
    if unknown or not any(goal.get(k) for k in ("emails", "tickets", "events", "answer")):
        raise _fail("goal", "an object with some of emails, tickets, events, answer", dict(goal))
    emails = goal.get("emails", [])
    if not isinstance(emails, list):
        raise _fail("goal.emails", "a list", emails)
    for i, email in enumerate(emails):
        _check_value(email, f"goal.emails.{i}")
        if not isinstance(email.get("to"), str) or not email["to"]:
            raise _fail(f"goal.emails.{i}.to", "an address", email.get("to"))
    for tid, changes in _mapping(goal.get("tickets", {}), "goal.tickets").items():
        if tid not in state["tickets"]:
            raise _fail(f"goal.tickets.{tid}", "the id of a ticket in state.tickets", tid)
        _records(changes, f"goal.tickets.{tid}", (), ("status", "owner"))
    events = goal.get("events", [])
    if not isinstance(events, list):
        raise _fail("goal.events", "a list", events)
    for i, event in enumerate(events):
        _records(event, f"goal.events.{i}", ("title", "day", "time", "room"))
    if "answer" in goal:
        _check_value(goal["answer"], "goal.answer")


# -- the environment -------------------------------------------------------------------------------


@register_env("workplace")
class WorkplaceEnv(ToolEnv):
    """An episode on a fresh copy of the prompt's workplace; the tools offered are the prompt's."""

    rewards_itself = True  # finish() returns the reward; the stage's reward function is not asked

    def __init__(self, prompt: Prompt) -> None:
        self.check_spec(prompt.spec)
        state = prompt.spec["state"]
        self.start, self.world = Workplace.from_dict(state), Workplace.from_dict(state)
        offered = [t["function"]["name"] for t in prompt.tools] if prompt.tools else list(TOOL_ORDER)
        super().__init__(prompt, [Tool(TOOLS[n], getattr(self.world, n)) for n in offered if n in TOOLS])

    def finish(self, turn: ParsedCompletion) -> StepResult:
        reward, info = judge(self.prompt.spec["goal"], self.start, self.world, turn.content)
        return StepResult(done=True, reward=reward, info={**self.counts(), **info})

    def state(self) -> dict[str, Any]:
        """The episode's current state as JSON (for logs and tests)."""
        return self.world.to_dict()

    @staticmethod
    def check_spec(spec: Any) -> None:
        """Raise ``SpecError`` naming the first malformed field of a workplace spec."""
        spec = _mapping(spec, "spec")
        if spec.get("type") != "workplace":
            raise _fail("type", "'workplace'", spec.get("type"))
        _check_state(spec.get("state"))
        _check_goal(spec.get("goal"), spec["state"])

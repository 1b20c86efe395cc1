"""Multi-step workplace tasks: look something up with a tool, then act on what came back.

Each problem is a random small workplace (``cascade_rl.envs.workplace``) and a request whose final
action needs a value only a lookup returns (an address, a room, a ticket id, an owner). The user
text names the entities the request is about, never the values, so the split (a hash of the user
text) keeps every request text in one split while the worlds behind it vary from draw to draw.

The reference episode (``trace``) is produced by a scripted solver that calls the environment's own
tools, so its tool responses are exactly what ``WorkplaceEnv`` returns, and it must score 1.

Difficulty 0: 3-5 contacts, 2-4 events and tickets, six short request templates of two or three
calls, one call per turn, the needed tools plus one distractor. Difficulty 1: larger worlds, three
or four calls, independent lookups made in one turn, two distractor tools. Difficulty 2: larger
still, every tool listed, requests that book events, reassign or close several tickets.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cascade_rl.chat import ParsedCompletion
from cascade_rl.data.tasks.base import Problem, make_problem, pick, stable_hash
from cascade_rl.data.tasks.tool_call import EVENTS, TIMES
from cascade_rl.data.tasks.vocab import CITIES, COLORS, DAYS, NAMES, WORDS
from cascade_rl.envs.workplace import STATUSES, TOOL_ORDER, TOOLS, Workplace, WorkplaceEnv, judge
from cascade_rl.types import Prompt, ToolCall

# Every value is one lowercase word that never parses as a number or boolean, so the XML round trip
# of a call argument (str() out, parse_value back) gives back exactly the value.
PEOPLE = tuple(name.lower() for name in NAMES)
TEAMS = COLORS[:4]  # few teams, so teammates share one
ROOMS = CITIES
WEEKDAYS = DAYS[:5]
TOPICS = ("printer", "wifi", "laptop", "badge", "phone", "vpn", "desk", "mouse")
TICKET_IDS = tuple(f"t{i}" for i in range(1, 31))
EVENT_FIELDS = ("room", "day", "time")
TICKET_FIELDS = ("status", "owner", "topic")
CONTACT_FIELDS = ("team", "email")


def _kind(fieldname: str) -> str:
    return "name" if fieldname in ("owner", "host") else fieldname


def _spread(rng: random.Random, options: tuple[str, ...], n: int) -> list[str]:
    """n values, all different while the options last (so a wrong value exists to be caught)."""
    head = pick(rng, options, min(n, len(options)))
    return head + [rng.choice(options) for _ in range(n - len(head))]


def _varied(rng: random.Random, options: tuple[str, ...], n: int) -> list[str]:
    """n values drawn with repeats, at least two of them different."""
    values = [rng.choice(options) for _ in range(n)]
    while len(set(values)) < 2:
        values[rng.randrange(n)] = rng.choice(options)
    return values


def make_world(rng: random.Random, contacts: int, events: int, tickets: int) -> dict[str, Any]:
    """A random workplace in the spec's JSON shape."""
    names = pick(rng, PEOPLE, contacts)
    state: dict[str, Any] = {
        "contacts": {
            n: {"email": f"{h}@mail", "team": t}
            for n, h, t in zip(names, pick(rng, WORDS, contacts), _varied(rng, TEAMS, contacts), strict=True)
        },
        "events": [
            {"title": ti, "day": d, "time": tm, "room": r, "host": rng.choice(names)}
            for ti, d, tm, r in zip(
                pick(rng, EVENTS, events), _spread(rng, WEEKDAYS, events), _spread(rng, TIMES, events),
                pick(rng, ROOMS, events), strict=True,
            )
        ],
        "tickets": {
            tid: {"topic": top, "status": st, "owner": rng.choice(names)}
            for tid, top, st in zip(
                sorted(pick(rng, TICKET_IDS, tickets), key=lambda t: int(t[1:])), pick(rng, TOPICS, tickets),
                _varied(rng, STATUSES, tickets), strict=True,
            )
        },
        "sent": [],
    }  # fmt: skip
    return state


# -- the scripted solver ---------------------------------------------------------------------------

Call = tuple[str, dict[str, str]]


def call(tool: str, **arguments: str) -> Call:
    return tool, arguments


def _decoded(text: str) -> Any:
    if text.startswith("error:"):
        raise RuntimeError(f"the scripted solver made a failing call: {text}")
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass
class Session:
    """Plays the reference episode on a real ``WorkplaceEnv`` and records it as the trace."""

    env: WorkplaceEnv
    parallel: bool  # independent calls share one turn
    trace: list[dict[str, Any]] = field(default_factory=list)
    reward: float | None = None

    def turn(self, why: str, *calls: Call) -> list[Any]:
        """One assistant turn making ``calls``; returns their decoded responses."""
        parsed = ParsedCompletion(content="", tool_calls=tuple(ToolCall(n, dict(a)) for n, a in calls))
        result = self.env.step(parsed)
        self.trace.append(
            {
                "role": "assistant",
                "content": "",
                "reasoning": why,
                "tool_calls": [c.to_openai() for c in parsed.tool_calls],
            }
        )
        self.trace.extend(dict(m) for m in result.messages)
        return [_decoded(m["content"]) for m in result.messages]

    def lookups(self, why: str, *steps: tuple[str, Call]) -> list[Any]:
        """Independent lookups: one turn (parallel) or one turn each, the first with ``why``."""
        if self.parallel:
            return self.turn(why, *(c for _, c in steps))
        return [self.turn(why if i == 0 else note, c)[0] for i, (note, c) in enumerate(steps)]

    def finish(self, why: str, answer: str) -> str:
        result = self.env.step(ParsedCompletion(content=answer))
        self.trace.append({"role": "assistant", "content": answer, "reasoning": why})
        self.reward = result.reward
        return answer


Script = Callable[[Session], str]


@dataclass(frozen=True)
class Draft:
    user: str
    goal: dict[str, Any]
    plan: str  # the first turn's reasoning: a one-line plan
    script: Script


# -- request templates (each may adjust the fresh world so the request is not already satisfied) ---


def _email_event_fact(rng: random.Random, w: dict[str, Any]) -> Draft:
    name, event, fact = rng.choice(sorted(w["contacts"])), rng.choice(w["events"]), rng.choice(EVENT_FIELDS)
    title = event["title"]
    goal = {"emails": [{"to": w["contacts"][name]["email"], "value": event[fact], "kind": fact}]}
    plan = f"Look up the {title} and {name}, then email {name} the {fact}."

    def script(s: Session) -> str:
        found, person = s.lookups(
            plan, ("", call("find_event", title=title)), (f"Now {name}'s address.", call("find_contact", name=name))
        )
        value, to = found[fact], person["email"]
        s.turn(f"The {fact} is {value}; {name} is {to}.", call("send_email", to=to, body=value))
        return s.finish(f"The email to {to} is sent.", "Sent.")

    return Draft(f"Email {name} the {fact} of the {title}.", goal, plan, script)


def _email_ticket_fact(rng: random.Random, w: dict[str, Any]) -> Draft:
    tid, fact = rng.choice(sorted(w["tickets"])), rng.choice(TICKET_FIELDS)
    value = w["tickets"][tid][fact]
    # the recipient is never the owner being reported, or the value would be in the request
    name = rng.choice(sorted(set(w["contacts"]) - {value}))
    goal = {"emails": [{"to": w["contacts"][name]["email"], "value": value, "kind": _kind(fact)}]}
    plan = f"Look up ticket {tid} and {name}, then email {name} its {fact}."

    def script(s: Session) -> str:
        ticket, person = s.lookups(
            plan, ("", call("get_ticket", id=tid)), (f"Now {name}'s address.", call("find_contact", name=name))
        )
        value, to = ticket[fact], person["email"]
        s.turn(f"The {fact} is {value}; {name} is {to}.", call("send_email", to=to, body=value))
        return s.finish(f"The email to {to} is sent.", "Sent.")

    return Draft(f"Email {name} the {fact} of ticket {tid}.", goal, plan, script)


def _email_owner(rng: random.Random, w: dict[str, Any]) -> Draft:
    tid, fact = rng.choice(sorted(w["tickets"])), rng.choice(("status", "topic"))
    ticket = w["tickets"][tid]
    goal = {"emails": [{"to": w["contacts"][ticket["owner"]]["email"], "value": ticket[fact], "kind": fact}]}
    plan = f"Find who owns ticket {tid}, look up their address, then email them its {fact}."

    def script(s: Session) -> str:
        (found,) = s.turn(plan, call("get_ticket", id=tid))
        owner, value = found["owner"], found[fact]
        (person,) = s.turn(f"{owner} owns it; the {fact} is {value}.", call("find_contact", name=owner))
        s.turn(f"{owner} is {person['email']}.", call("send_email", to=person["email"], body=value))
        return s.finish(f"The email to {owner} is sent.", "Sent.")

    return Draft(f"Email the owner of ticket {tid} its {fact}.", goal, plan, script)


def _mark_ticket(rng: random.Random, w: dict[str, Any]) -> Draft:
    tid = rng.choice(sorted(w["tickets"]))
    ticket = w["tickets"][tid]
    status = rng.choice([s for s in STATUSES if s != ticket["status"]])
    topic = ticket["topic"]
    goal = {"tickets": {tid: {"status": status}}, "answer": {"value": ticket["owner"], "kind": "name"}}
    plan = f"Find the {topic} ticket, set it to {status}, and say who owns it."

    def script(s: Session) -> str:
        (found,) = s.turn(plan, call("find_ticket", topic=topic))
        s.turn(f"It is {found['id']}, owned by {found['owner']}.", call("update_ticket", id=found["id"], status=status))
        return s.finish(f"{found['owner']} owns it.", f"{found['owner']} owns it.")

    return Draft(f"Mark the {topic} ticket {status} and say who owns it.", goal, plan, script)


def _host_fact(rng: random.Random, w: dict[str, Any]) -> Draft:
    event, fact = rng.choice(w["events"]), rng.choice(CONTACT_FIELDS)
    title = event["title"]
    goal = {"answer": {"value": w["contacts"][event["host"]][fact], "kind": fact}}
    plan = f"Find who hosts the {title}, then look up their {fact}."

    def script(s: Session) -> str:
        (found,) = s.turn(plan, call("find_event", title=title))
        (person,) = s.turn(f"{found['host']} hosts it.", call("find_contact", name=found["host"]))
        return s.finish(f"The {fact} is {person[fact]}.", f"It is {person[fact]}.")

    return Draft(f"What is the {fact} of the {title} host?", goal, plan, script)


def _owner_fact(rng: random.Random, w: dict[str, Any]) -> Draft:
    tid, fact = rng.choice(sorted(w["tickets"])), rng.choice(CONTACT_FIELDS)
    goal = {"answer": {"value": w["contacts"][w["tickets"][tid]["owner"]][fact], "kind": fact}}
    plan = f"Find who owns ticket {tid}, then look up their {fact}."

    def script(s: Session) -> str:
        (found,) = s.turn(plan, call("get_ticket", id=tid))
        (person,) = s.turn(f"{found['owner']} owns it.", call("find_contact", name=found["owner"]))
        return s.finish(f"The {fact} is {person[fact]}.", f"It is {person[fact]}.")

    return Draft(f"What is the {fact} of ticket {tid}'s owner?", goal, plan, script)


def _email_owner_event_fact(rng: random.Random, w: dict[str, Any]) -> Draft:
    tid, event, fact = rng.choice(sorted(w["tickets"])), rng.choice(w["events"]), rng.choice(EVENT_FIELDS)
    topic, title = w["tickets"][tid]["topic"], event["title"]
    goal = {"emails": [{"to": w["contacts"][w["tickets"][tid]["owner"]]["email"], "value": event[fact], "kind": fact}]}
    plan = f"Find the {topic} ticket's owner and the {title}, then email the owner its {fact}."

    def script(s: Session) -> str:
        ticket, found = s.lookups(
            plan, ("", call("find_ticket", topic=topic)), (f"Now the {title}.", call("find_event", title=title))
        )
        owner, value = ticket["owner"], found[fact]
        (person,) = s.turn(f"{owner} owns it; the {fact} is {value}.", call("find_contact", name=owner))
        s.turn(f"{owner} is {person['email']}.", call("send_email", to=person["email"], body=value))
        return s.finish(f"The email to {owner} is sent.", "Sent.")

    return Draft(f"Email the owner of the {topic} ticket the {fact} of the {title}.", goal, plan, script)


def _reassign(rng: random.Random, w: dict[str, Any]) -> Draft:
    tid, event = rng.choice(sorted(w["tickets"])), rng.choice(w["events"])
    ticket, host = w["tickets"][tid], event["host"]
    if ticket["owner"] == host:  # else there is nothing to do
        ticket["owner"] = rng.choice(sorted(set(w["contacts"]) - {host}))
    topic, title = ticket["topic"], event["title"]
    goal = {"tickets": {tid: {"owner": host}}}
    plan = f"Find the {topic} ticket and the {title} host, then give the ticket to the host."

    def script(s: Session) -> str:
        found, ev = s.lookups(
            plan, ("", call("find_ticket", topic=topic)), (f"Now the {title}.", call("find_event", title=title))
        )
        s.turn(f"{found['id']} goes to {ev['host']}.", call("update_ticket", id=found["id"], owner=ev["host"]))
        return s.finish(f"{found['id']} now belongs to {ev['host']}.", "Done.")

    return Draft(f"Give the {topic} ticket to the {title} host.", goal, plan, script)


def _book_in_room(rng: random.Random, w: dict[str, Any]) -> Draft:
    event, name = rng.choice(w["events"]), rng.choice(sorted(w["contacts"]))
    new = rng.choice([t for t in EVENTS if t not in {e["title"] for e in w["events"]}])
    day, time = rng.choice([(d, t) for d in WEEKDAYS for t in TIMES if (d, t) != (event["day"], event["time"])])
    title = event["title"]
    goal = {
        "events": [{"title": new, "day": day, "time": time, "room": event["room"]}],
        "emails": [{"to": w["contacts"][name]["email"], "value": event["room"], "kind": "room"}],
    }
    plan = f"Find the {title} room and {name}'s address, book {new} there, and email {name} the room."

    def script(s: Session) -> str:
        found, person = s.lookups(
            plan, ("", call("find_event", title=title)), (f"Now {name}'s address.", call("find_contact", name=name))
        )
        room, to = found["room"], person["email"]
        book, mail = (
            call("create_event", title=new, day=day, time=time, room=room),
            call("send_email", to=to, body=room),
        )
        why = f"The room is {room}; {name} is {to}."
        if s.parallel:
            s.turn(why, book, mail)
        else:
            s.turn(why, book)
            s.turn(f"Booked; now tell {name}.", mail)
        return s.finish(f"{new} is booked in {room} and {name} is told.", "Done.")

    return Draft(f"Book {new} in the {title} room on {day} at {time} and email {name} the room.", goal, plan, script)


def _close_all(rng: random.Random, w: dict[str, Any]) -> Draft:
    name, others = rng.choice(sorted(w["contacts"])), sorted(w["contacts"])
    others.remove(name)
    ids = sorted(w["tickets"], key=lambda t: int(t[1:]))
    mine = set(pick(rng, ids, min(len(ids) - 1, rng.randint(2, 3))))
    for tid in ids:  # name owns exactly `mine`, none of them closed yet
        ticket = w["tickets"][tid]
        if tid in mine:
            ticket["owner"], ticket["status"] = name, ticket["status"] if ticket["status"] != "closed" else "open"
        elif ticket["owner"] == name:
            ticket["owner"] = rng.choice(others)
    goal = {"tickets": {tid: {"status": "closed"} for tid in sorted(mine)}}
    plan = f"List {name}'s tickets, then close each one that is not closed."

    def script(s: Session) -> str:
        (owned,) = s.turn(plan, call("list_tickets", owner=name))
        todo = [tid for tid, status in owned.items() if status != "closed"]
        closes = [call("update_ticket", id=tid, status="closed") for tid in todo]
        why = f"{name} has {', '.join(todo)} open."
        if s.parallel:
            s.turn(why, *closes)
        else:
            for i, close in enumerate(closes):
                s.turn(why if i == 0 else "Next one.", close)
        return s.finish(f"Closed {', '.join(todo)}.", "Done.")

    return Draft(f"Close every ticket {name} owns.", goal, plan, script)


def _tell_host_owner(rng: random.Random, w: dict[str, Any]) -> Draft:
    event, tid = rng.choice(w["events"]), rng.choice(sorted(w["tickets"]))
    title = event["title"]
    goal = {
        "emails": [{"to": w["contacts"][event["host"]]["email"], "value": w["tickets"][tid]["owner"], "kind": "name"}]
    }
    plan = f"Find the {title} host and who owns ticket {tid}, then email the host the owner."

    def script(s: Session) -> str:
        found, ticket = s.lookups(
            plan, ("", call("find_event", title=title)), (f"Now ticket {tid}.", call("get_ticket", id=tid))
        )
        host, owner = found["host"], ticket["owner"]
        (person,) = s.turn(f"{host} hosts it; {owner} owns {tid}.", call("find_contact", name=host))
        s.turn(f"{host} is {person['email']}.", call("send_email", to=person["email"], body=owner))
        return s.finish(f"{host} is told that {owner} owns {tid}.", "Sent.")

    return Draft(f"Tell the {title} host who owns ticket {tid}.", goal, plan, script)


Template = Callable[[random.Random, dict[str, Any]], Draft]


@dataclass(frozen=True)
class Level:
    templates: tuple[Template, ...]
    contacts: tuple[int, int]  # inclusive ranges of the world's size
    events: tuple[int, int]
    tickets: tuple[int, int]
    distractors: int  # tools listed beyond the needed ones
    parallel: bool


LEVELS = (
    Level((_email_event_fact, _email_ticket_fact, _email_owner, _mark_ticket, _host_fact, _owner_fact),
          (3, 5), (2, 4), (2, 4), 1, False),
    Level((_email_event_fact, _email_ticket_fact, _email_owner, _email_owner_event_fact, _reassign),
          (5, 7), (3, 5), (3, 5), 2, True),
    Level((_email_owner, _email_owner_event_fact, _reassign, _book_in_room, _close_all, _tell_host_owner),
          (6, 9), (4, 6), (4, 6), len(TOOLS), True),
)  # fmt: skip


def _toolset(rng: random.Random, needed: set[str], distractors: int) -> list[dict[str, Any]]:
    """The needed tools plus random others, in one canonical order."""
    others = [n for n in TOOL_ORDER if n not in needed]
    shown = needed | set(rng.sample(others, min(distractors, len(others))))
    return [TOOLS[n] for n in TOOL_ORDER if n in shown]


class WorkplaceTask:
    """Multi-turn workplace requests; spec ``{"type": "workplace", "state", "goal"}``, judged by ``WorkplaceEnv``."""

    name = "workplace"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        level = LEVELS[min(difficulty, len(LEVELS) - 1)]
        world = make_world(rng, rng.randint(*level.contacts), rng.randint(*level.events), rng.randint(*level.tickets))
        draft = rng.choice(level.templates)(rng, world)
        spec = {"type": "workplace", "state": world, "goal": draft.goal}
        # The solver runs with every tool, so the listed tools can be chosen from the ones it used.
        scratch = Prompt(messages=({"role": "user", "content": draft.user},), spec=spec, domain=self.name)
        session = Session(WorkplaceEnv(scratch), level.parallel)
        answer = draft.script(session)
        if session.reward != 1.0 or judge(draft.goal, Workplace.from_dict(world), Workplace.from_dict(world), "")[0]:
            raise RuntimeError(f"workplace generator bug: {draft.user!r} is not solved by its script alone")
        used = {c["function"]["name"] for m in session.trace for c in m.get("tool_calls", [])}
        problem = make_problem(
            self.name,
            difficulty,
            user=draft.user,
            spec=spec,
            answer=answer,
            reasoning=draft.plan,
            tools=_toolset(rng, used, level.distractors),
        )
        # The same request text recurs over different worlds: the uid covers the world too.
        canonical = json.dumps([list(problem.messages), list(problem.tools or []), spec], sort_keys=True)
        uid = f"{self.name}-{difficulty}-{stable_hash(canonical):016x}"
        return replace(problem, uid=uid, env="workplace", trace=tuple(session.trace))

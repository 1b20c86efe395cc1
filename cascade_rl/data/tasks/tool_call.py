"""Workplace-assistant tool calling with a small calendar / email / directory toolset.

Difficulty 0: one call whose arguments are short verbatim copies from the prompt; the tool
list holds the right tool and one distractor. Difficulty 1: four tools listed; optional typed
arguments (an integer duration, a cc list), two-call requests, and requests that need no tool
(answered in plain text). Difficulty 2: all tools; two or three calls, typed and optional
arguments, and requests the tools cannot serve.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any

from cascade_rl.data.tasks.base import Problem, make_problem
from cascade_rl.data.tasks.vocab import DAYS, NAMES


def _tool(name: str, description: str, params: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": params, "required": required},
        },
    }


def _s(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


TOOLS: dict[str, dict[str, Any]] = {
    t["function"]["name"]: t
    for t in (
        _tool("send_email", "Send an email.",
              {"to": _s("Recipient"), "body": _s("Message text"),
               "cc": {"type": "array", "items": {"type": "string"}, "description": "Copy to"}},
              ["to", "body"]),
        _tool("create_event", "Add a calendar event.",
              {"title": _s("Event title"), "day": _s("Weekday"), "time": _s("Start time"),
               "minutes": {"type": "integer", "description": "Length in minutes"}},
              ["title", "day", "time"]),
        _tool("list_events", "List calendar events on a day.", {"day": _s("Weekday")}, ["day"]),
        _tool("lookup_person", "Find a colleague in the directory.", {"name": _s("Person name")}, ["name"]),
        _tool("set_reminder", "Set a reminder.", {"text": _s("What to do"), "time": _s("When")}, ["text", "time"]),
        _tool("search_files", "Search shared files.", {"query": _s("Search words")}, ["query"]),
    )
}  # fmt: skip
TOOL_ORDER = tuple(TOOLS)

# Argument values are lowercase words that never parse as numbers or booleans, so the XML
# round trip (str() out, parse_value back) returns exactly the reference value.
PEOPLE = tuple(name.lower() for name in NAMES)
MESSAGES = (
    "lunch at noon", "see you soon", "call me", "meeting moved", "thanks", "running late",
    "good job", "on my way", "all done", "need help", "happy birthday", "room changed",
)  # fmt: skip
TIMES = ("8am", "9am", "10am", "11am", "noon", "1pm", "2pm", "3pm", "4pm", "5pm")
EVENTS = ("gym", "lunch", "standup", "review", "dentist", "demo", "sync", "training")
CHORES = ("call mom", "buy milk", "pay rent", "water plants", "book taxi", "send notes", "feed cat", "pack bag")
TOPICS = ("budget", "travel", "taxes", "report", "slides", "roadmap", "hiring", "sales", "design", "contracts")

# No-call requests: (user text, plain answer). Chat or arithmetic the model answers itself.
CHAT = (
    ("Say hello.", "Hello!"),
    ("Thanks for the help!", "You are welcome!"),
    ("What is 2 + 3?", "5"),
    ("What is 4 + 4?", "8"),
    ("Good morning!", "Good morning!"),
    ("How many days are in a week?", "7"),
)
UNSERVED = (
    ("Order a pizza for me.", "Sorry, I cannot order food with these tools."),
    ("Book a flight to rome.", "Sorry, I cannot book flights with these tools."),
    ("Turn on the lights.", "Sorry, I cannot control lights with these tools."),
)

Call = dict[str, Any]
Draft = tuple[str, list[Call], str]  # (user text, calls, reasoning)


def _call(tool: str, **arguments: Any) -> Call:
    return {"name": tool, "arguments": arguments}


def _email(rng: random.Random) -> Draft:
    to, body = rng.choice(PEOPLE), rng.choice(MESSAGES)
    return f"Email {to}: {body}", [_call("send_email", to=to, body=body)], f"Send {to} an email."


def _lookup(rng: random.Random) -> Draft:
    name = rng.choice(PEOPLE)
    return f"Look up {name}.", [_call("lookup_person", name=name)], f"Find {name} in the directory."


def _list_day(rng: random.Random) -> Draft:
    day = rng.choice(DAYS)
    return f"What is on my calendar on {day}?", [_call("list_events", day=day)], f"List events on {day}."


def _event(rng: random.Random) -> Draft:
    title, day, time = rng.choice(EVENTS), rng.choice(DAYS), rng.choice(TIMES)
    call = _call("create_event", title=title, day=day, time=time)
    return f"Add {title} on {day} at {time}.", [call], f"Create the {title} event."


def _remind(rng: random.Random) -> Draft:
    text, time = rng.choice(CHORES), rng.choice(TIMES)
    call = _call("set_reminder", text=text, time=time)
    return f"Remind me to {text} at {time}.", [call], "Set a reminder."


def _search(rng: random.Random) -> Draft:
    topic = rng.choice(TOPICS)
    return f"Find files about {topic}.", [_call("search_files", query=topic)], f"Search for {topic}."


SINGLE = (_email, _lookup, _list_day, _event, _remind, _search)


def _event_minutes(rng: random.Random) -> Draft:
    title, day, time = rng.choice(EVENTS), rng.choice(DAYS), rng.choice(TIMES)
    minutes = rng.choice((15, 30, 45, 60, 90))
    call = _call("create_event", title=title, day=day, time=time, minutes=minutes)
    return f"Add {title} on {day} at {time} for {minutes} minutes.", [call], "Create the event with a length."


def _email_cc(rng: random.Random) -> Draft:
    to, *cc = rng.sample(PEOPLE, rng.randint(2, 3))
    body = rng.choice(MESSAGES)
    copied = " and ".join(cc)
    call = _call("send_email", to=to, body=body, cc=cc)
    return f"Email {to}, cc {copied}: {body}", [call], f"Email {to} with {copied} in copy."


def _email_two(rng: random.Random) -> Draft:
    first, second = rng.sample(PEOPLE, 2)
    body = rng.choice(MESSAGES)
    calls = [_call("send_email", to=p, body=body) for p in (first, second)]
    return f"Email {first} and {second} separately: {body}", calls, "Two emails, one per person."


def _event_and_email(rng: random.Random) -> Draft:
    title, day, time, person = rng.choice(EVENTS), rng.choice(DAYS), rng.choice(TIMES), rng.choice(PEOPLE)
    body = f"{title} on {day} at {time}"
    calls = [_call("create_event", title=title, day=day, time=time), _call("send_email", to=person, body=body)]
    user = f"Add {title} on {day} at {time} and email {person} about it."
    return user, calls, f"Create the event, then email {person}."


def _repeat_event(rng: random.Random) -> Draft:
    title, time = rng.choice(EVENTS), rng.choice(TIMES)
    days = sorted(rng.sample(range(5), rng.randint(2, 3)))  # weekdays, in week order
    names = [DAYS[d] for d in days]
    minutes = rng.choice((15, 30, 60))
    calls = [_call("create_event", title=title, day=d, time=time, minutes=minutes) for d in names]
    said = ", ".join(names[:-1]) + f" and {names[-1]}"
    user = f"Add {title} at {time} for {minutes} minutes on {said}."
    return user, calls, f"One event per day: {said}."


def _lookup_remind(rng: random.Random) -> Draft:
    name, time = rng.choice(PEOPLE), rng.choice(TIMES)
    calls = [_call("lookup_person", name=name), _call("set_reminder", text=f"call {name}", time=time)]
    return f"Look up {name} and remind me to call {name} at {time}.", calls, "A lookup and a reminder."


def _no_call(rng: random.Random, pool: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    return rng.choice(pool)


LEVEL_CALLS: tuple[tuple[Callable[[random.Random], Draft], ...], ...] = (
    SINGLE,
    (*SINGLE, _event_minutes, _email_cc, _email_two, _event_and_email),
    (_event_minutes, _email_cc, _event_and_email, _repeat_event, _lookup_remind, _email_two),
)
NO_CALL_SHARE = (0.0, 0.2, 0.2)
TOOLS_SHOWN = (2, 4, len(TOOLS))


def _toolset(rng: random.Random, needed: set[str], size: int) -> list[dict[str, Any]]:
    """The needed tools plus random distractors, listed in one canonical order."""
    others = [n for n in TOOL_ORDER if n not in needed]
    shown = needed | set(rng.sample(others, max(0, size - len(needed))))
    return [TOOLS[n] for n in TOOL_ORDER if n in shown]


class ToolCallTask:
    """Tool calls scored by name and arguments; spec ``{"type": "tool_call", "expected", "ordered"}``."""

    name = "tool_call"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        level = min(difficulty, len(LEVEL_CALLS) - 1)
        if rng.random() < NO_CALL_SHARE[level]:
            pool = CHAT + UNSERVED if level >= 2 else CHAT
            user, answer = _no_call(rng, pool)
            calls: list[Call] = []
            trace = "No tool is needed for this."
        else:
            user, calls, trace = rng.choice(LEVEL_CALLS[level])(rng)
            answer = ""
        tools = _toolset(rng, {c["name"] for c in calls}, TOOLS_SHOWN[level])
        return make_problem(
            self.name,
            difficulty,
            user=user,
            spec={"type": "tool_call", "expected": copy.deepcopy(calls), "ordered": False},
            answer=answer,
            reasoning=trace,
            tools=tools,
            tool_calls=calls,
        )

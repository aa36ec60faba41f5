"""Shared builders for the top-down tests: a task bundle, work items, scripted handlers."""

from __future__ import annotations

import json
from typing import Any, Callable

from button_ray.config import MethodConfig, TightConstraints
from button_ray.llm.contract import ROLES, LLMRequest
from button_ray.records import Composition, FunctionDef, Scenario, TaskBundle, WorkItem, derive_seed

WEATHER = FunctionDef(
    name="get_weather",
    description="Current weather of a city.",
    parameters={"city": {"type": "string", "description": "City name."},
                "days": {"type": "integer", "description": "Forecast days."}},
    required=("city",),
    responses={"temperature": {"type": "number", "description": "Degrees Celsius."},
               "summary": {"type": "string", "description": "Short description."}},
)  # fmt: skip
LOCAL_TIME = FunctionDef(
    name="get_local_time",
    description="Local time in a city.",
    parameters={"city": {"type": "string", "description": "City name."}},
    required=("city",),
    responses={"time": {"type": "string", "description": "HH:MM."}},
)
ADVICE = FunctionDef(
    name="suggest_activity",
    description="Suggest an activity for a temperature and a time of day.",
    parameters={"temperature": {"type": "number", "description": "Degrees Celsius."},
                "time": {"type": "string", "description": "HH:MM."},
                "outdoor": {"type": "boolean", "description": "Outdoor only."}},
    required=("temperature", "time"),
    responses={"activity": {"type": "string", "description": "Suggested activity."}},
)  # fmt: skip

BUNDLE = TaskBundle(
    atomic_task="Get the weather in Paris.",
    composition=Composition(
        strategy="parallel_then_sequential",
        subtasks=("Get the weather in Paris.", "Get the local time in Paris.", "Suggest an activity."),
        composite_task="Check the weather and local time in Paris, then suggest an activity.",
    ),
    functions=((WEATHER,), (LOCAL_TIME,), (ADVICE,)),
)


def make_item(n: int = 0, bundle: TaskBundle = BUNDLE) -> WorkItem:
    """A pending item with ``bundle``; ``n`` makes the id unique."""
    scenario = Scenario(scenario_id=f"s{n}", text="planning a day out")
    item_id = f"item-{n}"
    return WorkItem(item_id=item_id, scenario=scenario, slot=0, seed=derive_seed(item_id), bundle=bundle)


TIGHT = dict.fromkeys(ROLES, "tight")
OFF = dict.fromkeys(ROLES, "off")


def cfg(**overrides: Any) -> MethodConfig:
    """A method config at the ``tight`` strength (the embedded model's) unless
    ``constraints`` says otherwise; parallel on unless ``parallel_ratio`` says otherwise."""
    return MethodConfig(**{"parallel_ratio": 1.0, "constraints": TIGHT, **overrides})


def tight(
    thought_max_chars: int = 120, final_max_chars: int = 120, value_max_chars: int = 30, plain_prose: bool = False
) -> TightConstraints:
    """Tight bounds in the tests' usual sizes (a final answer shares the message bound)."""
    return TightConstraints(
        thought_max_chars=thought_max_chars,
        message_max_chars=final_max_chars,
        value_max_chars=value_max_chars,
        plain_prose=plain_prose,
    )


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def call_text(*calls: dict[str, Any], thought: str = "Let me do this.") -> str:
    return f"{thought} <call>{json.dumps(list(calls))}</call>"


FINAL = "Done. <final>It is 21 degrees at 14:00 in Paris: go for a walk.</final>"
TOOL_RESULTS = {
    "get_weather": {"temperature": 21.0, "summary": "sunny"},
    "get_local_time": {"time": "14:00"},
    "suggest_activity": {"activity": "a walk"},
}


def turn_of(request: LLMRequest) -> tuple[int, int]:
    """(assistant turn index, attempt) from an assistant request id ``.../assistant/<t>#<a>``."""
    tail = request.request_id.rsplit("/", 1)[1]
    turn, attempt = tail.split("#")
    return int(turn), int(attempt)


def script(assistant: Callable[[int, int], str], tool: Callable[[LLMRequest], str] | None = None) -> Callable:
    """A ScriptedLLM handler: ``assistant(turn, attempt)`` scripts the assistant agent;
    the user agent asks a fixed question (and answers questions with a fixed reply) and the
    tool agent answers from ``TOOL_RESULTS``."""

    def handler(request: LLMRequest) -> str:
        if request.role == "user_agent":
            if len(request.messages) > 1:  # a reply to the assistant's question
                return "I mean Paris, in France."
            return "Hi! What's the weather and time in Paris, and what should I do?"
        if request.role == "assistant_agent":
            return assistant(*turn_of(request))
        if tool is not None:
            return tool(request)
        name = json.loads(request.messages[-1].content.split("<call>")[1].split("</call>")[0])["name"]
        return json.dumps(TOOL_RESULTS[name])

    return handler

"""A zero-latency scripted answerer for the three top-down agents and the dialogue judge.

``respond(request)`` returns a valid answer for ``user_agent``, ``assistant_agent``,
``tool_agent`` and ``dialogue_judge`` requests (``None`` for any other role), derived only from the request,
so trajectories driven by it pass the trajectory filter and the BUTTON validator.
What it reads from a request:

- user agent: the composite task between ``<task>`` and ``</task>`` in the first
  message (``prompts/user_agent.j2``);
- assistant agent: the function list between ``<tool>`` and ``</tool>`` in the system
  message (the BUTTON system prompt), parallel mode from the presence of the BUTTON
  "parallel on" sentence there, the sub-tasks' functions and which sub-tasks are
  independent from the agent's own instructions (``prompts/assistant_agent.j2``), and
  progress from the number of assistant messages already in the chat. It calls each
  function once, in sub-task order (a function list of one is called twice with
  different arguments, to reach two calls), one call per turn, except with parallel on
  the independent sub-tasks' functions all in the first turn (the two calls of a lone
  function too), filling required arguments with values of the declared type taken
  from the dialogue (a string: a few consecutive words of the user's request; a
  number: one the user or an earlier tool result gave), so the calls are grounded;
  then it gives ``<final>``;
- tool agent: the function definition between ``<tool>`` and ``</tool>`` and the call
  between ``<call>`` and ``</call>`` (``prompts/tool_agent.j2``); it answers every
  declared response key with a value of its type;
- dialogue judge: scores high enough to pass any threshold up to 4.
"""

from __future__ import annotations

import json
import re
from typing import Any

from button_ray.button_format import PARALLEL_ON, dump_json
from button_ray.llm.contract import LLMRequest
from button_ray.specs import canonical_types


def _between(text: str, start: str, end: str) -> str:
    match = re.search(re.escape(start) + r"(.*?)" + re.escape(end), text, re.S)
    if match is None:
        raise ValueError(f"no {start}...{end} in the request")
    return match.group(1).strip()


def _kind(spec: Any) -> str:
    types = canonical_types(spec)
    return sorted(types)[0] if types else "string"


def _value(spec: Any, label: str, variant: int) -> Any:
    """A tool result value of ``spec``'s type (results need not be grounded)."""
    enum = spec.get("enum") if isinstance(spec, dict) else None
    if isinstance(enum, list) and enum:
        return enum[variant % len(enum)]
    return {
        "string": f"{label} {variant + 1}",
        "number": 1.5 + variant,
        "integer": 1 + variant,
        "boolean": variant % 2 == 0,
        "array": [f"{label} {variant + 1}"],
        "object": {"key": f"{label} {variant + 1}"},
        "null": None,
    }[_kind(spec)]


class _Dialogue:
    """Argument values the dialogue so far has given: the user's words and the numbers
    of the user's request and of every tool result."""

    def __init__(self, request: LLMRequest) -> None:
        first_user = next(m.content for m in request.messages if m.role == "user")
        self.words = first_user.split(": ", 1)[-1].split()
        said = " ".join(m.content for m in request.messages[1:])
        self.numbers = [float(n) for n in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", said)]

    def argument(self, spec: Any, slot: int, variant: int) -> Any:
        enum = spec.get("enum") if isinstance(spec, dict) else None
        if isinstance(enum, list) and enum:
            return enum[variant % len(enum)]
        kind = _kind(spec)
        phrase = " ".join(self.words[(3 * variant + slot) % max(1, len(self.words) - 2):][:3])
        if kind in ("number", "integer"):
            number = self.numbers[(variant + slot) % len(self.numbers)] if self.numbers else 1.0
            return int(number) if kind == "integer" else number
        return {"boolean": variant % 2 == 0, "array": [phrase], "object": {"key": phrase}, "null": None}.get(
            kind, phrase
        )


_SUBTASK_LINE = re.compile(r"^(\d+)\. .*\(functions: ([^)]*)\)$", re.M)
_INDEPENDENT = re.compile(r"Sub-tasks ([\d and]+) do not depend on each other")


def _schedule(system: str) -> list[list[tuple[dict[str, Any], int]]]:
    """Calls per turn: (function, variant) pairs; variants keep repeated functions distinct."""
    functions = json.loads(_between(system, "<tool>", "</tool>"))
    parallel = PARALLEL_ON in system
    if len(functions) == 1:
        calls = [(functions[0], 0), (functions[0], 1)]
        return [calls] if parallel else [[c] for c in calls]
    by_name = {f["name"]: f for f in functions}
    plan = [(int(n), [x.strip() for x in names.split(",")]) for n, names in _SUBTASK_LINE.findall(system)]
    order = [by_name[x] for _, names in plan for x in names] or functions
    hint = _INDEPENDENT.search(system)
    together = {int(n) for n in hint.group(1).split(" and ")} if parallel and hint else set()
    first = [(by_name[x], 0) for n, names in plan if n in together for x in names]
    rest = [[(f, 0)] for f in order if (f, 0) not in first]
    return ([first] if first else []) + rest


def _assistant(request: LLMRequest) -> str:
    system = request.messages[0].content
    schedule = _schedule(system)
    turn = sum(1 for m in request.messages if m.role == "assistant")
    if turn >= len(schedule):
        return "All the results are in. <final>The task is done: every step returned its result.</final>"
    dialogue = _Dialogue(request)
    calls = [
        {
            "name": f["name"],
            "arguments": {
                p: dialogue.argument(f["parameters"].get(p, {}), slot, variant) for slot, p in enumerate(f["required"])
            },
        }
        for f, variant in schedule[turn]
    ]
    thought = "Plan: call each function in order." if turn == 0 else f"Next, I call {calls[0]['name']}."
    return f"{thought} <call>{dump_json(calls)}</call>"


def _tool(request: LLMRequest) -> str:
    prompt = request.messages[-1].content
    fn = json.loads(_between(prompt, "<tool>", "</tool>"))
    call = json.loads(_between(prompt, "<call>", "</call>"))
    seed = sum(map(ord, dump_json(call["arguments"]))) % 7
    return dump_json({k: _value(spec, k, seed) for k, spec in fn["responses"].items()})


def _user(request: LLMRequest) -> str:
    if len(request.messages) == 1:
        return "Hello, I need help with this: " + _between(request.messages[0].content, "<task>", "</task>")
    return "Yes, please go ahead with the details I gave."


def _judge(request: LLMRequest) -> str:
    return json.dumps({"reason": "The assistant used the tools and reported their results.",
                       "helpfulness": 5, "correctness": 5, "naturalness": 4})


def respond(request: LLMRequest) -> str | None:
    """A valid answer for a top-down agent request or the dialogue judge's (high scores),
    or None for other roles."""
    handler = {"user_agent": _user, "assistant_agent": _assistant, "tool_agent": _tool,
               "dialogue_judge": _judge}.get(request.role)
    return handler(request) if handler else None

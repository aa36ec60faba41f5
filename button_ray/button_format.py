"""The BUTTON output format (``docs/format.md``): rendering and a strict validator.

One record is ``{"messages": [...]}`` with roles ``system``, ``user``, ``assistant`` and
``tool``. Every JSON fragment inside a message uses one stable serialization,
:func:`dump_json`: ``json.dumps(value, ensure_ascii=False)`` with the default separators
(``", "`` and ``": "``), on one line, keys in insertion order. Concretely:

- ``{tool_list}`` in the system prompt is ``dump_json([f.as_button_dict() ...])``, each
  object holding exactly ``name, description, parameters, required, responses`` in
  that order;
- an assistant call turn is ``"<thought> <call>" + dump_json([{"name", "arguments"}, ...]) + "</call>"``;
- a final turn is ``"<thought> <final><answer></final>"``;
- a tool message is ``dump_json([{"name", "arguments", "results"}, ...])``.

The validator checks that serialization to the character, so a drift in any writer is
caught before data ships.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import fsspec

from button_ray.records import FunctionDef, ToolCall, Turn
from button_ray.templates import system_template

PARALLEL_OFF = (
    "You should call one function at a time, and wait for the response before calling the next function."
)
PARALLEL_ON = (
    "If possible, you can call multiple functions in parallel, be sure the functions called "
    "parallelly are independent of each other."
)
FUNCTION_FIELDS = ("name", "description", "parameters", "required", "responses")
CALL_OPEN, CALL_CLOSE = "<call>", "</call>"
FINAL_OPEN, FINAL_CLOSE = "<final>", "</final>"
_PLACEHOLDER = re.compile(r"\{(tool_list|parallel)\}")


def dump_json(value: Any) -> str:
    """The one JSON serialization used inside BUTTON messages (see the module docstring)."""
    return json.dumps(value, ensure_ascii=False)


def parallel_sentence(parallel: bool) -> str:
    """The exact BUTTON sentence that switches parallel calling on or off."""
    return PARALLEL_ON if parallel else PARALLEL_OFF


def tool_list_json(functions: Sequence[FunctionDef]) -> str:
    """``{tool_list}``: the functions as one JSON array (see the module docstring)."""
    return dump_json([f.as_button_dict() for f in functions])


def _fill(tool_list: str, parallel: str) -> str:
    # One pass over the template, so a function description that happens to contain
    # "{parallel}" is not substituted a second time.
    values = {"tool_list": tool_list, "parallel": parallel}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], system_template())


def render_system_prompt(functions: Sequence[FunctionDef], parallel: bool) -> str:
    """The BUTTON system prompt for ``functions`` with parallel calling on or off."""
    return _fill(tool_list_json(functions), parallel_sentence(parallel))


def calls_json(calls: Sequence[ToolCall]) -> str:
    """The JSON list inside ``<call>...</call>``."""
    return dump_json([{"name": c.name, "arguments": c.arguments} for c in calls])


def _with_thought(thought: str, tagged: str) -> str:
    return f"{thought} {tagged}" if thought else tagged


def assistant_content(turn: Turn) -> str:
    """An assistant turn as BUTTON text: prose, then ``<call>[...]</call>`` or ``<final>...</final>``.

    A turn with neither (a clarification question) is its prose alone.
    """
    if turn.calls:
        return _with_thought(turn.thought, f"{CALL_OPEN}{calls_json(turn.calls)}{CALL_CLOSE}")
    if turn.final is not None:
        return _with_thought(turn.thought, f"{FINAL_OPEN}{turn.final}{FINAL_CLOSE}")
    return turn.thought


def tool_content(calls: Sequence[ToolCall], results: Sequence[dict[str, Any]]) -> str:
    """A tool message: one ``{"name", "arguments", "results"}`` object per call, in order."""
    if len(calls) != len(results):
        raise ValueError(f"{len(calls)} calls but {len(results)} results")
    return dump_json(
        [{"name": c.name, "arguments": c.arguments, "results": r} for c, r in zip(calls, results)]
    )


def to_button_messages(
    functions: Sequence[FunctionDef], parallel: bool, turns: Sequence[Turn]
) -> list[dict[str, str]]:
    """The BUTTON ``messages`` list of a simulated dialogue (system prompt first)."""
    messages = [{"role": "system", "content": render_system_prompt(functions, parallel)}]
    last_calls: tuple[ToolCall, ...] = ()
    for turn in turns:
        if turn.role == "user":
            messages.append({"role": "user", "content": turn.content})
        elif turn.role == "assistant":
            messages.append({"role": "assistant", "content": assistant_content(turn)})
            last_calls = turn.calls
        else:
            messages.append({"role": "tool", "content": tool_content(last_calls, turn.results)})
    return messages


def _split_thought(content: str, tag: str) -> tuple[str, str]:
    """``(thought, rest)`` of an assistant message whose tagged part starts at ``tag``
    (the inverse of :func:`_with_thought`)."""
    thought, rest = content[: content.index(tag)], content[content.index(tag) :]
    return (thought[:-1] if thought.endswith(" ") else thought), rest


def parse_button_messages(messages: Sequence[dict[str, str]]) -> tuple[list[dict[str, Any]], bool, list[Turn]]:
    """The functions (as in ``{tool_list}``), the parallel mode and the dialogue of a valid
    BUTTON record: the inverse of :func:`to_button_messages`.

    Raises ``ValueError`` naming what is wrong when ``messages`` is not a valid record.
    """
    errors = validate_button_record({"messages": [dict(m) for m in messages]})
    if errors:
        raise ValueError("; ".join(errors[:3]))
    tool_list, parallel, _ = _split_system(messages[0]["content"])
    assert tool_list is not None and parallel is not None  # the validator checked both
    turns: list[Turn] = []
    for m in messages[1:]:
        role, content = m["role"], m["content"]
        if role == "user":
            turns.append(Turn(role="user", content=content))
        elif role == "tool":
            turns.append(Turn(role="tool", results=tuple(item["results"] for item in json.loads(content))))
        elif content.endswith(CALL_CLOSE):
            thought, tagged = _split_thought(content, CALL_OPEN)
            calls = json.loads(tagged[len(CALL_OPEN) : -len(CALL_CLOSE)])
            turns.append(Turn(role="assistant", thought=thought,
                              calls=tuple(ToolCall(name=c["name"], arguments=c["arguments"]) for c in calls)))
        elif content.endswith(FINAL_CLOSE):
            thought, tagged = _split_thought(content, FINAL_OPEN)
            turns.append(Turn(role="assistant", thought=thought, final=tagged[len(FINAL_OPEN) : -len(FINAL_CLOSE)]))
        else:
            turns.append(Turn(role="assistant", thought=content))
    return json.loads(tool_list), parallel, turns


# --------------------------------------------------------------------------- validation


def _split_system(content: str) -> tuple[str | None, bool | None, list[str]]:
    """Find the tool list and the parallel mode in a system prompt, or say why not."""
    template = system_template()
    head, _, tail = template.partition("{tool_list}")
    if not content.startswith(head):
        return None, None, ["system: text before {tool_list} differs from the BUTTON template"]
    for parallel in (False, True):
        suffix = tail.replace("{parallel}", parallel_sentence(parallel))
        if content.endswith(suffix) and len(content) >= len(head) + len(suffix):
            return content[len(head) : len(content) - len(suffix)], parallel, []
    return None, None, ["system: text after {tool_list} differs from the BUTTON template (or parallel sentence)"]


def _check_tool_list(text: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    try:
        tools = json.loads(text)
    except json.JSONDecodeError as exc:
        return {}, [f"system: tool_list is not JSON ({exc})"]
    if not isinstance(tools, list) or not tools:
        return {}, ["system: tool_list is not a non-empty JSON array"]
    errors: list[str] = []
    by_name: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tuple(tool) != FUNCTION_FIELDS:
            errors.append(f"system: tool {i} must have exactly the fields {list(FUNCTION_FIELDS)} in order")
            continue
        if not isinstance(tool["name"], str) or tool["name"] in by_name:
            errors.append(f"system: tool {i} has a missing or duplicate name")
            continue
        by_name[tool["name"]] = tool
    if not errors and dump_json(tools) != text:
        errors.append("system: tool_list is not in the stable serialization (json.dumps, ensure_ascii=False)")
    return by_name, errors


def _parse_calls(content: str, where: str, names: dict[str, Any]) -> tuple[list[Any] | None, list[str]]:
    if content.count(CALL_OPEN) != 1 or content.count(CALL_CLOSE) != 1 or not content.endswith(CALL_CLOSE):
        return None, [f"{where}: needs exactly one <call>...</call> at the end"]
    body = content[content.index(CALL_OPEN) + len(CALL_OPEN) : -len(CALL_CLOSE)]
    try:
        calls = json.loads(body)
    except json.JSONDecodeError as exc:
        return None, [f"{where}: call list is not JSON ({exc})"]
    if not isinstance(calls, list) or not calls:
        return None, [f"{where}: call list must be a non-empty JSON array"]
    errors = []
    for j, call in enumerate(calls):
        if not isinstance(call, dict) or tuple(call) != ("name", "arguments"):
            errors.append(f"{where}: call {j} must be exactly {{\"name\", \"arguments\"}}")
        elif call["name"] not in names:
            errors.append(f"{where}: call {j} names unknown function {call['name']!r}")
        elif not isinstance(call["arguments"], dict):
            errors.append(f"{where}: call {j} arguments must be an object")
    if not errors and dump_json(calls) != body:
        errors.append(f"{where}: call list is not in the stable serialization")
    return (calls if not errors else None), errors


def _check_tool_message(content: str, calls: list[Any], where: str) -> list[str]:
    try:
        items = json.loads(content)
    except json.JSONDecodeError as exc:
        return [f"{where}: tool message is not JSON ({exc})"]
    if not isinstance(items, list) or len(items) != len(calls):
        return [f"{where}: tool message must be a JSON array with one object per call ({len(calls)})"]
    errors = []
    for j, (item, call) in enumerate(zip(items, calls)):
        if not isinstance(item, dict) or tuple(item) != ("name", "arguments", "results"):
            errors.append(f"{where}: item {j} must be exactly {{\"name\", \"arguments\", \"results\"}}")
        elif item["name"] != call["name"] or item["arguments"] != call["arguments"]:
            errors.append(f"{where}: item {j} does not match call {j} of the preceding assistant message")
        elif not isinstance(item["results"], dict):
            errors.append(f"{where}: item {j} results must be an object")
    if not errors and dump_json(items) != content:
        errors.append(f"{where}: tool message is not in the stable serialization")
    return errors


def validate_button_record(record: Any) -> list[str]:
    """Every way ``record`` departs from the BUTTON format; an empty list means valid."""
    if not isinstance(record, dict) or list(record) != ["messages"]:
        return ['record must be an object with exactly one key, "messages"']
    messages = record["messages"]
    if not isinstance(messages, list) or len(messages) < 3:
        return ["messages must be a list of at least system, user and a final assistant message"]
    errors: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"} or not isinstance(m.get("content"), str):
            errors.append(f"message {i}: must be exactly {{\"role\": str, \"content\": str}}")
        elif m["role"] not in ("system", "user", "assistant", "tool"):
            errors.append(f"message {i}: unknown role {m['role']!r}")
    if errors:
        return errors
    if messages[0]["role"] != "system":
        return ["message 0: must be the system message"]
    tool_list, parallel, errors = _split_system(messages[0]["content"])
    if tool_list is None:
        return errors
    names, errors = _check_tool_list(tool_list)
    if messages[1]["role"] != "user" or not messages[1]["content"].strip():
        errors.append("message 1: must be a non-empty user message")

    # After a user or tool message comes an assistant; after an assistant with calls a
    # tool message; after a clarification (prose only) a user reply; a final ends it.
    expected = "assistant"
    pending_calls: list[Any] = []
    for i, m in enumerate(messages[2:], start=2):
        where = f"message {i}"
        role, content = m["role"], m["content"]
        if role != expected:
            errors.append(f"{where}: expected role {expected!r}, got {role!r}")
            break
        if role == "user":
            if not content.strip():
                errors.append(f"{where}: empty user message")
            expected = "assistant"
        elif role == "tool":
            errors += _check_tool_message(content, pending_calls, where)
            expected = "assistant"
        elif CALL_OPEN in content or CALL_CLOSE in content:
            if FINAL_OPEN in content or FINAL_CLOSE in content:
                errors.append(f"{where}: <call> and <final> in the same message")
                break
            calls, call_errors = _parse_calls(content, where, names)
            errors += call_errors
            if calls is None:
                break
            if parallel is False and len(calls) != 1:
                errors.append(f"{where}: parallel calling is off but the turn holds {len(calls)} calls")
            pending_calls = calls
            expected = "tool"
        elif FINAL_OPEN in content or FINAL_CLOSE in content:
            ok = (
                content.count(FINAL_OPEN) == 1
                and content.count(FINAL_CLOSE) == 1
                and content.endswith(FINAL_CLOSE)
                and content.index(FINAL_OPEN) + len(FINAL_OPEN) < len(content) - len(FINAL_CLOSE)
            )
            if not ok:
                errors.append(f"{where}: needs exactly one non-empty <final>...</final> at the end")
            if i != len(messages) - 1:
                errors.append(f"{where}: a final answer must be the last message")
            break
        else:
            if not content.strip():
                errors.append(f"{where}: empty assistant message")
            expected = "user"
    last = messages[-1]
    if last["role"] != "assistant" or not last["content"].endswith(FINAL_CLOSE) or FINAL_OPEN not in last["content"]:
        errors.append("last message: must be an assistant message ending in <final>...</final>")
    return errors


# --------------------------------------------------------------------------- parsing


class ParsedRecord(NamedTuple):
    """A BUTTON record read back into what the filters check."""

    functions: tuple[FunctionDef, ...]
    parallel: bool
    turns: tuple[Turn, ...]


def _assistant_turn(content: str, names: dict[str, Any]) -> Turn:
    if CALL_OPEN in content:
        calls, _ = _parse_calls(content, "", names)
        thought = content[: content.index(CALL_OPEN)].strip()
        return Turn(role="assistant", thought=thought, calls=tuple(ToolCall(**c) for c in calls or ()))
    if FINAL_OPEN in content:
        thought, _, rest = content.partition(FINAL_OPEN)
        return Turn(role="assistant", thought=thought.strip(), final=rest[: -len(FINAL_CLOSE)])
    return Turn(role="assistant", thought=content)


def parse_button_record(record: Any) -> ParsedRecord:
    """The functions, parallel mode and dialogue turns of a BUTTON record.

    Raises ``ValueError`` naming the first problems when ``record`` is not valid (see
    :func:`validate_button_record`) or a function in its tool list is not a valid
    :class:`FunctionDef`.
    """
    errors = validate_button_record(record)
    if errors:
        raise ValueError("; ".join(errors[:3]))
    messages = record["messages"]
    tool_list, parallel, _ = _split_system(messages[0]["content"])
    by_name, _ = _check_tool_list(tool_list or "")
    functions = tuple(FunctionDef.model_validate(tool) for tool in by_name.values())
    turns: list[Turn] = []
    for m in messages[1:]:
        if m["role"] == "user":
            turns.append(Turn(role="user", content=m["content"]))
        elif m["role"] == "assistant":
            turns.append(_assistant_turn(m["content"], by_name))
        else:
            turns.append(Turn(role="tool", results=tuple(item["results"] for item in json.loads(m["content"]))))
    return ParsedRecord(functions=functions, parallel=bool(parallel), turns=tuple(turns))


def validate_jsonl(path: str | Path, max_errors: int = 10) -> dict[str, Any]:
    """Validate a BUTTON JSON Lines file (local or any fsspec URI):
    ``{"valid", "invalid", "errors": [{"line", "errors"}]}``.

    ``errors`` holds the first ``max_errors`` invalid lines (1-based line numbers); blank
    lines count as invalid, since a BUTTON file has one record per line.
    """
    valid = invalid = 0
    first: list[dict[str, Any]] = []
    with fsspec.open(str(path), "r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            try:
                problems = validate_button_record(json.loads(line))
            except json.JSONDecodeError as exc:
                problems = [f"not JSON: {exc}"]
            if problems:
                invalid += 1
                if len(first) < max_errors:
                    first.append({"line": lineno, "errors": problems[:5]})
            else:
                valid += 1
    return {"valid": valid, "invalid": invalid, "errors": first}

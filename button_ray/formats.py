"""A BUTTON record in the forms trainers read (the mapping is documented in ``docs/formats.md``).

- **OpenAI tool calling** (TRL, axolotl, any chat template that reads ``tools`` and
  ``tool_calls``): :func:`to_openai` gives ``{"messages": [...], "tools": [...]}``.
- **ShareGPT as LLaMA-Factory reads it**: :func:`to_sharegpt` gives ``{"conversations":
  [...], "system": ..., "tools": <JSON string>}``; :func:`sharegpt_dataset_info` the
  ``dataset_info.json`` entry that registers a file of them.

Both start from the exact BUTTON ``messages`` (:func:`button_ray.button_format.parse_button_messages`),
so every form carries the same calls, arguments and results. Plain Python: used by the
sink's row building (:func:`button_ray.records.item_row`) and by the exports alike.
"""

from __future__ import annotations

from typing import Any, Sequence

from button_ray.button_format import dump_json, parallel_sentence, parse_button_messages
from button_ray.records import Turn
from button_ray.specs import canonical_types

#: LLaMA-Factory's ShareGPT role tags (its defaults, written out in the dataset_info entry).
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
#: LLaMA-Factory's FunctionFormatter cuts a leading <think>...</think> off a function_call
#: value before it parses the JSON and puts it back in front of the rendered call: the one
#: place where a call turn's prose can stay beside its calls in that layout.
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def json_schema(spec: Any) -> dict[str, Any]:
    """A BUTTON parameter spec as JSON Schema, keeping every key it has.

    Type names go through the aliases the trajectory filter uses (``str`` -> ``string``,
    ``list`` -> ``array``, ...); a type the filter cannot check (``"date"``, none) is left
    out, since the filter lets any value through for it. ``items`` and ``properties`` are
    converted recursively; a ``required`` that is not a list (a per-property ``true``,
    JSON Schema draft 3) is dropped because later drafts reject it.
    """
    if not isinstance(spec, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "type":
            types = sorted(canonical_types(spec))
            if types:
                out["type"] = types[0] if len(types) == 1 else types
        elif key == "items" and isinstance(value, dict):
            out["items"] = json_schema(value)
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {name: json_schema(sub) for name, sub in value.items()}
        elif key == "required" and not isinstance(value, list):
            continue
        else:
            out[key] = value
    return out


def parameters_schema(function: dict[str, Any]) -> dict[str, Any]:
    """A BUTTON function's ``parameters`` and ``required`` as one JSON Schema object."""
    return {
        "type": "object",
        "properties": {name: json_schema(spec) for name, spec in function["parameters"].items()},
        "required": list(function.get("required", [])),
    }


def _function_object(function: dict[str, Any]) -> dict[str, Any]:
    # ``responses`` has no place in a tool definition: the results are in the tool messages.
    return {"name": function["name"], "description": function["description"],
            "parameters": parameters_schema(function)}


def openai_tools(functions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """BUTTON function objects as OpenAI ``tools``."""
    return [{"type": "function", "function": _function_object(f)} for f in functions]


def call_id(n: int) -> str:
    """The id of a trajectory's ``n``-th call: 9 letters and digits, which Mistral's
    templates require, and unique within the trajectory."""
    return f"call{n:05d}"


def _final_text(turn: Turn) -> str:
    # The final turn's prose stays in front of the answer, as an assistant would say it.
    assert turn.final is not None
    return f"{turn.thought}\n\n{turn.final}" if turn.thought else turn.final


def to_openai(messages: Sequence[dict[str, str]]) -> dict[str, Any]:
    """``{"messages", "tools"}`` in the OpenAI tool-calling form of a BUTTON record.

    The system message is the record's parallel-calling sentence (the tool list moves to
    ``tools``, and the ``<call>`` tag syntax has no place here). A call turn is an
    assistant message whose ``content`` is the turn's thought and whose ``tool_calls``
    hold the calls, ``arguments`` as a JSON string; each result is a ``tool`` message
    with the call's ``tool_call_id`` and the result object as JSON; the final turn's
    ``content`` is its thought, a blank line and the answer.
    """
    functions, parallel, turns = parse_button_messages(messages)
    out: list[dict[str, Any]] = [{"role": "system", "content": parallel_sentence(parallel)}]
    ids: list[str] = []
    n = 0
    for turn in turns:
        if turn.role == "user":
            out.append({"role": "user", "content": turn.content})
        elif turn.role == "tool":
            out += [{"role": "tool", "tool_call_id": i, "content": dump_json(r)} for i, r in zip(ids, turn.results)]
        elif turn.calls:
            ids = [call_id(n + j) for j in range(len(turn.calls))]
            n += len(turn.calls)
            out.append({"role": "assistant", "content": turn.thought, "tool_calls": [
                {"id": i, "type": "function", "function": {"name": c.name, "arguments": dump_json(c.arguments)}}
                for i, c in zip(ids, turn.calls)]})
        else:
            out.append({"role": "assistant", "content": turn.thought if turn.final is None else _final_text(turn)})
    return {"messages": out, "tools": openai_tools(functions)}


def _one_or_list(values: list[Any]) -> str:
    return dump_json(values[0] if len(values) == 1 else values)


def to_sharegpt(messages: Sequence[dict[str, str]]) -> dict[str, Any]:
    """A BUTTON record in LLaMA-Factory's ShareGPT layout.

    ``conversations`` alternate ``human``/``observation`` (odd positions) with
    ``gpt``/``function_call`` (even positions). A call turn is one ``function_call``
    whose value is ``{"name", "arguments"}`` as JSON, or a JSON list of them for
    parallel calls, after the turn's thought in ``<think>...</think>``; its results are
    one ``observation`` (the result object, or the list of them in call order). The final
    turn is a ``gpt`` turn like the OpenAI form's. ``system`` is the parallel-calling
    sentence and ``tools`` the function objects (name, description, JSON Schema
    parameters) as a JSON string.
    """
    functions, parallel, turns = parse_button_messages(messages)
    conversations: list[dict[str, str]] = []
    for turn in turns:
        if turn.role == "user":
            conversations.append({"from": "human", "value": turn.content})
        elif turn.role == "tool":
            conversations.append({"from": "observation", "value": _one_or_list(list(turn.results))})
        elif turn.calls:
            calls = _one_or_list([{"name": c.name, "arguments": c.arguments} for c in turn.calls])
            think = f"{THINK_OPEN}{turn.thought}{THINK_CLOSE}" if turn.thought else ""
            conversations.append({"from": "function_call", "value": think + calls})
        else:
            conversations.append({"from": "gpt", "value": turn.thought if turn.final is None else _final_text(turn)})
    return {"conversations": conversations, "system": parallel_sentence(parallel),
            "tools": dump_json([_function_object(f) for f in functions])}


def sharegpt_dataset_info(name: str, file_name: str) -> dict[str, Any]:
    """The ``dataset_info.json`` entry that registers ``file_name`` (a file or a folder of
    parts, relative to LLaMA-Factory's ``dataset_dir``) as dataset ``name``."""
    return {name: {"file_name": file_name, "formatting": "sharegpt",
                   "columns": {"messages": "conversations", "system": "system", "tools": "tools"},
                   "tags": dict(SHAREGPT_TAGS)}}

"""Function specs: the types of parameters and results as generated functions spell
them, and checking values and calls against them. Shared by the function stage, the
agents' grammars, the trajectory filter, the content rules and the training formats.

Generated definitions use JSON-schema-ish type names and sometimes Python's (``str``,
``int``, ``list``, ``dict``). Everything here maps them onto six canonical types;
a type it does not know (``"date"``, a missing type) accepts any value, because the
filter must not reject a trajectory for a definition the function writer left vague.
"""

from __future__ import annotations

import json
from typing import Any

from button_ray.records import FunctionDef, ToolCall

_ALIASES = {
    "string": "string", "str": "string", "text": "string",
    "number": "number", "float": "number", "double": "number", "decimal": "number",
    "integer": "integer", "int": "integer", "long": "integer",
    "boolean": "boolean", "bool": "boolean",
    "array": "array", "list": "array", "tuple": "array",
    "object": "object", "dict": "object", "map": "object",
    "null": "null", "none": "null",
}  # fmt: skip


def canonical_types(spec: dict[str, Any] | Any) -> set[str]:
    """The canonical types a parameter/result spec allows; empty means "anything"."""
    raw = spec.get("type") if isinstance(spec, dict) else None
    names = raw if isinstance(raw, list) else [raw]
    out = {_ALIASES.get(n.strip().lower()) for n in names if isinstance(n, str)}
    out.discard(None)
    # A union with an unknown member cannot be checked, so it allows anything.
    if len(out) != len(names):
        return set()
    return out  # type: ignore[return-value]


def value_matches(value: Any, types: set[str]) -> bool:
    """Whether ``value`` (parsed JSON) has one of ``types`` (empty set: anything)."""
    if not types:
        return True
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    checks = {
        "string": isinstance(value, str),
        "number": is_num,
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
        "null": value is None,
    }
    return any(checks[t] for t in types)


def value_problem(value: Any, spec: Any, path: str) -> tuple[str, str] | None:
    """``(reason, detail)`` if ``value`` breaks ``spec`` (its type, its ``enum``, and
    recursively an array's ``items`` and an object's ``properties``/``required``)."""
    if not value_matches(value, canonical_types(spec)):
        return "wrong_argument_type", f"{path}={json.dumps(value, ensure_ascii=False)[:80]}"
    if not isinstance(spec, dict):
        return None
    enum = spec.get("enum")
    if isinstance(enum, list) and enum and value not in enum:
        return "argument_not_in_enum", f"{path}={json.dumps(value, ensure_ascii=False)[:80]}"
    items = spec.get("items")
    if isinstance(value, list) and isinstance(items, dict):
        for i, element in enumerate(value):
            problem = value_problem(element, items, f"{path}[{i}]")
            if problem:
                return problem
    props = spec.get("properties")
    if isinstance(value, dict) and isinstance(props, dict):
        for name in spec.get("required") or ():
            if name not in value:
                return "missing_required_argument", f"{path}.{name}"
        for name, element in value.items():
            if name in props:
                problem = value_problem(element, props[name], f"{path}.{name}")
                if problem:
                    return problem
    return None


def call_problem(call: ToolCall, functions: dict[str, FunctionDef]) -> tuple[str, str] | None:
    """``(reason, detail)`` if ``call`` breaks its function's definition, else None."""
    fn = functions.get(call.name)
    if fn is None:
        return "unknown_function", call.name
    for name in fn.required:
        if name not in call.arguments:
            return "missing_required_argument", f"{call.name}.{name}"
    for name, value in call.arguments.items():
        spec = fn.parameters.get(name)
        if spec is not None:
            problem = value_problem(value, spec, f"{call.name}.{name}")
            if problem:
                return problem
    return None


def call_key(call: ToolCall) -> str:
    """Identity of a call: same name and same arguments (key order ignored)."""
    return json.dumps([call.name, call.arguments], sort_keys=True, ensure_ascii=False)

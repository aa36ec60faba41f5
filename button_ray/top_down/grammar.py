"""The GBNF grammar (xgrammar dialect, as vLLM structured outputs take it) of an assistant turn.

Shape: bounded free thought (no ``<``, so it cannot open a tag; string values exclude
it too, so no value can close one), then either
``<call>[...]</call>`` or ``<final>...</final>``. A call is
``{"name": "<one of the trajectory's functions>", "arguments": {...}}`` and the
arguments follow that function's parameters: required keys first in declaration
order, then optional keys (each optional, order kept), values typed and bounded.
The grammar emits exactly the stable serialization of ``button_format.dump_json``
(``", "`` and ``": "`` separators), so a constrained turn is already canonical.

One grammar per trajectory, identical on every turn, so the engine compiles it once.
"""

from __future__ import annotations

from typing import Any, Sequence

from button_ray.button_format import dump_json
from button_ray.records import FunctionDef
from button_ray.top_down.schema import canonical_types

_MAX_LIST_ITEMS = 4
_MAX_OBJECT_KEYS = 4


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _json_literal(value: Any) -> str:
    return gbnf_literal(dump_json(value))


_BASE_RULES = r"""
jstr ::= "\"" [^"\\<\x00-\x1f]{0,%(v)d} "\""
jint ::= "-"? ("0" | [1-9] [0-9]{0,11})
jnum ::= jint ("." [0-9]{1,6})?
jbool ::= "true" | "false"
jscalar ::= jstr | jnum | jbool
jobj ::= "{" (jstr ": " jscalar (", " jstr ": " jscalar){0,%(k)d})? "}"
"""


def _value_rule(spec: Any) -> str:
    """The grammar expression of one parameter value."""
    enum = spec.get("enum") if isinstance(spec, dict) else None
    if isinstance(enum, list) and enum and all(isinstance(e, (str, int, float, bool)) for e in enum):
        return "(" + " | ".join(_json_literal(e) for e in enum) + ")"
    types = canonical_types(spec)
    if len(types) != 1:
        return "jscalar"
    (t,) = types
    if t == "array":
        items = spec.get("items") if isinstance(spec, dict) else None
        inner = _value_rule(items) if isinstance(items, dict) and items else "jscalar"
        if inner in ("jlist", "jobj"):
            inner = "jscalar"  # nested containers are rare and would make the grammar recursive
        return f'("[" ({inner} (", " {inner}){{0,{_MAX_LIST_ITEMS - 1}}})? "]")'
    return {"string": "jstr", "number": "jnum", "integer": "jint", "boolean": "jbool",
            "object": "jobj", "null": '"null"'}[t]  # fmt: skip


def _arguments_expr(fn: FunctionDef) -> str:
    """The arguments object of ``fn``: required keys in order, then optional keys."""

    def pair(name: str) -> str:
        return f"{_json_literal(name)} \": \" {_value_rule(fn.parameters.get(name, {}))}"

    required = [p for p in fn.required if p in fn.parameters]
    optional = [p for p in fn.parameters if p not in required]
    if required:
        parts = [pair(required[0])] + [f'", " {pair(p)}' for p in required[1:]]
        parts += [f'(", " {pair(p)})?' for p in optional]
        return '"{" ' + " ".join(parts) + ' "}"'
    if not optional:
        return '"{}"'
    # No required key: the first present optional key carries no leading comma.
    starts = [
        " ".join([pair(p)] + [f'(", " {pair(q)})?' for q in optional[i + 1 :]]) for i, p in enumerate(optional)
    ]
    return '"{" (' + " | ".join(f"({s})" for s in starts) + ')? "}"'


def assistant_grammar(
    functions: Sequence[FunctionDef],
    *,
    parallel: bool,
    thought_max_chars: int,
    final_max_chars: int,
    value_max_chars: int,
    max_calls_per_turn: int,
) -> str:
    """The GBNF grammar of one assistant turn for this trajectory (see the module docstring)."""
    extra_calls = max(0, max_calls_per_turn - 1) if parallel else 0
    lines = [
        "root ::= thought (callblock | finalblock)",
        f"thought ::= [^<]{{1,{thought_max_chars}}}",
        f'callblock ::= "<call>[" call (", " call){{0,{extra_calls}}} "]</call>"'
        if extra_calls
        else 'callblock ::= "<call>[" call "]</call>"',
        f'finalblock ::= "<final>" [^<]{{1,{final_max_chars}}} "</final>"',
        "call ::= " + " | ".join(f"fn{i}" for i in range(len(functions))),
    ]
    for i, fn in enumerate(functions):
        head = gbnf_literal(f'{{"name": {dump_json(fn.name)}, "arguments": ')
        lines.append(f'fn{i} ::= {head} {_arguments_expr(fn)} "}}"')
    base = _BASE_RULES % {"v": value_max_chars, "n": _MAX_LIST_ITEMS - 1, "k": _MAX_OBJECT_KEYS - 1}
    return "\n".join(lines) + "\n" + base.strip() + "\n"

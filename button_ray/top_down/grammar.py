"""GBNF grammars (xgrammar dialect, as vLLM structured outputs take them) for the agents.

Assistant turn: bounded free thought, then either ``<call>[...]</call>`` or
``<final>...</final>``. A call is ``{"name": "<one of the trajectory's functions>",
"arguments": {...}}`` and the arguments follow that function's parameters: required
keys first in declaration order, then optional keys (each optional, order kept),
values typed and bounded. Tool result: the JSON object of the function's
``responses``, every key present in order, values typed and bounded. User message:
bounded prose. The JSON emitted is exactly the stable serialization of
``button_format.dump_json`` (``", "`` and ``": "`` separators), so constrained output
is already canonical. No free text may contain ``<``, so none can open or close a tag.

Bounds, and why they look like this: text is a bounded number of words (see
:func:`schema.word_bound`), each word a bounded run of visible characters. Both
bounds matter. Without a word-length bound a 135M model, out of words, glues
characters together until ``max_tokens`` (seen on SmolLM2-135M: 80% truncated turns).
A plain character bound (``[^<]{1,400}``) compiles slowly, because xgrammar builds a
token mask per position: measured ~1 s per grammar on the SmolLM2 vocabulary, and a
JSON schema ``maxLength`` the same, against ~0.04 s for bounded words. That is why the
tool result is a grammar rather than a JSON schema.

One assistant grammar per trajectory, identical on every turn, so the engine compiles
it once; with steering (``MethodConfig.steer_calls``) one per distinct set of
still-callable functions, each compiled in milliseconds.
"""

from __future__ import annotations

from typing import Any, Sequence

from button_ray.button_format import dump_json
from button_ray.records import FunctionDef
from button_ray.top_down.schema import canonical_types, word_bound

#: Longest word of prose (thought, final answer, user message), in characters.
PROSE_WORD_CHARS = 16
#: Longest space-free run inside a JSON string value (dates, e-mail addresses, ids).
VALUE_WORD_CHARS = 24
_MAX_LIST_ITEMS = 4
_MAX_OBJECT_KEYS = 4
_MAX_DEPTH = 2

_PROSE_RULES = rf"""
word ::= [^<\x00-\x20]{{1,{PROSE_WORD_CHARS}}}
sep ::= " " | "\n" | "\n\n"
"""
#: Characters a *plain* prose word may not hold (``MethodConfig.plain_prose``): besides
#: ``<``, the marks of code and JSON, so a thought or an answer cannot be a code block,
#: a pasted call list or a JSON object.
PLAIN_PROSE_FORBIDDEN = r"<>{}\[\]`\\_|"
_PLAIN_PROSE_RULES = rf"""
word ::= [^{PLAIN_PROSE_FORBIDDEN}\x00-\x20]{{1,{PROSE_WORD_CHARS}}}
sep ::= " " | "\n" | "\n\n"
"""


def _prose_rules(plain: bool) -> str:
    return (_PLAIN_PROSE_RULES if plain else _PROSE_RULES).strip()
_JSON_RULES = rf"""
jstr ::= "\"" (vword (" " vword){{0,%(v)d}})? "\""
vword ::= [^"\\<\x00-\x20]{{1,{VALUE_WORD_CHARS}}}
jint ::= "-"? ("0" | [1-9] [0-9]{{0,11}})
jnum ::= jint ("." [0-9]{{1,6}})?
jbool ::= "true" | "false"
jscalar ::= jstr | jnum | jbool
jobj ::= "{{" (jstr ": " jscalar (", " jstr ": " jscalar){{0,{_MAX_OBJECT_KEYS - 1}}})? "}}"
"""


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _json_literal(value: Any) -> str:
    return gbnf_literal(dump_json(value))


def _prose(max_chars: int) -> str:
    """At most ``word_bound(max_chars) + 1`` words; the last separator may precede a tag."""
    return f"word (sep word){{0,{word_bound(max_chars)}}} sep?"


def _json_rules(value_max_chars: int) -> str:
    return (_JSON_RULES % {"v": word_bound(value_max_chars) - 1}).strip()


def _value_expr(spec: Any, depth: int = 0) -> str:
    """The grammar expression of one JSON value described by a parameter/result ``spec``."""
    enum = spec.get("enum") if isinstance(spec, dict) else None
    if isinstance(enum, list) and enum and all(isinstance(e, (str, int, float, bool)) for e in enum):
        return "(" + " | ".join(_json_literal(e) for e in enum) + ")"
    types = canonical_types(spec)
    if len(types) != 1:
        return "jscalar"
    (t,) = types
    if t == "array":
        items = spec.get("items") if isinstance(spec, dict) else None
        inner = _value_expr(items, depth + 1) if isinstance(items, dict) and depth < _MAX_DEPTH else "jscalar"
        return f'("[" ({inner} (", " {inner}){{0,{_MAX_LIST_ITEMS - 1}}})? "]")'
    if t == "object":
        props = spec.get("properties") if isinstance(spec, dict) else None
        if isinstance(props, dict) and props and depth < _MAX_DEPTH:
            return _object_expr(props, depth + 1)
        return "jobj"
    return {"string": "jstr", "number": "jnum", "integer": "jint", "boolean": "jbool", "null": '"null"'}[t]


def _object_expr(props: dict[str, Any], depth: int) -> str:
    """An object holding every key of ``props``, in order."""
    pairs = [f'{_json_literal(k)} ": " {_value_expr(v, depth)}' for k, v in props.items()]
    return '("{" ' + ' ", " '.join(pairs) + ' "}")'


def _arguments_expr(fn: FunctionDef) -> str:
    """The arguments object of ``fn``: required keys in order, then optional keys."""

    def pair(name: str) -> str:
        return f'{_json_literal(name)} ": " {_value_expr(fn.parameters.get(name, {}))}'

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
    callable_names: Sequence[str] | None = None,
    allow_final: bool = True,
    plain_prose: bool = False,
) -> str:
    """The grammar of one assistant turn (see the module docstring).

    ``callable_names`` None: any function, any number of times (``max_calls_per_turn``
    calls per turn when ``parallel``). Given (steering, ``MethodConfig.steer_calls``): only
    those functions, each at most once per turn, in function-list order, so a turn holds
    distinct calls; empty: no call at all. ``allow_final`` False: no final answer. At
    least one of the two must remain possible. ``plain_prose``: the thought and the final
    answer hold none of :data:`PLAIN_PROSE_FORBIDDEN`.
    """
    steered = callable_names is not None
    names = set(callable_names or ()) if steered else {f.name for f in functions}
    allowed = [i for i, f in enumerate(functions) if f.name in names]
    max_calls = max(1, max_calls_per_turn) if parallel else 1
    if not allowed and not allow_final:
        raise ValueError("a turn must allow a call or a final answer")
    blocks = (["callblock"] if allowed else []) + (["finalblock"] if allow_final else [])
    lines = [
        f"root ::= thought ({' | '.join(blocks)})",
        f"thought ::= {_prose(thought_max_chars)}",
    ]
    if allow_final:
        lines.append(f'finalblock ::= "<final>" {_prose(final_max_chars)} "</final>"')
    if allowed and not steered:
        extra = max_calls - 1
        lines.append(
            f'callblock ::= "<call>[" call (", " call){{0,{extra}}} "]</call>"'
            if extra
            else 'callblock ::= "<call>[" call "]</call>"'
        )
        lines.append("call ::= " + " | ".join(f"fn{i}" for i in allowed))
    elif allowed:
        # Distinct calls in list order: after fn i (with r more calls allowed) come
        # only functions after i. One rule per (function, calls left).
        lines.append('callblock ::= "<call>[" calls' + str(max_calls) + ' "]</call>"')
        for left in range(1, max_calls + 1):
            lines.append(f"calls{left} ::= " + " | ".join(f"fn{i} more{i}_{left - 1}" for i in allowed))
            for i in allowed:
                later = [j for j in allowed if j > i]
                if left - 1 and later:
                    alts = " | ".join(f"fn{j} more{j}_{left - 2}" for j in later)
                    lines.append(f'more{i}_{left - 1} ::= ("" | ", " ({alts}))')
                else:
                    lines.append(f'more{i}_{left - 1} ::= ""')
    for i in allowed:
        fn = functions[i]
        head = gbnf_literal(f'{{"name": {dump_json(fn.name)}, "arguments": ')
        lines.append(f'fn{i} ::= {head} {_arguments_expr(fn)} "}}"')
    return "\n".join(lines + [_prose_rules(plain_prose), _json_rules(value_max_chars)]) + "\n"


def user_message_grammar(max_chars: int, openers: Sequence[str] = (), plain_prose: bool = False) -> str:
    """The grammar of a user-agent message: bounded prose, no tags; with ``openers``, it
    starts with one of them (each followed by a space, then the prose); ``plain_prose``
    as in :func:`assistant_grammar`."""
    body = f"word (sep word){{0,{word_bound(max_chars)}}}"
    if openers:
        body = "(" + " | ".join(gbnf_literal(o.strip() + " ") for o in openers) + ") " + body
    return f"root ::= {body}\n{_prose_rules(plain_prose)}\n"


def tool_result_grammar(fn: FunctionDef, value_max_chars: int) -> str:
    """The grammar of ``fn``'s result: every declared response key, in order, typed and bounded.

    A function that declares no responses may return any small flat object.
    """
    root = _object_expr(fn.responses, 1) if fn.responses else "jobj"
    return f"root ::= {root}\n{_json_rules(value_max_chars)}\n"

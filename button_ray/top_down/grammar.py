"""GBNF grammars (xgrammar dialect, as vLLM structured outputs take them) for the agents.

Assistant turn: free thought, then ``<call>[...]</call>``, ``<final>...</final>`` or (a
clarification question, where allowed) nothing. A call is ``{"name": "<one of the
trajectory's functions>", "arguments": {...}}`` and the arguments follow that function's
parameters: required keys first in declaration order, then optional keys (each optional,
order kept), values typed per their spec (``enum``, ``items``, nested ``properties`` with
their ``required``). Tool result: the JSON object of the function's ``responses``, every
key present in order, nested where declared. The JSON emitted is exactly the stable
serialization of ``button_format.dump_json`` (``", "`` and ``": "`` separators), so
constrained output is already canonical. No free text may contain ``<``, so none can
open or close a tag.

Two strengths (``config.Strength``, docs/constraints.md):

- ``structure`` guarantees the shape and nothing else: prose and strings of any length
  (strings with JSON escapes), arrays and objects of any size, numbers of any size;
  ``max_tokens`` is the only bound. For strong models.
- ``tight`` adds the bounds of ``config.TightConstraints``: text is a bounded number of
  words (see :func:`button_ray.gbnf.word_bound`), each word a bounded run of visible characters.
  Both bounds matter. Without a word-length bound a 135M model, out of words, glues
  characters together until ``max_tokens`` (seen on SmolLM2-135M: 80% truncated turns).
  A plain character bound (``[^<]{1,400}``) compiles slowly, because xgrammar builds a
  token mask per position: measured ~1 s per grammar on the SmolLM2 vocabulary, and a
  JSON schema ``maxLength`` the same, against ~0.04 s for bounded words. That is why the
  tool result is a grammar rather than a JSON schema. Unbounded repetitions (``*``)
  compile as fast as bounded words.

One assistant grammar per trajectory, identical on every turn, so the engine compiles
it once; with steering (``MethodConfig.steer_calls``) one per distinct set of
still-callable functions, each compiled in milliseconds.
"""

from __future__ import annotations

from typing import Any, Sequence

from button_ray.button_format import dump_json
from button_ray.config import Strength, TightConstraints
from button_ray.gbnf import BOUNDED_SCALAR_RULES, gbnf_literal, json_literal, word_bound
from button_ray.records import FunctionDef
from button_ray.specs import canonical_types

#: Characters a *plain* prose word may not hold (``TightConstraints.plain_prose``): besides
#: ``<``, the marks of code and JSON, so a thought or an answer cannot be a code block,
#: a pasted call list or a JSON object.
PLAIN_PROSE_FORBIDDEN = r"<>{}\[\]`\\_|"
# Nesting followed in a tight grammar; deeper values are flat scalars/objects.
_TIGHT_DEPTH = 2

_STRUCTURE_JSON_RULES = r"""
jstr ::= "\"" jchar* "\""
jchar ::= [^"\\\x00-\x1f] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
jint ::= "-"? ("0" | [1-9] [0-9]*)
jnum ::= jint ("." [0-9]+)? ([eE] [-+]? [0-9]+)?
jbool ::= "true" | "false"
jvalue ::= jstr | jnum | jbool | "null" | jarr | jobj
jarr ::= "[" (jvalue (", " jvalue)*)? "]"
jobj ::= "{" (jstr ": " jvalue (", " jstr ": " jvalue)*)? "}"
jscalar ::= jvalue
"""


class _Rules:
    """The shared rules of one grammar at one strength: prose, JSON values; with
    ``grounded`` (strings, numbers), string and number values are those of the dialogue
    (``TightConstraints.grounded_arguments``)."""

    def __init__(
        self,
        strength: Strength,
        tight: TightConstraints,
        grounded: tuple[Sequence[str], Sequence[float]] | None = None,
    ) -> None:
        self.tight = tight if strength == "tight" else None
        strings, numbers = grounded or ((), ())
        ints = [n for n in numbers if float(n).is_integer()]
        self.grounded = {
            "jstr": "(" + " | ".join(gbnf_literal(dump_json(v)) for v in strings) + ")" if strings else None,
            "jint": "(" + " | ".join(gbnf_literal(str(int(n))) for n in ints) + ")" if ints else None,
            "jnum": "(" + " | ".join(gbnf_literal(dump_json(int(n) if float(n).is_integer() else n))
                                     for n in numbers) + ")" if numbers else None,
        }

    def _scalar(self, rule: str) -> str:
        # A grounded value when the dialogue offers one of the type, else any of the type
        # (the content rule then decides).
        return self.grounded.get(rule) or rule

    def prose(self, max_chars: int) -> str:
        """Free text without ``<``: bounded words when tight (the last separator may
        precede a tag), any length otherwise."""
        if self.tight is None:
            return "[^<]+"
        return f"word (sep word){{0,{word_bound(max_chars)}}} sep?"

    def text(self) -> str:
        """The prose and JSON rules the expressions of this grammar refer to."""
        if self.tight is None:
            return _STRUCTURE_JSON_RULES.strip()
        t = self.tight
        forbidden = PLAIN_PROSE_FORBIDDEN if t.plain_prose else "<"
        return "\n".join([
            f"word ::= [^{forbidden}\\x00-\\x20]{{1,{t.prose_word_chars}}}",
            'sep ::= " " | "\\n" | "\\n\\n"',
            f'jstr ::= "\\"" (vword (" " vword){{0,{word_bound(t.value_max_chars) - 1}}})? "\\""',
            f'vword ::= [^"\\\\<\\x00-\\x20]{{1,{t.value_word_chars}}}',
            *BOUNDED_SCALAR_RULES.splitlines(),
            "jscalar ::= jstr | jnum | jbool",
            f'jobj ::= "{{" (jstr ": " jscalar (", " jstr ": " jscalar){{0,{t.max_object_keys - 1}}})? "}}"',
        ])

    def value(self, spec: Any, depth: int = 0) -> str:
        """The expression of one JSON value described by a parameter/result ``spec``."""
        enum = spec.get("enum") if isinstance(spec, dict) else None
        if isinstance(enum, list) and enum and all(isinstance(e, (str, int, float, bool)) for e in enum):
            return "(" + " | ".join(json_literal(e) for e in enum) + ")"
        types = canonical_types(spec)
        if len(types) != 1:
            return "jscalar"
        (t,) = types
        deeper = self.tight is None or depth < _TIGHT_DEPTH
        if t == "array":
            items = spec.get("items")
            inner = self.value(items, depth + 1) if isinstance(items, dict) and deeper else "jscalar"
            if self.tight is None:
                return f'("[" ({inner} (", " {inner})*)? "]")'
            return f'("[" ({inner} (", " {inner}){{0,{self.tight.max_list_items - 1}}})? "]")'
        if t == "object":
            props = spec.get("properties")
            if isinstance(props, dict) and props and deeper:
                required = spec.get("required")
                keys = [k for k in required if k in props] if isinstance(required, list) else list(props)
                return "(" + self.object(props, keys, depth + 1) + ")"
            return "jobj"
        if t in ("string", "number", "integer"):
            return self._scalar({"string": "jstr", "number": "jnum", "integer": "jint"}[t])
        return {"boolean": "jbool", "null": '"null"'}[t]

    def object(self, props: dict[str, Any], required: Sequence[str], depth: int = 0) -> str:
        """An object of ``props``: the ``required`` keys in their order, then the others,
        each optional, in declaration order."""

        def pair(name: str) -> str:
            return f'{json_literal(name)} ": " {self.value(props.get(name, {}), depth)}'

        required = [p for p in required if p in props]
        optional = [p for p in props if p not in required]
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
    max_calls_per_turn: int,
    strength: Strength = "structure",
    tight: TightConstraints = TightConstraints(),
    callable_names: Sequence[str] | None = None,
    allow_final: bool = True,
    allow_question: bool = False,
    apart: frozenset[frozenset[str]] = frozenset(),
    grounded: tuple[Sequence[str], Sequence[float]] | None = None,
) -> str:
    """The grammar of one assistant turn (see the module docstring).

    ``callable_names`` None: any function, any number of times (``max_calls_per_turn``
    calls per turn when ``parallel``). Given (steering, ``MethodConfig.steer_calls``): only
    those functions, each at most once per turn, in function-list order, so a turn holds
    distinct calls, and no two of a pair in ``apart`` (a function and one that consumes its
    result) share a turn; empty: no call at all. ``allow_final`` False: no final answer.
    ``allow_question``: the thought alone may end the turn (a clarification question to
    the user). At least one way to end the turn must remain. ``tight`` holds the bounds
    of the ``tight`` strength (the thought bound is ``thought_max_chars``, the final
    answer's ``message_max_chars``). ``grounded`` (strings, numbers): typed string and
    number arguments take one of these values (see :func:`button_ray.quality.grounding_candidates`).
    """
    steered = callable_names is not None
    fn_names = [f.name for f in functions]
    names = set(callable_names or ()) if steered else set(fn_names)
    allowed = [i for i, f in enumerate(functions) if f.name in names]
    max_calls = max(1, max_calls_per_turn) if parallel else 1
    if not allowed and not allow_final and not allow_question:
        raise ValueError("a turn must allow a call, a final answer or a question")
    rules = _Rules(strength, tight, grounded)
    blocks = (["callblock"] if allowed else []) + (["finalblock"] if allow_final else [])
    ending = f"({' | '.join(blocks)})" if blocks else ""
    if allow_question and blocks:
        ending += "?"
    lines = [
        f"root ::= thought {ending}".rstrip(),
        f"thought ::= {rules.prose(tight.thought_max_chars)}",
    ]
    if allow_final:
        lines.append(f'finalblock ::= "<final>" {rules.prose(tight.message_max_chars)} "</final>"')
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
                later = [j for j in allowed if j > i and frozenset({fn_names[i], fn_names[j]}) not in apart]
                if left - 1 and later:
                    alts = " | ".join(f"fn{j} more{j}_{left - 2}" for j in later)
                    lines.append(f'more{i}_{left - 1} ::= ("" | ", " ({alts}))')
                else:
                    lines.append(f'more{i}_{left - 1} ::= ""')
    for i in allowed:
        fn = functions[i]
        head = gbnf_literal(f'{{"name": {dump_json(fn.name)}, "arguments": ')
        lines.append(f'fn{i} ::= {head} {rules.object(fn.parameters, fn.required)} "}}"')
    return "\n".join(lines + [rules.text()]) + "\n"


def user_message_grammar(
    strength: Strength = "tight", tight: TightConstraints = TightConstraints(), openers: Sequence[str] = ()
) -> str | None:
    """The grammar of a user-agent message: prose without ``<`` (bounded words at
    ``tight``, ``message_max_chars``); with ``openers``, it starts with one of them (each
    followed by a space, then the prose). None when nothing would be constrained
    (``structure`` without openers: the parser refuses tags anyway)."""
    rules = _Rules(strength, tight)
    if strength == "structure":
        if not openers:
            return None
        body = "[^<]*"
    else:
        body = f"word (sep word){{0,{word_bound(tight.message_max_chars)}}}"
    if openers:
        body = "(" + " | ".join(gbnf_literal(o.strip() + " ") for o in openers) + ") " + body
    return f"root ::= {body}\n{rules.text()}\n"


def tool_result_grammar(fn: FunctionDef, strength: Strength = "structure", tight: TightConstraints = TightConstraints()) -> str:
    """The grammar of ``fn``'s result: every declared response key, in order, typed per its
    spec (nested where declared; bounded at ``tight``).

    A function that declares no responses may return any object (a small flat one at ``tight``).
    """
    rules = _Rules(strength, tight)
    root = rules.object(fn.responses, list(fn.responses), 1) if fn.responses else "jobj"
    return f"root ::= {root}\n{rules.text()}\n"

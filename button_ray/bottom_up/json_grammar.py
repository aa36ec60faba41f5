"""The bottom-up JSON schemas as GBNF grammars with *plain text* strings
(``MethodConfig.plain_text``).

A small model fills free-text fields with whatever is near: the prompt's placeholders
(``"<first task>"``), JSON fragments, snake_case tool names, a run of spaces or a
phrase repeated until ``max_tokens``. A JSON schema cannot stop that cheaply on
xgrammar 0.2.8: a ``pattern`` drops ``maxLength``, a bounded character class longer
than ~128 breaks the engine's grammar cache, and word-bounded regexes take seconds to
compile. A GBNF grammar with bounded *words* (as the top-down agents use) compiles in
milliseconds, so this module translates the stages' schemas, which stay the single
source of truth, into one:

- a free-text string (``maxLength`` without ``pattern``) becomes plain text: at most
  ``x-max-words`` (:data:`MAX_WORDS_KEY`) or else ``word_bound(maxLength)`` words of at
  most :data:`WORD_CHARS` visible characters, the first starting with a capital letter
  or a digit, none holding :data:`PLAIN_FORBIDDEN` (``< > [ ] { } _ " \\``);
- everything else keeps its meaning: objects with fixed properties (in declaration
  order), maps (``additionalProperties`` + ``propertyNames``), arrays (``prefixItems``,
  ``items``, ``minItems``/``maxItems``), ``const``, ``enum``, anchored patterns of a
  regex subset (classes, characters, groups, ``|``, quantifiers), numbers, booleans.

The JSON emitted is canonical (``", "`` and ``": "`` separators, one line), so it parses
with ``json.loads`` and passes the same parsers and checks as schema-constrained output.
Only the schema subset the bottom-up stages use is supported; anything else raises
``ValueError`` at request-build time rather than sending a wrong constraint.
"""

from __future__ import annotations

import re
from typing import Any

from button_ray.gbnf import BOUNDED_SCALAR_RULES, gbnf_literal, json_literal, word_bound

#: Longest word of plain text, in characters (dates, amounts, codes fit).
WORD_CHARS = 24
#: Characters plain text may not hold (see the module docstring).
PLAIN_FORBIDDEN = r'<>\[\]{}_"\\'
#: Annotation of a free-text string: its word bound in the grammar (JSON-schema engines
#: ignore unknown keywords and keep ``maxLength``).
MAX_WORDS_KEY = "x-max-words"

_RULES = rf"""
ptext_char ::= [^{PLAIN_FORBIDDEN}\x00-\x20]
ptext_first ::= [A-Z0-9] ptext_char{{0,{WORD_CHARS - 1}}}
ptext_word ::= ptext_char{{1,{WORD_CHARS}}}
""" + BOUNDED_SCALAR_RULES
#: Longest bounded repetition in a translated pattern: above ~128, xgrammar 0.2.8's
#: grammar cache (on in vLLM) fails the compile and the request comes back empty.
_MAX_REPEAT = 128


class _PatternParser:
    """Recursive descent over the regex subset: classes, escaped or plain characters,
    groups ``(...)`` with ``|``, quantifiers ``{m,n}`` ``*`` ``+`` ``?``; anchored."""

    _CLASS = re.compile(r"\[(?:\\.|[^\]\\])+\]")
    _QUANT = re.compile(r"\{\d+(?:,\d*)?\}|[*+?]")

    def __init__(self, pattern: str) -> None:
        if not (pattern.startswith("^") and pattern.endswith("$")):
            raise ValueError(f"unsupported pattern (not anchored): {pattern}")
        self.pattern, self.text, self.pos = pattern, pattern[1:-1], 0

    def parse(self) -> str:
        expr = self._alternation()
        if self.pos != len(self.text):
            raise ValueError(f"unsupported pattern: {self.pattern}")
        return expr

    def _alternation(self) -> str:
        branches = [self._sequence()]
        while self.pos < len(self.text) and self.text[self.pos] == "|":
            self.pos += 1
            branches.append(self._sequence())
        return branches[0] if len(branches) == 1 else "(" + " | ".join(branches) + ")"

    def _sequence(self) -> str:
        parts = []
        while self.pos < len(self.text) and self.text[self.pos] not in "|)":
            parts.append(self._atom() + self._quantifier())
        if not parts:
            raise ValueError(f"unsupported pattern (empty branch): {self.pattern}")
        return " ".join(parts)

    def _atom(self) -> str:
        text, pos = self.text, self.pos
        if text[pos] == "(":
            self.pos += 1
            inner = self._alternation()
            if self.pos >= len(text) or text[self.pos] != ")":
                raise ValueError(f"unsupported pattern (unbalanced group): {self.pattern}")
            self.pos += 1
            return f"({inner})"
        m = self._CLASS.match(text, pos)
        if m:
            self.pos = m.end()
            return m.group(0)
        if text[pos] == "\\" and pos + 1 < len(text) and not text[pos + 1].isalnum():
            self.pos += 2
            return gbnf_literal(text[pos + 1])
        if text[pos].isalnum() or text[pos] in " _-:,'":
            self.pos += 1
            return gbnf_literal(text[pos])
        raise ValueError(f"unsupported pattern at {pos}: {self.pattern}")

    def _quantifier(self) -> str:
        m = self._QUANT.match(self.text, self.pos)
        if not m:
            return ""
        self.pos = m.end()
        if max((int(b) for b in re.findall(r"\d+", m.group(0))), default=0) > _MAX_REPEAT:
            raise ValueError(f"pattern repetition above {_MAX_REPEAT} (breaks xgrammar's cache): {self.pattern}")
        return m.group(0)


def _pattern_expr(pattern: str) -> str:
    return _PatternParser(pattern).parse()


class _Builder:
    def __init__(self) -> None:
        self.rules: list[str] = []
        self._plain: dict[int, str] = {}

    def rule(self, name: str, expr: str) -> str:
        self.rules.append(f"{name} ::= {expr}")
        return name

    def plain(self, words: int) -> str:
        if words not in self._plain:
            self._plain[words] = self.rule(
                f"ptext{words}", f'"\\"" ptext_first (" " ptext_word){{0,{words - 1}}} "\\""'
            )
        return self._plain[words]

    def value(self, spec: Any, name: str) -> str:
        if not isinstance(spec, dict):
            raise ValueError(f"{name}: unsupported schema {spec!r}")
        if "const" in spec:
            return json_literal(spec["const"])
        if "enum" in spec:
            return "(" + " | ".join(json_literal(v) for v in spec["enum"]) + ")"
        kind = spec.get("type")
        if kind == "string":
            if "pattern" in spec:
                return self.rule(name, f'"\\"" {_pattern_expr(spec["pattern"])} "\\""')
            if MAX_WORDS_KEY in spec:
                return self.plain(int(spec[MAX_WORDS_KEY]))
            if "maxLength" not in spec:
                raise ValueError(f"{name}: a free-text string needs maxLength")
            return self.plain(word_bound(spec["maxLength"]))
        if kind == "integer":
            return "jint"
        if kind == "number":
            return "jnum"
        if kind == "boolean":
            return "jbool"
        if kind == "array":
            return self.rule(name, self._array(spec, name))
        if kind == "object":
            return self.rule(name, self._object(spec, name))
        raise ValueError(f"{name}: unsupported schema {spec!r}")

    def _array(self, spec: dict, name: str) -> str:
        prefix = [self.value(s, f"{name}_p{i}") for i, s in enumerate(spec.get("prefixItems", []))]
        lo, hi = spec.get("minItems", 0), spec.get("maxItems")
        if hi is None or hi < len(prefix) or lo < len(prefix):
            raise ValueError(f"{name}: an array needs maxItems, and minItems >= len(prefixItems)")
        rest_lo, rest_hi = lo - len(prefix), hi - len(prefix)
        if not rest_hi:
            return '"[" ' + ' ", " '.join(prefix) + ' "]"' if prefix else '"[]"'
        items = spec.get("items")
        if not isinstance(items, dict):
            raise ValueError(f"{name}: more items than prefixItems but no items schema")
        item = self.value(items, f"{name}_i")
        if prefix:
            return '"[" ' + ' ", " '.join(prefix) + f' (", " {item}){{{rest_lo},{rest_hi}}} "]"'
        if rest_lo:
            return f'"[" {item} (", " {item}){{{rest_lo - 1},{rest_hi - 1}}} "]"'
        return f'"[" ({item} (", " {item}){{0,{rest_hi - 1}}})? "]"'

    def _object(self, spec: dict, name: str) -> str:
        props = spec.get("properties")
        if props:
            required = spec.get("required", list(props))
            if list(required) != list(props):
                raise ValueError(f"{name}: every property must be required, in declaration order")
            pairs = [f'{json_literal(k)[:-1]}: " {self.value(v, f"{name}_{k}")}' for k, v in props.items()]
            return '"{" ' + ' ", " '.join(pairs) + ' "}"'
        values = spec.get("additionalProperties")
        if not isinstance(values, dict):
            return '"{}"'
        key_pattern = spec.get("propertyNames", {}).get("pattern")
        if key_pattern is None:
            raise ValueError(f"{name}: a map needs propertyNames.pattern")
        key = self.rule(f"{name}_k", f'"\\"" {_pattern_expr(key_pattern)} "\\""')
        value = self.value(values, f"{name}_v")
        pair = self.rule(f"{name}_kv", f'{key} ": " {value}')
        lo, hi = spec.get("minProperties", 0), spec.get("maxProperties")
        if hi is None:
            raise ValueError(f"{name}: a map needs maxProperties")
        if lo:
            return f'"{{" {pair} (", " {pair}){{{lo - 1},{hi - 1}}} "}}"'
        return f'"{{" ({pair} (", " {pair}){{0,{hi - 1}}})? "}}"'


def schema_to_gbnf(schema: dict[str, Any]) -> str:
    """``schema`` as a GBNF grammar with plain-text strings (see the module docstring)."""
    builder = _Builder()
    root = builder.value(schema, "root")
    lines = builder.rules if root == "root" else [*builder.rules, f"root ::= {root}"]
    return "\n".join([*lines, _RULES.strip()]) + "\n"

"""GBNF pieces (xgrammar's dialect, as vLLM structured outputs take it) that both halves
of the method build their grammars from: the bottom-up stages' plain-text JSON grammars
(``bottom_up/json_grammar.py``) and the agents' turn and result grammars
(``top_down/grammar.py``).
"""

from __future__ import annotations

from typing import Any

from button_ray.button_format import dump_json

#: Average characters per English word plus its separating space.
CHARS_PER_WORD = 6

#: JSON integers, numbers and booleans with bounded digits: the scalars of every grammar
#: that bounds lengths (the ``tight`` strength, the plain-text grammars), so a small model
#: cannot write digits until ``max_tokens``.
BOUNDED_SCALAR_RULES = """\
jint ::= "-"? ("0" | [1-9] [0-9]{0,11})
jnum ::= jint ("." [0-9]{1,6})?
jbool ::= "true" | "false"
"""


def word_bound(max_chars: int) -> int:
    """The word count that stands for a ``max_chars`` bound in constraints (at least 1).

    Constraints bound words rather than characters because xgrammar compiles long bounded
    character repetitions slowly (see ``top_down/grammar.py``).
    """
    return max(1, max_chars // CHARS_PER_WORD)


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def json_literal(value: Any) -> str:
    """The canonical JSON text of ``value`` (``button_format.dump_json``) as a GBNF literal."""
    return gbnf_literal(dump_json(value))

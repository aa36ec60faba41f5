"""Function names tied to their sub-task: the content words of a sub-task, its verb, and
the name pattern a generated function must match (so each group of functions serves the
sub-task it was written for, and names of different sub-tasks never collide)."""

from __future__ import annotations

import re
from typing import Sequence


# Words that say nothing about what a function does.
_STOPWORDS = frozenset(
    "the and for with from into onto that this these those then than what which who whom whose when "
    "where how why are was were has have had its their there here about over under after before "
    "between each every both some any all can could should would will shall may might must not only "
    "also just very more most less least such own same other another one two three four five six "
    "seven eight nine ten first second third next last new old per via upon our your his her him "
    "them they you she its out off yes tell give make let get".split()
)
_WORD = re.compile(r"[A-Za-z]+")


#: Most content words of a sub-task offered for its function names (keeps the regex small).
MAX_NAME_WORDS = 10
#: Most object words in a function name built from a sub-task.
NAME_DEPTH = 3


def subtask_words(subtask: str, max_chars: int = 16) -> list[str]:
    """Content words of ``subtask`` usable in a function name: lowercase, letters only, 3 to
    ``max_chars`` long, no stop words, no proper nouns (a capitalised word that does not
    open the sentence) and not the opening word (the imperative verb), in order of first
    appearance, at most :data:`MAX_NAME_WORDS`."""
    words: list[str] = []
    for i, m in enumerate(_WORD.finditer(subtask)):
        word = m.group(0)
        if i == 0 or word[0].isupper():
            continue
        word = word.lower()
        if 3 <= len(word) <= max_chars and word not in _STOPWORDS and word not in words:
            words.append(word)
    return words[:MAX_NAME_WORDS]


def _chain(words: list[str], unique: set[str], start: int, depth: int, have: bool) -> str:
    # Alternatives: 1..depth words of words[start:], in order, each at most once; a
    # chain may end only once it holds a word of ``unique``.
    options = []
    for i in range(start, len(words)):
        word, got = words[i], have or words[i] in unique
        rest = _chain(words, unique, i + 1, depth - 1, got) if depth > 1 else ""
        if got:
            options.append(f"{word}(_{rest})?" if rest else word)
        elif rest:
            options.append(f"{word}_{rest}")
    return "(" + "|".join(options) + ")" if options else ""


def subtask_verb(subtask: str) -> str | None:
    """The sub-task's opening word, lowercased, when it can be a function's verb (an
    imperative such as "Find" or "Book": letters only, 2 to 12 long, not a stop word)."""
    parts = subtask.split(maxsplit=1)
    word = parts[0].rstrip(".,:;!?").lower() if parts else ""
    if word.isascii() and word.isalpha() and 2 <= len(word) <= 12 and word not in _STOPWORDS | _NOT_VERBS:
        return word
    return None


# Openings that are no verb: questions, pronouns, articles.
_NOT_VERBS = frozenset("how what which who when where why is are do does can could would will the an my".split())


def subtask_name_pattern(subtask: str, others: Sequence[str] = ()) -> str | None:
    """Names for ``subtask``'s functions (``MethodConfig.function_names_from_subtask``).

    The sub-task's own opening verb (:func:`subtask_verb`; any lowercase verb when it
    has none), then 1 to :data:`NAME_DEPTH` of :func:`subtask_words` in their
    order in the sub-task (so none repeats), at least one of them absent from every
    sub-task in ``others`` when there is such a word (so names of different sub-tasks
    cannot collide). None when the sub-task has no usable word (the caller falls back to
    the general pattern).
    """
    words = subtask_words(subtask)
    if not words:
        return None
    taken = {w for other in others for w in subtask_words(other)}
    unique = {w for w in words if w not in taken} or set(words)
    verb = subtask_verb(subtask) or "[a-z]{2,12}"
    return rf"^{verb}_{_chain(words, unique, 0, NAME_DEPTH, False)}$"


def name_patterns(subtasks: Sequence[str]) -> list[str | None]:
    """:func:`subtask_name_pattern` for every sub-task against the others."""
    return [subtask_name_pattern(s, [o for j, o in enumerate(subtasks) if j != i]) for i, s in enumerate(subtasks)]

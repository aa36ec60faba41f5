"""Content rules over a dialogue's parsed turns: copied turns, arguments not grounded in
what was said, results that do not conform to their function, uncovered sub-tasks, short
final answers, and the per-turn checks the simulation runs (``docs/quality.md``)."""

from __future__ import annotations

import difflib
import re
from typing import Any, Iterator, Sequence

from button_ray.config import ContentConfig
from button_ray.records import FunctionDef, Turn
from button_ray.specs import canonical_types, value_matches
from button_ray.quality.text import (
    _MONTHS,
    _NUMBER_WORDS,
    _STOPWORDS,
    _number_tokens,
    _stem,
    canonical_number,
    degeneration,
    tokens,
)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _dialogue_texts(turns: Sequence[Turn]) -> Iterator[tuple[int, str, str]]:
    """(turn index, what, text) of every prose text of a dialogue and tool-result string."""
    for i, turn in enumerate(turns):
        if turn.role == "user":
            yield i, "user message", turn.content
        elif turn.role == "assistant":
            yield i, "thought", turn.thought
            if turn.final is not None:
                yield i, "final answer", turn.final
        else:
            for result in turn.results:
                for text in _strings(result):
                    yield i, "tool result", text


# ----------------------------------------------------------------------------- copied turns


def copied_turn(turns: Sequence[Turn], cfg: ContentConfig) -> str | None:
    """The first user message, thought or final answer that repeats an earlier one, or None."""
    if cfg.copied_turn_similarity is None:
        return None
    earlier: list[tuple[int, str, list[str]]] = []
    for i, what, text in _dialogue_texts(turns):
        if what == "tool result":
            continue
        words = tokens(text)
        if len(words) < cfg.copied_turn_min_words:
            continue
        for j, before_what, before in earlier:
            ratio = difflib.SequenceMatcher(None, before, words, autojunk=False).ratio()
            if ratio >= cfg.copied_turn_similarity:
                return f"turn {i} ({what}) repeats turn {j} ({before_what}), similarity {ratio:.2f}: {text[:80]!r}"
        earlier.append((i, what, words))
    return None


# ----------------------------------------------------------------------------- grounding


class _Context:
    """What the dialogue has said before a call: user messages and tool results, as tokens."""

    def __init__(self, lenient: bool) -> None:
        self.lenient = lenient
        self.texts: list[str] = []  # token sequences joined by spaces, padded
        self.words: set[str] = set()

    def add_text(self, text: str) -> None:
        toks = tokens(text)
        self.texts.append(f" {' '.join(toks)} ")
        if self.lenient:
            for tok in toks:
                self.words.add(_stem(tok))
                for table in (_NUMBER_WORDS, _MONTHS):
                    if tok in table:
                        self.words.add(table[tok])
        else:
            self.words.update(toks)

    def add_value(self, value: Any) -> None:
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, (int, float)):
            self.add_text(canonical_number(value))
        elif isinstance(value, str):
            self.add_text(value)
        elif isinstance(value, dict):
            for v in value.values():
                self.add_value(v)
        elif isinstance(value, list):
            for v in value:
                self.add_value(v)

    def grounded(self, text: str, min_overlap: float) -> bool:
        toks = tokens(text)
        if not toks:
            return True
        if not self.lenient:
            needle = f" {' '.join(toks)} "
            return any(needle in haystack for haystack in self.texts)
        stems = [_stem(t) for t in toks]
        if len(stems) == 1:
            return stems[0] in self.words
        content = [s for s in stems if s not in _STOPWORDS] or stems
        return sum(s in self.words for s in content) / len(content) >= min_overlap


def _exempt(spec: Any) -> bool:
    return isinstance(spec, dict) and isinstance(spec.get("enum"), list)


def _leaves(value: Any, spec: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(path, value) of every string and number under ``value`` not exempt by its spec."""
    if _exempt(spec) or isinstance(value, bool) or value is None:
        return
    spec = spec if isinstance(spec, dict) else {}
    if isinstance(value, dict):
        props = spec.get("properties") if isinstance(spec.get("properties"), dict) else {}
        for key, v in value.items():
            yield from _leaves(v, props.get(key), f"{path}.{key}")
    elif isinstance(value, list):
        for k, v in enumerate(value):
            yield from _leaves(v, spec.get("items"), f"{path}[{k}]")
    elif isinstance(value, (str, int, float)):
        yield path, value


def ungrounded_argument(turns: Sequence[Turn], functions: Sequence[FunctionDef], cfg: ContentConfig) -> str | None:
    """The first call argument (string or number, nested ones too) that the dialogue did not
    give before the call, or None (see ``ContentConfig.grounding``)."""
    if cfg.grounding == "off":
        return None
    by_name = {f.name: f for f in functions}
    context = _Context(lenient=cfg.grounding == "lenient")
    for i, turn in enumerate(turns):
        if turn.role == "user":
            context.add_text(turn.content)
        elif turn.role == "tool":
            for result in turn.results:
                context.add_value(result)
        for call in turn.calls:
            params = by_name[call.name].parameters if call.name in by_name else {}
            for name, value in call.arguments.items():
                for path, leaf in _leaves(value, params.get(name), f"{call.name}.{name}"):
                    text = leaf if isinstance(leaf, str) else canonical_number(leaf)
                    if not context.grounded(text, cfg.grounding_min_overlap):
                        return f"turn {i}: {path}={leaf!r} does not appear in the dialogue before the call"
    return None


# ----------------------------------------------------------------------------- result conformance


def _type_problem(value: Any, spec: Any, path: str) -> str | None:
    if not isinstance(spec, dict):
        return None
    if not value_matches(value, canonical_types(spec)):
        return f"{path}={str(value)[:60]!r} is not of type {spec.get('type')!r}"
    props = spec.get("properties")
    if isinstance(value, dict) and isinstance(props, dict):
        for key, v in value.items():
            problem = _type_problem(v, props.get(key), f"{path}.{key}")
            if problem:
                return problem
    if isinstance(value, list) and "items" in spec:
        for k, v in enumerate(value):
            problem = _type_problem(v, spec["items"], f"{path}[{k}]")
            if problem:
                return problem
    return None


def result_problem(result: dict[str, Any], fn: FunctionDef, mode: str) -> str | None:
    """How a tool result departs from ``fn``'s declared responses, or None (``mode``:
    ``ContentConfig.result_conformance``)."""
    if mode == "off":
        return None
    missing = [k for k in fn.responses if k not in result]
    extra = [k for k in result if k not in fn.responses]
    if missing or extra:
        return f"{fn.name}: keys {sorted(result)} are not the declared responses {sorted(fn.responses)}"
    if mode == "types":
        for key, value in result.items():
            problem = _type_problem(value, fn.responses[key], f"{fn.name}.{key}")
            if problem:
                return problem
    return None


def _paired_results(turns: Sequence[Turn]) -> Iterator[tuple[int, str, dict[str, Any]]]:
    calls: tuple[Any, ...] = ()
    for i, turn in enumerate(turns):
        if turn.role == "assistant":
            calls = turn.calls
        elif turn.role == "tool":
            for call, result in zip(calls, turn.results):
                yield i, call.name, result


# ----------------------------------------------------------------------------- plan coverage


def uncovered_subtask(turns: Sequence[Turn], groups: Sequence[Sequence[FunctionDef]]) -> str | None:
    """The first sub-task with functions none of which was called, or None."""
    called = {c.name for t in turns for c in t.calls}
    for k, group in enumerate(groups, 1):
        names = [f.name for f in group]
        if names and not called.intersection(names):
            return f"sub-task {k}: none of {names} was called"
    return None


# ----------------------------------------------------------------------------- the trajectory rules


def trajectory_content_problem(
    turns: Sequence[Turn],
    functions: Sequence[FunctionDef],
    cfg: ContentConfig,
    groups: Sequence[Sequence[FunctionDef]] | None = None,
) -> tuple[str, str] | None:
    """``(reason, detail)`` for the first content rule a dialogue breaks, or None.

    ``turns`` must have passed the structural filter
    (:func:`button_ray.top_down.filter.trajectory_problem`). ``groups`` are the functions
    per sub-task; without them (a BUTTON file) plan coverage is skipped.
    """
    for i, turn in enumerate(turns):
        problem = short_final(turn, cfg)
        if problem:
            return "short_final_answer", f"turn {i}: {problem}"
    if cfg.degeneration:
        for i, what, text in _dialogue_texts(turns):
            problem = degeneration(text, cfg)
            if problem:
                return "degenerate_text", f"turn {i} ({what}): {problem}"
    problem = copied_turn(turns, cfg)
    if problem:
        return "copied_turn", problem
    problem = ungrounded_argument(turns, functions, cfg)
    if problem:
        return "ungrounded_argument", problem
    by_name = {f.name: f for f in functions}
    for i, name, result in _paired_results(turns):
        problem = result_problem(result, by_name[name], cfg.result_conformance) if name in by_name else None
        if problem:
            return "nonconforming_result", f"turn {i}: {problem}"
    if cfg.plan_coverage and groups is not None:
        problem = uncovered_subtask(turns, groups)
        if problem:
            return "uncovered_subtask", problem
    return None


_CLAUSE = re.compile(r"[.,;:!?()\[\]{}\"<>\n]+")


def grounding_candidates(turns: Sequence[Turn], max_words: int = 5, limit: int = 400) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The values a call may take from the dialogue so far (``TightConstraints.grounded_arguments``):
    phrases of 1 to ``max_words`` words of the user's messages and the tool results' strings,
    within a clause, neither starting nor ending with a stop word (at most ``limit``, in order
    of appearance), and every number they state. A tiny model given these as the only
    choices cannot invent an argument."""
    texts: list[str] = []
    numbers: list[float] = []
    for turn in turns:
        if turn.role == "user":
            texts.append(turn.content)
        for result in turn.results:
            stack: list[Any] = [result]
            while stack:
                value = stack.pop()
                if isinstance(value, str):
                    texts.append(value)
                elif isinstance(value, dict):
                    stack.extend(value.values())
                elif isinstance(value, list):
                    stack.extend(value)
                elif isinstance(value, (int, float)) and not isinstance(value, bool):
                    numbers.append(float(value))
    phrases: dict[str, None] = {}
    for text in texts:
        numbers.extend(float(canonical_number(n)) for m in re.finditer(r"\d+(?:[.,]\d+)*", text)
                       for n in _number_tokens(m.group(0)))
        for clause in _CLAUSE.split(text):
            words = clause.split()
            for i in range(len(words)):
                for j in range(i + 1, min(i + max_words, len(words)) + 1):
                    if words[i].lower() in _STOPWORDS or words[j - 1].lower() in _STOPWORDS:
                        continue
                    phrases.setdefault(" ".join(words[i:j]), None)
    strings = tuple(p for p in phrases if "\\" not in p)[:limit]
    return strings, tuple(dict.fromkeys(numbers))


def short_final(turn: Turn, cfg: ContentConfig) -> str | None:
    """Why ``turn``'s final answer is too short to be one (``ContentConfig.final_min_words``), or None."""
    if turn.final is None or not cfg.final_min_words:
        return None
    words = len(tokens(turn.final))
    return f"final answer of {words} words: {turn.final[:60]!r}" if words < cfg.final_min_words else None


def new_turn_problem(
    turns: Sequence[Turn], new: Turn, functions: Sequence[FunctionDef], cfg: ContentConfig
) -> tuple[str, str] | None:
    """``(reason, detail)`` for the content rule that ``new``, about to be appended to
    ``turns``, breaks: its own text degenerate, a copy of an earlier turn, or a call
    argument the dialogue has not given. Checked as each turn is written, so the step is
    redrawn (a new seed) instead of the whole trajectory being thrown away at the end;
    ``turns`` passed these checks already, so any hit is the new turn's.
    """
    index = len(turns)
    problem = short_final(new, cfg)
    if problem:
        return "short_final_answer", f"turn {index}: {problem}"
    if cfg.degeneration:
        for _, what, text in _dialogue_texts([new]):
            problem = degeneration(text, cfg)
            if problem:
                return "degenerate_text", f"turn {index} ({what}): {problem}"
    dialogue = [*turns, new]
    problem = copied_turn(dialogue, cfg)
    if problem:
        return "copied_turn", problem
    if new.calls:
        problem = ungrounded_argument(dialogue, functions, cfg)
        if problem:
            return "ungrounded_argument", problem
    return None


def new_result_problem(result: dict[str, Any], fn: FunctionDef, cfg: ContentConfig) -> tuple[str, str] | None:
    """``(reason, detail)`` for the content rule a tool result breaks as it is written
    (degenerate strings, keys or types off the declared responses), or None."""
    if cfg.degeneration:
        for text in _strings(result):
            problem = degeneration(text, cfg)
            if problem:
                return "degenerate_text", f"tool result of {fn.name}: {problem}"
    problem = result_problem(result, fn, cfg.result_conformance)
    return ("nonconforming_result", problem) if problem else None



"""Content rules over plain texts: tokens and canonical numbers, degeneration, word
overlap, near-identical sub-tasks, the scenario relevance check (``docs/quality.md``)."""

from __future__ import annotations

import re
import threading
from collections import Counter
from typing import Sequence

from button_ray.config import ContentConfig

# A number (an ordinal suffix dropped: "3rd" is 3) or a run of letters.
_TOKEN = re.compile(r"(\d+(?:[.,]\d+)*)(?:(?:st|nd|rd|th)(?![^\W\d_]))?|[^\W\d_]+")
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")
_STOPWORDS = frozenset(
    "a an the of for to in on at and or with from by my me i is are be as this that it its your our "
    "please can you we us".split()
)
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}  # fmt: skip
_NUMBER_WORDS.update({"thirty": "30", "forty": "40", "fifty": "50", "hundred": "100", "thousand": "1000",
                      "once": "1", "twice": "2", "single": "1", "double": "2", "couple": "2", "pair": "2",
                      "dozen": "12"})  # fmt: skip
_MONTHS = {m: str(i) for i, names in enumerate(
    ["jan january", "feb february", "mar march", "apr april", "may", "jun june", "jul july", "aug august",
     "sep sept september", "oct october", "nov november", "dec december"], start=1) for m in names.split()}


# ----------------------------------------------------------------------------- tokens


def canonical_number(value: float | int | str) -> str:
    """One spelling of a number: ``"1,000"``, ``1000`` and ``1000.0`` all give ``"1000"``."""
    if isinstance(value, str):
        value = float(value.replace(",", "") if _THOUSANDS.fullmatch(value) else value.replace(",", "."))
    number = abs(float(value))
    return str(int(number)) if number.is_integer() and number < 1e18 else repr(number)


def _number_tokens(raw: str) -> list[str]:
    # "1,000.5" is one number; "3,5" a decimal comma; "1.2.3" (a version, a date) several.
    if _THOUSANDS.fullmatch(raw) or raw.count(",") + raw.count(".") == 1:
        return [canonical_number(raw)]
    return [canonical_number(part) for part in re.split(r"[.,]", raw) if part]


def tokens(text: str) -> list[str]:
    """Lowercase words and canonical numbers of ``text``, in order."""
    out: list[str] = []
    for match in _TOKEN.finditer(text):
        if match.group(1) is not None:
            out.extend(_number_tokens(match.group(1)))
        else:
            out.append(match.group(0).lower())
    return out


def _is_number(token: str) -> bool:
    return token[:1].isdigit()


def _stem(token: str) -> str:
    # Enough to match "restaurants" to "restaurant" and "cities" to "city"; not a stemmer.
    if _is_number(token) or len(token) <= 3:
        return token
    if token.endswith("ies") and len(token) > 4:
        return token[:-3] + "y"
    if token.endswith("s") and not token.endswith("ss"):
        return token[:-1]
    return token


def _content_words(text: str) -> set[str]:
    words = [_NUMBER_WORDS.get(t, _stem(t)) for t in tokens(text)]
    return {w for w in words if w not in _STOPWORDS} or set(words)


# ----------------------------------------------------------------------------- degeneration


def degeneration(text: str, cfg: ContentConfig) -> str | None:
    """Why ``text`` is degenerate (a loop, a counter pattern, a repeated sentence), or None.

    In the spirit of the Gopher / NeMo Curator repetition filters, sized for short texts:
    the share of words inside repeated ``repeat_ngram``-grams, the count of the most common
    ``pattern_ngram``-gram with every number read as ``#``, and sentences said twice.
    """
    words = tokens(text)
    n = cfg.repeat_ngram
    if len(words) >= 2 * n:
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        counts = Counter(grams)
        covered: set[int] = set()
        for i, gram in enumerate(grams):
            if counts[gram] > 1:
                covered.update(range(i, i + n))
        share = len(covered) / len(words)
        if share > cfg.max_repeated_share:
            return f"{share:.0%} of its {len(words)} words lie in repeated {n}-word phrases"
    shapes = ["#" if _is_number(w) else w for w in words]
    p = cfg.pattern_ngram
    if len(shapes) >= p:
        pattern, count = Counter(tuple(shapes[i : i + p]) for i in range(len(shapes) - p + 1)).most_common(1)[0]
        if count > cfg.max_pattern_repeats:
            return f"the pattern {' '.join(pattern)!r} occurs {count} times"
    seen: set[tuple[str, ...]] = set()
    for sentence in _SENTENCE_END.split(text):
        key = tuple(tokens(sentence))
        if len(key) >= cfg.sentence_min_words:
            if key in seen:
                return f"the sentence {sentence.strip()[:80]!r} is said twice"
            seen.add(key)
    return None



# ----------------------------------------------------------------------------- bottom-up checks


def word_jaccard(a: str, b: str) -> float:
    """Jaccard similarity of two texts' content words (stop words and plurals folded)."""
    wa, wb = _content_words(a), _content_words(b)
    return len(wa & wb) / len(wa | wb) if wa or wb else 1.0


def near_duplicate_subtasks(subtasks: Sequence[str], max_similarity: float | None) -> str | None:
    """The first pair of sub-tasks that say nearly the same thing, or None."""
    if max_similarity is None:
        return None
    for i in range(len(subtasks)):
        for j in range(i + 1, len(subtasks)):
            similarity = word_jaccard(subtasks[i], subtasks[j])
            if similarity > max_similarity:
                return f"sub-tasks {i + 1} and {j + 1} share {similarity:.0%} of their words"
    return None


def first_degenerate(texts: Sequence[tuple[str, str]], cfg: ContentConfig) -> str | None:
    """``"<what>: <why>"`` for the first degenerate text of ``(what, text)`` pairs, or None."""
    if not cfg.degeneration:
        return None
    for what, text in texts:
        problem = degeneration(text, cfg)
        if problem:
            return f"{what}: {problem}"
    return None


_LOAD_LOCK = threading.Lock()


def relevance(scenario: str, task: str, model: str = "embedded") -> float:
    """Cosine similarity of the sentence embeddings of ``scenario`` and ``task``.

    Thread-safe: items of one actor call it from worker threads, and the first calls
    must not load the model once each.
    """
    # The scenario pool's loader: the packaged model, never a hub download.
    from button_ray.bottom_up.dedup import load_embedding_model

    with _LOAD_LOCK:
        encoder = load_embedding_model(model)
    vectors = encoder.encode([scenario, task], normalize_embeddings=True, convert_to_numpy=True)
    return float(vectors[0] @ vectors[1])


"""What every bottom-up stage shares: building a request, reading JSON out of a
completion, and running one step for one item.

Parsing is defensive on purpose: an engine may ignore the output constraint (or run
without one), so a completion can arrive code-fenced, with chatter around the object,
or cut short. Each failure maps to a machine-readable :class:`ParseError` reason.
"""

from __future__ import annotations

import json
import re
import string
from typing import Any, Callable, TypeVar

from pydantic import BaseModel, ValidationError

from button_ray.bottom_up.json_grammar import MAX_WORDS_KEY, schema_to_gbnf
from button_ray.config import MethodConfig
from button_ray.errors import ParseError
from button_ray.llm.contract import ChatMessage, LLMClient, LLMRequest, LLMResponse, OutputConstraint, Role
from button_ray.records import WorkItem
from button_ray.steps import StepResult, run_step

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

_FENCE = re.compile(r"```[A-Za-z0-9_-]*")
_DECODER = json.JSONDecoder()


def extract_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in ``text`` (code fences and surrounding prose ignored).

    Raises ``ParseError("empty_output")`` for blank text and ``ParseError("bad_json")``
    when no object decodes.
    """
    cleaned = _FENCE.sub("", text).strip()
    if not cleaned:
        raise ParseError("empty_output", "the completion is empty")
    start = cleaned.find("{")
    while start != -1:
        try:
            value, _ = _DECODER.raw_decode(cleaned, start)
        except json.JSONDecodeError:
            pass
        else:
            if isinstance(value, dict):
                return value
        start = cleaned.find("{", start + 1)
    raise ParseError("bad_json", cleaned[:300])


def validate(model: type[M], data: dict[str, Any]) -> M:
    """``model.model_validate(data)``, turning a validation error into ``schema_mismatch``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise ParseError("schema_mismatch", problems) from None


def parse_json_as(model: type[M], text: str) -> M:
    """Extract the first JSON object of ``text`` and validate it against ``model``."""
    return validate(model, extract_json_object(text))


def word_count(text: str) -> int:
    """Whitespace-separated words (the unit of BUTTON's length limits)."""
    return len(text.split())


def clean_text(text: str) -> str:
    """Collapse whitespace so length checks and dedup see the text a reader sees."""
    return " ".join(text.split())


_PUNCTUATION = str.maketrans("", "", string.punctuation)
_PLACEHOLDER = re.compile(r"<[^<>\n]{1,60}>")
_QUOTED = re.compile(r'"((?:[^"\\\n]|\\.)+)"')
_LINE_LABEL = re.compile(r"^(?:\d+\.|[A-Za-z][A-Za-z -]{0,30}:)\s*")


def normalize(text: str) -> str:
    """Lowercase, punctuation-free, whitespace-collapsed text (for equality checks)."""
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def _prompt_units(prompt: str) -> set[str]:
    # What a model can lift whole from a prompt: quoted strings (the worked examples'
    # values) and lines, with or without a label ("First task: ...", "2. ...").
    units = set(_QUOTED.findall(prompt))
    for line in prompt.splitlines():
        units.add(line)
        units.add(_LINE_LABEL.sub("", line))
    return {normalize(u) for u in units} - {""}


#: A quoted prompt string of at least this many words found inside an output makes the
#: output a copy, even with words added around it.
MIN_CONTAINED_WORDS = 5


def copied_from_prompt(text: str, prompt: str) -> bool:
    """Whether ``text`` was lifted from ``prompt``: it holds one of the prompt's
    placeholders (``<subsequent task>``), equals a quoted string or a line of it (a
    worked example, or the input handed back instead of new content), or contains a
    whole quoted string of at least :data:`MIN_CONTAINED_WORDS` words (a worked example
    with words added).

    Equality for lines, not containment: a new sub-task may well share words with the
    input, and a composite task restates it. Small models copy a lot, and a copy parses
    fine, so it needs its own check.
    """
    if any(p in prompt for p in _PLACEHOLDER.findall(text)):
        return True
    norm = normalize(text)
    if norm in _prompt_units(prompt):
        return True
    padded = f" {norm} "
    return any(
        f" {q} " in padded for q in map(normalize, _QUOTED.findall(prompt)) if len(q.split()) >= MIN_CONTAINED_WORDS
    )


def checked_text(text: str, what: str, max_words: int, prompt: str | None) -> str:
    """``text`` if it breaks none of the rules of a bottom-up free text: not blank
    (``schema_mismatch``, naming ``what``), at most ``max_words`` words (``too_long``), and,
    when ``prompt`` is given, not lifted from it (``copied_from_prompt``). The last two
    parse fine and break a rule, so they are retried but not counted as malformed."""
    if not text:
        raise ParseError("schema_mismatch", f"{what} is blank")
    words = word_count(text)
    if words > max_words:
        raise ParseError("too_long", f"{words} words > {max_words}: {text[:200]}", malformed=False)
    if prompt is not None and copied_from_prompt(text, prompt):
        raise ParseError("copied_from_prompt", text[:200], malformed=False)
    return text


def text_schema(max_chars: int, max_words: int | None = None) -> dict[str, Any]:
    """JSON schema of a bottom-up free-text field (a task, a sub-task, a description);
    ``max_words`` is the word bound the plain-text grammar applies (see :mod:`.json_grammar`)."""
    spec: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": max_chars}
    if max_words is not None:
        spec[MAX_WORDS_KEY] = max_words
    return spec


#: Keywords that bound a free-text string's length; the ``structure`` strength drops them.
_LENGTH_KEYS = frozenset({"maxLength", MAX_WORDS_KEY})


def without_length_bounds(schema: Any) -> Any:
    """``schema`` without its string length bounds (``maxLength``, the word annotation):
    what the ``structure`` strength sends, so a verbose task or description is never cut
    mid-word by its constraint."""
    if isinstance(schema, dict):
        return {k: without_length_bounds(v) for k, v in schema.items() if k not in _LENGTH_KEYS}
    if isinstance(schema, list):
        return [without_length_bounds(v) for v in schema]
    return schema


def output_constraint(schema: dict[str, Any], cfg: MethodConfig, role: Role) -> OutputConstraint | None:
    """The constraint sent for ``schema`` at ``role``'s strength (``MethodConfig.strength``):
    none when ``off``; the schema without length bounds at ``structure``; at ``tight`` the
    schema itself, or with ``tight.plain_text`` its GBNF translation (see :mod:`.json_grammar`)."""
    strength = cfg.strength(role)
    if strength == "off":
        return None
    if strength == "structure":
        return OutputConstraint(kind="json_schema", spec=without_length_bounds(schema))
    if cfg.tight.plain_text:
        return OutputConstraint(kind="grammar", spec=schema_to_gbnf(schema))
    return OutputConstraint(kind="json_schema", spec=schema)


def make_request(
    role: Role,
    prompt: str,
    schema: dict[str, Any],
    request_id: str,
    cfg: MethodConfig,
    affinity_key: str | None = None,
    max_tokens: int | None = None,
) -> LLMRequest:
    """One single-message request constrained by ``schema`` (see :func:`output_constraint`);
    ``max_tokens`` raises the role's configured cap.

    The seed is left unset: :func:`button_ray.steps.run_step` derives one per attempt.
    """
    sampling = cfg.sampling.for_role(role)
    if max_tokens is not None and max_tokens > sampling.max_tokens:
        sampling = sampling.model_copy(update={"max_tokens": max_tokens})
    return LLMRequest(
        role=role,
        messages=(ChatMessage(role="user", content=prompt),),
        sampling=sampling,
        constraint=output_constraint(schema, cfg, role),
        affinity_key=affinity_key,
        request_id=request_id,
    )


async def run_item_step(
    item: WorkItem,
    stage: Role,
    prompt: str,
    schema: dict[str, Any],
    parse: Callable[[LLMResponse], T],
    llm: LLMClient,
    cfg: MethodConfig,
    max_tokens: int | None = None,
) -> T | None:
    """Run one stage for ``item``; on failure reject the item with the step's reason.

    Usage is booked under ``stage``; the request id is ``{item_id}/{stage}`` and the
    item id is the affinity key, so all of an item's calls share a replica.
    """
    request = make_request(
        stage, prompt, schema, f"{item.item_id}/{stage}", cfg, affinity_key=item.item_id, max_tokens=max_tokens
    )
    usage = item.usage_for(stage)
    result: StepResult[T] = await run_step(llm, lambda _attempt: request, parse, usage, cfg.retries)
    if not result.ok:
        item.reject(stage, str(result.reason), result.detail)
        return None
    return result.value

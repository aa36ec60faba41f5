"""Stage 3 of BUTTON: compose a multi-step task from one atomic task.

*Sequential* adds a subsequent task that consumes the first one's output (2 sub-tasks);
*parallel_then_sequential* adds an independent parallel task and a final task that
consumes both outputs (3 sub-tasks). The strategy of an item is a pure function of its
id and ``cfg.strategy_mix``, so re-runs make the same choice.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from button_ray.bottom_up.common import (
    clean_text,
    copied_from_prompt,
    normalize,
    parse_json_as,
    run_item_step,
    text_schema,
)
from button_ray import quality
from button_ray.config import ContentConfig, MethodConfig
from button_ray.errors import ParseError
from button_ray.llm.contract import LLMClient, LLMResponse
from button_ray.records import Composition, Strategy, WorkItem, derive_seed

STAGE = "composition"
SUBTASK_COUNT: dict[Strategy, int] = {"sequential": 2, "parallel_then_sequential": 3}
SUBTASK_MAX_CHARS = 200
COMPOSITE_MAX_CHARS = 400
_SEED_SPACE = 16**15  # derive_seed draws 15 hex digits


class CompositionOutput(BaseModel):
    """``{"subtasks": [str, ...], "composite_task": str}``."""

    model_config = ConfigDict(frozen=True)

    subtasks: tuple[str, ...]
    composite_task: str = Field(min_length=1)


def choose_strategy(item_id: str, mix: dict[str, float]) -> Strategy:
    """The item's strategy: a weighted draw from ``mix`` seeded by ``item_id``.

    Strategies are visited in sorted order so the draw does not depend on the mix
    dict's insertion order (YAML key order must not change outputs).
    """
    choices = [(name, weight) for name, weight in sorted(mix.items()) if weight > 0]
    point = derive_seed(item_id, "strategy") / _SEED_SPACE * sum(w for _, w in choices)
    for name, weight in choices:
        point -= weight
        if point < 0:
            return name  # type: ignore[return-value]
    return choices[-1][0]  # type: ignore[return-value]


def schema(strategy: Strategy, atomic_task: str | None = None, subtask_max_words: int | None = None) -> dict:
    """JSON schema of a composition with exactly the strategy's number of sub-tasks.

    ``atomic_task`` given (``MethodConfig.pin_first_subtask``): the first sub-task is that
    exact string (``prefixItems`` + ``const``), so the model writes only the new sub-tasks
    and the composite task. ``subtask_max_words``: the plain-text grammar's bound on a new
    sub-task (an atomic task too, so ``MethodConfig.atomic_task_max_words``).
    """
    n = SUBTASK_COUNT[strategy]
    new_subtask = text_schema(SUBTASK_MAX_CHARS, subtask_max_words)
    subtasks: dict = {"type": "array", "items": new_subtask, "minItems": n, "maxItems": n}
    if atomic_task is not None:
        subtasks["prefixItems"] = [{"const": atomic_task}]
    return {
        "type": "object",
        "properties": {
            "subtasks": subtasks,
            "composite_task": text_schema(COMPOSITE_MAX_CHARS),
        },
        "required": ["subtasks", "composite_task"],
        "additionalProperties": False,
    }


def prompt(strategy: Strategy, atomic_task: str, cfg: MethodConfig) -> str:
    """The rendered composition prompt of ``strategy``."""
    return cfg.templates().render(f"composition_{strategy}.j2", task=atomic_task)


def parse(
    response: LLMResponse,
    strategy: Strategy,
    atomic_task: str,
    prompt_text: str | None,
    *,
    content: ContentConfig | None = None,
) -> Composition:
    """A :class:`Composition` whose first sub-task is ``atomic_task`` verbatim.

    The model restates the first task; its restatement is replaced by the original so
    a paraphrase cannot drift from the task that was written and checked. New sub-tasks
    and the composite task must be new text: not copied from the prompt (its examples,
    its placeholders, the first task itself; checked only when ``prompt_text`` is
    given) and not repeating each other. With ``content``, the content rules too:
    ``degenerate_text`` (a new sub-task or the composite task) and ``near_duplicate_subtasks``
    (two sub-tasks, the first one included, saying nearly the same thing).
    """
    out = parse_json_as(CompositionOutput, response.text)
    subtasks = [clean_text(s) for s in out.subtasks]
    expected = SUBTASK_COUNT[strategy]
    if len(subtasks) != expected:
        raise ParseError(
            "wrong_subtask_count", f"{len(subtasks)} sub-tasks, {strategy} needs {expected}", malformed=False
        )
    if not all(subtasks[1:]):
        raise ParseError("schema_mismatch", "blank sub-task")
    composite = clean_text(out.composite_task)
    if not composite:
        raise ParseError("schema_mismatch", "composite_task is blank")
    copied = [t for t in (*subtasks[1:], composite) if prompt_text and copied_from_prompt(t, prompt_text)]
    if copied:
        raise ParseError("copied_from_prompt", copied[0][:200], malformed=False)
    if len({normalize(t) for t in subtasks[1:]}) < len(subtasks) - 1:
        raise ParseError("duplicate_subtask", " | ".join(subtasks)[:300], malformed=False)
    if content is not None:
        texts = [(f"sub-task {k}", t) for k, t in enumerate(subtasks[1:], 2)] + [("composite task", composite)]
        degenerate = quality.first_degenerate(texts, content)
        if degenerate:
            raise ParseError("degenerate_text", degenerate, malformed=False)
        alike = quality.near_duplicate_subtasks([atomic_task, *subtasks[1:]], content.subtask_max_similarity)
        if alike:
            raise ParseError("near_duplicate_subtasks", f"{alike}: {' | '.join(subtasks)[:300]}", malformed=False)
    return Composition(strategy=strategy, subtasks=(atomic_task, *subtasks[1:]), composite_task=composite)


async def write_composition(
    item: WorkItem, atomic_task: str, llm: LLMClient, cfg: MethodConfig
) -> Composition | None:
    """The item's composition, or None with the item rejected."""
    strategy = choose_strategy(item.item_id, cfg.strategy_mix)
    text = prompt(strategy, atomic_task, cfg)
    copy_check = text if cfg.reject_prompt_copies else None
    return await run_item_step(
        item,
        STAGE,
        text,
        schema(strategy, atomic_task if cfg.pin_first_subtask else None, cfg.atomic_task_max_words),
        lambda r: parse(r, strategy, atomic_task, copy_check, content=cfg.content), llm, cfg
    )

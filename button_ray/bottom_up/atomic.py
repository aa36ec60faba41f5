"""Stage 2 of BUTTON: an atomic task for the item's scenario.

An atomic task is solvable in one step, self-contained, mentions no tools and has at
most ``cfg.atomic_task_max_words`` words. A longer task, or one copied from the prompt's
examples, parses fine but breaks a rule, so it is retried with a new seed
(``malformed=False``).
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict, Field

from button_ray.bottom_up.common import checked_text, clean_text, parse_json_as, run_item_step, text_schema
from button_ray import quality
from button_ray.config import ContentConfig, MethodConfig
from button_ray.errors import ParseError
from button_ray.llm.contract import LLMClient, LLMResponse
from button_ray.records import WorkItem, derive_seed

STAGE = "atomic_task"
# Characters, not words: JSON schema cannot count words, so this only stops rambling
# well past the word limit; the word rule itself is checked in parse().
TASK_MAX_CHARS = 400


class AtomicTaskOutput(BaseModel):
    """``{"task": str}``."""

    model_config = ConfigDict(frozen=True)

    task: str = Field(min_length=1)


def schema(max_words: int | None = None) -> dict:
    """JSON schema of the atomic-task output (``max_words``: the plain-text grammar's bound)."""
    return {
        "type": "object",
        "properties": {"task": text_schema(TASK_MAX_CHARS, max_words)},
        "required": ["task"],
        "additionalProperties": False,
    }


def angle(scenario_id: str, slot: int, angles: tuple[str, ...]) -> str | None:
    """Who asks in ``slot`` of a scenario (``MethodConfig.atomic_task_angles``): consecutive
    angles from an offset drawn from the scenario id, so a scenario's slots differ."""
    if not angles:
        return None
    return angles[(derive_seed(scenario_id, "angle") + slot) % len(angles)]


def prompt(scenario: str, cfg: MethodConfig, asker: str | None = None) -> str:
    """The rendered atomic-task prompt for ``scenario``, asked by ``asker`` (see :func:`angle`)."""
    return cfg.templates().render("atomic_task.j2", scenario=scenario, max_words=cfg.atomic_task_max_words, asker=asker)


def parse(
    response: LLMResponse,
    max_words: int,
    prompt_text: str | None,
    *,
    content: ContentConfig | None = None,
) -> str:
    """The task text; ``empty_output``/``bad_json``/``schema_mismatch``/``too_long``/
    ``copied_from_prompt`` (checked only when ``prompt_text`` is given) otherwise. With
    ``content``, ``degenerate_text`` too (see :class:`~button_ray.config.ContentConfig`)."""
    task = checked_text(clean_text(parse_json_as(AtomicTaskOutput, response.text).task), "task", max_words, prompt_text)
    if content is not None:
        degenerate = quality.first_degenerate([("atomic task", task)], content)
        if degenerate:
            raise ParseError("degenerate_text", degenerate, malformed=False)
    return task


async def write_atomic_task(item: WorkItem, llm: LLMClient, cfg: MethodConfig) -> str | None:
    """The atomic task for ``item.scenario``, or None with the item rejected.

    A task that does not belong to its scenario (``ContentConfig.relevance_min_similarity``)
    is rejected as ``irrelevant_task``, not redrawn: the embedding runs in a worker thread
    after the step, so the event loop keeps serving the actor's other items meanwhile.
    """
    text = prompt(item.scenario.text, cfg, angle(item.scenario.scenario_id, item.slot, cfg.atomic_task_angles))
    copy_check = text if cfg.reject_prompt_copies else None
    task = await run_item_step(
        item,
        STAGE,
        text,
        schema(cfg.atomic_task_max_words),
        lambda r: parse(r, cfg.atomic_task_max_words, copy_check, content=cfg.content),
        llm,
        cfg,
    )
    threshold = cfg.content.relevance_min_similarity
    if task is None or threshold is None:
        return task
    similarity = await asyncio.to_thread(quality.relevance, item.scenario.text, task, cfg.content.relevance_model)
    if similarity < threshold:
        item.reject(STAGE, "irrelevant_task", f"similarity {similarity:.2f} < {threshold}: {task[:200]}")
        return None
    return task

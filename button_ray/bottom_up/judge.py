"""Stage 4 of BUTTON: the composition filter, an LLM judge.

The judge reasons first, then answers yes/no: can the sub-tasks complete the composite
task? Only "yes" survives. A "no" or a missing verdict is a decision, not a malformed
output, so it is not retried: :func:`parse` returns it and :func:`judge_composition`
rejects the item (``judge_no`` / ``no_verdict``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from button_ray.bottom_up.common import clean_text, parse_json_as, run_item_step
from button_ray.config import MethodConfig
from button_ray.llm.contract import LLMClient, LLMResponse
from button_ray.records import Composition, WorkItem

STAGE = "composition_filter"
# Bounded so a small model cannot reason its way into max_tokens before the verdict.
REASONING_MAX_CHARS = 500


class Verdict(BaseModel):
    """``{"reasoning": str, "verdict": "yes" | "no"}``; ``verdict`` None when absent or unclear."""

    model_config = ConfigDict(frozen=True)

    reasoning: str = ""
    verdict: Literal["yes", "no"] | None = None

    @field_validator("reasoning", mode="before")
    @classmethod
    def _text(cls, value: Any) -> str:
        return clean_text(value) if isinstance(value, str) else ""

    @field_validator("verdict", mode="before")
    @classmethod
    def _yes_no(cls, value: Any) -> str | None:
        # Engines without the enum constraint write "Yes." or "NO"; anything else is no verdict.
        if isinstance(value, bool):
            return "yes" if value else "no"
        if not isinstance(value, str):
            return None
        word = value.strip().strip(".!\"' ").lower()
        return word if word in ("yes", "no") else None


def schema() -> dict:
    """JSON schema of the verdict: reasoning first, then the enum."""
    return {
        "type": "object",
        "properties": {
            "reasoning": {"type": "string", "maxLength": REASONING_MAX_CHARS},
            "verdict": {"type": "string", "enum": ["yes", "no"]},
        },
        "required": ["reasoning", "verdict"],
        "additionalProperties": False,
    }


def prompt(composition: Composition, cfg: MethodConfig) -> str:
    """The rendered judge prompt: the composition and its strategy, whose structure it checks."""
    return cfg.templates().render(
        "composition_filter.j2",
        composite_task=composition.composite_task,
        subtasks=list(composition.subtasks),
        strategy=composition.strategy,
    )


def parse(response: LLMResponse) -> Verdict:
    """The verdict; only unparseable text raises (``empty_output``/``bad_json``/``schema_mismatch``)."""
    return parse_json_as(Verdict, response.text)


async def judge_composition(
    item: WorkItem, composition: Composition, llm: LLMClient, cfg: MethodConfig
) -> str | None:
    """The judge's reasoning when it says yes; None with the item rejected otherwise."""
    verdict = await run_item_step(item, STAGE, prompt(composition, cfg), schema(), parse, llm, cfg)
    if verdict is None:
        return None
    if verdict.verdict is None:
        item.reject(STAGE, "no_verdict", verdict.reasoning)
        return None
    if verdict.verdict == "no":
        item.reject(STAGE, "judge_no", verdict.reasoning)
        return None
    return verdict.reasoning

"""The dialogue judge (``method.judge``, ``docs/quality.md``): an LLM scores a finished
dialogue that every other rule accepted.

The judge reads the dialogue as it will be saved (BUTTON's messages without the system
prompt), reasons in a sentence or two, then scores helpfulness, the final answer's
correctness against the tool results, and the user's naturalness, each an integer on
:data:`~button_ray.config.JUDGE_SCALE`. The verdict's JSON schema is sent as the
request's constraint, so a constrained engine always writes one; an output that does
not parse is retried with a new seed (``method.retries``), then the item is rejected
as ``judge_unparseable``. Scores under ``method.judge``'s thresholds reject it as
``judge_low_score``; either way the scores it gave stay on the item.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from button_ray.config import JUDGE_SCALE, MethodConfig
from button_ray.errors import ParseError
from button_ray.llm.contract import ChatMessage, LLMClient, LLMRequest, LLMResponse, OutputConstraint
from button_ray.records import JUDGE_AXES, JudgeScores, WorkItem
from button_ray.steps import run_step

STAGE = "dialogue_judge"
TEMPLATE = "dialogue_judge.j2"


class _Verdict(BaseModel):
    """The verdict as the judge writes it; a score off the scale does not parse."""

    model_config = ConfigDict(frozen=True)

    reason: str = ""
    helpfulness: int = Field(ge=JUDGE_SCALE[0], le=JUDGE_SCALE[1])
    correctness: int = Field(ge=JUDGE_SCALE[0], le=JUDGE_SCALE[1])
    naturalness: int = Field(ge=JUDGE_SCALE[0], le=JUDGE_SCALE[1])

    @field_validator("reason", mode="before")
    @classmethod
    def _text(cls, value: Any) -> str:
        return " ".join(value.split()) if isinstance(value, str) else ""

    @field_validator(*JUDGE_AXES, mode="before")
    @classmethod
    def _not_bool(cls, value: Any) -> Any:
        # pydantic reads true as 1: a boolean is no score.
        if isinstance(value, bool):
            raise ValueError("a score is an integer, not a boolean")
        return value


def schema(cfg: MethodConfig) -> dict[str, Any]:
    """JSON schema of the verdict: the reason first (the judge reasons, then scores),
    then one integer per axis from the scale (an enum: every engine's JSON grammar
    compiles it). The reason is bounded only at the ``tight`` strength."""
    reason: dict[str, Any] = {"type": "string"}
    if cfg.strength(STAGE) == "tight":
        reason["maxLength"] = cfg.judge.reason_max_chars
    score = {"type": "integer", "enum": list(range(JUDGE_SCALE[0], JUDGE_SCALE[1] + 1))}
    return {
        "type": "object",
        "properties": {"reason": reason, **{axis: score for axis in JUDGE_AXES}},
        "required": ["reason", *JUDGE_AXES],
        "additionalProperties": False,
    }


def prompt(messages: Sequence[dict[str, str]], cfg: MethodConfig) -> str:
    """The rendered judge prompt over a BUTTON record's ``messages``. The system message
    is left out: its function list is long, and the tool messages repeat every call."""
    return cfg.templates().render(
        TEMPLATE, dialogue=[m for m in messages if m["role"] != "system"],
        scale_min=JUDGE_SCALE[0], scale_max=JUDGE_SCALE[1],
    )


def request(item_id: str, messages: Sequence[dict[str, str]], cfg: MethodConfig) -> LLMRequest:
    """The judge's request for one dialogue (on the trajectory's replica, like its agents)."""
    constraint = None
    if cfg.strength(STAGE) != "off":
        constraint = OutputConstraint(kind="json_schema", spec=schema(cfg))
    return LLMRequest(
        role=STAGE,
        messages=(ChatMessage(role="user", content=prompt(messages, cfg)),),
        sampling=cfg.sampling.for_role(STAGE),
        constraint=constraint,
        affinity_key=item_id,
        request_id=f"{item_id}/judge",
    )


def parse(response: LLMResponse) -> JudgeScores:
    """The scores: the first JSON object of the text, validated; ``empty_output``,
    ``bad_json`` or ``schema_mismatch`` otherwise (all retried)."""
    text = response.text.strip()
    if not text:
        raise ParseError("empty_output")
    start = text.find("{")
    try:
        value, _ = json.JSONDecoder().raw_decode(text, max(start, 0))
        verdict = _Verdict.model_validate(value)
    except ValueError as exc:  # JSONDecodeError and ValidationError both
        reason = "schema_mismatch" if isinstance(exc, ValidationError) else "bad_json"
        raise ParseError(reason, f"{str(exc)[:200]}: {text[:200]}") from None
    return JudgeScores(**verdict.model_dump())


def low_score(scores: JudgeScores, cfg: MethodConfig) -> str | None:
    """What puts ``scores`` under ``method.judge``'s thresholds, or None if they pass."""
    values = {axis: getattr(scores, axis) for axis in JUDGE_AXES}
    low = [f"{axis} {v} < {cfg.judge.min_score}" for axis, v in values.items() if v < cfg.judge.min_score]
    mean = sum(values.values()) / len(values)
    if cfg.judge.min_mean is not None and mean < cfg.judge.min_mean:
        low.append(f"mean {mean:.2f} < {cfg.judge.min_mean:g}")
    return "; ".join(low) or None


async def judge_dialogue(
    item: WorkItem, messages: Sequence[dict[str, str]], llm: LLMClient, cfg: MethodConfig
) -> bool:
    """Judge ``item``'s finished dialogue (``messages``, BUTTON's); True if it passes.

    Sets ``item.judge`` when the verdict parses; otherwise, or under a threshold, rejects
    the item at stage ``dialogue_judge`` (``judge_unparseable``, ``judge_low_score``; a
    request the engine refuses, such as a dialogue longer than its context, keeps
    ``invalid_request``).
    """
    built = request(item.item_id, messages, cfg)
    result = await run_step(llm, lambda _attempt: built, parse, item.usage_for(STAGE), cfg.retries)
    if not result.ok:
        reason = "invalid_request" if result.reason == "invalid_request" else "judge_unparseable"
        item.reject(STAGE, reason, f"{result.reason}: {result.detail}")
        return False
    scores: JudgeScores = result.value  # type: ignore[assignment]
    item.judge = scores
    problem = low_score(scores, cfg)
    if problem is not None:
        item.reject(STAGE, "judge_low_score", f"{problem}: {scores.reason}")
        return False
    return True

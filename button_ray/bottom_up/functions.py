"""Stage 5 of BUTTON: function definitions for a composition, grouped by sub-task.

The output is a list with one list of functions per sub-task, in sub-task order. A
sub-task that is pure reasoning may have none, but the task as a whole needs at least
one. Names are unique within the task and ``required`` is a subset of ``parameters``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from button_ray.bottom_up.common import copied_from_prompt, parse_json_as, run_item_step
from button_ray.config import MethodConfig
from button_ray.llm.contract import LLMClient, LLMResponse
from button_ray.prompts import render
from button_ray.records import Composition, FunctionDef, WorkItem
from button_ray.steps import ParseError

STAGE = "functions"
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,47}$"
# Bounds that keep a tiny model from rambling to max_tokens inside one function.
PARAM_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,31}$"
MAX_PARAMETERS = 6
MAX_RESPONSES = 6
DESCRIPTION_MAX_CHARS = 200
FIELD_DESCRIPTION_MAX_CHARS = 120
JSON_TYPES = ("string", "integer", "number", "boolean", "array", "object")
# Python spellings models use when no constraint holds them to JSON schema's.
_TYPE_ALIASES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
                 "list": "array", "dict": "object"}


class FieldSpec(BaseModel):
    """One parameter or response: ``{"type": ..., "description": ...}``."""

    model_config = ConfigDict(frozen=True)

    type: str
    description: str = Field(min_length=1)

    @field_validator("type", mode="before")
    @classmethod
    def _json_type(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        name = value.strip().lower()
        name = _TYPE_ALIASES.get(name, name)
        if name not in JSON_TYPES:
            raise ValueError(f"type must be one of {JSON_TYPES}")
        return name


# Checked here too, not only in the schema: an engine may ignore the constraint, and a
# parameter called "start date" cannot be passed as a keyword by most callers.
FieldName = Annotated[str, StringConstraints(pattern=PARAM_NAME_PATTERN)]


class FunctionOutput(BaseModel):
    """One function as the model writes it."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(min_length=1)
    parameters: dict[FieldName, FieldSpec] = {}
    required: tuple[str, ...] = ()
    responses: dict[FieldName, FieldSpec] = Field(min_length=1)


class FunctionsOutput(BaseModel):
    """``{"functions": [[function, ...] per sub-task]}``."""

    model_config = ConfigDict(frozen=True)

    functions: tuple[tuple[FunctionOutput, ...], ...]


def _field_schema() -> dict:
    return {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": list(JSON_TYPES)},
            "description": {"type": "string", "minLength": 1, "maxLength": FIELD_DESCRIPTION_MAX_CHARS},
        },
        "required": ["type", "description"],
        "additionalProperties": False,
    }


def schema(n_subtasks: int, max_per_subtask: int) -> dict:
    """JSON schema: exactly ``n_subtasks`` lists of at most ``max_per_subtask`` functions."""
    function = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "pattern": NAME_PATTERN},
            "description": {"type": "string", "minLength": 1, "maxLength": DESCRIPTION_MAX_CHARS},
            "parameters": {
                "type": "object",
                "propertyNames": {"pattern": PARAM_NAME_PATTERN},
                "additionalProperties": _field_schema(),
                "maxProperties": MAX_PARAMETERS,
            },
            "required": {
                "type": "array",
                "items": {"type": "string", "pattern": PARAM_NAME_PATTERN},
                "maxItems": MAX_PARAMETERS,
            },
            "responses": {
                "type": "object",
                "propertyNames": {"pattern": PARAM_NAME_PATTERN},
                "additionalProperties": _field_schema(),
                "minProperties": 1,
                "maxProperties": MAX_RESPONSES,
            },
        },
        "required": ["name", "description", "parameters", "required", "responses"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "functions": {
                "type": "array",
                "items": {"type": "array", "items": function, "maxItems": max_per_subtask},
                "minItems": n_subtasks,
                "maxItems": n_subtasks,
            }
        },
        "required": ["functions"],
        "additionalProperties": False,
    }


def prompt(composition: Composition, cfg: MethodConfig) -> str:
    """The rendered function-generation prompt."""
    return render(
        "functions.j2",
        composite_task=composition.composite_task,
        subtasks=list(composition.subtasks),
        max_functions=cfg.max_functions_per_subtask,
    )


def _to_def(fn: FunctionOutput) -> FunctionDef:
    missing = [p for p in fn.required if p not in fn.parameters]
    if missing:
        raise ParseError(
            "required_not_in_parameters", f"{fn.name}: required {missing} not in parameters", malformed=False
        )
    return FunctionDef(
        name=fn.name,
        description=fn.description.strip(),
        parameters={k: v.model_dump() for k, v in fn.parameters.items()},
        required=tuple(dict.fromkeys(fn.required)),
        responses={k: v.model_dump() for k, v in fn.responses.items()},
    )


def parse(
    response: LLMResponse, n_subtasks: int, max_per_subtask: int, prompt_text: str | None
) -> tuple[tuple[FunctionDef, ...], ...]:
    """Function groups, one per sub-task, checked against the BUTTON rules.

    Rule reasons, all retried (the output parsed but broke a rule): ``wrong_group_count``,
    ``too_many_functions``, ``duplicate_function_name``, ``required_not_in_parameters``,
    ``no_functions`` and ``copied_from_prompt`` (a description lifted from the worked
    example or restating a sub-task; checked only when ``prompt_text`` is given).
    """
    groups = parse_json_as(FunctionsOutput, response.text).functions
    if len(groups) != n_subtasks:
        raise ParseError(
            "wrong_group_count", f"{len(groups)} function groups for {n_subtasks} sub-tasks", malformed=False
        )
    for i, group in enumerate(groups, 1):
        if len(group) > max_per_subtask:
            raise ParseError(
                "too_many_functions", f"sub-task {i}: {len(group)} > {max_per_subtask}", malformed=False
            )
    names = [fn.name for group in groups for fn in group]
    if not names:
        raise ParseError("no_functions", "no sub-task has a function", malformed=False)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ParseError("duplicate_function_name", ", ".join(duplicates), malformed=False)
    copied = [
        fn.name for group in groups for fn in group if prompt_text and copied_from_prompt(fn.description, prompt_text)
    ]
    if copied:
        raise ParseError("copied_from_prompt", ", ".join(copied), malformed=False)
    return tuple(tuple(_to_def(fn) for fn in group) for group in groups)


async def generate_functions(
    item: WorkItem, composition: Composition, llm: LLMClient, cfg: MethodConfig
) -> tuple[tuple[FunctionDef, ...], ...] | None:
    """Function groups for ``composition``, or None with the item rejected."""
    n = len(composition.subtasks)
    text = prompt(composition, cfg)
    copy_check = text if cfg.reject_prompt_copies else None
    return await run_item_step(
        item,
        STAGE,
        text,
        schema(n, cfg.max_functions_per_subtask),
        lambda r: parse(r, n, cfg.max_functions_per_subtask, copy_check),
        llm,
        cfg,
    )

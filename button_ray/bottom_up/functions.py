"""Stage 5 of BUTTON: function definitions for a composition, grouped by sub-task.

The output is a list with one list of functions per sub-task, in sub-task order. A
sub-task that is pure reasoning may have none, but the task as a whole needs at least
one. Names are unique within the task and ``required`` is a subset of ``parameters``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from button_ray import quality
from button_ray.bottom_up.common import copied_from_prompt, parse_json_as, run_item_step
from button_ray.bottom_up.function_names import name_patterns
from button_ray.config import ContentConfig, MethodConfig
from button_ray.errors import ParseError
from button_ray.llm.contract import LLMClient, LLMResponse
from button_ray.records import (
    GENERATED_FUNCTION_NAME_PATTERN,
    PARAMETER_NAME_PATTERN,
    Composition,
    FunctionDef,
    WorkItem,
)
from button_ray.specs import value_matches

STAGE = "functions"
# Bounds that keep a tiny model from rambling to max_tokens inside one function.
MAX_PARAMETERS = 6
MAX_RESPONSES = 6
DESCRIPTION_MAX_CHARS = 150
FIELD_DESCRIPTION_MAX_CHARS = 80
JSON_TYPES = ("string", "integer", "number", "boolean", "array", "object")
# Python spellings models use when no constraint holds them to JSON schema's.
_TYPE_ALIASES = {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
                 "list": "array", "dict": "object"}


#: Nesting levels of ``items`` / ``properties`` a generated spec may use (structure strength).
SPEC_DEPTH = 2
#: Most values of an ``enum``, in the generation schema.
MAX_ENUM = 24


class FieldSpec(BaseModel):
    """One parameter or response: ``{"type", "description"}``, and where it applies the
    JSON Schema keywords trainers and chat templates expect: ``enum`` (a fixed set of
    values), ``items`` (an array's element), ``properties`` and ``required`` (an object's
    fields). Nested specs may omit the description."""

    model_config = ConfigDict(frozen=True)

    type: str
    description: str | None = Field(None, min_length=1)
    enum: tuple[str | int | float | bool, ...] | None = Field(None, min_length=1)
    items: "FieldSpec | None" = None
    properties: "dict[FieldName, FieldSpec] | None" = None
    required: tuple[str, ...] | None = None

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

    @model_validator(mode="after")
    def _keywords_fit_the_type(self) -> "FieldSpec":
        if self.enum is not None and not all(value_matches(v, {self.type}) for v in self.enum):
            raise ValueError(f"enum values must be of type {self.type}")
        if self.items is not None and self.type != "array":
            raise ValueError("items belongs to an array")
        if (self.properties is not None or self.required is not None) and self.type != "object":
            raise ValueError("properties and required belong to an object")
        missing = [r for r in self.required or () if r not in (self.properties or {})]
        if missing:
            raise ValueError(f"required {missing} not in properties")
        return self

    def as_dict(self) -> dict[str, Any]:
        """The spec as it is stored: only the keywords that are set."""
        return self.model_dump(mode="json", exclude_none=True)


# Checked here too, not only in the schema: an engine may ignore the constraint, and a
# parameter called "start date" cannot be passed as a keyword by most callers.
FieldName = Annotated[str, StringConstraints(pattern=PARAMETER_NAME_PATTERN)]
FieldSpec.model_rebuild()


class FunctionOutput(BaseModel):
    """One function as the model writes it."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=GENERATED_FUNCTION_NAME_PATTERN)
    description: str = Field(min_length=1)
    parameters: dict[FieldName, FieldSpec] = {}
    required: tuple[str, ...] = ()
    responses: dict[FieldName, FieldSpec] = Field(min_length=1)

    @field_validator("parameters", "responses")
    @classmethod
    def _described(cls, fields: dict[str, FieldSpec]) -> dict[str, FieldSpec]:
        blank = [name for name, spec in fields.items() if not spec.description]
        if blank:
            raise ValueError(f"{blank} need a description")
        return fields


class FunctionsOutput(BaseModel):
    """``{"functions": [[function, ...] per sub-task]}``."""

    model_config = ConfigDict(frozen=True)

    functions: tuple[tuple[FunctionOutput, ...], ...]


def _field_schema(rich: bool = False, parameter_pattern: str = PARAMETER_NAME_PATTERN, depth: int = 0) -> dict:
    """JSON schema of one parameter/response spec; ``rich`` (the ``structure`` strength)
    adds ``enum``, and up to :data:`SPEC_DEPTH` levels of ``items`` / ``properties``."""
    props: dict[str, Any] = {
        "type": {"type": "string", "enum": list(JSON_TYPES)},
        "description": {"type": "string", "minLength": 1, "maxLength": FIELD_DESCRIPTION_MAX_CHARS},
    }
    if rich:
        props["enum"] = {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_ENUM}
        if depth < SPEC_DEPTH:
            inner = _field_schema(True, parameter_pattern, depth + 1)
            props["items"] = inner
            props["properties"] = {
                "type": "object",
                "propertyNames": {"pattern": parameter_pattern},
                "additionalProperties": inner,
                "maxProperties": MAX_PARAMETERS,
            }
            props["required"] = {
                "type": "array", "items": {"type": "string", "pattern": parameter_pattern}, "maxItems": MAX_PARAMETERS
            }
    return {
        "type": "object",
        "properties": props,
        "required": ["type", "description"] if depth == 0 else ["type"],
        "additionalProperties": False,
    }


def schema(
    n_subtasks: int,
    max_per_subtask: int,
    *,
    min_per_subtask: int = 0,
    name_pattern: str = GENERATED_FUNCTION_NAME_PATTERN,
    parameter_pattern: str = PARAMETER_NAME_PATTERN,
    group_name_patterns: Sequence[str | None] | None = None,
    rich: bool = False,
) -> dict:
    """JSON schema: exactly ``n_subtasks`` lists of ``min_per_subtask`` to ``max_per_subtask``
    functions, names matching ``name_pattern``, parameter and result names ``parameter_pattern``.

    ``group_name_patterns`` (one per sub-task, None for ``name_pattern``) gives each group
    its own name pattern, as ``prefixItems``. ``rich``: specs may use ``enum``, ``items``
    and nested ``properties`` (see :func:`_field_schema`).
    """
    if group_name_patterns is not None:
        if len(group_name_patterns) != n_subtasks:
            raise ValueError("one name pattern per sub-task")
        groups = [
            _group_schema(min_per_subtask, max_per_subtask, p or name_pattern, parameter_pattern, rich)
            for p in group_name_patterns
        ]
        array = {"type": "array", "prefixItems": groups, "minItems": n_subtasks, "maxItems": n_subtasks}
    else:
        array = {
            "type": "array",
            "items": _group_schema(min_per_subtask, max_per_subtask, name_pattern, parameter_pattern, rich),
            "minItems": n_subtasks,
            "maxItems": n_subtasks,
        }
    return {
        "type": "object",
        "properties": {"functions": array},
        "required": ["functions"],
        "additionalProperties": False,
    }


def _group_schema(min_items: int, max_items: int, name_pattern: str, parameter_pattern: str, rich: bool) -> dict:
    spec = _field_schema(rich, parameter_pattern)
    function = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "pattern": name_pattern},
            "description": {"type": "string", "minLength": 1, "maxLength": DESCRIPTION_MAX_CHARS},
            "parameters": {
                "type": "object",
                "propertyNames": {"pattern": parameter_pattern},
                "additionalProperties": spec,
                "maxProperties": MAX_PARAMETERS,
            },
            "required": {
                "type": "array",
                "items": {"type": "string", "pattern": parameter_pattern},
                "maxItems": MAX_PARAMETERS,
            },
            "responses": {
                "type": "object",
                "propertyNames": {"pattern": parameter_pattern},
                "additionalProperties": spec,
                "minProperties": 1,
                "maxProperties": MAX_RESPONSES,
            },
        },
        "required": ["name", "description", "parameters", "required", "responses"],
        "additionalProperties": False,
    }
    return {"type": "array", "items": function, "minItems": min_items, "maxItems": max_items}


def rich_specs(cfg: MethodConfig) -> bool:
    """Whether specs may use ``enum``, ``items`` and nested ``properties``: at the
    ``structure`` strength (a strong model writes them; a tiny one gets lost in them)."""
    return cfg.strength(STAGE) == "structure"


def prompt(composition: Composition, cfg: MethodConfig) -> str:
    """The rendered function-generation prompt."""
    return cfg.templates().render(
        "functions.j2",
        composite_task=composition.composite_task,
        subtasks=list(composition.subtasks),
        max_functions=cfg.max_functions_per_subtask,
        rich=rich_specs(cfg),
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
        parameters={k: v.as_dict() for k, v in fn.parameters.items()},
        required=tuple(dict.fromkeys(fn.required)),
        responses={k: v.as_dict() for k, v in fn.responses.items()},
    )


def parse(
    response: LLMResponse,
    n_subtasks: int,
    max_per_subtask: int,
    prompt_text: str | None,
    *,
    min_per_subtask: int = 0,
    name_pattern: str = GENERATED_FUNCTION_NAME_PATTERN,
    parameter_pattern: str = PARAMETER_NAME_PATTERN,
    group_name_patterns: Sequence[str | None] | None = None,
    content: ContentConfig | None = None,
) -> tuple[tuple[FunctionDef, ...], ...]:
    """Function groups, one per sub-task, checked against the BUTTON rules.

    Rule reasons, all retried (the output parsed but broke a rule): ``wrong_group_count``,
    ``too_many_functions``, ``too_few_functions`` (a group under ``min_per_subtask``),
    ``duplicate_function_name``, ``required_not_in_parameters``, ``no_functions`` and
    ``copied_from_prompt`` (a description lifted from the prompt or restating a sub-task;
    checked only when ``prompt_text`` is given), and with ``content`` ``degenerate_text`` (a
    function description). A name off ``name_pattern`` or ``parameter_pattern`` is
    ``schema_mismatch`` (the constraint forbids it).
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
        if len(group) < min_per_subtask:
            raise ParseError(
                "too_few_functions", f"sub-task {i}: {len(group)} < {min_per_subtask}", malformed=False
            )
    for i, fn in ((i, fn) for i, group in enumerate(groups) for fn in group):
        wanted = [name_pattern] + ([group_name_patterns[i]] if group_name_patterns and group_name_patterns[i] else [])
        if not all(re.fullmatch(p, fn.name) for p in wanted):
            raise ParseError("schema_mismatch", f"name {fn.name!r} does not match {wanted[-1]}")
        for key in (*fn.parameters, *fn.responses, *fn.required):
            if not re.fullmatch(parameter_pattern, key):
                raise ParseError("schema_mismatch", f"{fn.name}: {key!r} does not match {parameter_pattern}")
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
    if content is not None:
        degenerate = quality.first_degenerate([(fn.name, fn.description) for g in groups for fn in g], content)
        if degenerate:
            raise ParseError("degenerate_text", degenerate, malformed=False)
    return tuple(tuple(_to_def(fn) for fn in group) for group in groups)


async def generate_functions(
    item: WorkItem, composition: Composition, llm: LLMClient, cfg: MethodConfig
) -> tuple[tuple[FunctionDef, ...], ...] | None:
    """Function groups for ``composition``, or None with the item rejected."""
    n = len(composition.subtasks)
    text = prompt(composition, cfg)
    copy_check = text if cfg.reject_prompt_copies else None
    rules = dict(
        min_per_subtask=cfg.min_functions_per_subtask,
        name_pattern=cfg.function_name_pattern,
        parameter_pattern=cfg.parameter_name_pattern,
        group_name_patterns=name_patterns(composition.subtasks) if cfg.function_names_from_subtask else None,
    )
    # Room for every function the schema allows, so many-function tasks are not the
    # ones cut off (sampling.functions.max_tokens stays the floor).
    max_tokens = cfg.functions_tokens_per_function * cfg.max_functions_per_subtask * n
    return await run_item_step(
        item,
        STAGE,
        text,
        schema(n, cfg.max_functions_per_subtask, rich=rich_specs(cfg), **rules),
        lambda r: parse(r, n, cfg.max_functions_per_subtask, copy_check, content=cfg.content, **rules),
        llm,
        cfg,
        max_tokens=max_tokens,
    )

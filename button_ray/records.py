"""The one data model: what flows between stages and what lands in storage.

Every unit of work is an *item*: one (scenario, slot) pair. Each item ends in exactly
one outcome: ``emitted`` (an accepted trajectory), ``rejected`` (stage + reason) or
``failed`` (an error that is not the record's fault). Ids are deterministic from the
input and the config fingerprint, so a re-run produces the same ids.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import pyarrow as pa

from pydantic import BaseModel, ConfigDict, Field

from button_ray.frozen import Frozen

Strategy = Literal["sequential", "parallel_then_sequential"]
Outcome = Literal["pending", "emitted", "rejected", "failed"]
#: The names a record's function may have.
FUNCTION_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$"
#: The names a generated function may have by default (``MethodConfig.function_name_pattern``):
#: a subset of :data:`FUNCTION_NAME_PATTERN`, short enough that a small model cannot ramble
#: to ``max_tokens`` inside one name.
GENERATED_FUNCTION_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,47}$"
#: The names a generated function's parameters and results may have by default
#: (``MethodConfig.parameter_name_pattern``): identifiers most callers can pass as keywords.
PARAMETER_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,31}$"


def stable_id(*parts: object, length: int = 16) -> str:
    """A short deterministic hex id over ``parts`` (the same inputs give the same id)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode())
    return h.hexdigest()[:length]


def scenario_id(text: str) -> str:
    """Content-addressed id: the same scenario text (case and spacing aside) has the same
    id in every run. Record ids and shard keys derive from it, so changing it changes
    every fingerprinted output."""
    return stable_id("scenario", " ".join(text.lower().split()))


def derive_seed(*parts: object) -> int:
    """A per-request seed derived from record ids, so every run makes the same requests."""
    return int(stable_id(*parts, length=15), 16)


class Scenario(Frozen):
    """A short everyday situation, the root of every item."""

    scenario_id: str
    text: str = Field(min_length=1)
    source: str = Field("list", description="'list', 'extraction', 'expansion' or a file name.")


class FunctionDef(Frozen):
    """A function definition in the BUTTON shape (five fields, this order when serialized)."""

    name: str = Field(pattern=FUNCTION_NAME_PATTERN)
    description: str
    parameters: dict[str, dict[str, Any]] = Field(description="param -> {type, description, ...}")
    required: tuple[str, ...] = ()
    responses: dict[str, dict[str, Any]] = Field(description="result -> {type, description}")

    def as_button_dict(self) -> dict[str, Any]:
        """The object that goes into the system prompt's ``{tool_list}``."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
            "required": list(self.required),
            "responses": self.responses,
        }


class Composition(Frozen):
    """A composite task built from one atomic task by a heuristic strategy."""

    strategy: Strategy
    subtasks: tuple[str, ...] = Field(min_length=2, description="Sub-tasks in execution order.")
    composite_task: str = Field(min_length=1)


class TaskBundle(Frozen):
    """Everything bottom-up produces for one item; the input of the simulation."""

    atomic_task: str
    composition: Composition
    judge_reasoning: str = ""
    functions: tuple[tuple[FunctionDef, ...], ...] = Field(
        description="Function definitions grouped by sub-task (same order as subtasks)."
    )

    @property
    def flat_functions(self) -> tuple[FunctionDef, ...]:
        return tuple(f for group in self.functions for f in group)


class Rejection(Frozen):
    """Why an item did not make it; ``reason`` is a machine-readable code."""

    stage: str
    reason: str
    detail: str = ""


class StageUsage(BaseModel):
    """LLM usage of one stage for one item (mutable counters, summed by the sink)."""

    model_config = ConfigDict(extra="forbid")

    calls: int = 0
    unparseable: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: "StageUsage") -> None:
        self.calls += other.calls
        self.unparseable += other.unparseable
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


class ToolCall(Frozen):
    """One function call of an assistant turn."""

    name: str
    arguments: dict[str, Any]


class Turn(Frozen):
    """One message of a simulated dialogue (before conversion to the BUTTON format).

    ``assistant`` turns carry ``thought`` and either ``calls`` or ``final``; ``tool``
    turns carry ``results`` (one per call of the preceding assistant turn, in order).
    """

    role: Literal["user", "assistant", "tool"]
    content: str = ""
    thought: str = ""
    calls: tuple[ToolCall, ...] = ()
    final: str | None = None
    results: tuple[dict[str, Any], ...] = ()


class TrajectoryStats(Frozen):
    """Shape of an accepted trajectory."""

    assistant_turns: int
    calls: int
    calls_per_turn: tuple[int, ...]
    clarifications: int
    prompt_tokens: int
    completion_tokens: int


#: The axes the dialogue judge scores (``method.judge``), the fields of :class:`JudgeScores`.
JUDGE_AXES = ("helpfulness", "correctness", "naturalness")


class JudgeScores(Frozen):
    """The dialogue judge's verdict (``method.judge``): a score per axis on
    ``config.JUDGE_SCALE`` and its short reason."""

    helpfulness: int
    correctness: int
    naturalness: int
    reason: str = ""


class WorkItem(BaseModel):
    """One item as it moves through the pipeline (serialized between Ray stages)."""

    model_config = ConfigDict(extra="forbid")

    item_id: str
    scenario: Scenario
    slot: int = Field(ge=0)
    seed: int
    outcome: Outcome = "pending"
    bundle: TaskBundle | None = None
    parallel: bool | None = None
    turns: tuple[Turn, ...] = ()
    stats: TrajectoryStats | None = None
    messages: tuple[dict[str, str], ...] = ()
    rejection: Rejection | None = None
    judge: JudgeScores | None = None
    error: str | None = None
    usage: dict[str, StageUsage] = Field(default_factory=dict)

    def usage_for(self, stage: str) -> StageUsage:
        return self.usage.setdefault(stage, StageUsage())

    def reject(self, stage: str, reason: str, detail: str = "") -> "WorkItem":
        self.outcome = "rejected"
        self.rejection = Rejection(stage=stage, reason=reason, detail=detail[:2000])
        return self

    def fail(self, error: str) -> "WorkItem":
        self.outcome = "failed"
        self.error = error[:4000]
        return self


# -- storage: the Arrow schemas of the two output tables --------------------------------

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])

#: One message of the OpenAI tool-calling form (``docs/formats.md``). Every message has
#: every field (absent ones are null); ``arguments`` is a JSON string, as the API sends it.
OPENAI_TOOL_CALL_TYPE = pa.struct([
    ("id", pa.string()),
    ("type", pa.string()),
    ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())])),
])
OPENAI_MESSAGE_TYPE = pa.struct([
    ("role", pa.string()),
    ("content", pa.string()),
    ("tool_calls", pa.list_(OPENAI_TOOL_CALL_TYPE)),
    ("tool_call_id", pa.string()),
])

# The two mappings are JSON strings, not Arrow maps: Hugging Face `datasets` cannot read
# a map column, and the run must load with it as it is (docs/formats.md).
LINEAGE_FIELDS = [
    pa.field("config_fingerprint", pa.string()),
    pa.field("models", pa.string(), metadata={"doc": "JSON: role -> model name"}),
    pa.field("engine_version", pa.string()),
    pa.field("template_hashes", pa.string(), metadata={"doc": "JSON: prompt template -> sha256"}),
    pa.field("seed", pa.int64()),
    pa.field("shard", pa.string()),
]

# The fields both tables carry, at the same places: which input an item came from, and
# what it cost.
_ITEM_FIELDS = [
    pa.field("scenario_id", pa.string()),
    pa.field("scenario", pa.string()),
    pa.field("slot", pa.int32()),
]
# Null when the judge is off or did not score the item (it runs only on dialogues every
# other rule accepted); a dialogue it rejected keeps its scores in the rejected table.
_JUDGE_FIELDS = [
    pa.field("judge_helpfulness", pa.int8(), metadata={"doc": "dialogue judge, 1-5"}),
    pa.field("judge_correctness", pa.int8(), metadata={"doc": "dialogue judge, 1-5"}),
    pa.field("judge_naturalness", pa.int8(), metadata={"doc": "dialogue judge, 1-5"}),
    pa.field("judge_reason", pa.string()),
]
_USAGE_FIELDS = [
    pa.field("llm_calls", pa.int32()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
]

ACCEPTED_SCHEMA = pa.schema(
    [
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("messages", pa.list_(MESSAGE_TYPE), nullable=False, metadata={"doc": "BUTTON messages"}),
        pa.field("openai_messages", pa.list_(OPENAI_MESSAGE_TYPE),
                 metadata={"doc": "the same trajectory as OpenAI chat messages with tool_calls"}),
        # A JSON string, not structs: the parameters' JSON Schemas differ from function to
        # function, and Arrow would merge them into one struct type padded with nulls.
        pa.field("tools", pa.string(), metadata={"doc": "JSON: the functions as OpenAI tools"}),
        *_ITEM_FIELDS,
        pa.field("atomic_task", pa.string()),
        pa.field("strategy", pa.string()),
        pa.field("subtasks", pa.list_(pa.string())),
        pa.field("composite_task", pa.string()),
        pa.field("functions", pa.string(), metadata={"doc": "JSON: function definitions grouped by sub-task"}),
        pa.field("parallel", pa.bool_()),
        pa.field("assistant_turns", pa.int32()),
        pa.field("calls", pa.int32()),
        pa.field("calls_per_turn", pa.list_(pa.int32())),
        pa.field("clarifications", pa.int32()),
        *_JUDGE_FIELDS,
        *_USAGE_FIELDS,
        *LINEAGE_FIELDS,
    ]
)

REJECTED_SCHEMA = pa.schema(
    [
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("outcome", pa.string(), metadata={"doc": "'rejected' or 'failed'"}),
        pa.field("stage", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        *_ITEM_FIELDS,
        *_JUDGE_FIELDS,
        *_USAGE_FIELDS,
        *LINEAGE_FIELDS,
    ]
)


def to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts from :func:`item_row`) as a table of ``schema``; absent fields are null."""
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)


def _usage_totals(item: WorkItem) -> tuple[int, int, int]:
    return (
        sum(u.calls for u in item.usage.values()),
        sum(u.prompt_tokens for u in item.usage.values()),
        sum(u.completion_tokens for u in item.usage.values()),
    )


def _judge_columns(judge: JudgeScores | None) -> dict[str, Any]:
    if judge is None:
        return {}
    return {"judge_helpfulness": judge.helpfulness, "judge_correctness": judge.correctness,
            "judge_naturalness": judge.naturalness, "judge_reason": judge.reason}


def item_row(item: WorkItem, lineage: dict[str, Any]) -> dict[str, Any]:
    """The output row of a finished item (accepted or rejected table, by outcome)."""
    calls, prompt_tokens, completion_tokens = _usage_totals(item)
    common = {
        "record_id": item.item_id,
        "scenario_id": item.scenario.scenario_id,
        "scenario": item.scenario.text,
        "slot": item.slot,
        "llm_calls": calls,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        **lineage,
        "models": json.dumps(lineage["models"], ensure_ascii=False),
        "template_hashes": json.dumps(lineage["template_hashes"], ensure_ascii=False),
        "seed": item.seed,
        **_judge_columns(item.judge),
    }
    if item.outcome == "emitted":
        # Imported here: formats reaches records again through the trajectory filter's types.
        from button_ray.formats import to_openai

        assert item.bundle is not None and item.stats is not None
        openai = to_openai(item.messages)
        return {
            **common,
            "messages": list(item.messages),
            "openai_messages": openai["messages"],
            "tools": json.dumps(openai["tools"], ensure_ascii=False),
            "atomic_task": item.bundle.atomic_task,
            "strategy": item.bundle.composition.strategy,
            "subtasks": list(item.bundle.composition.subtasks),
            "composite_task": item.bundle.composition.composite_task,
            "functions": json.dumps(
                [[f.as_button_dict() for f in group] for group in item.bundle.functions], ensure_ascii=False
            ),
            "parallel": bool(item.parallel),
            "assistant_turns": item.stats.assistant_turns,
            "calls": item.stats.calls,
            "calls_per_turn": list(item.stats.calls_per_turn),
            "clarifications": item.stats.clarifications,
        }
    rejection = item.rejection
    return {
        **common,
        "outcome": item.outcome,
        "stage": rejection.stage if rejection else None,
        "reason": rejection.reason if rejection else None,
        "detail": (rejection.detail if rejection else "") or (item.error or ""),
    }

"""The engine contract the BUTTON method calls: one request in, one response out.

The method only ever does ``await llm.generate(request)``. Anything that implements
:class:`LLMClient` can serve it: the Ray replica pool in production, a scripted engine
in orchestration tests. Nothing here imports Ray or vLLM.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import Field, model_validator

from button_ray.frozen import Frozen

#: The roles a request can be routed by. Bottom-up stages and the three agents may be
#: served by different model pools (see ``config.PoolConfig.roles``). ``dialogue_judge``
#: (``method.judge``) is needed only when the judge is on.
Role = Literal[
    "scenario_extraction",
    "scenario_expansion",
    "atomic_task",
    "composition",
    "composition_filter",
    "functions",
    "user_agent",
    "assistant_agent",
    "tool_agent",
    "dialogue_judge",
]
ROLES: tuple[str, ...] = Role.__args__  # type: ignore[attr-defined]


class ChatMessage(Frozen):
    """One chat message sent to the engine (the engine applies the model's template)."""

    role: Literal["system", "user", "assistant"]
    content: str


class Sampling(Frozen):
    """Sampling parameters of one request; validated here so a bad value never reaches an engine."""

    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Softmax temperature; 0 is greedy.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(512, ge=1, le=32768, description="Completion token cap.")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Per-request seed (derived from record ids).")
    stop: tuple[str, ...] = Field((), description="Stop strings; not included in the output.")


class OutputConstraint(Frozen):
    """What the output must look like; maps to vLLM structured outputs.

    ``json_schema`` takes a JSON schema dict, ``regex`` a regular expression, ``grammar``
    a GBNF grammar (xgrammar dialect). Engines that cannot enforce it may ignore it: the
    method parses defensively either way.
    """

    kind: Literal["json_schema", "regex", "grammar"]
    spec: str | dict[str, Any]

    @model_validator(mode="after")
    def _spec_matches_kind(self) -> "OutputConstraint":
        if (self.kind == "json_schema") != isinstance(self.spec, dict):
            raise ValueError("json_schema constraints take a dict; regex and grammar take a string")
        return self


class LLMRequest(Frozen):
    """One generation request."""

    role: Role = Field(description="Stage or agent issuing the request; selects the model pool.")
    messages: tuple[ChatMessage, ...] = Field(min_length=1)
    sampling: Sampling = Sampling()
    constraint: OutputConstraint | None = None
    affinity_key: str | None = Field(
        None, description="Requests sharing a key go to the same replica (prefix cache reuse)."
    )
    request_id: str = Field(min_length=1, description="Unique, deterministic id (record id + step).")


class LLMResponse(Frozen):
    """The engine's answer to one request."""

    text: str
    finish_reason: str = Field(description="'stop', 'length' (truncated) or 'abort'.")
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    model: str = ""


@runtime_checkable
class LLMClient(Protocol):
    """Anything that can serve requests: ``await llm.generate(request)``."""

    async def generate(self, request: LLMRequest) -> LLMResponse: ...


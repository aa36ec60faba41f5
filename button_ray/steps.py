"""One LLM step with bounded retries: build a request, call, parse, validate.

Every stage of the method is a build function and a parse function; this module runs
them. A malformed or truncated output (``finish_reason == "length"``) is retried with a
new seed up to ``retries`` times, then the item is rejected with the last reason. An
invalid request (:class:`LLMRequestError`) is rejected at once: retrying cannot help.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from button_ray.errors import LLMRequestError, ParseError
from button_ray.llm.contract import LLMClient, LLMRequest, LLMResponse
from button_ray.records import StageUsage, derive_seed

T = TypeVar("T")


@dataclass
class StepResult(Generic[T]):
    """Either ``value`` (success) or ``reason``/``detail`` (rejection)."""

    value: T | None = None
    reason: str | None = None
    detail: str = ""
    response: LLMResponse | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


async def run_step(
    llm: LLMClient,
    build: Callable[[int], LLMRequest],
    parse: Callable[[LLMResponse], T],
    usage: StageUsage,
    retries: int,
) -> StepResult[T]:
    """Call ``build(attempt)`` -> generate -> ``parse`` with up to ``retries`` retries.

    The seed of each attempt derives from the request id and the attempt number, so
    attempts differ but runs repeat; ``build`` leaves ``sampling.seed`` unset.
    """
    last = StepResult[T](reason="no_attempt")
    for attempt in range(retries + 1):
        request = build(attempt)
        request = request.model_copy(
            update={
                "sampling": request.sampling.model_copy(
                    update={"seed": derive_seed(request.request_id, attempt)}
                ),
                "request_id": f"{request.request_id}#{attempt}",
            }
        )
        try:
            response = await llm.generate(request)
        except LLMRequestError as exc:
            return StepResult(reason="invalid_request", detail=str(exc))
        usage.calls += 1
        usage.prompt_tokens += response.prompt_tokens
        usage.completion_tokens += response.completion_tokens
        if response.finish_reason == "length":
            usage.unparseable += 1
            last = StepResult(reason="truncated", detail=response.text[-300:], response=response)
            continue
        try:
            return StepResult(value=parse(response), response=response)
        except ParseError as exc:
            usage.unparseable += int(exc.malformed)
            last = StepResult(reason=exc.reason, detail=exc.detail or response.text[:300], response=response)
    return last

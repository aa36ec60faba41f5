"""The bottom-up content rules (``button_ray/quality/``): degenerate outputs are redrawn,
then rejected; an off-topic atomic task and near-identical sub-tasks are caught before
any simulation is paid for."""

from __future__ import annotations

import json

import pytest

from button_ray.bottom_up import atomic, build_bundle, compose, functions
from button_ray.config import ContentConfig, MethodConfig
from button_ray.errors import ParseError
from button_ray.llm.contract import LLMResponse
from button_ray.quality import near_duplicate_subtasks, relevance
from tests.bottom_up.conftest import make_item, scripted
from tests.fakes import ScriptedLLM

CONTENT = ContentConfig()
RELEVANCE = 0.15  # the threshold docs/quality.md suggests
ATOMIC = "Find a hotel in Lisbon for 3 June 2025 for 2 people."
LOOPED = " ".join(["Book it and pay for it now."] * 3)  # within the 30-word limit


def response(value: dict) -> LLMResponse:
    return LLMResponse(text=json.dumps(value), finish_reason="stop", prompt_tokens=1, completion_tokens=1)


def test_degenerate_atomic_task() -> None:
    with pytest.raises(ParseError) as exc:
        atomic.parse(response({"task": LOOPED}), 60, None, content=CONTENT)
    assert exc.value.reason == "degenerate_text" and not exc.value.malformed
    assert atomic.parse(response({"task": ATOMIC}), 60, None, content=CONTENT) == ATOMIC
    assert atomic.parse(response({"task": LOOPED}), 60, None, content=ContentConfig(degeneration=False))


@pytest.mark.parametrize(
    ("subtasks", "composite", "reason"),
    [
        ([ATOMIC, "Book the hotel found for 2 people."], "1. to 2. to 3. to 4. to 5. to 6. to 7. to 8. to 14.",
         "degenerate_text"),
        ([ATOMIC, LOOPED], "Find a hotel in Lisbon and book it.", "degenerate_text"),
        # The first sub-task reworded: other stop words, "two" for 2.
        ([ATOMIC, "Find a hotel in Lisbon on 3 June 2025 for two people."], "Find and book a Lisbon hotel.",
         "near_duplicate_subtasks"),
    ],
)  # fmt: skip
def test_bad_compositions(subtasks: list[str], composite: str, reason: str) -> None:
    raw = response({"subtasks": subtasks, "composite_task": composite})
    with pytest.raises(ParseError) as exc:
        compose.parse(raw, "sequential", ATOMIC, None, content=CONTENT)
    assert exc.value.reason == reason and not exc.value.malformed
    off = ContentConfig(degeneration=False, subtask_max_similarity=None)
    assert compose.parse(raw, "sequential", ATOMIC, None, content=off).composite_task == composite


@pytest.mark.parametrize(
    "subtasks",
    [
        [ATOMIC, "Book the hotel found in the first step for 2 people on 3 June 2025."],
        ["Find the cheapest flight from Paris to Rome on 3 June.", "Book the cheapest flight from Paris to Rome."],
        ["Find the price of a train ticket from Paris to Lyon on 3 June.",
         "Find the price of a flight from Paris to Lyon on 3 June.", "Tell which is cheaper."],
    ],
)  # fmt: skip
def test_related_but_distinct_subtasks_pass(subtasks: list[str]) -> None:
    assert near_duplicate_subtasks(subtasks, CONTENT.subtask_max_similarity) is None


def test_degenerate_function_description() -> None:
    def fn(name: str, description: str) -> dict:
        return {"name": name, "description": description, "parameters": {}, "required": [],
                "responses": {"ok": {"type": "boolean", "description": "Done."}}}  # fmt: skip

    good = fn("find_hotel", "Find hotels in a city for a date and a number of guests.")
    looped = fn("book_hotel", "Book the hotel room. " * 4)
    with pytest.raises(ParseError) as exc:
        functions.parse(response({"functions": [[good], [looped]]}), 2, 3, None, content=CONTENT)
    assert exc.value.reason == "degenerate_text" and "book_hotel" in exc.value.detail
    assert functions.parse(response({"functions": [[good], []]}), 2, 3, None, content=CONTENT)


def test_relevance_separates_on_and_off_topic_tasks() -> None:
    threshold = RELEVANCE
    assert relevance("booking a flight", "Book a one-way flight from Paris to Rome on 5 May for 2 adults.") > threshold
    assert relevance("ordering groceries online", "Order 2 litres of milk and bread for delivery at 6 pm.") > threshold
    assert relevance("planning a wedding", "Calculate the monthly payment of a 200000 dollar mortgage.") < threshold
    assert relevance("ordering groceries online", "Check the weather forecast for Berlin tomorrow.") < threshold


async def test_an_irrelevant_atomic_task_is_rejected_before_simulation() -> None:
    off_topic = json.dumps({"task": "Check the weather forecast for Berlin tomorrow."})
    item = make_item(scenario="ordering groceries online")
    llm = ScriptedLLM(scripted({"atomic_task": [off_topic]}))
    await build_bundle(item, llm, MethodConfig(content=ContentConfig(relevance_min_similarity=RELEVANCE)))
    assert (item.rejection.stage, item.rejection.reason) == ("atomic_task", "irrelevant_task")
    assert [r.role for r in llm.requests] == ["atomic_task"]
    kept = make_item(scenario="ordering groceries online")
    await build_bundle(kept, ScriptedLLM(scripted({"atomic_task": [off_topic]})), MethodConfig())  # off by default
    assert kept.outcome == "pending" and kept.bundle is not None


async def test_a_degenerate_output_is_redrawn_then_rejected() -> None:
    looped = json.dumps({"task": LOOPED})
    item = make_item()
    llm = ScriptedLLM(scripted({"atomic_task": [looped, json.dumps({"task": "Track parcel 1Z999 sent to Oslo."})]}))
    await build_bundle(item, llm, MethodConfig())
    assert item.bundle is not None and item.usage_for("atomic_task").calls == 2
    stuck = make_item()
    await build_bundle(stuck, ScriptedLLM(scripted({"atomic_task": [looped] * 3})), MethodConfig(retries=2))
    assert (stuck.rejection.stage, stuck.rejection.reason) == ("atomic_task", "degenerate_text")

"""Composition stage: strategy choice, sub-task rules, retries."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from button_ray.bottom_up import compose
from button_ray.config import MethodConfig
from tests.bottom_up.conftest import make_item, scripted
from tests.fakes import ScriptedLLM

ATOMIC = "Find the current exchange rate from US dollars to euros."
SEQ_ONLY = MethodConfig(strategy_mix={"sequential": 1.0, "parallel_then_sequential": 0.0})
PTS_ONLY = MethodConfig(strategy_mix={"sequential": 0.0, "parallel_then_sequential": 1.0})


def _out(subtasks: list[str], composite: str = "How many euros do I get for 250 dollars?") -> str:
    return json.dumps({"subtasks": subtasks, "composite_task": composite})


def test_strategy_is_deterministic_and_follows_the_mix() -> None:
    mix = {"sequential": 0.5, "parallel_then_sequential": 0.5}
    ids = [f"run/s{i}/0" for i in range(2000)]
    first = [compose.choose_strategy(i, mix) for i in ids]
    assert first == [compose.choose_strategy(i, dict(reversed(list(mix.items())))) for i in ids]
    share = Counter(first)["sequential"] / len(ids)
    assert 0.45 < share < 0.55
    skewed = Counter(compose.choose_strategy(i, {"sequential": 0.9, "parallel_then_sequential": 0.1}) for i in ids)
    assert 0.85 < skewed["sequential"] / len(ids) < 0.95
    assert {compose.choose_strategy(i, SEQ_ONLY.strategy_mix) for i in ids} == {"sequential"}


@pytest.mark.parametrize(("cfg", "n"), [(SEQ_ONLY, 2), (PTS_ONLY, 3)])
def test_schema_pins_the_subtask_count(cfg: MethodConfig, n: int) -> None:
    strategy = compose.choose_strategy("x", cfg.strategy_mix)
    spec = compose.schema(strategy)["properties"]["subtasks"]
    assert spec["minItems"] == spec["maxItems"] == n


async def test_sequential_first_subtask_is_the_atomic_task(item) -> None:
    llm = ScriptedLLM(scripted({"composition": [_out(["Look up the USD to EUR rate.", "Convert 250 USD."])]}))
    composition = await compose.write_composition(item, ATOMIC, llm, SEQ_ONLY)
    assert composition.strategy == "sequential"
    assert composition.subtasks == (ATOMIC, "Convert 250 USD.")
    assert composition.composite_task == "How many euros do I get for 250 dollars?"
    (req,) = llm.requests
    assert req.role == "composition" and req.request_id == f"{item.item_id}/composition#0"
    assert ATOMIC in req.messages[-1].content
    assert "SUBSEQUENT" in req.messages[-1].content


async def test_parallel_then_sequential_has_three_subtasks(item) -> None:
    out = _out([ATOMIC, "Find the GBP to EUR rate.", "Tell which currency is stronger."])
    llm = ScriptedLLM(scripted({"composition": [out]}))
    composition = await compose.write_composition(item, ATOMIC, llm, PTS_ONLY)
    assert composition.strategy == "parallel_then_sequential"
    assert len(composition.subtasks) == 3
    assert "PARALLEL" in llm.requests[0].messages[-1].content


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        (_out([ATOMIC]), "wrong_subtask_count"),
        (_out([ATOMIC, "b", "c"]), "wrong_subtask_count"),
        (_out([ATOMIC, "  "]), "schema_mismatch"),
        (_out([ATOMIC, "b"], composite=" "), "schema_mismatch"),
        ('{"subtasks": ["a", "b"]}', "schema_mismatch"),
        ('{"subtasks": ["a", "b"], "composite_task": ', "bad_json"),
        (_out([ATOMIC, "Convert 250 US dollars to euros at that rate, please."]), "copied_from_prompt"),
        (_out([ATOMIC, "Convert 250 US dollars to euros at that rate."]), "copied_from_prompt"),
        (_out([ATOMIC, ATOMIC]), "copied_from_prompt"),
        (_out([ATOMIC, "Convert 250 USD."], composite=ATOMIC), "copied_from_prompt"),
    ],
)
async def test_bad_composition_is_retried_then_rejected(output, reason) -> None:
    item = make_item()
    llm = ScriptedLLM(lambda _req: output)
    assert await compose.write_composition(item, ATOMIC, llm, SEQ_ONLY) is None
    assert (item.rejection.stage, item.rejection.reason) == ("composition", reason)
    assert len(llm.requests) == SEQ_ONLY.retries + 1
    assert len({r.sampling.seed for r in llm.requests}) == len(llm.requests)


async def test_new_subtasks_must_differ(item) -> None:
    out = _out([ATOMIC, "Find the GBP to EUR rate.", "find the GBP to EUR rate"])
    llm = ScriptedLLM(lambda _req: out)
    assert await compose.write_composition(item, ATOMIC, llm, PTS_ONLY.model_copy(update={"retries": 0})) is None
    assert item.rejection.reason == "duplicate_subtask"


async def test_wrong_count_then_right_count(item) -> None:
    llm = ScriptedLLM(scripted({"composition": [_out([ATOMIC]), _out([ATOMIC, "Convert 250 USD."])]}))
    composition = await compose.write_composition(item, ATOMIC, llm, SEQ_ONLY)
    assert composition is not None and len(llm.requests) == 2
    assert item.usage_for("composition").unparseable == 0

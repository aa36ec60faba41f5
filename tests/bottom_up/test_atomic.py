"""Atomic-task stage: request shape, parsing, length rule, retries."""

from __future__ import annotations

import json

import pytest

from button_ray.bottom_up import atomic
from button_ray.bottom_up.common import without_length_bounds
from button_ray.config import MethodConfig
from tests.bottom_up.conftest import scripted, truncated
from tests.fakes import ScriptedLLM

GOOD = '{"task": "Find the delivery status of parcel 1Z999AA10123456784."}'
TOO_LONG = json.dumps({"task": " ".join(["word"] * 31)})


async def test_happy_path_request_shape(item, cfg) -> None:
    llm = ScriptedLLM(scripted({"atomic_task": [GOOD]}))
    task = await atomic.write_atomic_task(item, llm, cfg)
    assert task == "Find the delivery status of parcel 1Z999AA10123456784."
    (req,) = llm.requests
    assert req.role == "atomic_task"
    assert req.request_id == f"{item.item_id}/atomic_task#0"
    assert req.affinity_key == item.item_id
    assert req.sampling.model_copy(update={"seed": None}) == cfg.sampling.atomic_task
    assert req.sampling.seed is not None
    assert req.constraint is not None and req.constraint.kind == "json_schema"
    assert req.constraint.spec == without_length_bounds(atomic.schema(cfg.atomic_task_max_words))
    assert "tracking a parcel" in req.messages[-1].content
    assert item.usage_for("atomic_task").calls == 1
    assert item.outcome == "pending"


async def test_no_constraint_when_disabled(item) -> None:
    llm = ScriptedLLM(scripted({"atomic_task": [GOOD]}))
    await atomic.write_atomic_task(item, llm, MethodConfig(constraints={"atomic_task": "off"}))
    assert llm.requests[0].constraint is None


async def test_code_fenced_output_is_accepted(item, cfg) -> None:
    llm = ScriptedLLM(scripted({"atomic_task": [f"```json\n{GOOD}\n```"]}))
    assert await atomic.write_atomic_task(item, llm, cfg) is not None


@pytest.mark.parametrize(
    ("output", "reason", "unparseable"),
    [
        ('{"task": "Find the', "bad_json", 3),
        ("", "empty_output", 3),
        (truncated(), "truncated", 3),
        ('{"title": "Find a parcel"}', "schema_mismatch", 3),
        ('{"task": "   "}', "schema_mismatch", 3),
        (TOO_LONG, "too_long", 0),
        ('{"task": "Find a vegetarian lasagna recipe that serves 8 people."}', "copied_from_prompt", 0),
        ('{"task": "Tracking a parcel."}', "copied_from_prompt", 0),
    ],
)
async def test_bad_output_retries_then_rejects(item, cfg, output, reason, unparseable) -> None:
    llm = ScriptedLLM(lambda _req: output)
    assert await atomic.write_atomic_task(item, llm, cfg) is None
    assert item.outcome == "rejected"
    assert item.rejection.stage == "atomic_task"
    assert item.rejection.reason == reason
    assert len(llm.requests) == cfg.retries + 1
    assert len({r.sampling.seed for r in llm.requests}) == cfg.retries + 1
    assert [r.request_id for r in llm.requests] == [f"{item.item_id}/atomic_task#{i}" for i in range(3)]
    usage = item.usage_for("atomic_task")
    assert usage.calls == 3 and usage.unparseable == unparseable


async def test_retry_succeeds_with_new_seed(item, cfg) -> None:
    llm = ScriptedLLM(scripted({"atomic_task": [TOO_LONG, GOOD]}))
    assert await atomic.write_atomic_task(item, llm, cfg) is not None
    first, second = llm.requests
    assert first.sampling.seed != second.sampling.seed
    assert item.outcome == "pending"


async def test_retries_bounded_by_config(item) -> None:
    llm = ScriptedLLM(lambda _req: "nope")
    await atomic.write_atomic_task(item, llm, MethodConfig(retries=0))
    assert len(llm.requests) == 1
    assert item.rejection.reason == "bad_json"


async def test_word_limit_is_configurable(item) -> None:
    llm = ScriptedLLM(scripted({"atomic_task": [GOOD]}))
    await atomic.write_atomic_task(item, llm, MethodConfig(atomic_task_max_words=5, retries=0))
    assert item.rejection.reason == "too_long"
    assert "at most 5 words" in llm.requests[0].messages[-1].content


def test_each_slot_of_a_scenario_gets_another_asker() -> None:
    angles = MethodConfig().atomic_task_angles
    for scenario_id in ("s1", "s2", "booking-a-flight"):
        askers = [atomic.angle(scenario_id, slot, angles) for slot in range(8)]
        assert len(set(askers)) == 8  # 8 slots, 8 different askers
        assert askers == [atomic.angle(scenario_id, slot, angles) for slot in range(8)]
    offsets = {atomic.angle(f"s{n}", 0, angles) for n in range(40)}
    assert len(offsets) > 4  # the first slot's asker varies across scenarios
    assert atomic.angle("s1", 0, ()) is None
    assert "a student in the scenario" in atomic.prompt("tracking a parcel", MethodConfig(), "a student")
    assert "a person in the scenario" in atomic.prompt("tracking a parcel", MethodConfig(), None)

"""build_bundle end to end on scripted outputs: happy path, short-circuit, determinism, concurrency."""

from __future__ import annotations

import asyncio
import json
import time

from button_ray.bottom_up import STAGES, build_bundle
from button_ray.config import MethodConfig
from tests.bottom_up.conftest import make_item, scripted
from tests.fakes import ScriptedLLM


async def test_happy_path_sets_the_bundle(item, cfg) -> None:
    llm = ScriptedLLM(scripted())
    result = await build_bundle(item, llm, cfg)
    assert result is item and item.outcome == "pending" and item.rejection is None
    bundle = item.bundle
    assert [r.role for r in llm.requests] == list(STAGES)
    assert set(item.usage) == set(STAGES)
    assert all(item.usage[s].calls == 1 for s in STAGES)
    assert bundle.composition.subtasks[0] == bundle.atomic_task
    assert len(bundle.functions) == len(bundle.composition.subtasks)
    assert len(bundle.flat_functions) >= 2
    assert bundle.judge_reasoning
    assert all(r.affinity_key == item.item_id for r in llm.requests)
    # The later prompts carry the earlier stages' outputs.
    assert bundle.atomic_task in llm.requests[1].messages[-1].content
    assert bundle.composition.composite_task in llm.requests[3].messages[-1].content


async def test_rejection_stops_the_pipeline(item, cfg) -> None:
    no = json.dumps({"reasoning": "Sub-task 2 needs data nobody provides.", "verdict": "no"})
    llm = ScriptedLLM(scripted({"composition_filter": [no]}))
    await build_bundle(item, llm, cfg)
    assert item.outcome == "rejected" and item.bundle is None
    assert (item.rejection.stage, item.rejection.reason) == ("composition_filter", "judge_no")
    assert "functions" not in {r.role for r in llm.requests}


async def test_atomic_failure_rejects_at_the_first_stage(item, cfg) -> None:
    llm = ScriptedLLM(scripted({"atomic_task": ["garbage"] * 3}))
    await build_bundle(item, llm, cfg)
    assert (item.rejection.stage, item.rejection.reason) == ("atomic_task", "bad_json")
    assert {r.role for r in llm.requests} == {"atomic_task"}


async def test_finished_items_pass_through(item, cfg) -> None:
    item.reject("atomic_task", "bad_json")
    llm = ScriptedLLM(scripted())
    await build_bundle(item, llm, cfg)
    assert llm.requests == []


async def test_same_item_same_requests(cfg) -> None:
    runs = []
    for _ in range(2):
        llm = ScriptedLLM(scripted())
        item = await build_bundle(make_item("run0/s7/1"), llm, cfg)
        runs.append(([r.model_dump() for r in llm.requests], item.bundle))
    assert runs[0] == runs[1]
    other = ScriptedLLM(scripted())
    await build_bundle(make_item("run0/s7/2"), other, cfg)
    assert {r.sampling.seed for r in other.requests}.isdisjoint(r["sampling"]["seed"] for r in runs[0][0])


async def test_hundreds_of_items_run_concurrently() -> None:
    n, delay = 400, 0.01
    cfg = MethodConfig()
    llm = ScriptedLLM(scripted(), delay=delay)
    items = [make_item(f"run0/s{i}/0") for i in range(n)]
    start = time.perf_counter()
    done = await asyncio.gather(*(build_bundle(it, llm, cfg) for it in items))
    elapsed = time.perf_counter() - start
    assert all(it.bundle is not None for it in done)
    # One at a time this is n * 4 stages * delay = 16 s; concurrently about 4 * delay.
    assert elapsed < 3.0, elapsed
    assert llm.max_in_flight >= n * 0.9


async def test_prompt_copies_pass_when_the_check_is_off(item) -> None:
    # The embedded 135M model mostly copies the worked examples; smoke runs may accept that.
    example = json.dumps({"task": "Find a vegetarian lasagna recipe that serves 8 people."})
    for check, outcome in ((True, "rejected"), (False, "pending")):
        probe = make_item(item.item_id)
        llm = ScriptedLLM(scripted({"atomic_task": [example] * 3}))
        await build_bundle(probe, llm, MethodConfig(reject_prompt_copies=check))
        assert probe.outcome == outcome

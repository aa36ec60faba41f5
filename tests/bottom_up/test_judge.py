"""Composition filter: reasoning before verdict; "no" and missing verdicts reject without retry."""

from __future__ import annotations

import json

import pytest

from button_ray.bottom_up import judge
from button_ray.config import MethodConfig
from button_ray.records import Composition
from tests.bottom_up.conftest import scripted, truncated
from tests.fakes import ScriptedLLM

COMPOSITION = Composition(
    strategy="sequential",
    subtasks=("Find the USD to EUR rate.", "Convert 250 USD to EUR at that rate."),
    composite_task="How many euros do I get for 250 US dollars today?",
)


def test_schema_puts_reasoning_first_and_bounds_it() -> None:
    spec = judge.schema()
    assert list(spec["properties"]) == ["reasoning", "verdict"]
    assert spec["properties"]["verdict"]["enum"] == ["yes", "no"]
    assert spec["properties"]["reasoning"]["maxLength"] == judge.REASONING_MAX_CHARS
    assert spec["required"] == ["reasoning", "verdict"]


async def test_yes_returns_reasoning(item, cfg) -> None:
    out = json.dumps({"reasoning": "The rate feeds the conversion.", "verdict": "yes"})
    llm = ScriptedLLM(scripted({"composition_filter": [out]}))
    assert await judge.judge_composition(item, COMPOSITION, llm, cfg) == "The rate feeds the conversion."
    (req,) = llm.requests
    assert req.role == "composition_filter"
    assert req.request_id == f"{item.item_id}/composition_filter#0"
    prompt = req.messages[-1].content
    assert COMPOSITION.composite_task in prompt
    assert "1. Find the USD to EUR rate." in prompt and "2. Convert 250 USD" in prompt


@pytest.mark.parametrize("verdict", ["Yes", "YES.", " yes ", True])
async def test_verdict_spelling_is_normalized(item, cfg, verdict) -> None:
    llm = ScriptedLLM(scripted({"composition_filter": [json.dumps({"reasoning": "ok", "verdict": verdict})]}))
    assert await judge.judge_composition(item, COMPOSITION, llm, cfg) == "ok"


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ('{"reasoning": "The second step needs a rate nobody provides.", "verdict": "no"}', "judge_no"),
        ('{"reasoning": "Looks fine."}', "no_verdict"),
        ('{"reasoning": "Unsure.", "verdict": "maybe"}', "no_verdict"),
        ('{"reasoning": "x", "verdict": null}', "no_verdict"),
    ],
)
async def test_no_or_missing_verdict_rejects_without_retry(item, cfg, output, reason) -> None:
    llm = ScriptedLLM(lambda _req: output)
    assert await judge.judge_composition(item, COMPOSITION, llm, cfg) is None
    assert (item.rejection.stage, item.rejection.reason) == ("composition_filter", reason)
    assert len(llm.requests) == 1
    assert item.rejection.detail == json.loads(output)["reasoning"]


@pytest.mark.parametrize(
    ("output", "reason"),
    [("", "empty_output"), ('{"reasoning": "The rate', "bad_json"), (truncated('{"reasoning": "a'), "truncated")],
)
async def test_unparseable_verdict_is_retried(item, cfg, output, reason) -> None:
    llm = ScriptedLLM(lambda _req: output)
    assert await judge.judge_composition(item, COMPOSITION, llm, cfg) is None
    assert item.rejection.reason == reason
    assert len(llm.requests) == cfg.retries + 1
    assert len({r.sampling.seed for r in llm.requests}) == cfg.retries + 1


def test_the_judge_checks_the_strategy() -> None:
    sequential = judge.prompt(
        Composition(strategy="sequential", subtasks=("a", "b"), composite_task="c"), MethodConfig()
    )
    assert "sub-task 2 needs the result of sub-task 1" in sequential
    parallel = judge.prompt(
        Composition(strategy="parallel_then_sequential", subtasks=("a", "b", "d"), composite_task="c"), MethodConfig()
    )
    assert "sub-task 2 does not need the result of sub-task 1" in parallel
    assert "sub-task 3 needs the results of both" in parallel
    assert "the sub-tasks follow the strategy above" in parallel

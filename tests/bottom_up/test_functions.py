"""Function generation: grouping by sub-task and the BUTTON function rules."""

from __future__ import annotations

import json

import pytest

from button_ray.bottom_up import functions
from button_ray.config import MethodConfig
from button_ray.llm.contract import LLMResponse
from button_ray.records import Composition
from button_ray.steps import ParseError
from tests.bottom_up.conftest import scripted
from tests.fakes import ScriptedLLM

COMPOSITION = Composition(
    strategy="parallel_then_sequential",
    subtasks=(
        "Find the price of a train ticket from Paris to Lyon on 3 June.",
        "Find the price of a flight from Paris to Lyon on 3 June.",
        "Tell which is cheaper.",
    ),
    composite_task="Is the train or the plane cheaper from Paris to Lyon on 3 June?",
)


def fn(name: str, required: list[str] | None = None, **overrides) -> dict:
    spec = {
        "name": name,
        "description": "Find the cheapest ticket between two cities on a date.",
        "parameters": {
            "origin": {"type": "string", "description": "Departure city"},
            "date": {"type": "string", "description": "Travel date"},
        },
        "required": ["origin", "date"] if required is None else required,
        "responses": {"price": {"type": "number", "description": "Price in euros"}},
    }
    spec.update(overrides)
    return spec


def out(*groups: list[dict]) -> str:
    return json.dumps({"functions": list(groups)})


def parse(text: str, n: int = 3, max_per: int = 3, prompt: str = "Design functions."):
    response = LLMResponse(text=text, finish_reason="stop", prompt_tokens=1, completion_tokens=1)
    return functions.parse(response, n, max_per, prompt)


def test_groups_follow_subtasks_and_allow_an_empty_one() -> None:
    groups = parse(out([fn("search_trains")], [fn("search_flights")], []))
    assert [[f.name for f in g] for g in groups] == [["search_trains"], ["search_flights"], []]
    first = groups[0][0]
    assert first.required == ("origin", "date")
    assert first.parameters["origin"] == {"type": "string", "description": "Departure city"}
    assert first.responses == {"price": {"type": "number", "description": "Price in euros"}}


def test_python_type_names_are_mapped_to_json_schema_types() -> None:
    loose = fn("search_trains", parameters={"origin": {"type": "str", "description": "City"}}, required=["origin"])
    groups = parse(out([loose], [], []))
    assert groups[0][0].parameters["origin"]["type"] == "string"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (out([fn("search")], [fn("search")], []), "duplicate_function_name"),
        (out([fn("search", required=["origin", "destination"])], [], []), "required_not_in_parameters"),
        (out([], [], []), "no_functions"),
        (out([fn("search_trains")], [fn("search_flights")]), "wrong_group_count"),
        (out([fn("a"), fn("b"), fn("c"), fn("d")], [], []), "too_many_functions"),
    ],
)
def test_rule_violations_are_not_malformed(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as exc:
        parse(text)
    assert exc.value.reason == reason
    assert not exc.value.malformed


def test_descriptions_copied_from_the_prompt_are_rejected() -> None:
    prompt = functions.prompt(COMPOSITION, MethodConfig())
    copied = fn("search_trains", description="Find the cheapest train ticket between two cities on a date.")
    with pytest.raises(ParseError) as exc:
        parse(out([copied], [fn("search_flights", description="Look up flights.")], []), prompt=prompt)
    assert exc.value.reason == "copied_from_prompt" and not exc.value.malformed
    restated = fn("search_trains", description=COMPOSITION.subtasks[0])
    with pytest.raises(ParseError):
        parse(out([restated], [], []), prompt=prompt)


@pytest.mark.parametrize(
    "bad",
    [
        fn("search trains"),
        fn("1search"),
        fn("search", parameters={"origin": {"type": "city", "description": "x"}}, required=["origin"]),
        fn("search", parameters={"origin": {"type": "string", "description": ""}}, required=["origin"]),
        fn("search", responses={}),
        fn("search", parameters={"start date": {"type": "string", "description": "x"}}, required=[]),
        {"name": "search", "description": "no parameters field", "responses": {}},
    ],
)
def test_malformed_functions_are_schema_mismatch(bad: dict) -> None:
    with pytest.raises(ParseError) as exc:
        parse(out([bad], [], []))
    assert exc.value.reason == "schema_mismatch"


def test_schema_bounds_the_output() -> None:
    spec = functions.schema(3, 2)
    groups = spec["properties"]["functions"]
    assert groups["minItems"] == groups["maxItems"] == 3
    assert groups["items"]["maxItems"] == 2
    function = groups["items"]["items"]
    assert function["properties"]["name"]["pattern"] == functions.NAME_PATTERN
    assert function["required"] == ["name", "description", "parameters", "required", "responses"]
    assert function["properties"]["parameters"]["maxProperties"] == functions.MAX_PARAMETERS


async def test_stage_retries_a_duplicate_then_accepts(item) -> None:
    cfg = MethodConfig()
    bad = out([fn("search")], [fn("search")], [])
    good = out([fn("search_trains")], [fn("search_flights")], [])
    llm = ScriptedLLM(scripted({"functions": [bad, good]}))
    groups = await functions.generate_functions(item, COMPOSITION, llm, cfg)
    assert [f.name for g in groups for f in g] == ["search_trains", "search_flights"]
    assert len(llm.requests) == 2 and llm.requests[0].sampling.seed != llm.requests[1].sampling.seed
    assert llm.requests[0].constraint.spec == functions.schema(3, cfg.max_functions_per_subtask)
    assert "1. Find the price of a train ticket" in llm.requests[0].messages[-1].content


async def test_stage_rejects_after_retries(item) -> None:
    cfg = MethodConfig(retries=1)
    llm = ScriptedLLM(lambda _req: out([], [], []))
    assert await functions.generate_functions(item, COMPOSITION, llm, cfg) is None
    assert (item.rejection.stage, item.rejection.reason) == ("functions", "no_functions")
    assert len(llm.requests) == 2

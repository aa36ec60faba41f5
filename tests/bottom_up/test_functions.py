"""Function generation: grouping by sub-task and the BUTTON function rules."""

from __future__ import annotations

import json

import pytest

from button_ray.bottom_up import function_names, functions
from button_ray.bottom_up.common import without_length_bounds
from button_ray.config import MethodConfig
from button_ray.errors import ParseError
from button_ray.llm.contract import LLMResponse
from button_ray.records import GENERATED_FUNCTION_NAME_PATTERN, Composition
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
    copied = fn("search_trains", description="List the dates of upcoming moon phases.")
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
    assert function["properties"]["name"]["pattern"] == GENERATED_FUNCTION_NAME_PATTERN
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
    # structure strength: specs may nest, no length bounds
    expected = without_length_bounds(functions.schema(3, cfg.max_functions_per_subtask, rich=True))
    assert llm.requests[0].constraint.spec == expected
    assert "1. Find the price of a train ticket" in llm.requests[0].messages[-1].content


async def test_stage_rejects_after_retries(item) -> None:
    cfg = MethodConfig(retries=1)
    llm = ScriptedLLM(lambda _req: out([], [], []))
    assert await functions.generate_functions(item, COMPOSITION, llm, cfg) is None
    assert (item.rejection.stage, item.rejection.reason) == ("functions", "no_functions")
    assert len(llm.requests) == 2


def test_subtask_words_are_general_content_words() -> None:
    words = function_names.subtask_words("Find the delivery status of parcel 4471-882 sent from Berlin on 2 March.")
    assert words == ["delivery", "status", "parcel", "sent"]  # no verb, stop word, number or name
    assert function_names.subtask_words("Tell which is cheaper.") == ["cheaper"]
    assert function_names.subtask_name_pattern("On 2 May.") is None
    verbs = {"Book a table.": "book", "Convert 10 USD": "convert", "Tell me more.": None, "How many?": None,
             "2. Check it": None, "Don't go": None, "The weather": None}  # fmt: skip
    assert {t: function_names.subtask_verb(t) for t in verbs} == verbs
    rebooked = function_names.name_patterns(["Find a hotel room.", "Book the hotel room."])
    assert all(p.startswith(v) for p, v in zip(rebooked, ("^find_", "^book_")))  # no shared word, new verb


def test_name_patterns_tie_names_to_their_subtask_without_collisions() -> None:
    import re

    first, second, third = function_names.name_patterns(COMPOSITION.subtasks)
    assert re.fullmatch(first, "find_train_ticket") and re.fullmatch(first, "find_price_train")
    assert not re.fullmatch(first, "get_train_ticket")  # the sub-task's own verb ("Find ...")
    assert not re.fullmatch(first, "find_ticket_train")  # words keep their order: no repeats
    assert not re.fullmatch(first, "find_price")  # "price" is in sub-task 2 as well: not unique
    assert not re.fullmatch(first, "find_moon_phases")  # words must come from the sub-task
    assert re.fullmatch(second, "find_price_flight") and not re.fullmatch(second, "find_price")
    assert re.fullmatch(third, "compare_cheaper")  # "Tell" is no verb to keep: any verb
    # Each group's names hold a word no other sub-task has, so no name fits two groups.
    for name in ("find_price", "find_price_train", "find_price_flight", "find_cheaper"):
        assert sum(bool(re.fullmatch(p, name)) for p in (first, second, third)) <= 1


async def test_stage_sends_the_configured_rules(item) -> None:
    cfg = MethodConfig(
        min_functions_per_subtask=1,
        function_names_from_subtask=True,
        function_name_pattern=r"^[a-z]{2,12}(_[a-z]{2,16}){1,3}$",
        parameter_name_pattern=r"^[a-z]{2,16}(_[a-z]{2,16}){0,2}$",
    )
    good = out([fn("find_train_ticket")], [fn("find_price_flight")], [fn("compare_cheaper")])
    off_pattern = out([fn("find_train_ticket")], [fn("find_price")], [fn("compare_cheaper")])
    too_few = out([fn("find_train_ticket")], [fn("find_price_flight")], [])
    llm = ScriptedLLM(scripted({"functions": [off_pattern, too_few, good]}))
    groups = await functions.generate_functions(item, COMPOSITION, llm, cfg)
    assert [f.name for g in groups for f in g] == ["find_train_ticket", "find_price_flight", "compare_cheaper"]
    usage = item.usage_for("functions")
    assert usage.calls == 3 and usage.unparseable == 1  # off the pattern is malformed, too few is a rule
    spec = llm.requests[0].constraint.spec
    groups_spec = spec["properties"]["functions"]["prefixItems"]
    assert [g["minItems"] for g in groups_spec] == [1, 1, 1]
    assert groups_spec[1]["items"]["properties"]["name"]["pattern"] == function_names.name_patterns(COMPOSITION.subtasks)[1]


def test_parse_checks_the_parameter_pattern() -> None:
    text = out([fn("search", parameters={"Origin": {"type": "string", "description": "x"}}, required=[])], [], [])
    with pytest.raises(ParseError) as exc:
        functions.parse(
            LLMResponse(text=text, finish_reason="stop", prompt_tokens=1, completion_tokens=1), 3, 3, None,
            parameter_pattern=r"^[a-z]+$",
        )  # fmt: skip
    assert exc.value.reason == "schema_mismatch" and exc.value.malformed

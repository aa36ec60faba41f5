"""Plain-text grammars (``TightConstraints.plain_text``): every stage schema translates, the
grammar compiles for xgrammar and accepts exactly the canonical JSON the parsers want."""

from __future__ import annotations

import json

import pytest

from button_ray.bottom_up import atomic, compose, function_names, functions, judge, scenarios
from button_ray.bottom_up.common import output_constraint, text_schema
from button_ray.bottom_up.json_grammar import schema_to_gbnf
from button_ray.config import MethodConfig, TightConstraints
from button_ray.gbnf import word_bound
from button_ray.llm.contract import ROLES

xgrammar = pytest.importorskip("xgrammar")
from xgrammar.testing import _is_grammar_accept_string  # noqa: E402

LOCAL = MethodConfig(
    constraints=dict.fromkeys(ROLES, "tight"),
    tight=TightConstraints(plain_text=True),
    function_name_pattern=r"^[a-z]{2,12}(_[a-z]{2,16}){1,3}$",
    parameter_name_pattern=r"^[a-z]{2,16}(_[a-z]{2,16}){0,2}$",
)
ATOMIC = 'Find the "Blue" hotel in Nice for 12 to 15 July.'
SUBTASKS = ("Find the weather forecast for Nice on 12 July.", "Book a table for two at a beach restaurant.")


def grammar(schema: dict) -> xgrammar.Grammar:
    return xgrammar.Grammar.from_ebnf(schema_to_gbnf(schema))


def accepts(schema: dict, value: object) -> bool:
    return _is_grammar_accept_string(grammar(schema), json.dumps(value, ensure_ascii=False))


def fn(name: str, **kw: object) -> dict:
    out = {
        "name": name,
        "description": "Look up one thing.",
        "parameters": {"city": {"type": "string", "description": "City name"}},
        "required": ["city"],
        "responses": {"result": {"type": "string", "description": "What was found"}},
    }
    return out | kw


STAGE_SCHEMAS = {
    "atomic": atomic.schema(30),
    "sequential": compose.schema("sequential", ATOMIC, 30),
    "parallel_then_sequential": compose.schema("parallel_then_sequential"),
    "judge": judge.schema(),
    "functions": functions.schema(2, 2, group_name_patterns=function_names.name_patterns(SUBTASKS)),
    "scenario": scenarios.schema(10),
}


@pytest.mark.parametrize("key", sorted(STAGE_SCHEMAS))
def test_every_stage_schema_translates_and_compiles(key: str) -> None:
    grammar(STAGE_SCHEMAS[key])


def test_plain_text_bounds_words_and_forbids_placeholders() -> None:
    spec = atomic.schema(5)
    assert accepts(spec, {"task": "Track parcel 1Z-99 from Berlin."})
    assert accepts(spec, {"task": "2 rooms in Nice, please."})
    assert not accepts(spec, {"task": "Track parcel 1Z-99 from Berlin today."})  # 6 words
    for bad in ("track it", "<first task>", "Use get_status now", "Say {x}", "A [b]", 'A "b"', "A \\ b", ""):
        assert not accepts(spec, {"task": bad}), bad
    # Without the word annotation the bound comes from maxLength.
    assert word_bound(text_schema(60)["maxLength"]) == 10
    assert accepts(text_schema(60), " ".join(["Word"] * 10))
    assert not accepts(text_schema(60), " ".join(["Word"] * 11))


def test_output_is_canonical_json() -> None:
    spec = judge.schema()
    assert accepts(spec, {"reasoning": "Both steps complete it.", "verdict": "yes"})
    assert not accepts(spec, {"reasoning": "Fine.", "verdict": "maybe"})
    g = grammar(spec)
    assert not _is_grammar_accept_string(g, '{"reasoning":"Fine.","verdict":"yes"}')  # separators
    assert not _is_grammar_accept_string(g, '{\n "reasoning": "Fine.", "verdict": "yes"}')


def test_composition_pins_the_first_subtask_and_the_count() -> None:
    spec = STAGE_SCHEMAS["sequential"]
    assert accepts(spec, {"subtasks": [ATOMIC, "Book the cheapest room."], "composite_task": "Find and book it."})
    assert not accepts(spec, {"subtasks": ["Another task.", "Book it."], "composite_task": "Do it."})
    assert not accepts(spec, {"subtasks": [ATOMIC], "composite_task": "Do it."})
    pts = STAGE_SCHEMAS["parallel_then_sequential"]
    assert accepts(pts, {"subtasks": ["A.", "B.", "C."], "composite_task": "All."})
    assert not accepts(pts, {"subtasks": ["A.", "B."], "composite_task": "All."})


def test_functions_follow_patterns_counts_and_group_names() -> None:
    spec = functions.schema(
        2, 1, min_per_subtask=1, name_pattern=LOCAL.function_name_pattern,
        parameter_pattern=LOCAL.parameter_name_pattern,
    )  # fmt: skip
    assert accepts(spec, {"functions": [[fn("get_weather")], [fn("book_table")]]})
    assert not accepts(spec, {"functions": [[fn("get_weather")], []]})  # min 1 per sub-task
    assert not accepts(spec, {"functions": [[fn("get_weather"), fn("get_rain")], [fn("book_table")]]})
    assert not accepts(spec, {"functions": [[fn("getWeather")], [fn("book_table")]]})
    assert not accepts(spec, {"functions": [[fn("get_weather_12")], [fn("book_table")]]})
    bad_param = fn("get_weather", parameters={"City": {"type": "string", "description": "x"}}, required=[])
    assert not accepts(spec, {"functions": [[bad_param], [fn("book_table")]]})
    bad_type = fn("get_weather", parameters={"city": {"type": "city", "description": "x"}})
    assert not accepts(spec, {"functions": [[bad_type], [fn("book_table")]]})

    grouped = STAGE_SCHEMAS["functions"]
    assert accepts(grouped, {"functions": [[fn("find_weather_forecast")], [fn("book_table_beach")]]})
    assert not accepts(grouped, {"functions": [[fn("book_table")], [fn("find_weather_forecast")]]})


def test_output_constraint_follows_the_strength() -> None:
    spec = atomic.schema(30)
    structure = output_constraint(spec, MethodConfig(), "atomic_task")
    # structure: the same schema without its length bounds
    assert structure.kind == "json_schema" and "maxLength" not in json.dumps(structure.spec)
    assert structure.spec["properties"]["task"] == {"type": "string", "minLength": 1}
    tight = output_constraint(spec, MethodConfig(constraints={"atomic_task": "tight"}), "atomic_task")
    assert tight.kind == "json_schema" and tight.spec == spec
    assert output_constraint(spec, MethodConfig(constraints={"atomic_task": "off"}), "atomic_task") is None
    plain = output_constraint(spec, LOCAL, "atomic_task")
    assert plain.kind == "grammar" and plain.spec == schema_to_gbnf(spec)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string"},  # free text without a bound
        {"type": "string", "pattern": "^a{0,200}$"},  # repetition the engine's cache cannot take
        {"type": "string", "pattern": "a+"},  # not anchored
        {"type": "string", "pattern": "^(?!x)a$"},  # outside the subset
        {"type": "array", "items": {"type": "integer"}},  # no maxItems
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": []},  # optional key
        {"type": "null"},
    ],
)
def test_unsupported_schemas_fail_loudly(schema: dict) -> None:
    with pytest.raises(ValueError):
        schema_to_gbnf({"type": "object", "properties": {"x": schema}, "required": ["x"]})


def test_real_stage_requests_use_the_grammar() -> None:
    from tests.bottom_up.conftest import make_item
    from button_ray.bottom_up.common import make_request

    request = make_request("atomic_task", "prompt", atomic.schema(30), make_item().item_id, LOCAL)
    assert request.constraint.kind == "grammar"
    assert _is_grammar_accept_string(
        xgrammar.Grammar.from_ebnf(request.constraint.spec), '{"task": "Track parcel 1Z-99."}'
    )

"""The OpenAI and ShareGPT forms of a BUTTON record (docs/formats.md), on crafted records."""

from __future__ import annotations

import json

import jsonschema
import pytest

from button_ray.button_format import PARALLEL_OFF, PARALLEL_ON, parse_button_messages, to_button_messages
from button_ray.formats import json_schema, parameters_schema, sharegpt_dataset_info, to_openai, to_sharegpt
from button_ray.records import ACCEPTED_SCHEMA, Turn, item_row, to_table
from tests import synthetic
from tests.top_down.test_button_format import FUNCTIONS, TURNS, T, W, record
from tests.training_checks import (
    assert_llama_factory_positions,
    calls_from_button,
    calls_from_openai,
    calls_from_sharegpt,
    calls_in_rendered,
    render_chat,
)

MESSAGES = record()["messages"]  # a clarification, a parallel turn of two calls, one call, a final answer
#: The same dialogue with parallel calling off: one call per turn.
SERIAL = [*TURNS[:3],
          Turn(role="assistant", thought="Weather first.", calls=(W,)), Turn(role="tool", results=TURNS[4].results[:1]),
          Turn(role="assistant", calls=(T,)), Turn(role="tool", results=TURNS[4].results[1:]), *TURNS[5:]]


def test_parsing_is_the_inverse_of_rendering():
    for parallel, turns in ((True, TURNS), (False, SERIAL)):
        messages = to_button_messages(FUNCTIONS, parallel, turns)
        functions, got_parallel, got_turns = parse_button_messages(messages)
        assert functions == [f.as_button_dict() for f in FUNCTIONS]
        assert got_parallel is parallel and got_turns == turns
        assert to_button_messages(FUNCTIONS, parallel, got_turns) == messages


def test_parsing_refuses_an_invalid_record():
    broken = [dict(m) for m in MESSAGES]
    broken[-1]["content"] = "no final tag"
    with pytest.raises(ValueError, match="final"):
        parse_button_messages(broken)


def test_openai_form_of_a_record():
    out = to_openai(MESSAGES)
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "tool", "tool", "assistant", "tool",
                     "assistant"]
    system, _, clarify, _, parallel_turn, r1, r2, single, r3, final = out["messages"]
    assert system == {"role": "system", "content": PARALLEL_ON}
    assert clarify == {"role": "assistant", "content": "Which part of the day?"}
    assert parallel_turn["content"] == "Plan: weather and time, then an activity."
    paris = '{"city": "Paris"}'
    assert parallel_turn["tool_calls"] == [
        {"id": "call00000", "type": "function", "function": {"name": "get_weather", "arguments": paris}},
        {"id": "call00001", "type": "function", "function": {"name": "get_local_time", "arguments": paris}},
    ]
    assert r1 == {"role": "tool", "tool_call_id": "call00000", "content": '{"temperature": 21.0, "summary": "sunny"}'}
    assert r2 == {"role": "tool", "tool_call_id": "call00001", "content": '{"time": "14:00"}'}
    assert single["tool_calls"][0]["id"] == r3["tool_call_id"] == "call00002"
    assert final == {"role": "assistant", "content": "All set.\n\nIt is 21 degrees and sunny at 14:00: take a walk."}
    assert [t["function"]["name"] for t in out["tools"]] == [f.name for f in FUNCTIONS]
    assert out["tools"][0] == {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather of a city.",
        "parameters": {"type": "object", "required": ["city"], "properties": {
            "city": {"type": "string", "description": "City name."},
            "days": {"type": "integer", "description": "Forecast days."}}}}}
    assert "responses" not in json.dumps(out["tools"])
    off = to_openai(record(parallel=False, turns=SERIAL)["messages"])["messages"]
    assert off[0]["content"] == PARALLEL_OFF
    assert off[6] == {"role": "assistant", "content": "", "tool_calls": [  # a call turn without a thought
        {"id": "call00001", "type": "function", "function": {"name": "get_local_time", "arguments": paris}}]}


def test_sharegpt_form_of_a_record():
    out = to_sharegpt(MESSAGES)
    assert_llama_factory_positions(out)
    conv = out["conversations"]
    assert [t["from"] for t in conv] == ["human", "gpt", "human", "function_call", "observation", "function_call",
                                         "observation", "gpt"]
    assert conv[3]["value"] == ('<think>Plan: weather and time, then an activity.</think>'
                                '[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                                '{"name": "get_local_time", "arguments": {"city": "Paris"}}]')
    assert json.loads(conv[4]["value"]) == [{"temperature": 21.0, "summary": "sunny"}, {"time": "14:00"}]
    assert conv[5]["value"] == ('<think>Now the activity.</think>'
                                '{"name": "suggest_activity", "arguments": {"temperature": 21.0, "time": "14:00"}}')
    assert json.loads(conv[6]["value"]) == {"activity": "a walk"}
    assert conv[7]["value"] == to_openai(MESSAGES)["messages"][-1]["content"]
    assert out["system"] == PARALLEL_ON
    serial = to_sharegpt(record(parallel=False, turns=SERIAL)["messages"])
    assert_llama_factory_positions(serial)
    assert serial["conversations"][5]["value"] == '{"name": "get_local_time", "arguments": {"city": "Paris"}}'
    assert serial["system"] == PARALLEL_OFF
    assert json.loads(out["tools"]) == [t["function"] for t in to_openai(MESSAGES)["tools"]]
    info = sharegpt_dataset_info("button", "button.jsonl")
    assert info["button"]["file_name"] == "button.jsonl" and info["button"]["formatting"] == "sharegpt"
    assert info["button"]["columns"] == {"messages": "conversations", "system": "system", "tools": "tools"}


def test_the_three_forms_carry_the_same_calls_and_render_through_a_chat_template():
    serial = record(parallel=False, turns=SERIAL)["messages"]
    for messages in [MESSAGES, serial] + [list(synthetic.emitted_item(i).messages) for i in range(6)]:
        expected = calls_from_button(messages)
        assert len(expected) >= 2
        openai = to_openai(messages)
        assert calls_from_openai(openai["messages"]) == expected
        assert calls_from_sharegpt(to_sharegpt(messages)["conversations"]) == expected
        rendered = render_chat(openai)
        calls, results = calls_in_rendered(rendered)
        assert calls == [(n, a) for turn in expected for n, a, _ in turn]
        assert results == [r for turn in expected for _, _, r in turn]
        for tool in openai["tools"]:
            assert json.dumps(tool, ensure_ascii=False) in rendered


def test_parameters_become_json_schema_keeping_nested_keys():
    spec = {"type": "list", "description": "Who travels.", "minItems": 1, "items": {
        "type": "dict", "required": ["name"], "additionalProperties": False,
        "properties": {"name": {"type": "str"}, "age": {"type": "int", "required": True},
                       "seat": {"type": ["str", "None"], "enum": ["aisle", "window", None]},
                       "born": {"type": "date", "description": "YYYY-MM-DD"}}}}
    assert json_schema(spec) == {"type": "array", "description": "Who travels.", "minItems": 1, "items": {
        "type": "object", "required": ["name"], "additionalProperties": False,
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                       "seat": {"type": ["null", "string"], "enum": ["aisle", "window", None]},
                       "born": {"description": "YYYY-MM-DD"}}}}
    schema = parameters_schema({"name": "book", "parameters": {"passengers": spec, "flight": {"type": "str"}},
                                "required": ["flight"]})
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"flight": "BR1", "passengers": [{"name": "Ana", "age": 30, "born": "1995-01-01"}]})
    assert not validator.is_valid({"passengers": [{"name": "Ana"}]})  # flight is required
    assert not validator.is_valid({"flight": "BR1", "passengers": [{"age": 3}]})  # a passenger needs a name
    assert not validator.is_valid({"flight": "BR1", "passengers": [{"name": "Ana", "seat": "floor"}]})


def test_every_call_of_a_synthetic_run_validates_against_its_tool_schema():
    for i in range(6):
        openai = to_openai(list(synthetic.emitted_item(i).messages))
        schemas = {t["function"]["name"]: t["function"]["parameters"] for t in openai["tools"]}
        for message in openai["messages"]:
            for call in message.get("tool_calls", []):
                jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]])


def test_accepted_rows_carry_both_forms_in_the_schema():
    item = synthetic.emitted_item(0)
    table = to_table([item_row(item, {**synthetic.LINEAGE, "shard": "k"})], ACCEPTED_SCHEMA)
    assert table.schema == ACCEPTED_SCHEMA
    row = table.to_pylist()[0]
    assert row["messages"] == list(item.messages)
    expected = to_openai(item.messages)
    assert [{k: v for k, v in m.items() if v is not None} for m in row["openai_messages"]] == expected["messages"]
    assert json.loads(row["tools"]) == expected["tools"]
    assert json.loads(row["models"]) == synthetic.LINEAGE["models"]

"""The BUTTON output format: rendering and the strict validator."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest

from button_ray.button_format import (
    PARALLEL_OFF,
    PARALLEL_ON,
    render_system_prompt,
    to_button_messages,
    validate_button_record,
    validate_jsonl,
)
from button_ray.templates import system_template
from button_ray.records import ToolCall, Turn
from tests.top_down.helpers import BUNDLE

FUNCTIONS = BUNDLE.flat_functions
W = ToolCall(name="get_weather", arguments={"city": "Paris"})
T = ToolCall(name="get_local_time", arguments={"city": "Paris"})
A = ToolCall(name="suggest_activity", arguments={"temperature": 21.0, "time": "14:00"})
TURNS = [
    Turn(role="user", content="What should I do in Paris now?"),
    Turn(role="assistant", thought="Which part of the day?"),
    Turn(role="user", content="Now, in the afternoon."),
    Turn(role="assistant", thought="Plan: weather and time, then an activity.", calls=(W, T)),
    Turn(role="tool", results=({"temperature": 21.0, "summary": "sunny"}, {"time": "14:00"})),
    Turn(role="assistant", thought="Now the activity.", calls=(A,)),
    Turn(role="tool", results=({"activity": "a walk"},)),
    Turn(role="assistant", thought="All set.", final="It is 21 degrees and sunny at 14:00: take a walk."),
]


def record(parallel: bool = True, turns: list[Turn] = TURNS) -> dict[str, Any]:
    return {"messages": to_button_messages(FUNCTIONS, parallel, turns)}


def test_system_prompt_is_the_template_filled_in() -> None:
    expected = system_template().replace(
        "{tool_list}", json.dumps([f.as_button_dict() for f in FUNCTIONS], ensure_ascii=False)
    )
    assert render_system_prompt(FUNCTIONS, True) == expected.replace("{parallel}", PARALLEL_ON)
    assert render_system_prompt(FUNCTIONS, False) == expected.replace("{parallel}", PARALLEL_OFF)
    text = render_system_prompt(FUNCTIONS, False)
    assert "fountion calling" in text and text.startswith("You are an expert") and "{" + "parallel}" not in text


def test_messages_have_the_button_shape() -> None:
    messages = record()["messages"]
    assert [m["role"] for m in messages] == [
        "system", "user", "assistant", "user", "assistant", "tool", "assistant", "tool", "assistant",
    ]  # fmt: skip
    assert messages[4]["content"] == (
        'Plan: weather and time, then an activity. <call>[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_local_time", "arguments": {"city": "Paris"}}]</call>'
    )
    assert json.loads(messages[5]["content"]) == [
        {"name": "get_weather", "arguments": {"city": "Paris"}, "results": {"temperature": 21.0, "summary": "sunny"}},
        {"name": "get_local_time", "arguments": {"city": "Paris"}, "results": {"time": "14:00"}},
    ]
    assert messages[-1]["content"] == "All set. <final>It is 21 degrees and sunny at 14:00: take a walk.</final>"


def test_a_correct_record_passes() -> None:
    assert validate_button_record(record()) == []
    off = [t for t in TURNS if t.role != "tool" and not len(t.calls) > 1][:3] + [
        Turn(role="assistant", thought="Weather.", calls=(W,)),
        Turn(role="tool", results=({"temperature": 21.0, "summary": "sunny"},)),
        Turn(role="assistant", thought="Time.", calls=(T,)),
        Turn(role="tool", results=({"time": "14:00"},)),
        TURNS[-1],
    ]
    assert validate_button_record(record(parallel=False, turns=off)) == []


def _content(i: int, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def corrupt(r: dict[str, Any]) -> None:
        assert old in r["messages"][i]["content"]
        r["messages"][i]["content"] = r["messages"][i]["content"].replace(old, new, 1)

    return corrupt


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def corrupt(r: dict[str, Any]) -> None:
        node = r
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return corrupt


def _delete(i: int) -> Callable[[dict[str, Any]], None]:
    return lambda r: r["messages"].pop(i)


CORRUPTIONS = {
    "template typo fixed": _content(0, "fountion", "function"),
    "template space dropped": _content(0, "below: \n", "below:\n"),
    "unknown parallel sentence": _content(0, "independent of each other.", "independent."),
    "systems role": _set(("messages", 0, "role"), "systems"),
    "extra top-level key": _set(("id",), "x"),
    "extra message key": _set(("messages", 1, "name"), "x"),
    "tool_list extra field": _content(0, '"responses": {"temperature"', '"extra": 1, "responses": {"temperature"'),
    "tool_list reserialized": _content(0, '[{"name": "get_weather", ', '[{"name":"get_weather", '),
    "tool name mismatch": _content(5, '"name": "get_local_time"', '"name": "get_weather"'),
    "tool arguments mismatch": _content(7, '"time": "14:00"}, "results"', '"time": "15:00"}, "results"'),
    "call names unknown function": _content(6, '"suggest_activity"', '"suggest_activities"'),
    "missing final tag": _content(8, "</final>", ""),
    "missing final open tag": _content(8, "<final>", ""),
    "call and final together": _content(6, "Now the activity.", "<final>x</final>"),
    "call/tool count mismatch": _content(5, ', {"name": "get_local_time", "arguments": {"city": "Paris"}, '
                                            '"results": {"time": "14:00"}}', ""),
    "tool message missing": _delete(5),
    "tool message not JSON": _content(7, "[", "", ),
    "unclosed call": _content(4, "</call>", ""),
    "text after call": _content(4, "</call>", "</call> ok"),
    "user first message empty": _set(("messages", 1, "content"), " "),
    "ends with a tool message": _delete(8),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_is_caught(name: str) -> None:
    bad = copy.deepcopy(record())
    CORRUPTIONS[name](bad)
    assert validate_button_record(bad), name


def test_off_mode_allows_one_call_per_turn() -> None:
    on = record(parallel=True)
    on["messages"][0]["content"] = on["messages"][0]["content"].replace(PARALLEL_ON, PARALLEL_OFF)
    errors = validate_button_record(on)
    assert any("parallel calling is off" in e for e in errors)


def test_not_a_record() -> None:
    assert validate_button_record([]) and validate_button_record({"messages": []})
    assert validate_button_record({"messages": [{"role": "system", "content": 1}] * 3})


def test_validate_jsonl(tmp_path: Path) -> None:
    bad = copy.deepcopy(record())
    bad["messages"][0]["role"] = "systems"
    path = tmp_path / "out.jsonl"
    path.write_text("\n".join([json.dumps(record()), json.dumps(bad), "{not json", json.dumps(record())]) + "\n")
    report = validate_jsonl(path)
    assert (report["valid"], report["invalid"]) == (2, 2)
    assert [e["line"] for e in report["errors"]] == [2, 3]

"""The trajectory filter on hand-built dialogues."""

from __future__ import annotations

import math
from typing import Any

import pytest

from button_ray.records import FunctionDef, ToolCall, Turn
from button_ray.top_down.filter import trajectory_problem
from tests.top_down.helpers import BUNDLE

FUNCTIONS = BUNDLE.flat_functions
W = ToolCall(name="get_weather", arguments={"city": "Paris"})
T = ToolCall(name="get_local_time", arguments={"city": "Paris"})
A = ToolCall(name="suggest_activity", arguments={"temperature": 21, "time": "14:00"})
USER = Turn(role="user", content="Weather and time in Paris, and an activity?")
FINAL = Turn(role="assistant", thought="Done.", final="Go for a walk.")


def calls(*cs: ToolCall) -> Turn:
    return Turn(role="assistant", thought="Next.", calls=cs)


def results(*rs: dict[str, Any]) -> Turn:
    return Turn(role="tool", results=rs)


def ok_turns(first: ToolCall = W, second: ToolCall = A) -> list[Turn]:
    return [USER, calls(first), results({"x": 1}), calls(second), results({"y": 2}), FINAL]


def problem(turns: list[Turn], parallel: bool = False, min_calls: int = 2, min_turns: int = 2) -> str | None:
    found = trajectory_problem(turns, FUNCTIONS, parallel=parallel, min_calls=min_calls, min_assistant_turns=min_turns)
    return found[0] if found else None


def test_a_good_trajectory_passes() -> None:
    assert problem(ok_turns()) is None
    parallel = [USER, calls(W, T), results({"x": 1}, {"t": "14:00"}), calls(A), results({"a": "walk"}), FINAL]
    assert problem(parallel, parallel=True) is None


def test_clarification_is_allowed_when_answered() -> None:
    question = Turn(role="assistant", thought="Which city?")
    turns = [USER, question, Turn(role="user", content="Paris."), *ok_turns()[1:]]
    assert problem(turns) is None
    assert problem([USER, question, *ok_turns()[1:]]) == "missing_call_list"


@pytest.mark.parametrize(
    ("bad_call", "reason"),
    [
        (ToolCall(name="get_wether", arguments={"city": "Paris"}), "unknown_function"),
        (ToolCall(name="get_weather", arguments={"days": 2}), "missing_required_argument"),
        (ToolCall(name="get_weather", arguments={"city": 3}), "wrong_argument_type"),
        (ToolCall(name="get_weather", arguments={"city": "Paris", "days": 2.5}), "wrong_argument_type"),
        (ToolCall(name="get_weather", arguments={"city": "Paris", "days": True}), "wrong_argument_type"),
        (ToolCall(name="suggest_activity", arguments={"temperature": "21", "time": "14:00"}), "wrong_argument_type"),
        (ToolCall(name="suggest_activity", arguments={"temperature": 21, "time": "1", "outdoor": "yes"}),
         "wrong_argument_type"),
    ],
)  # fmt: skip
def test_bad_calls(bad_call: ToolCall, reason: str) -> None:
    assert problem(ok_turns(first=bad_call)) == reason


def test_integer_is_a_number_and_unknown_types_accept_anything() -> None:
    assert problem(ok_turns(second=ToolCall(name="suggest_activity", arguments={"temperature": 21, "time": "x"}))) is None
    loose = FunctionDef(name="f", description="d", responses={},
                        parameters={"when": {"type": "date"}, "items": {"type": "list"}, "meta": {"type": "dict"},
                                    "n": {"type": ["integer", "null"]}})  # fmt: skip
    good = ToolCall(name="f", arguments={"when": 5, "items": [1], "meta": {}, "n": None})
    bad = ToolCall(name="f", arguments={"items": {"a": 1}})
    turns = [USER, calls(good), results({}), calls(ToolCall(name="f", arguments={"n": 1})), results({}), FINAL]
    assert trajectory_problem(turns, [loose], parallel=False, min_calls=2, min_assistant_turns=2) is None
    turns[3] = calls(bad)
    assert trajectory_problem(turns, [loose], parallel=False, min_calls=2, min_assistant_turns=2)[0] == (
        "wrong_argument_type"
    )


def test_tool_result_not_json() -> None:
    for bad in ({"t": math.nan}, {"t": object()}, {"t": math.inf}):
        turns = ok_turns()
        turns[2] = results(bad)
        assert problem(turns) == "tool_result_not_json"


def test_no_final_answer() -> None:
    assert problem(ok_turns()[:-1]) == "no_final_answer"
    assert problem([USER]) == "no_final_answer"


def test_final_must_be_last() -> None:
    assert problem([USER, FINAL, *ok_turns()[1:]]) == "final_not_last"


def test_too_few_calls_and_turns() -> None:
    one_call = [USER, calls(W), results({"x": 1}), FINAL]
    assert problem(one_call) == "too_few_calls"
    assert problem(one_call, min_calls=1, min_turns=3) == "too_few_turns"
    assert problem(one_call, min_calls=1, min_turns=2) is None


def test_multiple_calls_in_off_mode() -> None:
    turns = [USER, calls(W, T), results({"x": 1}, {"t": 1}), FINAL]
    assert problem(turns, parallel=False) == "multiple_calls_in_off_mode"
    assert problem(turns, parallel=True) is None


def test_repeated_call() -> None:
    same = ToolCall(name="get_weather", arguments={"city": "Paris"})
    assert problem(ok_turns(first=W, second=same)) == "repeated_call"
    reordered = ToolCall(name="get_weather", arguments={"days": 1, "city": "Paris"})
    first = ToolCall(name="get_weather", arguments={"city": "Paris", "days": 1})
    assert problem(ok_turns(first=first, second=reordered)) == "repeated_call"
    assert problem(ok_turns(first=W, second=first)) is None  # different arguments


def test_results_must_pair_with_calls() -> None:
    turns = ok_turns()
    turns[2] = results({"x": 1}, {"y": 2})
    assert problem(turns) == "missing_tool_results"

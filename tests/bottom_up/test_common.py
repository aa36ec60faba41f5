"""Defensive JSON extraction shared by every stage."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from button_ray.bottom_up.common import copied_from_prompt, extract_json_object, parse_json_as
from button_ray.errors import ParseError


class _Task(BaseModel):
    task: str


@pytest.mark.parametrize(
    "text",
    [
        '{"task": "x"}',
        '```json\n{"task": "x"}\n```',
        'Sure! Here it is:\n{"task": "x"}\nHope this helps.',
        '```\n{"task": "x"}```',
    ],
)
def test_first_object_is_found(text: str) -> None:
    assert extract_json_object(text) == {"task": "x"}


def test_outer_object_wins_over_nested() -> None:
    assert extract_json_object('{"a": {"b": 1}, "c": 2}') == {"a": {"b": 1}, "c": 2}


def test_broken_prefix_object_is_skipped_for_a_later_valid_one() -> None:
    assert extract_json_object('{"task": oops} then {"task": "y"}') == {"task": "y"}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty_output"),
        ("   \n ", "empty_output"),
        ("```json\n```", "empty_output"),
        ('{"task": "Find the deliv', "bad_json"),
        ("no json here", "bad_json"),
        ('["task"]', "bad_json"),
    ],
)
def test_unparseable_text(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as exc:
        extract_json_object(text)
    assert exc.value.reason == reason
    assert exc.value.malformed


def test_wrong_shape_is_schema_mismatch() -> None:
    with pytest.raises(ParseError) as exc:
        parse_json_as(_Task, '{"title": "x"}')
    assert exc.value.reason == "schema_mismatch"
    assert "task" in exc.value.detail


PROMPT = (
    'Example\n{"task": "Find a vegan lasagna recipe."}\n{"task": "Pay the gas bill of 40 dollars today."}\n'
    "First task: Get the forecast for Oslo on Monday.\n1. Book a table.\n"
)


@pytest.mark.parametrize(
    ("text", "copied"),
    [
        ("Find a vegan lasagna recipe", True),  # a worked example's value
        ("get the forecast for Oslo on Monday.", True),  # the input handed back (label stripped)
        ("Book a table", True),  # a numbered line
        ("<the task>", False),  # not a placeholder of this prompt
        ("Get the forecast", False),  # sharing words is not copying
        ("Book a table for two near the harbour.", False),
        ("Please pay the gas bill of 40 dollars today twice.", True),  # a 5+ word example, padded
        ("A vegan lasagna recipe for six.", False),  # part of an example, not all of it
        ("Get the forecast for Oslo on Monday and pack.", False),  # restating the input is fine
        ("Pay the gas bill of 40 dollars", False),  # part of an example, not all of it
    ],
)
def test_copied_from_prompt(text: str, copied: bool) -> None:
    assert copied_from_prompt(text, PROMPT) is copied


def test_placeholders_count_as_copies() -> None:
    assert copied_from_prompt("Then <next step> please", 'Answer: {"task": "<next step>"}')

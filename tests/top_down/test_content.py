"""The content rules of the trajectory filter (``button_ray/quality/``) on crafted dialogues:
each rule fires on a bad dialogue and keeps good ones, paraphrased ones included."""

from __future__ import annotations

from typing import Any

import pytest

from button_ray.config import ContentConfig
from button_ray.quality import degeneration, tokens, trajectory_content_problem
from button_ray.records import FunctionDef, ToolCall, Turn
from tests.top_down.helpers import BUNDLE, FINAL, TOOL_RESULTS, make_item, script

FUNCTIONS = BUNDLE.flat_functions
GROUPS = BUNDLE.functions
DEFAULT = ContentConfig()

USER = "Hi! What's the weather and time in Paris, and what should I do?"
W = ToolCall(name="get_weather", arguments={"city": "Paris"})
T = ToolCall(name="get_local_time", arguments={"city": "Paris"})
A = ToolCall(name="suggest_activity", arguments={"temperature": 21.0, "time": "14:00"})


def user(text: str = USER) -> Turn:
    return Turn(role="user", content=text)


def calls(*cs: ToolCall, thought: str | None = None) -> Turn:
    default = f"Calling {' and '.join(c.name for c in cs)} now."  # distinct per turn: no copied turn
    return Turn(role="assistant", thought=default if thought is None else thought, calls=cs)


def results(*rs: dict[str, Any]) -> Turn:
    return Turn(role="tool", results=rs)


def final(answer: str = "It is 21 degrees at 14:00 in Paris: go for a walk.", thought: str = "Done.") -> Turn:
    return Turn(role="assistant", thought=thought, final=answer)


def good() -> list[Turn]:
    return [
        user(),
        calls(W, T, thought="First the weather and the local time in Paris, in parallel."),
        results(TOOL_RESULTS["get_weather"], TOOL_RESULTS["get_local_time"]),
        calls(A, thought="Now an activity that suits 21 degrees at 14:00."),
        results(TOOL_RESULTS["suggest_activity"]),
        final(),
    ]


def problem(turns: list[Turn], functions=FUNCTIONS, groups=GROUPS, **cfg: Any) -> tuple[str, str] | None:
    return trajectory_content_problem(turns, functions, ContentConfig(**cfg), groups)


def reason(turns: list[Turn], **kw: Any) -> str | None:
    found = problem(turns, **kw)
    return found[0] if found else None


def test_a_good_dialogue_passes_every_rule() -> None:
    assert problem(good()) is None
    assert problem(good(), grounding="strict") is None


def test_a_paraphrased_good_dialogue_passes() -> None:
    # Other words, other number formats, a clarification answered: still grounded and fresh.
    turns = [
        user("Hello there. I'm in paris today; could you find out how warm it is and what time it is?"),
        Turn(role="assistant", thought="Which Paris do you mean, the one in France or the one in Texas?"),
        user("The French capital, Paris in France."),
        calls(ToolCall(name="get_weather", arguments={"city": "PARIS"}),
              thought="Checking the forecast in Paris, France."),  # fmt: skip
        results({"temperature": 21, "summary": "clear skies"}),
        calls(T, thought="And the current local time there."),
        results({"time": "14:00"}),
        calls(ToolCall(name="suggest_activity", arguments={"temperature": 21, "time": "14:00", "outdoor": True}),
              thought="With 21 degrees at two in the afternoon, something outdoors should work."),  # fmt: skip
        results({"activity": "a picnic by the Seine"}),
        final("Paris is at 21 degrees with clear skies and it is 14:00 there; a picnic by the Seine suits well."),
    ]
    assert problem(turns, grounding="lenient") is None


# ---------------------------------------------------------------------- degeneration


@pytest.mark.parametrize(
    "text",
    [
        "Your flight to Rome is booked for 3 June. " * 8,
        "1. to 2. to 3. to 4. to 5. to 6. to 7. to 8. to 9. to 10. to 11. to 12. to 13. to 14.",
        "very " * 30,
        "The hotel is booked for you. I also found a taxi. The hotel is booked for you.",
        "the parcel is on its way and " * 6,
    ],
)
def test_degenerate_texts(text: str) -> None:
    assert degeneration(text, DEFAULT) is not None


@pytest.mark.parametrize(
    "text",
    [
        "Hotel Aurora: 120 euros per night, 4 stars. Hotel Bella: 95 euros per night, 3 stars. Hotel Centrale: "
        "150 euros per night, 5 stars. Hotel Duomo: 99 euros per night, 3 stars. Hotel Eden: 180 euros per "
        "night, 5 stars. Hotel Flora: 110 euros per night, 4 stars.",
        "Find flights from Paris to Rome on 3 June and from Rome to Paris on 10 June for 2 adults.",
        "I booked the table for 2 people at 7 pm and a taxi for 2 people at 6 pm.",
        "Done. Done.",  # too short to be a repeated sentence
    ],
)
def test_lists_and_ordinary_texts_are_not_degenerate(text: str) -> None:
    assert degeneration(text, DEFAULT) is None


def test_degeneration_fires_in_every_part_of_the_dialogue() -> None:
    looped = "Let me check the weather in Paris right now. " * 6
    for index, turn in [
        (5, final(looped)),
        (1, calls(W, T, thought=looped)),
        (0, user(USER + " " + looped)),
        (2, results({"temperature": 21.0, "summary": looped}, TOOL_RESULTS["get_local_time"])),
    ]:
        turns = good()
        turns[index] = turn
        found = problem(turns)
        assert found is not None and found[0] == "degenerate_text", (index, found)
        assert found[1].startswith(f"turn {index} ")
        assert problem(turns, degeneration=False, copied_turn_similarity=None, grounding="off") is None


# ---------------------------------------------------------------------- copied turns


def test_copied_turns() -> None:
    turns = good()
    turns[3] = calls(A, thought=turns[1].thought)  # word for word
    assert reason(turns) == "copied_turn"
    turns[3] = calls(A, thought="First the weather and the local time in Paris, in parallel now.")  # nearly
    assert reason(turns) == "copied_turn"
    turns = good()
    turns[-1] = final(USER)  # the answer hands the question back
    assert reason(turns) == "copied_turn"
    turns = [*good()[:1], Turn(role="assistant", thought="Which city do you mean here?"), user(), *good()[1:]]
    assert reason(turns) == "copied_turn"  # the user repeats the first message instead of answering
    assert reason(turns, copied_turn_similarity=None) is None


def test_short_acknowledgements_and_paraphrases_are_not_copies() -> None:
    turns = good()
    turns[1] = calls(W, T, thought="Next step.")
    turns[3] = calls(A, thought="Next step.")
    assert problem(turns) is None
    turns[1] = calls(W, T, thought="I will fetch the weather and the local time for Paris first.")
    turns[3] = calls(A, thought="With the weather and the time known, I will ask for an activity.")
    assert problem(turns) is None


# ---------------------------------------------------------------------- grounding


NUMBERS = FunctionDef(
    name="convert",
    description="Convert an amount.",
    parameters={
        "amount": {"type": "number", "description": "Amount."},
        "currency": {"type": "string", "enum": ["EUR", "USD"], "description": "Target."},
        "round": {"type": "boolean", "description": "Round it."},
        "note": {"type": "string", "description": "Free note."},
        "filters": {"type": "object", "description": "Filters.",
                    "properties": {"cuisine": {"type": "string"}, "stars": {"type": "integer"},
                                   "mode": {"type": "string", "enum": ["fast", "cheap"]}}},
        "cities": {"type": "array", "items": {"type": "string"}, "description": "Cities."},
    },
    required=("amount",),
    responses={},
)  # fmt: skip


def grounding(arguments: dict[str, Any], text: str, mode: str = "lenient", before: list[Turn] = ()) -> str | None:
    turns = [user(text), *before, calls(ToolCall(name="convert", arguments=arguments)), results({}), final()]
    found = trajectory_content_problem(turns, [NUMBERS], ContentConfig(grounding=mode, result_conformance="off"))
    return found[0] if found else None


@pytest.mark.parametrize("mode", ["strict", "lenient"])
def test_numbers_match_in_any_format(mode: str) -> None:
    text = "Please convert 1,000 dollars for me, and note 2,500.50 too."
    for amount in (1000, 1000.0, "1000", "1,000"):
        assert grounding({"amount": amount}, text, mode) is None, amount
    assert grounding({"amount": 2500.5}, text, mode) is None
    assert grounding({"amount": 1200}, text, mode) == "ungrounded_argument"


@pytest.mark.parametrize("mode", ["strict", "lenient"])
def test_case_whitespace_and_punctuation_are_normalised(mode: str) -> None:
    text = "Convert 10 for the  Grand   Hotel, Paris."
    assert grounding({"amount": 10, "note": "grand hotel paris"}, text, mode) is None
    assert grounding({"amount": 10, "note": "Grand Hotel"}, text, mode) is None
    assert grounding({"amount": 10, "note": "London"}, text, mode) == "ungrounded_argument"


def test_enums_and_booleans_are_exempt_nested_values_are_walked() -> None:
    text = "Convert 10 and find Thai food in Rome or Milan."
    ok = {"amount": 10, "currency": "USD", "round": True,
          "filters": {"cuisine": "Thai", "mode": "cheap"}, "cities": ["Rome", "Milan"]}  # fmt: skip
    assert grounding(ok, text, "strict") is None
    assert grounding({**ok, "filters": {"cuisine": "Mexican"}}, text) == "ungrounded_argument"
    assert grounding({**ok, "filters": {"cuisine": "Thai", "stars": 5}}, text) == "ungrounded_argument"
    assert grounding({**ok, "cities": ["Rome", "Naples"]}, text) == "ungrounded_argument"


def test_earlier_tool_results_ground_later_calls_but_later_ones_do_not() -> None:
    turns = good()
    assert problem(turns, grounding="strict") is None  # 21.0 and 14:00 come from the first results
    turns[2] = results({"temperature": 18.5, "summary": "sunny"}, {"time": "09:30"})
    found = problem(turns)
    assert found is not None and found[0] == "ungrounded_argument" and "suggest_activity.temperature" in found[1]
    # The value given only after the call does not ground it.
    late = [user(), calls(A), results(TOOL_RESULTS["suggest_activity"]), calls(W, T),
            results(TOOL_RESULTS["get_weather"], TOOL_RESULTS["get_local_time"]), final()]  # fmt: skip
    assert reason(late) == "ungrounded_argument"


def test_lenient_allows_paraphrase_strict_does_not() -> None:
    text = "Convert 10 and find an Italian restaurant close to the Colosseum on 3 June 2025 for two people."
    paraphrase = {"amount": 10, "note": "Italian restaurants near Colosseum"}
    assert grounding(paraphrase, text, "lenient") is None
    assert grounding(paraphrase, text, "strict") == "ungrounded_argument"
    iso_date = {"amount": 10, "note": "2025-06-03"}
    assert grounding(iso_date, text, "lenient") is None
    assert grounding(iso_date, text, "strict") == "ungrounded_argument"
    assert grounding({"amount": 2}, text, "lenient") is None  # "two"
    assert grounding({"amount": 2}, text, "strict") == "ungrounded_argument"
    # Most words invented: ungrounded even when lenient.
    assert grounding({"amount": 10, "note": "cheap sushi bar in Tokyo"}, text, "lenient") == "ungrounded_argument"
    assert grounding({"amount": 10, "note": "cheap sushi bar in Tokyo"}, text, "off") is None


# ---------------------------------------------------------------------- result conformance


def test_result_conformance() -> None:
    turns = good()
    turns[2] = results({"temperature": 21.0, "summary": "sunny", "humidity": 40}, TOOL_RESULTS["get_local_time"])
    assert reason(turns) == "nonconforming_result"  # an undeclared key
    turns[2] = results({"temperature": 21.0}, TOOL_RESULTS["get_local_time"])
    assert reason(turns) == "nonconforming_result"  # a declared key missing
    turns[2] = results({"temperature": "21.0", "summary": "sunny"}, TOOL_RESULTS["get_local_time"])
    assert reason(turns) == "nonconforming_result"  # a string where a number is declared
    assert reason(turns, result_conformance="keys") is None
    turns[2] = results({"temperature": 21.0, "summary": "sunny", "humidity": 40}, TOOL_RESULTS["get_local_time"])
    assert reason(turns, result_conformance="off") is None


def test_nested_result_types() -> None:
    fn = FunctionDef(
        name="find_hotels",
        description="Hotels of a city.",
        parameters={"city": {"type": "string", "description": "City."}},
        required=("city",),
        responses={"hotels": {"type": "array", "description": "Hotels.",
                              "items": {"type": "object", "properties": {"name": {"type": "string"},
                                                                         "price": {"type": "number"}}}}},
    )  # fmt: skip
    call = ToolCall(name="find_hotels", arguments={"city": "Paris"})
    ok = {"hotels": [{"name": "Aurora", "price": 120}, {"name": "Bella", "price": 95.5}]}
    bad = {"hotels": [{"name": "Aurora", "price": "cheap"}]}
    for result, expected in ((ok, None), (bad, "nonconforming_result")):
        turns = [user("Hotels in Paris?"), calls(call), results(result), final("Aurora or Bella.")]
        found = trajectory_content_problem(turns, [fn], DEFAULT)
        assert (found[0] if found else None) == expected


# ---------------------------------------------------------------------- plan coverage


def test_plan_coverage() -> None:
    turns = [user(), calls(W), results(TOOL_RESULTS["get_weather"]),
             calls(ToolCall(name="suggest_activity", arguments={"temperature": 21.0, "time": "sunny"})),
             results(TOOL_RESULTS["suggest_activity"]), final()]  # fmt: skip
    found = problem(turns)
    assert found == ("uncovered_subtask", "sub-task 2: none of ['get_local_time'] was called")
    assert problem(turns, groups=None) is None  # a BUTTON file: sub-tasks unknown
    assert problem(turns, plan_coverage=False) is None
    # A sub-task without functions (pure reasoning) needs no call.
    assert problem(turns, groups=(GROUPS[0], (), GROUPS[2])) is None


def test_tokens_read_numbers_once() -> None:
    assert tokens("Pay 1,000.50 on 2025-06-03 at 14:00, the 3rd time; 3,5 kg") == [
        "pay", "1000.5", "on", "2025", "6", "3", "at", "14", "0", "the", "3", "time", "3.5", "kg",
    ]  # fmt: skip
    assert tokens("Parcel 1Z999, 5th Avenue") == ["parcel", "1", "z", "999", "5", "avenue"]


async def test_the_simulation_rejects_with_the_content_reason() -> None:
    from button_ray.top_down import simulate
    from tests.fakes import ScriptedLLM
    from tests.top_down.helpers import call, call_text, cfg

    def assistant(turn: int, attempt: int) -> str:
        invented = call("get_weather", city="London")
        return [call_text(invented, call("get_local_time", city="Paris")),
                call_text(call("suggest_activity", temperature=21.0, time="14:00")), FINAL][turn]  # fmt: skip

    llm = ScriptedLLM(script(assistant))
    item = await simulate(make_item(), llm, cfg(retries=1))
    # Checked as the turn is written: the turn is redrawn, then the item rejected at that step.
    assert (item.rejection.stage, item.rejection.reason) == ("assistant_agent", "ungrounded_argument")
    assert "London" in item.rejection.detail and len(llm.by_role("assistant_agent")) == 2
    assert item.usage_for("assistant_agent").unparseable == 0  # a rule break, not malformed output
    off = await simulate(make_item(), ScriptedLLM(script(assistant)), cfg(content=ContentConfig(grounding="off")))
    assert off.outcome == "emitted", off.rejection


async def test_rule_breaks_are_redrawn_as_they_are_written() -> None:
    """A degenerate thought or tool result, or a copied thought, is retried with a new seed
    at its step; the redrawn dialogue is emitted."""
    import json

    from button_ray.top_down import simulate
    from tests.fakes import ScriptedLLM
    from tests.top_down.helpers import call, call_text, cfg

    loop = "I will check it now. " * 6
    good = [call_text(call("get_weather", city="Paris"), call("get_local_time", city="Paris"),
                      thought="First the weather and the time in Paris."),
            call_text(call("suggest_activity", temperature=21.0, time="14:00"),
                      thought="Now an activity for 21 degrees at 14:00."), FINAL]  # fmt: skip

    def assistant(turn: int, attempt: int) -> str:
        if attempt == 0 and turn == 0:
            return call_text(call("get_weather", city="Paris"), thought=loop)  # degenerate thought
        if attempt == 0 and turn == 1:
            return good[0]  # a copy of turn 0's thought
        return good[turn]

    def tool(request) -> str:
        name = json.loads(request.messages[-1].content.split("<call>")[1].split("</call>")[0])["name"]
        if name == "get_weather" and request.request_id.endswith("#0"):
            return json.dumps({"temperature": 21.0, "summary": "sunny " * 30})
        return json.dumps(TOOL_RESULTS[name])

    llm = ScriptedLLM(script(assistant, tool))
    item = await simulate(make_item(), llm, cfg())
    assert item.outcome == "emitted", item.rejection
    assert len(llm.by_role("assistant_agent")) == 5  # turn 0 twice, turn 1 twice, the final once
    weather = [r for r in llm.by_role("tool_agent") if '"get_weather"' in r.messages[-1].content]
    assert len(weather) == 2 and item.turns[2].results[0]["summary"] == "sunny"


def test_a_final_answer_needs_words() -> None:
    from button_ray.quality import new_turn_problem

    cfg = ContentConfig()
    calls = [Turn(role="user", content="What is the weather in Paris?")]
    for final, reason in (("(", "short_final_answer"), ("Sunny.", "short_final_answer"),
                          ("It is sunny in Paris, 21 degrees.", None)):  # fmt: skip
        turn = Turn(role="assistant", thought="Done.", final=final)
        found = new_turn_problem(calls, turn, [], cfg)
        assert (found[0] if found else None) == reason, final
        assert (trajectory_content_problem([*calls, turn], [], cfg) or (None,))[0] == reason
    assert new_turn_problem(calls, Turn(role="assistant", thought="Done.", final="("), [],
                            ContentConfig(final_min_words=0)) is None  # fmt: skip

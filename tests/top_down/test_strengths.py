"""The two constraint strengths, on the grammars and schemas themselves (xgrammar, the
engine's backend; no engine needed): ``structure`` accepts what a strong model writes,
``tight`` still bounds the embedded model."""

from __future__ import annotations

import json

import pytest
import xgrammar
from xgrammar.testing import _is_grammar_accept_string

from button_ray.bottom_up import functions
from button_ray.bottom_up.common import output_constraint
from button_ray.config import MethodConfig, TightConstraints
from button_ray.errors import ParseError
from button_ray.llm.contract import LLMResponse
from button_ray.records import Composition, FunctionDef, ToolCall
from button_ray.specs import call_problem
from button_ray.top_down.grammar import assistant_grammar, tool_result_grammar, user_message_grammar

TRACK = FunctionDef(
    name="track_shipment_by_reference_number",  # 34 characters
    description="Track a shipment.",
    parameters={
        "tracking_number": {"type": "string", "description": "Carrier tracking number."},
        "notify_email": {"type": "string", "description": "Where to send updates."},
        "carrier": {"type": "string", "description": "Carrier.", "enum": ["ups", "fedex", "dhl"]},
        "legs": {"type": "array", "description": "Legs to include.",
                 "items": {"type": "object", "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
                           "required": ["from"]}},
    },  # fmt: skip
    required=("tracking_number",),
    responses={
        "events": {"type": "array", "description": "Scan events.",
                   "items": {"type": "object", "properties": {
                       "time": {"type": "string"}, "place": {"type": "string"},
                       "status": {"type": "string"}, "signed_by": {"type": "string"}}}},
        "page": {"type": "string", "description": "Status page."},
    },  # fmt: skip
)
ID30 = "1Z999AA10123456784-XK-2026-001"  # 30 characters, no spaces
EMAIL = "maria.gonzalez-fernandez@example-logistics.com"
URL = "https://tracking.example-logistics.com/status?id=1Z999AA10123456784"
LONG_ANSWER = " ".join(f"word{i % 50}" for i in range(300))


def reply(text: str) -> LLMResponse:
    return LLMResponse(text=text, finish_reason="stop", prompt_tokens=1, completion_tokens=1)


def compile_(spec: str) -> xgrammar.Grammar:
    return xgrammar.Grammar.from_ebnf(spec)


def accepts(grammar: xgrammar.Grammar, text: str) -> bool:
    return _is_grammar_accept_string(grammar, text)


def turn(strength: str, **kw) -> xgrammar.Grammar:
    return compile_(assistant_grammar([TRACK], parallel=True, max_calls_per_turn=3, strength=strength, **kw))


def call(arguments: dict) -> str:
    return f'<call>[{json.dumps({"name": TRACK.name, "arguments": arguments}, ensure_ascii=False)}]</call>'


def test_structure_accepts_what_a_strong_model_writes() -> None:
    g = turn("structure", allow_question=True)
    prose = f"The parcel {ID30} goes to {EMAIL}; its page is {URL}. I will track it first.\n\nPlan: track, then answer."
    args = {"tracking_number": ID30, "notify_email": EMAIL, "carrier": "dhl",
            "legs": [{"from": "Paris", "to": "Lyon"}, {"from": "Lyon"}]}  # fmt: skip
    assert accepts(g, f"{prose} {call(args)}")
    assert accepts(g, f"All done. <final>{LONG_ANSWER}</final>")  # a 300-word final answer
    assert accepts(g, f"Tracked. <final>Your parcel {ID30} is at {URL}: the courier emails {EMAIL}.</final>")
    # JSON escapes in strings
    assert accepts(g, "x " + call({"tracking_number": 'Box "A"\\n2 \\u00e9'}))
    # a clarification turn: the thought alone
    assert accepts(g, "Which carrier shipped the parcel, and do you have its tracking number?")
    # still the structure: enum, declared names and types, required keys, nested required keys
    assert not accepts(g, "x " + call({"tracking_number": ID30, "carrier": "royal mail"}))
    assert not accepts(g, "x " + call({"carrier": "dhl"}))
    assert not accepts(g, "x " + call({"tracking_number": 17}))
    assert not accepts(g, "x " + call({"tracking_number": ID30, "legs": [{"to": "Lyon"}]}))
    assert not accepts(g, "x " + call({"tracking_number": ID30, "priority": True}))
    assert not accepts(g, "x <call>[{\"name\": \"track_parcel\", \"arguments\": {}}]</call>")
    assert not accepts(g, "a <b> <final>done</final>")  # '<' never in prose: it opens a tag
    assert not accepts(turn("structure"), "Which carrier shipped the parcel?")  # no question unless allowed


def test_structure_tool_result_nests_as_declared() -> None:
    g = compile_(tool_result_grammar(TRACK, "structure"))
    events = [{"time": f"2026-11-{d:02d}T08:00", "place": "Lyon hub", "status": "in transit", "signed_by": ""}
              for d in range(1, 6)]  # fmt: skip
    result = {"events": events, "page": URL}
    assert accepts(g, json.dumps(result))  # a list of 5 objects with 4 fields
    assert not accepts(g, json.dumps({"events": events}))  # every declared key
    assert not accepts(g, json.dumps({"events": [{"time": "x"}], "page": URL}))  # nested keys too
    tight = compile_(tool_result_grammar(TRACK, "tight", TightConstraints()))
    assert not accepts(tight, json.dumps(result))  # at most 4 items, bounded words


def test_tight_still_bounds_the_embedded_model() -> None:
    g = turn("tight", tight=TightConstraints(), allow_question=False)
    assert not accepts(g, f"All done. <final>{LONG_ANSWER}</final>")
    assert not accepts(g, f"Tracking {ID30} now. " + call({"tracking_number": "x"}))  # prose word > 16 chars
    assert not accepts(g, "x " + call({"tracking_number": ID30 + "-EXTRA"}))  # value word > 24 chars
    assert not accepts(g, "x " + call({"tracking_number": 'Box \\"A\\"'}))  # no escapes
    assert not accepts(g, "Which carrier shipped the parcel?")
    assert accepts(g, "Tracking it now. " + call({"tracking_number": "1Z999AA10123456784"}))


def test_user_messages_are_free_at_structure_strength() -> None:
    assert user_message_grammar("structure") is None
    opener = compile_(user_message_grammar("structure", openers=("Hi,",)))
    assert accepts(opener, f"Hi, please track {ID30} and mail {EMAIL}: {LONG_ANSWER}")
    tight = compile_(user_message_grammar("tight", TightConstraints()))
    assert not accepts(tight, LONG_ANSWER)


COMPOSITION = Composition(
    strategy="sequential",
    subtasks=("Track parcel 1Z999AA10123456784 with DHL.", "Email the delivery date to maria@example.com."),
    composite_task="Track my DHL parcel 1Z999AA10123456784 and email the delivery date to maria@example.com.",
)
RICH = {"functions": [
    [{"name": "track_parcel", "description": "Track a parcel with its carrier.",
      "parameters": {"tracking_number": {"type": "string", "description": "Tracking number"},
                     "carrier": {"type": "string", "description": "Carrier", "enum": ["ups", "dhl"]}},
      "required": ["tracking_number"],
      "responses": {"events": {"type": "array", "description": "Scan events",
                               "items": {"type": "object", "properties": {"date": {"type": "string"},
                                                                          "place": {"type": "string"}},
                                         "required": ["date"]}}}}],
    [{"name": "send_email", "description": "Send an email.",
      "parameters": {"to": {"type": "array", "description": "Recipients", "items": {"type": "string"}},
                     "body": {"type": "string", "description": "Text"}},
      "required": ["to", "body"], "responses": {"sent": {"type": "boolean", "description": "Sent"}}}],
]}  # fmt: skip


def test_structure_function_schema_takes_json_schema_specs() -> None:
    cfg = MethodConfig()
    schema = functions.schema(2, 3, rich=functions.rich_specs(cfg))
    constraint = output_constraint(schema, cfg, "functions")
    grammar = xgrammar.Grammar.from_json_schema(json.dumps(constraint.spec), any_whitespace=False)
    text = json.dumps(RICH)
    assert accepts(grammar, text)
    description = "Track a parcel with its carrier and return every scan event, " * 4  # no length bound
    assert accepts(grammar, text.replace("Track a parcel with its carrier.", description))
    groups = functions.parse(reply(text), 2, 3, None)
    track = groups[0][0]
    assert track.parameters["carrier"] == {"type": "string", "description": "Carrier", "enum": ["ups", "dhl"]}
    assert track.responses["events"]["items"]["required"] == ["date"]
    # the tight strength keeps today's flat specs
    tight = MethodConfig(constraints={"functions": "tight"})
    assert not functions.rich_specs(tight)
    flat = xgrammar.Grammar.from_json_schema(json.dumps(functions.schema(2, 3)), any_whitespace=False)
    assert not accepts(flat, text)


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "string", "description": "d", "enum": [1, 2]},  # enum of another type
        {"type": "string", "description": "d", "items": {"type": "string"}},  # items on a string
        {"type": "object", "description": "d", "properties": {"a": {"type": "string"}}, "required": ["b"]},
    ],
)
def test_inconsistent_specs_are_schema_mismatch(spec: dict) -> None:
    out = json.loads(json.dumps(RICH))
    out["functions"][0][0]["parameters"]["carrier"] = spec
    with pytest.raises(ParseError) as exc:
        functions.parse(reply(json.dumps(out)), 2, 3, None)
    assert exc.value.reason == "schema_mismatch"


def test_calls_are_checked_against_nested_specs() -> None:
    by_name = {TRACK.name: TRACK}

    def problem(**arguments) -> str | None:
        found = call_problem(ToolCall(name=TRACK.name, arguments={"tracking_number": ID30, **arguments}), by_name)
        return found[0] if found else None

    assert problem(carrier="dhl", legs=[{"from": "Paris"}]) is None
    assert problem(carrier="royal mail") == "argument_not_in_enum"
    assert problem(legs=[{"to": "Lyon"}]) == "missing_required_argument"
    assert problem(legs=[{"from": 3}]) == "wrong_argument_type"


def test_grounded_arguments_take_only_the_dialogues_values() -> None:
    from button_ray.quality import grounding_candidates
    from button_ray.records import Turn
    from tests.top_down.helpers import WEATHER

    said = [Turn(role="user", content="What will the weather be in New York on 12 May, for 3 days?")]
    strings, numbers = grounding_candidates(said)
    assert "New York" in strings and "weather" in strings and 3.0 in numbers and 12.0 in numbers
    assert "the weather" not in strings  # no phrase starts or ends with a stop word
    g = compile_(assistant_grammar([WEATHER], parallel=False, max_calls_per_turn=1, strength="tight",
                                   tight=TightConstraints(), grounded=(strings, numbers)))  # fmt: skip

    def weather(**arguments) -> str:
        return f'x <call>[{json.dumps({"name": "get_weather", "arguments": arguments})}]</call>'

    assert accepts(g, weather(city="New York", days=3))
    assert not accepts(g, weather(city="London"))  # never said
    assert not accepts(g, weather(city="New York", days=4))
    # nothing of a type said: any value of the type (the content rule then decides)
    free = compile_(assistant_grammar([WEATHER], parallel=False, max_calls_per_turn=1, strength="tight",
                                      tight=TightConstraints(), grounded=(("New York",), ())))  # fmt: skip
    assert accepts(free, weather(city="New York", days=4))

"""Output constraints: the agents' grammars compile with xgrammar (the engine's
backend) and accept exactly what the parsers accept."""

from __future__ import annotations

import pytest
import xgrammar
from xgrammar.testing import _is_grammar_accept_string

from button_ray.llm.contract import ChatMessage, LLMRequest
from button_ray.records import FunctionDef, ToolCall
from button_ray.top_down.agents import TrajectoryContext, parse_assistant_turn, tool_request
from button_ray.top_down.grammar import assistant_grammar, tool_result_grammar, user_message_grammar
from tests.oracles.top_down import respond
from tests.top_down.helpers import BUNDLE, WEATHER, call, call_text, cfg, tight

FUNCTIONS = BUNDLE.flat_functions


def grammar(parallel: bool, max_calls_per_turn: int = 3, **bounds: int) -> xgrammar.Grammar:
    spec = assistant_grammar(
        FUNCTIONS, parallel=parallel, max_calls_per_turn=max_calls_per_turn, strength="tight", tight=tight(**bounds)
    )
    return xgrammar.Grammar.from_ebnf(spec)


def accepts(g: xgrammar.Grammar, text: str) -> bool:
    return _is_grammar_accept_string(g, text)


GOOD_CALL = 'Plan: weather first.\nThen time. <call>[{"name": "get_weather", "arguments": {"city": "New York", "days": 2}}]</call>'


@pytest.mark.parametrize("parallel", [False, True])
def test_grammar_accepts_well_formed_turns(parallel: bool) -> None:
    g = grammar(parallel)
    assert accepts(g, GOOD_CALL)
    assert accepts(g, "All done. <final>It is 21 degrees in Paris.</final>")
    assert accepts(g, 'Suggest. <call>[{"name": "suggest_activity", "arguments": '
                      '{"temperature": -3.5, "time": "14:00", "outdoor": true}}]</call>')  # fmt: skip


def test_grammar_rejects_bad_turns() -> None:
    g = grammar(parallel=False)
    assert not accepts(g, GOOD_CALL.replace("get_weather", "get_wether"))  # unknown name
    assert not accepts(g, 'x <call>[{"name": "get_weather", "arguments": {"days": 2}}]</call>')  # required
    assert not accepts(g, 'x <call>[{"name": "get_weather", "arguments": {"city": 3}}]</call>')  # type
    assert not accepts(g, 'x <call>[{"name": "get_weather", "arguments": {"city": "a", "days": 01}}]</call>')
    assert not accepts(g, "a <b> <final>done</final>")  # '<' in the thought
    assert not accepts(g, "just prose")  # neither a call nor a final answer
    two = 'x <call>[{"name": "get_weather", "arguments": {"city": "a"}}, {"name": "get_local_time", "arguments": {"city": "a"}}]</call>'
    assert not accepts(g, two)  # off mode: one call per turn
    assert accepts(grammar(parallel=True), two)
    assert not accepts(grammar(parallel=True, max_calls_per_turn=1), two)


def test_grammar_bounds_free_text_in_words() -> None:
    g = grammar(parallel=True, thought_max_chars=60)  # 10 separators: up to 11 words
    assert accepts(g, " ".join(["word"] * 11) + " <final>ok</final>")
    assert not accepts(g, " ".join(["word"] * 13) + " <final>ok</final>")
    assert not accepts(g, "x" * 17 + " <final>ok</final>")  # a word is at most 16 characters
    value = '"' + " ".join(["a"] * 5) + '"'  # value_max_chars=30: 5 words
    assert accepts(g, f'x <call>[{{"name": "get_local_time", "arguments": {{"city": {value}}}}}]</call>')
    value = '"' + " ".join(["a"] * 6) + '"'
    assert not accepts(g, f'x <call>[{{"name": "get_local_time", "arguments": {{"city": {value}}}}}]</call>')


def test_grammar_of_functions_without_required_arguments() -> None:
    fn = FunctionDef(name="search", description="d", responses={},
                     parameters={"q": {"type": "str"}, "tags": {"type": "list", "items": {"type": "string"}},
                                 "mode": {"type": "string", "enum": ["a", "b"]}, "extra": {"type": "dict"}})  # fmt: skip
    g = xgrammar.Grammar.from_ebnf(
        assistant_grammar([fn], parallel=False, max_calls_per_turn=2, strength="tight", tight=tight(60, 60, 30))
    )
    for arguments in ["{}", '{"q": "x"}', '{"tags": ["a", "b"], "mode": "b"}', '{"extra": {"k": 1}}']:
        assert accepts(g, f'x <call>[{{"name": "search", "arguments": {arguments}}}]</call>'), arguments
    assert not accepts(g, 'x <call>[{"name": "search", "arguments": {"mode": "c"}}]</call>')
    assert not accepts(g, 'x <call>[{"name": "search", "arguments": {"mode": "a", "q": "x"}}]</call>')


def test_grammar_output_parses_to_the_same_turn() -> None:
    ctx = TrajectoryContext(item_id="i", bundle=BUNDLE, parallel=True, cfg=cfg())
    g = xgrammar.Grammar.from_ebnf(ctx.assistant_constraint.spec)
    text = call_text(call("get_weather", city="Paris"), call("get_local_time", city="Paris"), thought="Plan.")
    assert accepts(g, text)
    turn = parse_assistant_turn(ctx, text)
    assert [c.name for c in turn.calls] == ["get_weather", "get_local_time"] and turn.thought == "Plan."


def test_user_message_grammar() -> None:
    g = xgrammar.Grammar.from_ebnf(user_message_grammar("tight", tight(final_max_chars=120)))
    assert accepts(g, "Hi! I need the weather in Paris,\nplease.")
    assert not accepts(g, "Hi <call>")
    assert not accepts(g, " leading space")


def test_tool_result_grammar() -> None:
    g = xgrammar.Grammar.from_ebnf(tool_result_grammar(WEATHER, "tight", tight()))
    assert accepts(g, '{"temperature": 21.5, "summary": "sunny and warm"}')
    assert not accepts(g, '{"temperature": 21.5}')  # every declared key is required
    assert not accepts(g, '{"temperature": "warm", "summary": "sunny"}')
    assert not accepts(g, '{"temperature": 1, "summary": "a b c d e f"}')  # over 5 words
    nested = FunctionDef(name="f", description="d", parameters={}, responses={
        "items": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "int"}}}},
        "status": {"type": "string", "enum": ["ok", "failed"]}, "meta": {"type": "object"}})  # fmt: skip
    g = xgrammar.Grammar.from_ebnf(tool_result_grammar(nested, "tight", tight()))
    assert accepts(g, '{"items": [{"id": 1}, {"id": 2}], "status": "ok", "meta": {"source": "db"}}')
    assert not accepts(g, '{"items": [], "status": "done", "meta": {}}')
    free = FunctionDef(name="f", description="d", parameters={}, responses={})
    assert accepts(xgrammar.Grammar.from_ebnf(tool_result_grammar(free, "tight", tight())), '{"ok": "yes"}')


def test_tool_result_grammar_accepts_the_oracle() -> None:
    ctx = TrajectoryContext(item_id="i", bundle=BUNDLE, parallel=True, cfg=cfg())
    for fn in BUNDLE.flat_functions:
        prompt = tool_request(ctx, ToolCall(name=fn.name, arguments={}), 0, 0)
        assert accepts(xgrammar.Grammar.from_ebnf(prompt.constraint.spec), respond(prompt))


@pytest.mark.parametrize("parallel", [False, True])
def test_oracle_answers_satisfy_the_constraints(parallel: bool) -> None:
    ctx = TrajectoryContext(item_id="i", bundle=BUNDLE, parallel=parallel, cfg=cfg())
    chat = [ChatMessage(role="system", content=ctx.assistant_system), ChatMessage(role="user", content="hi")]
    request = LLMRequest(role="assistant_agent", messages=tuple(chat), request_id="r")
    assert accepts(xgrammar.Grammar.from_ebnf(ctx.assistant_constraint.spec), respond(request))

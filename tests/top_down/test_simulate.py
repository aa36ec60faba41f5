"""The top-down state machine, driven by scripted engines."""

from __future__ import annotations

import asyncio
import json
import time

from button_ray.button_format import validate_button_record
from button_ray.config import ContentConfig
from button_ray.llm.contract import LLMRequest, LLMResponse
from button_ray.top_down import choose_parallel, simulate
from tests.fakes import ScriptedLLM
from tests.oracles.top_down import respond
from tests.top_down.helpers import FINAL, OFF, call, call_text, cfg, make_item, script

WEATHER_PARIS = call("get_weather", city="Paris")
TIME_PARIS = call("get_local_time", city="Paris")
ADVICE_CALL = call("suggest_activity", temperature=21.0, time="14:00")


def three_turns(turn: int, attempt: int) -> str:
    return [call_text(WEATHER_PARIS, TIME_PARIS), call_text(ADVICE_CALL), FINAL][turn]


async def test_parallel_on_issues_tool_calls_concurrently() -> None:
    llm = ScriptedLLM(script(three_turns), delay=0.02)
    item = await simulate(make_item(), llm, cfg())
    assert item.outcome == "emitted", item.rejection
    assert item.parallel is True
    assert item.stats is not None and item.stats.calls_per_turn == (2, 1, 0)
    # Only the two tool calls of the first turn can overlap; they did.
    assert llm.max_in_flight == 2
    assert validate_button_record({"messages": list(item.messages)}) == []
    tool_message = json.loads(item.messages[3]["content"])
    assert [t["name"] for t in tool_message] == ["get_weather", "get_local_time"]
    assert tool_message[0]["results"] == {"temperature": 21.0, "summary": "sunny"}
    assert set(item.usage) == {"user_agent", "assistant_agent", "tool_agent"}
    assert item.usage_for("tool_agent").calls == 3


async def test_parallel_off_retries_a_multi_call_turn() -> None:
    def assistant(turn: int, attempt: int) -> str:
        if turn == 0:
            return call_text(WEATHER_PARIS, TIME_PARIS) if attempt == 0 else call_text(WEATHER_PARIS)
        return [None, call_text(TIME_PARIS), call_text(ADVICE_CALL), FINAL][turn]

    llm = ScriptedLLM(script(assistant))
    item = await simulate(make_item(), llm, cfg(parallel_ratio=0.0))
    assert item.outcome == "emitted", item.rejection
    assert item.parallel is False
    assert item.stats.calls_per_turn == (1, 1, 1, 0)
    usage = item.usage_for("assistant_agent")
    assert usage.calls == 5 and usage.unparseable == 0  # a rule break, not unparseable text
    assert "You should call one function at a time" in item.messages[0]["content"]


async def test_parallel_off_rejects_when_retries_keep_multi_calling() -> None:
    llm = ScriptedLLM(script(lambda t, a: call_text(WEATHER_PARIS, TIME_PARIS)))
    item = await simulate(make_item(), llm, cfg(parallel_ratio=0.0, retries=1))
    assert (item.rejection.stage, item.rejection.reason) == ("assistant_agent", "multiple_calls_in_off_mode")
    assert len(llm.by_role("assistant_agent")) == 2


async def test_turn_limit() -> None:
    llm = ScriptedLLM(script(lambda t, a: call_text(call("get_weather", city="Paris", days=t + 1))))
    # The same call with new arguments each turn: ungrounded, so the grounding rule is off here.
    item = await simulate(make_item(), llm, cfg(max_assistant_turns=3, content=ContentConfig(grounding="off")))
    assert (item.rejection.stage, item.rejection.reason) == ("simulation", "turn_limit")
    assert len(llm.by_role("assistant_agent")) == 3


async def test_clarification_then_continue() -> None:
    def assistant(turn: int, attempt: int) -> str:
        return ["Which city do you mean?", call_text(WEATHER_PARIS, TIME_PARIS), call_text(ADVICE_CALL), FINAL][turn]

    llm = ScriptedLLM(script(assistant))
    item = await simulate(make_item(), llm, cfg())
    assert item.outcome == "emitted", item.rejection
    assert item.stats.clarifications == 1
    roles = [m["role"] for m in item.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert item.messages[2]["content"] == "Which city do you mean?"
    # The user agent saw the question, appended to its own chat.
    reply_request = llm.by_role("user_agent")[1]
    assert reply_request.messages[-1].content == "Which city do you mean?"
    assert [m.role for m in reply_request.messages] == ["user", "assistant", "user"]


async def test_clarification_limit() -> None:
    questions = ["Could you tell me more about the city you mean?", "Which day and what time should I plan for?"]
    llm = ScriptedLLM(script(lambda t, a: questions[t % 2]))
    item = await simulate(make_item(), llm, cfg(max_clarifications=1))
    assert (item.rejection.stage, item.rejection.reason) == ("simulation", "clarification_limit")
    assert len(llm.by_role("user_agent")) == 2  # the opening message and one reply


async def test_identical_calls_are_served_from_cache() -> None:
    def assistant(turn: int, attempt: int) -> str:
        return [call_text(WEATHER_PARIS, WEATHER_PARIS), call_text(WEATHER_PARIS), FINAL][turn]

    llm = ScriptedLLM(script(assistant))
    item = await simulate(make_item(), llm, cfg())
    assert len(llm.by_role("tool_agent")) == 1
    assert (item.rejection.stage, item.rejection.reason) == ("trajectory_filter", "repeated_call")
    # Every repeat saw the same result: the assistant's chat shows it three times.
    last = llm.by_role("assistant_agent")[-1].messages
    results = [json.loads(m.content.split(": ", 1)[1]) for m in last if m.content.startswith("Function results")]
    flat = [r["results"] for group in results for r in group]
    assert len(flat) == 3 and all(r == flat[0] for r in flat)


async def test_unknown_function_is_rejected_after_retries() -> None:
    llm = ScriptedLLM(script(lambda t, a: call_text(call("get_wether", city="Paris"))))
    item = await simulate(make_item(), llm, cfg(retries=2))
    assert (item.rejection.stage, item.rejection.reason) == ("assistant_agent", "unknown_function")
    assert item.usage_for("assistant_agent").calls == 3
    assert not llm.by_role("tool_agent")


async def test_missing_required_argument() -> None:
    llm = ScriptedLLM(script(lambda t, a: call_text(call("get_weather", days=2))))
    item = await simulate(make_item(), llm, cfg())
    assert (item.rejection.stage, item.rejection.reason) == ("assistant_agent", "missing_required_argument")


async def test_wrong_argument_type() -> None:
    llm = ScriptedLLM(script(lambda t, a: call_text(call("get_weather", city="Paris", days="two"))))
    item = await simulate(make_item(), llm, cfg())
    assert (item.rejection.stage, item.rejection.reason) == ("assistant_agent", "wrong_argument_type")


async def test_bad_call_json_is_retried_and_counted_unparseable() -> None:
    def assistant(turn: int, attempt: int) -> str:
        if turn == 0 and attempt == 0:
            return 'Plan. <call>[{"name": "get_weather", "arguments": {"city": Paris}}]</call>'
        return three_turns(turn, attempt)

    item = await simulate(make_item(), ScriptedLLM(script(assistant)), cfg())
    assert item.outcome == "emitted", item.rejection
    assert item.usage_for("assistant_agent").unparseable == 1


async def test_tool_result_not_json() -> None:
    llm = ScriptedLLM(script(three_turns, tool=lambda r: "The weather is sunny."))
    item = await simulate(make_item(), llm, cfg(retries=1))
    assert (item.rejection.stage, item.rejection.reason) == ("tool_agent", "tool_result_not_json")
    assert item.usage_for("tool_agent").unparseable == 4  # two calls, two attempts each


async def test_empty_assistant_text() -> None:
    item = await simulate(make_item(), ScriptedLLM(script(lambda t, a: "   ")), cfg())
    assert (item.rejection.stage, item.rejection.reason) == ("assistant_agent", "empty_output")
    assert item.usage_for("assistant_agent").unparseable == 3


async def test_empty_user_text() -> None:
    def handler(request: LLMRequest) -> str:
        return "" if request.role == "user_agent" else "unused"

    item = await simulate(make_item(), ScriptedLLM(handler), cfg())
    assert (item.rejection.stage, item.rejection.reason) == ("user_agent", "empty_output")


async def test_truncated_output() -> None:
    def handler(request: LLMRequest) -> str | LLMResponse:
        if request.role == "assistant_agent":
            return LLMResponse(text="I will first", finish_reason="length", prompt_tokens=10, completion_tokens=400)
        return script(three_turns)(request)

    item = await simulate(make_item(), ScriptedLLM(handler), cfg(retries=1))
    assert (item.rejection.stage, item.rejection.reason) == ("assistant_agent", "truncated")
    assert item.usage_for("assistant_agent").unparseable == 2


async def test_token_budget() -> None:
    def handler(request: LLMRequest) -> LLMResponse:
        text = script(three_turns)(request)
        return LLMResponse(text=text, finish_reason="stop", prompt_tokens=300, completion_tokens=20)

    # 3 functions: 1000 + 3 x 100 tokens
    item = await simulate(
        make_item(), ScriptedLLM(handler), cfg(max_trajectory_tokens=1000, trajectory_tokens_per_function=100)
    )
    assert (item.rejection.stage, item.rejection.reason) == ("simulation", "token_budget")


async def test_requests_are_deterministic_routed_and_append_only() -> None:
    llm = ScriptedLLM(script(three_turns))
    item = await simulate(make_item(), llm, cfg())
    ids = [r.request_id for r in llm.requests]
    assert len(ids) == len(set(ids))
    assert {r.affinity_key for r in llm.requests} == {item.item_id}
    assert "item-0/assistant/2#0" in ids and "item-0/tool/0/1#0" in ids and "item-0/user/0#0" in ids
    c = cfg()
    for r in llm.requests:
        assert r.sampling.temperature == c.sampling.for_role(r.role).temperature
        assert r.sampling.seed is not None
    # Each assistant request extends the previous one: a stable prefix for the cache.
    chats = [r.messages for r in llm.by_role("assistant_agent")]
    for before, after in zip(chats, chats[1:]):
        assert after[: len(before)] == before
    # The same item gives the same requests.
    again = ScriptedLLM(script(three_turns))
    await simulate(make_item(), again, cfg())
    assert [r.model_dump() for r in again.requests] == [r.model_dump() for r in llm.requests]


async def test_constraints_by_role_and_switch() -> None:
    llm = ScriptedLLM(script(three_turns))
    await simulate(make_item(), llm, cfg())
    kinds = {r.role: r.constraint.kind for r in llm.requests}
    assert kinds == {"user_agent": "grammar", "assistant_agent": "grammar", "tool_agent": "grammar"}
    # structure: no constraint on the user's prose, grammars for the rest
    strong = ScriptedLLM(script(three_turns))
    await simulate(make_item(), strong, cfg(constraints={}))
    kinds = {r.role: r.constraint.kind if r.constraint else None for r in strong.requests}
    assert kinds == {"user_agent": None, "assistant_agent": "grammar", "tool_agent": "grammar"}
    bare = ScriptedLLM(script(three_turns))
    item = await simulate(make_item(), bare, cfg(constraints=OFF))
    assert item.outcome == "emitted"
    assert all(r.constraint is None for r in bare.requests)


def test_parallel_choice_is_deterministic_and_follows_the_ratio() -> None:
    ids = [f"item-{i}" for i in range(2000)]
    draws = [choose_parallel(i, 0.3) for i in ids]
    assert draws == [choose_parallel(i, 0.3) for i in ids]
    assert 0.25 < sum(draws) / len(draws) < 0.35
    assert not any(choose_parallel(i, 0.0) for i in ids) and all(choose_parallel(i, 1.0) for i in ids)


async def test_oracle_trajectories_pass_filter_and_validator() -> None:
    llm = ScriptedLLM(respond)
    items = await asyncio.gather(*(simulate(make_item(n), llm, cfg(parallel_ratio=0.5)) for n in range(40)))
    assert all(i.outcome == "emitted" for i in items), [i.rejection for i in items if i.rejection]
    assert {i.parallel for i in items} == {True, False}
    for i in items:
        assert validate_button_record({"messages": list(i.messages)}) == []
        per_turn = i.stats.calls_per_turn
        assert max(per_turn) == (2 if i.parallel else 1)


async def test_thousands_of_trajectories_in_flight_without_blocking() -> None:
    llm = ScriptedLLM(respond)
    start = time.monotonic()
    items = await asyncio.gather(*(simulate(make_item(n), llm, cfg(parallel_ratio=0.5)) for n in range(3000)))
    elapsed = time.monotonic() - start
    assert sum(i.outcome == "emitted" for i in items) == 3000
    assert llm.max_in_flight > 1000
    assert elapsed < 30, elapsed

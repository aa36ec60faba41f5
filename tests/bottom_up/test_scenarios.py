"""Scenario pool: default list, seed-conversation parsing, extraction/expansion, pool job."""

from __future__ import annotations

import json
import re

import pytest

from button_ray.bottom_up import scenarios
from button_ray.bottom_up.common import normalize
from button_ray.config import MethodConfig, ScenarioConfig
from button_ray.records import scenario_id
from tests.bottom_up.conftest import model_free_dedup, scripted
from tests.fakes import ScriptedLLM

GLAIVE = {
    "system": "SYSTEM: You are a helpful assistant with access to the following functions. "
    "Use them if required -\n"
    '{\n    "name": "get_exchange_rate",\n    "description": "Get the exchange rate",\n'
    '    "parameters": {"type": "object", "properties": {"base": {"type": "string"}}}\n}',
    "chat": "USER: Hi, how many euros is 100 dollars? ASSISTANT: <functioncall> "
    '{"name": "get_exchange_rate", "arguments": \'{"base": "USD"}\'} <|endoftext|> '
    'FUNCTION RESPONSE: {"rate": 0.92} ASSISTANT: 100 dollars is 92 euros. <|endoftext|>',
}


# ------------------------------------------------------------------ default list


def test_default_list_is_large_unique_and_short() -> None:
    items = scenarios.load_default_scenarios()
    assert 250 <= len(items) <= 400
    assert len({normalize(s) for s in items}) == len(items)
    assert all(1 <= len(s.split()) <= 10 for s in items)
    assert not [s for s in items if re.search(r"\d", s)], "scenarios carry no specifics"


def test_pool_scenarios_get_the_ids_a_generation_run_gives_their_text() -> None:
    a = scenarios.scenario_from_text("Booking a  flight", "list")
    b = scenarios.scenario_from_text("booking a flight", "expansion")
    assert a.scenario_id == b.scenario_id == scenario_id("Booking a flight") and a.text == "Booking a flight"
    assert scenarios.scenario_from_text("booking a train", "list").scenario_id != a.scenario_id


# ------------------------------------------------------------------ conversations

USER = {"role": "user", "content": "Track parcel 123"}
BOT = {"role": "assistant", "content": "It is in Lyon."}


def test_glaive_row_becomes_a_compact_transcript() -> None:
    text = scenarios.conversation_to_text(GLAIVE)
    assert text.splitlines() == [
        "tools: get_exchange_rate",
        "user: Hi, how many euros is 100 dollars?",
        'assistant: <functioncall> {"name": "get_exchange_rate", "arguments": \'{"base": "USD"}\'}',
        'tool: {"rate": 0.92}',
        "assistant: 100 dollars is 92 euros.",
    ]
    assert scenarios.conversation_to_text(json.dumps(GLAIVE)) == text


def test_glaive_without_functions_drops_the_system_prompt() -> None:
    row = {"system": "SYSTEM: You are a helpful assistant, with no access to external functions.",
           "chat": "USER: Tell me a joke. ASSISTANT: Why did the chicken cross the road?"}
    assert scenarios.conversation_to_text(row).splitlines()[0] == "user: Tell me a joke."


@pytest.mark.parametrize(
    "row",
    [
        [{"role": "system", "content": "Be brief."}, USER, BOT],
        {"messages": [USER, BOT]},
        {"conversations": [{"from": "human", "value": "Track parcel 123"}, {"from": "gpt", "value": "It is in Lyon."}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Track parcel 123"}]}, BOT]},
    ],
)
def test_message_lists(row) -> None:
    assert scenarios.conversation_to_text(row) == "user: Track parcel 123\nassistant: It is in Lyon."


def test_tool_calls_and_tool_messages() -> None:
    row = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "get_weather"}}]},
        {"role": "tool", "content": '{"temp": 3}'},
    ]
    lines = scenarios.conversation_to_text(row).splitlines()
    assert lines[1:] == ["assistant: [calls get_weather]", 'tool: {"temp": 3}']


def test_transcripts_are_bounded() -> None:
    row = [{"role": "user", "content": "word " * 2000}, {"role": "assistant", "content": "short answer"}]
    text = scenarios.conversation_to_text(row, max_chars=400)
    assert len(text) <= 400
    assert "assistant: short answer" in text, "one long message must not crowd out the rest"


def test_plain_text_and_junk() -> None:
    assert scenarios.conversation_to_text("  just   a chat ") == "just a chat"
    assert scenarios.conversation_to_text({"unknown": 1}) == ""
    assert scenarios.conversation_to_text("{not json") == "{not json"


# ------------------------------------------------------------------ LLM steps


async def _pool(llm: ScriptedLLM, base: list[str], conversations: list, target: int,
                cfg: MethodConfig | None = None, **scen: int) -> tuple[list, dict]:
    return await scenarios.build_scenario_pool(base, conversations, target, llm, cfg or MethodConfig(),
                                               ScenarioConfig(**scen), deduplicator=model_free_dedup())


async def test_extraction_request_and_result() -> None:
    cfg = MethodConfig(constraints={"scenario_extraction": "tight"})
    llm = ScriptedLLM(scripted({"scenario_extraction": ['{"scenario": "Converting currencies."}']}))
    pool, _ = await _pool(llm, [], [GLAIVE], 1, cfg)
    assert [(s.text, s.source) for s in pool] == [("Converting currencies", "extraction")]
    (req,) = llm.requests
    assert req.role == "scenario_extraction"
    assert req.request_id.startswith("scenario_extraction/0/") and req.request_id.endswith("#0")
    assert req.sampling.temperature == cfg.sampling.scenario_extraction.temperature
    assert req.constraint.spec["properties"]["scenario"]["maxLength"] <= 200
    assert "user: Hi, how many euros" in req.messages[-1].content


async def test_expansion_retries_a_too_long_answer() -> None:
    long = json.dumps({"scenario": "planning " + "a very long scenario " * 5})
    llm = ScriptedLLM(scripted({"scenario_expansion": [long, '{"scenario": "planning a garden party"}']}))
    pool, _ = await _pool(llm, ["booking a flight"], [], 2)
    assert [(s.text, s.source) for s in pool] == [
        ("booking a flight", "list"), ("planning a garden party", "expansion")]
    assert len(llm.requests) == 2 and llm.requests[0].sampling.seed != llm.requests[1].sampling.seed
    assert "booking a flight" in llm.requests[0].messages[-1].content


@pytest.mark.parametrize("copy", ["Booking a flight.", "renewing a passport"])
async def test_expansion_must_not_hand_back_the_input_or_an_example(copy: str) -> None:
    llm = ScriptedLLM(lambda _req: json.dumps({"scenario": copy}))
    pool, stats = await _pool(llm, ["booking a flight"], [], 2, MethodConfig(retries=0), expansion_rounds=1)
    assert len(pool) == 1 and len(llm.requests) == 1
    assert stats["failures"] == {"scenario_expansion:copied_from_prompt": 1}


async def test_extraction_may_reuse_the_conversation_s_words() -> None:
    llm = ScriptedLLM(lambda _req: '{"scenario": "booking a flight"}')
    pool, _ = await _pool(llm, [], ["user: I am booking a flight to Oslo"], 1)
    assert [s.text for s in pool] == ["booking a flight"]


async def test_expansion_gives_up_after_retries() -> None:
    llm = ScriptedLLM(lambda _req: "```json\n{\"scen")
    pool, stats = await _pool(llm, ["booking a flight"], [], 2, MethodConfig(retries=1), expansion_rounds=1)
    assert len(pool) == 1 and len(llm.requests) == 2
    assert stats["failures"] == {"scenario_expansion:bad_json": 1}


# ------------------------------------------------------------------ pool job


async def test_pool_grows_to_target_from_list_and_conversations() -> None:
    scen_cfg = ScenarioConfig(concurrency=8)
    llm = ScriptedLLM(scripted(), delay=0.001)
    base = ["booking a flight", "Booking a flight.", "tracking a parcel"]
    pool, stats = await scenarios.build_scenario_pool(
        base, [json.dumps(GLAIVE), ""], 40, llm, MethodConfig(), scen_cfg, deduplicator=model_free_dedup()
    )
    assert len(pool) == 40 == stats["size"]
    assert [s.source for s in pool[:3]] == ["list", "list", "extraction"]
    assert stats["from_list"] == 2 and stats["extracted"] == 1 and stats["expanded"] == 37
    assert stats["duplicates_removed"] >= 1
    assert stats["conversations_parsed"] == 1
    assert len({s.scenario_id for s in pool}) == 40
    assert stats["usage"]["scenario_expansion"]["calls"] >= 37
    assert llm.max_in_flight <= scen_cfg.concurrency


async def test_pool_is_deterministic() -> None:
    async def run() -> list[str]:
        pool, _ = await scenarios.build_scenario_pool(
            ["booking a flight"], [], 25, ScriptedLLM(scripted()), MethodConfig(), ScenarioConfig(),
            deduplicator=model_free_dedup(),
        )
        return [s.text for s in pool]

    assert await run() == await run()


async def test_pool_rounds_are_bounded_when_expansion_fails() -> None:
    scen_cfg = ScenarioConfig(expansion_rounds=3)
    llm = ScriptedLLM(lambda _req: "not json")
    pool, stats = await scenarios.build_scenario_pool(
        ["booking a flight"], [], 5, llm, MethodConfig(retries=0), scen_cfg, deduplicator=model_free_dedup()
    )
    assert [s.text for s in pool] == ["booking a flight"]
    assert stats["rounds"] == 3
    assert stats["failures"] == {"scenario_expansion:bad_json": 3 * 4}


async def test_pool_keeps_all_sources_even_above_target() -> None:
    base = [f"scenario number {w}" for w in ("one", "two", "three", "four")]
    llm = ScriptedLLM(scripted())
    pool, stats = await scenarios.build_scenario_pool(
        base, [], 2, llm, MethodConfig(), ScenarioConfig(), deduplicator=model_free_dedup()
    )
    assert len(pool) == 4 and stats["rounds"] == 0 and llm.requests == []


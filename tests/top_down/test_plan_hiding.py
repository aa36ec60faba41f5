"""What the assistant agent is told about the plan, and what the saved record keeps of it:
the tool list shuffled per record, the independent sub-tasks named only to the agent,
calls that consume each other's results kept apart."""

from __future__ import annotations

import pytest
import xgrammar
from xgrammar.testing import _is_grammar_accept_string

from button_ray.errors import ParseError
from button_ray.records import Composition, TaskBundle
from button_ray.top_down import simulate
from button_ray.top_down.agents import TrajectoryContext, parse_assistant_turn, tool_order
from tests.fakes import ScriptedLLM
from tests.oracles.top_down import respond
from tests.top_down.helpers import ADVICE, BUNDLE, LOCAL_TIME, WEATHER, call, call_text, cfg, make_item

W, T, A = call("get_weather", city="Paris"), call("get_local_time", city="Paris"), call(
    "suggest_activity", temperature=21.0, time="14:00"
)


def test_tool_order_is_a_shuffle_seeded_by_the_record_id() -> None:
    names = [f.name for f in BUNDLE.flat_functions]
    orders = {tuple(f.name for f in tool_order(f"item-{n}", BUNDLE.flat_functions, True)) for n in range(40)}
    assert len(orders) > 1 and all(sorted(o) == sorted(names) for o in orders)
    assert tool_order("item-3", BUNDLE.flat_functions, True) == tool_order("item-3", BUNDLE.flat_functions, True)
    assert [f.name for f in tool_order("item-3", BUNDLE.flat_functions, False)] == names


async def test_saved_system_message_uses_the_shuffled_order_and_hides_the_plan() -> None:
    items = [await simulate(make_item(n), ScriptedLLM(respond), cfg()) for n in range(12)]
    assert all(i.outcome == "emitted" for i in items), [i.rejection for i in items]
    systems = [i.messages[0]["content"] for i in items]
    positions = {tuple(s.index(f'"name": "{f.name}"') for f in BUNDLE.flat_functions) for s in systems}
    assert len(positions) > 1  # not always sub-task order
    for system in systems:
        assert "Sub-tasks" not in system and "Suggest an activity." not in system


def test_parallel_hint_names_the_independent_subtasks_to_the_agent_only() -> None:
    ctx = TrajectoryContext(item_id="x", bundle=BUNDLE, parallel=True, cfg=cfg())
    assert "Sub-tasks 1 and 2 do not depend on each other" in ctx.assistant_system
    assert "1. Get the weather in Paris. (functions: get_weather)" in ctx.assistant_system
    off = TrajectoryContext(item_id="x", bundle=BUNDLE, parallel=False, cfg=cfg())
    assert "Sub-tasks 1 and 2" not in off.assistant_system
    sequential = BUNDLE.model_copy(update={"composition": Composition(
        strategy="sequential", subtasks=BUNDLE.composition.subtasks[:2], composite_task="x"),
        "functions": ((WEATHER,), (LOCAL_TIME,))})  # fmt: skip
    seq = TrajectoryContext(item_id="x", bundle=sequential, parallel=True, cfg=cfg())
    assert "Sub-tasks 1 and 2" not in seq.assistant_system
    unhinted = TrajectoryContext(item_id="x", bundle=BUNDLE, parallel=True, cfg=cfg(parallel_hints=False))
    assert "Sub-tasks 1 and 2" not in unhinted.assistant_system


def test_calls_that_consume_each_other_cannot_share_a_turn() -> None:
    ctx = TrajectoryContext(item_id="x", bundle=BUNDLE, parallel=True, cfg=cfg())
    assert len(parse_assistant_turn(ctx, call_text(W, T)).calls) == 2  # independent
    for calls in ((W, A), (T, A), (W, T, A)):
        with pytest.raises(ParseError) as exc:
            parse_assistant_turn(ctx, call_text(*calls))
        assert exc.value.reason == "dependent_calls_in_one_turn" and not exc.value.malformed
    # the steered grammar does not even offer them together
    steered = TrajectoryContext(item_id="x", bundle=BUNDLE, parallel=True, cfg=cfg(steer_calls=True))
    grammar = xgrammar.Grammar.from_ebnf(steered.assistant_constraint.spec)
    assert _is_grammar_accept_string(grammar, call_text(W, T))
    assert not _is_grammar_accept_string(grammar, call_text(W, A))
    assert not _is_grammar_accept_string(grammar, call_text(T, A))


async def test_parallel_trajectories_call_independent_subtasks_together() -> None:
    item = await simulate(make_item(), ScriptedLLM(respond), cfg())
    assert item.outcome == "emitted"
    assert item.stats.calls_per_turn == (2, 1, 0)  # weather + time, then the activity, then the answer
    lone = TaskBundle(atomic_task=BUNDLE.atomic_task, composition=BUNDLE.composition,
                      functions=((WEATHER,), (), (ADVICE,)))  # fmt: skip
    item = await simulate(make_item(1, lone), ScriptedLLM(respond), cfg())
    assert item.outcome == "emitted" and item.stats.calls_per_turn == (1, 1, 0)

"""Steering (``MethodConfig.steer_calls``) and the small-model prose options
(``plain_prose``, ``user_openers``): grammars per turn, parser checks, whole trajectories."""

from __future__ import annotations

import json

import pytest
import xgrammar
from xgrammar.testing import _is_grammar_accept_string

from button_ray.errors import ParseError
from button_ray.records import TaskBundle
from button_ray.top_down import simulate
from button_ray.top_down.agents import TrajectoryContext, parse_assistant_turn, user_kickoff, user_request
from button_ray.top_down.grammar import assistant_grammar, user_message_grammar
from tests.fakes import ScriptedLLM
from tests.top_down.helpers import BUNDLE, FINAL, WEATHER, call, call_text, cfg, make_item, script, tight

FUNCTIONS = BUNDLE.flat_functions
W = call("get_weather", city="Paris")
T = call("get_local_time", city="Paris")
A = call("suggest_activity", temperature=21.0, time="14:00")


def accepts(spec: str, text: str) -> bool:
    return _is_grammar_accept_string(xgrammar.Grammar.from_ebnf(spec), text)


def grammar(plain_prose: bool = False, **kw) -> str:
    args = dict(parallel=True, max_calls_per_turn=3, strength="tight", tight=tight(plain_prose=plain_prose))
    return assistant_grammar(FUNCTIONS, **(args | kw))


def calls(*c: dict) -> str:
    return call_text(*c, thought="Next.")


def test_steered_grammar_offers_only_uncalled_functions_once_each() -> None:
    every = grammar(callable_names=[f.name for f in FUNCTIONS], allow_final=False)
    assert accepts(every, calls(W, T)) and accepts(every, calls(W, T, A))
    assert not accepts(every, calls(W, W))  # a repeat within the turn
    assert not accepts(every, calls(T, W))  # distinct calls come in function-list order
    assert not accepts(every, FINAL)  # no final before min_calls
    rest = grammar(callable_names=["get_local_time"], allow_final=True)
    assert not accepts(rest, calls(W)) and accepts(rest, calls(T)) and accepts(rest, FINAL)
    done = grammar(callable_names=[], allow_final=True)
    assert accepts(done, FINAL) and not accepts(done, calls(T))
    off = grammar(parallel=False, callable_names=["get_weather", "get_local_time"], allow_final=False)
    assert accepts(off, calls(T)) and not accepts(off, calls(W, T))
    capped = grammar(callable_names=[f.name for f in FUNCTIONS], allow_final=False, max_calls_per_turn=2)
    assert accepts(capped, calls(W, T)) and not accepts(capped, calls(W, T, A))
    with pytest.raises(ValueError):
        grammar(callable_names=[], allow_final=False)


def test_unsteered_grammar_is_unchanged() -> None:
    free = grammar()
    assert accepts(free, calls(W, W)) and accepts(free, calls(T, W)) and accepts(free, FINAL)


def test_steer_follows_calls_made() -> None:
    ctx = TrajectoryContext(item_id="x", bundle=BUNDLE, parallel=True, cfg=cfg(steer_calls=True))
    first = ctx.steer(frozenset(), 0)
    assert first.callable_names == ("get_weather", "get_local_time", "suggest_activity")
    assert not first.allow_final  # min_calls = 2
    after_one = ctx.steer(frozenset({"get_weather"}), 1)
    assert after_one.callable_names == ("get_local_time", "suggest_activity") and not after_one.allow_final
    after_two = ctx.steer(frozenset({"get_weather", "get_local_time"}), 2)
    assert after_two.callable_names == ("suggest_activity",) and after_two.allow_final
    all_done = ctx.steer(frozenset(f.name for f in FUNCTIONS), 3)
    assert all_done.callable_names == () and all_done.allow_final
    capped = TrajectoryContext(item_id="x", bundle=BUNDLE, parallel=True, cfg=cfg(steer_calls=True, steer_max_calls=2))
    assert capped.steer(frozenset(), 0).max_calls == 2
    assert capped.steer(frozenset({"get_weather"}), 1).max_calls == 1
    assert capped.steer(frozenset({"get_weather", "get_local_time"}), 2).callable_names == ()
    # One grammar per distinct steer, built once.
    assert ctx.assistant_constraint_for(after_one) is ctx.assistant_constraint_for(after_one)
    assert ctx.assistant_constraint_for(after_one) is not ctx.assistant_constraint_for(after_two)
    free = TrajectoryContext(item_id="x", bundle=BUNDLE, parallel=True, cfg=cfg())
    assert free.steer(frozenset({"get_weather"}), 5).callable_names is None


def test_parser_enforces_the_steer_without_constraints() -> None:
    ctx = TrajectoryContext(item_id="x", bundle=BUNDLE, parallel=True, cfg=cfg(steer_calls=True))
    steer = ctx.steer(frozenset({"get_weather"}), 1)
    for text, reason in ((calls(W), "function_already_called"), (calls(T, T), "function_already_called"),
                         (FINAL, "final_too_early")):  # fmt: skip
        with pytest.raises(ParseError) as exc:
            parse_assistant_turn(ctx, text, steer)
        assert exc.value.reason == reason and not exc.value.malformed
    assert parse_assistant_turn(ctx, calls(T), steer).calls[0].name == "get_local_time"


async def test_steering_ends_every_trajectory_without_repeats() -> None:
    # A model that always wants the same call: steering redirects it, then forces the end.
    def assistant(turn: int, attempt: int) -> str:
        if attempt == 0:
            return calls(W)  # repeats get_weather on every turn: retried after the first
        return [None, calls(T), calls(A), FINAL][turn]

    llm = ScriptedLLM(script(assistant))
    item = await simulate(make_item(), llm, cfg(steer_calls=True, parallel_ratio=0.0))
    assert item.outcome == "emitted", item.rejection
    assert [len(t.calls) for t in item.turns if t.role == "assistant"] == [1, 1, 1, 0]
    names = [c.name for t in item.turns for c in t.calls]
    assert len(names) == len(set(names)) == 3
    grammars = [r.constraint.spec for r in llm.by_role("assistant_agent")]
    # Turn 0 offers every function and no final; the last turn offers only the final answer.
    assert "finalblock" not in grammars[0].split("\n")[0] and "callblock" in grammars[0].split("\n")[0]
    assert grammars[-1].split("\n")[0] == "root ::= thought (finalblock)"


async def test_steering_rejects_a_task_with_too_few_functions_up_front() -> None:
    bundle = TaskBundle(
        atomic_task=BUNDLE.atomic_task, composition=BUNDLE.composition, functions=((WEATHER,), (), ())
    )
    llm = ScriptedLLM(script(lambda t, a: FINAL))
    item = await simulate(make_item(bundle=bundle), llm, cfg(steer_calls=True))
    assert (item.rejection.stage, item.rejection.reason) == ("simulation", "too_few_functions")
    assert llm.requests == []


def test_plain_prose_forbids_code_and_json_in_prose() -> None:
    plain = grammar(plain_prose=True)
    assert accepts(plain, "Checking the weather first, then the time. " + calls(W).split(" ", 1)[1])
    assert not accepts(plain, "Run `get()` first. " + calls(W).split(" ", 1)[1])
    assert not accepts(plain, 'Done. <final>{"temperature": 21}</final>')
    assert accepts(plain, "Done. <final>It is 21 degrees (sunny) in Paris: go for a walk!</final>")
    assert accepts(grammar(), 'Done. <final>{"temperature": 21}</final>')  # off by default
    user = user_message_grammar("tight", tight(plain_prose=True))
    assert accepts(user, "What's the weather in Paris?") and not accepts(user, "Use [this] please")


def test_user_openers_constrain_only_the_first_message() -> None:
    ctx = TrajectoryContext(item_id="x", bundle=BUNDLE, parallel=True, cfg=cfg(user_openers=("Hi, I need", "Please")))
    history = [user_kickoff(ctx)]
    first = user_request(ctx, history, 0).constraint.spec
    later = user_request(ctx, history, 1).constraint.spec
    assert accepts(first, "Hi, I need the weather in Paris.") and accepts(first, "Please check Paris.")
    assert not accepts(first, "Sure, I'm ready to assist.")
    assert accepts(later, "Sure, it is Paris.")
    assert json.dumps(first) != json.dumps(later)

"""The dialogue judge on the real engine: the embedded 135M model at configs/local.yaml's
strength writes a verdict that parses (slow: one engine start)."""

from __future__ import annotations

import pytest

from button_ray.config import load_config
from button_ray.records import JUDGE_AXES
from button_ray.top_down import judge, simulate
from tests.fakes import ScriptedLLM
from tests.llm.helpers import LOCAL_YAML, real_engine
from tests.top_down.helpers import FINAL, call, call_text, make_item, script

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


async def test_the_embedded_model_writes_a_verdict_that_parses() -> None:
    # The dialogue comes from a scripted simulation (the judge's input is what matters
    # here, not how the 135M model plays the agents); only the judge runs on the engine.
    cfg = load_config(LOCAL_YAML, ["method.judge.enabled=true", "method.judge.min_score=1"]).resolved_method()
    turns = [call_text(call("get_weather", city="Paris"), call("get_local_time", city="Paris")),
             call_text(call("suggest_activity", temperature=21.0, time="14:00")), FINAL]
    scripted = await simulate(make_item(), ScriptedLLM(script(lambda t, a: turns[t])),
                              cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"enabled": False})}))
    assert scripted.outcome == "emitted", scripted.rejection
    item = make_item(1)
    async with real_engine() as engine:
        passed = await judge.judge_dialogue(item, scripted.messages, engine, cfg)
    # The JSON schema is the constraint: the verdict parses on the first attempt, and
    # min_score 1 lets any verdict pass.
    assert passed, item.rejection
    assert item.usage_for("dialogue_judge").calls == 1
    scores = item.judge
    assert scores is not None and scores.reason
    assert all(1 <= getattr(scores, axis) <= 5 for axis in JUDGE_AXES)
    print(f"verdict of the 135M judge: {scores}")

"""The dialogue judge (method.judge): scripted verdicts, thresholds, the columns, the
config and its fingerprint, the funnel and the card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from button_ray import summary as summ
from button_ray.config import JudgeConfig, MethodConfig, PoolConfig, RunConfig, load_config
from button_ray.llm.contract import LLMRequest
from button_ray.records import ACCEPTED_SCHEMA, REJECTED_SCHEMA, item_row, to_table
from button_ray.top_down import judge, simulate
from tests.fakes import ScriptedLLM
from tests.top_down.helpers import FINAL, call, call_text, cfg, make_item, script

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
LINEAGE = {"config_fingerprint": "f", "models": {}, "engine_version": "e", "template_hashes": {}, "seed": 0,
           "shard": "s"}
JUDGE_COLUMNS = ("judge_helpfulness", "judge_correctness", "judge_naturalness", "judge_reason")


def _turns(turn: int, attempt: int) -> str:
    return [call_text(call("get_weather", city="Paris"), call("get_local_time", city="Paris")),
            call_text(call("suggest_activity", temperature=21.0, time="14:00")), FINAL][turn]


def _verdict(helpfulness: int, correctness: int, naturalness: int, reason: str = "Checked.") -> str:
    return json.dumps({"reason": reason, "helpfulness": helpfulness, "correctness": correctness,
                       "naturalness": naturalness})


def _llm(verdict, assistant=_turns) -> ScriptedLLM:  # noqa: ANN001 - a string, or a function of the request
    agents = script(assistant)

    def handler(request: LLMRequest) -> str:
        if request.role == "dialogue_judge":
            return verdict(request) if callable(verdict) else verdict
        return agents(request)

    return ScriptedLLM(handler)


def _on(**judge: object) -> MethodConfig:
    return cfg(judge=JudgeConfig(enabled=True, **judge))


def _row(item) -> dict:  # noqa: ANN001
    schema = ACCEPTED_SCHEMA if item.outcome == "emitted" else REJECTED_SCHEMA
    return to_table([item_row(item, LINEAGE)], schema).to_pylist()[0]


async def test_low_scores_reject_the_dialogue_and_keep_the_scores() -> None:
    llm = _llm(_verdict(4, 2, 5, "The answer gets the temperature wrong."))
    item = await simulate(make_item(), llm, _on())
    assert (item.rejection.stage, item.rejection.reason) == ("dialogue_judge", "judge_low_score")
    assert item.rejection.detail.startswith("correctness 2 < 3")
    row = _row(item)
    assert [row[c] for c in JUDGE_COLUMNS] == [4, 2, 5, "The answer gets the temperature wrong."]
    assert len(llm.by_role("dialogue_judge")) == 1
    assert summ.item_stats(item)["rejected"] == {"dialogue_judge": {"judge_low_score": 1}}


async def test_high_scores_accept_the_dialogue_and_store_the_scores() -> None:
    llm = _llm(_verdict(5, 4, 3))
    item = await simulate(make_item(), llm, _on())
    assert item.outcome == "emitted", item.rejection
    assert [_row(item)[c] for c in JUDGE_COLUMNS] == [5, 4, 3, "Checked."]
    (request,) = llm.by_role("dialogue_judge")
    # The judge reads the saved dialogue (no system prompt), its tool results included.
    prompt = request.messages[0].content
    assert "[user] Hi! What's the weather" in prompt and '"results": {"temperature": 21.0' in prompt
    assert "You are an expert in using functions" not in prompt
    assert request.request_id == f"{item.item_id}/judge#0" and request.affinity_key == item.item_id
    assert item.usage_for("dialogue_judge").calls == 1
    stats = summ.item_stats(item)
    assert stats["judge"]["judged"] == 1 and stats["judge"]["correctness"] == [0, 0, 0, 1, 0]
    assert summ.as_near_duplicate(stats)["judge"]["judged"] == 0


async def test_the_judge_is_off_by_default_and_its_columns_are_null() -> None:
    assert MethodConfig().judge.enabled is False
    llm = _llm(_verdict(1, 1, 1))
    item = await simulate(make_item(), llm, cfg())
    assert item.outcome == "emitted" and item.judge is None
    assert llm.by_role("dialogue_judge") == []
    assert [_row(item)[c] for c in JUDGE_COLUMNS] == [None] * 4
    assert summ.judge_scores(summ.item_stats(item))["judged"] == 0


async def test_an_unparseable_verdict_is_retried_then_its_own_reason() -> None:
    llm = _llm("I think this dialogue is quite good.")
    item = await simulate(make_item(), llm, _on())
    assert (item.rejection.stage, item.rejection.reason) == ("dialogue_judge", "judge_unparseable")
    assert item.rejection.detail.startswith("bad_json")
    assert len(llm.by_role("dialogue_judge")) == 1 + cfg().retries
    assert item.judge is None and _row(item)["judge_helpfulness"] is None


async def test_a_retried_verdict_that_parses_counts() -> None:
    answers = iter(['{"reason": "ok", "helpfulness": 9, "correctness": 4, "naturalness": 4}', _verdict(4, 4, 4)])
    llm = _llm(lambda request: next(answers))
    item = await simulate(make_item(), llm, _on())
    assert item.outcome == "emitted" and item.judge.helpfulness == 4
    usage = item.usage_for("dialogue_judge")
    assert (usage.calls, usage.unparseable) == (2, 1)


async def test_the_judge_never_runs_on_a_rejected_dialogue() -> None:
    # One call only: the filter's min_calls rejects the dialogue before the judge.
    llm = _llm(_verdict(5, 5, 5), assistant=lambda t, a: [call_text(call("get_weather", city="Paris")), FINAL][t])
    item = await simulate(make_item(), llm, _on())
    assert (item.rejection.stage, item.rejection.reason) == ("trajectory_filter", "too_few_calls")
    assert llm.by_role("dialogue_judge") == []


async def test_the_mean_threshold() -> None:
    item = await simulate(make_item(), _llm(_verdict(3, 3, 4)), _on(min_mean=3.5))
    assert item.rejection.reason == "judge_low_score" and "mean 3.33 < 3.5" in item.rejection.detail
    item = await simulate(make_item(1), _llm(_verdict(3, 4, 4)), _on(min_mean=3.5))
    assert item.outcome == "emitted"


@pytest.mark.parametrize("text, reason", [
    ("", "empty_output"),
    ('{"reason": "x", "helpfulness": 0, "correctness": 3, "naturalness": 3}', "schema_mismatch"),
    ('{"reason": "x", "helpfulness": true, "correctness": 3, "naturalness": 3}', "schema_mismatch"),
    ('{"reason": "x", "helpfulness": 3}', "schema_mismatch"),
    ("[3, 3, 3]", "schema_mismatch"),
])
def test_parse_rejects_what_is_no_verdict(text: str, reason: str) -> None:
    from button_ray.errors import ParseError
    from button_ray.llm.contract import LLMResponse

    with pytest.raises(ParseError) as exc:
        judge.parse(LLMResponse(text=text, finish_reason="stop", prompt_tokens=1, completion_tokens=1))
    assert exc.value.reason == reason


def test_the_constraint_follows_the_strength_and_compiles() -> None:
    tight = judge.request("i", [{"role": "user", "content": "hi"}], _on())
    assert tight.constraint.kind == "json_schema"
    assert tight.constraint.spec["properties"]["reason"]["maxLength"] == JudgeConfig().reason_max_chars
    assert list(tight.constraint.spec["properties"]) == ["reason", "helpfulness", "correctness", "naturalness"]
    structure = judge.request("i", [{"role": "user", "content": "hi"}], MethodConfig(judge=JudgeConfig(enabled=True)))
    assert "maxLength" not in structure.constraint.spec["properties"]["reason"]
    off = judge.request("i", [{"role": "user", "content": "hi"}], cfg(constraints={"dialogue_judge": "off"}))
    assert off.constraint is None
    xgrammar = pytest.importorskip("xgrammar")
    xgrammar.Grammar.from_json_schema(json.dumps(tight.constraint.spec))


@pytest.mark.parametrize("field, value", [("min_score", 0), ("min_score", 6), ("min_mean", 0.5),
                                          ("min_mean", 5.5), ("reason_max_chars", 5)])
def test_judge_thresholds_are_range_checked(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as exc:
        load_config(None, [f"method.judge.{field}={value}"])
    assert exc.value.errors()[0]["loc"] == ("method", "judge", field)


def test_a_judge_on_needs_a_pool_serving_it() -> None:
    roles = tuple(r for r in PoolConfig().roles if r != "dialogue_judge")
    RunConfig(pools=(PoolConfig(roles=roles),))  # the judge off: its role need not be served
    with pytest.raises(ValidationError, match="no pool serves roles \\['dialogue_judge'\\]"):
        RunConfig(pools=(PoolConfig(roles=roles),), method=MethodConfig(judge=JudgeConfig(enabled=True)))


def test_the_fingerprint_changes_with_the_judge_settings() -> None:
    base = RunConfig().fingerprint()
    for override in ("method.judge.enabled=true", "method.judge.min_score=4", "method.judge.min_mean=3.5",
                     "method.judge.reason_max_chars=200", "method.sampling.dialogue_judge.temperature=0.5"):
        assert load_config(None, [override]).fingerprint() != base, override
    assert RunConfig().fingerprint({"dialogue_judge.j2": "a"}) != RunConfig().fingerprint({"dialogue_judge.j2": "b"})


def test_off_in_the_local_config_on_in_the_cluster_configs() -> None:
    assert load_config(CONFIGS / "local.yaml").method.judge.enabled is False
    clusters = sorted(CONFIGS.glob("cluster-*.yaml"))
    assert clusters and all(load_config(path).method.judge.enabled for path in clusters)


def test_the_funnel_puts_the_judge_after_the_filter_and_the_card_shows_its_scores() -> None:
    from button_ray.card import DISTRIBUTIONS, RunStats, card_markdown, judge_rows

    stats = summ.new_stats()
    stats.update(items=3, emitted=2, rejected={"dialogue_judge": {"judge_low_score": 1}})
    stats["judge"].update(judged=2, helpfulness=[0, 0, 0, 1, 1], correctness=[0, 0, 1, 1, 0],
                          naturalness=[0, 0, 0, 0, 2])
    stages = [row["stage"] for row in summ.funnel(stats)]
    assert stages.index("trajectory_filter") + 1 == stages.index("dialogue_judge") == stages.index("dedup") - 1
    scores = summ.judge_scores(stats)
    assert scores["mean"] == {"helpfulness": 4.5, "correctness": 3.5, "naturalness": 5.0}
    run = RunStats(uri="x", finished=True, shards=1, rows=2, stats=stats, funnel=summ.funnel(stats), lineage={},
                   values={k: np.zeros(0, np.int64) for k in DISTRIBUTIONS}, parallel_trajectories=0)
    assert judge_rows(run)[0] == ["helpfulness", "4.50", "0", "0", "0", "1", "1"]
    assert "## Judge scores" in card_markdown(run)
    off = summ.new_stats()
    assert judge_rows(RunStats(**{**run.__dict__, "stats": off})) == []

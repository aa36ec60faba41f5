import pytest

from button_ray import summary
from button_ray.records import Scenario, StageUsage, WorkItem


def _item(i, outcome, stage=None, reason=None):
    item = WorkItem(item_id=f"i{i}", scenario=Scenario(scenario_id="s", text="t"), slot=i, seed=i)
    item.usage["atomic_task"] = StageUsage(calls=2, unparseable=1, prompt_tokens=10, completion_tokens=5)
    if outcome == "emitted":
        item.outcome = "emitted"
    elif outcome == "rejected":
        item.reject(stage, reason)
    else:
        item.fail("LLMUnavailableError: gone")
    return item


def test_funnel_adds_up_and_merges_across_shards():
    a, b = summary.new_stats(), summary.new_stats()
    for item in (_item(0, "emitted"), _item(1, "rejected", "functions", "bad_json")):
        summary.add_item(a, item)
    for item in (_item(2, "rejected", "trajectory_filter", "repeated_call"), _item(3, "failed")):
        summary.add_item(b, item)
    total = summary.merge([a, b])
    rows = {r["stage"]: r for r in summary.funnel(total)}
    assert rows["atomic_task"]["in"] == 3  # the failed item is counted apart
    assert rows["functions"] == {"stage": "functions", "in": 3, "accepted": 2, "rejected": 1,
                                 "reasons": {"bad_json": 1}}
    assert rows["trajectory_filter"]["accepted"] == 1 == total["emitted"]
    assert total["errors"] == {"LLMUnavailableError": 1}
    assert summary.totals(total) == {"calls": 8, "unparseable": 4, "prompt_tokens": 40, "completion_tokens": 20}
    built = summary.build_summary(total, 10.0, total)
    assert built["unparseable_share"] == 0.5
    assert built["items"] == built["emitted"] + built["rejected"] + built["failed"]


def test_funnel_detects_lost_items():
    stats = summary.new_stats()
    summary.add_item(stats, _item(0, "emitted"))
    stats["items"] += 1  # an item that never reached an outcome
    with pytest.raises(AssertionError, match="does not add up"):
        summary.funnel(stats)


def test_progress_heartbeat_prints_while_no_item_finishes():
    import io
    import time

    out = io.StringIO()
    progress = summary.Progress(total_items=5, interval=0.05, out=out, probe=lambda: "engines: 3 in flight")
    progress.start_heartbeat()
    time.sleep(0.3)
    progress.stop_heartbeat()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3
    assert all("items 0/5" in line and line.endswith("engines: 3 in flight") for line in lines)
    stopped = len(lines)
    time.sleep(0.15)
    assert len(out.getvalue().splitlines()) == stopped


def test_progress_line_survives_a_failing_probe():
    import io

    def probe():
        raise TimeoutError("replica busy")

    out = io.StringIO()
    progress = summary.Progress(total_items=1, interval=60, out=out, probe=probe)
    progress.update(summary.item_stats(_item(0, "emitted")), force=True)
    assert "items 1/1 | emitted 1" in out.getvalue()


def test_shape_of_emitted_dialogues():
    from button_ray.records import TrajectoryStats
    from tests.top_down.helpers import ADVICE, BUNDLE, WEATHER

    def emitted(i, parallel, per_turn, functions=BUNDLE.functions):
        item = _item(i, "emitted")
        item.parallel = parallel
        item.bundle = BUNDLE.model_copy(update={"functions": functions})
        item.stats = TrajectoryStats(assistant_turns=len(per_turn), calls=sum(per_turn), calls_per_turn=per_turn,
                                     clarifications=0, prompt_tokens=1, completion_tokens=1)
        return item

    a, b = summary.new_stats(), summary.new_stats()
    summary.add_item(a, emitted(0, True, (2, 1, 0)))
    summary.add_item(b, emitted(1, False, (1, 1, 0), ((WEATHER,), (), (ADVICE,))))
    shape = summary.shape(summary.merge([a, b]))
    assert shape["trajectories"] == 2 and shape["calls"] == 5 and shape["calling_turns"] == 4
    assert shape["calls_per_calling_turn"] == 1.25 and shape["parallel_calls_per_calling_turn"] == 1.5
    assert (shape["subtasks"], shape["subtasks_without_function"]) == (6, 1)
    # stats committed before the shape was counted merge as zeros
    old = {k: v for k, v in summary.new_stats().items() if k != "shape"}
    assert summary.shape(summary.merge([old]))["trajectories"] == 0

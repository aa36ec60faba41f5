"""The planning arithmetic (button_ray/plan.py) on crafted summaries: intervals, the
measurement, the estimate, the cluster fit, the rounds of a run to a target. No Ray."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

from button_ray import plan
from button_ray.config import PoolConfig, load_config

ROOT = Path(__file__).parent.parent


def test_wilson_interval_matches_the_textbook_values():
    assert plan.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = plan.wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(3.8415 / 13.8415, abs=1e-4)  # z^2 / (n + z^2)
    assert plan.wilson(10, 10)[1] == pytest.approx(1.0)
    assert plan.wilson(0, 0) == (0.0, 1.0)  # nothing measured: anything is possible


def test_a_cost_per_accepted_has_a_bootstrap_range_over_items():
    # Every item accepted at the same cost: every resample gives the same ratio.
    assert plan.per_accepted([100] * 8, [1] * 8) == {"expected": 100.0, "low": 100.0, "high": 100.0}
    # Accepted items cost more than rejected ones; the range comes from resampling whole items.
    costs, accepted = [50, 400, 60, 500, 40, 450, 70, 380], [0, 1, 0, 1, 0, 1, 0, 1]
    first = plan.per_accepted(costs, accepted)
    assert first["expected"] == sum(costs) / 4
    assert 0 < first["low"] < first["expected"] < first["high"] < math.inf
    assert plan.per_accepted(costs, accepted) == first  # seeded: the same sample, the same range
    # A resample without an accepted item costs without bound: with 1 of 8 accepted, often.
    assert plan.per_accepted([10] * 8, [1] + [0] * 7)["high"] == math.inf
    assert plan.per_accepted([10, 10], [0, 0]) == {"expected": math.inf, "low": math.inf, "high": math.inf}


def _summary(items=10, accepted=5, stream_time_s=100.0, usage=None):
    usage = usage or {
        "atomic_task": {"calls": 20, "unparseable": 0, "prompt_tokens": 2000, "completion_tokens": 200},
        "assistant_agent": {"calls": 80, "unparseable": 2, "prompt_tokens": 8000, "completion_tokens": 800},
    }
    return {"items": items, "emitted": accepted, "rejected": items - accepted, "failed": 0, "usage_by_role": usage,
            "stream_time_s": stream_time_s, "engine_start_s": 60.0}


def _costs(items=10, accepted=5, prompt=1000, completion=100, calls=10):
    """Every item the same cost: the ranges then come from the yield alone."""
    return {"accepted": [1] * accepted + [0] * (items - accepted), "llm_calls": [calls] * items,
            "prompt_tokens": [prompt] * items, "completion_tokens": [completion] * items}


POOL = PoolConfig(name="main", replicas=2, num_gpus=1)
METRICS = {"main": [{"prefix_cache_queries": 1000, "prefix_cache_hits": 600, "completion_tokens": 600},
                    {"prefix_cache_queries": 1000, "prefix_cache_hits": 200, "completion_tokens": 400}]}


def test_measure_reads_the_funnel_tokens_calls_and_engine_metrics():
    m = plan.measure(_summary(), _costs(), [POOL], METRICS)
    assert m["accepted_per_item"] == 0.5
    assert m["accepted_per_item_range"] == list(plan.wilson(5, 10))
    assert m["tokens_per_accepted"]["expected"] == 1100 * 10 / 5
    assert m["llm_calls_per_accepted"]["expected"] == 20
    assert (m["llm_calls_per_item"], m["tokens_per_item"], m["completion_tokens_per_item"]) == (10, 1100, 100)
    assert m["by_role"]["assistant_agent"] == {"llm_calls": 16, "prompt_tokens": 1600, "completion_tokens": 160}
    assert m["prefix_cache_hit_rate"] == 0.4
    pool = m["pools"]["main"]
    # 1000 completion tokens of the pool's roles over 100 s, spread over its 2 replicas.
    assert pool["completion_tokens_per_s_per_replica"] == 5.0
    assert pool["completion_tokens_per_s_by_replica"] == [6.0, 4.0]
    # Equal costs per item: the token range is 1100 over the resampled yields, inside
    # the extremes a resample of 10 items can take (10 accepted; 1 accepted).
    tokens = m["tokens_per_accepted"]
    assert 1100 < tokens["low"] < 2200 < tokens["high"] < 11000


def test_estimate_scales_the_sample_to_the_target():
    m = plan.measure(_summary(), _costs(), [POOL], METRICS)
    est = plan.estimate(m, target=1000, slots=2, scenarios_available=336)
    assert est["items_needed"]["expected"] == 2000
    assert est["scenarios_needed"]["expected"] == 1000
    assert est["total_tokens"]["expected"] == 1000 * 2200
    # 200 completion tokens per accepted x 1000 at 5 tok/s per replica.
    hours = 1000 * 200 / 5 / 3600
    assert est["estimated_replica_hours"]["expected"] == pytest.approx(hours)
    assert est["estimated_gpu_hours"]["expected"] == pytest.approx(hours)  # 1 GPU per replica
    assert est["estimated_wall_hours"]["expected"] == pytest.approx(hours / 2)  # 2 replicas
    for key in ("items_needed", "total_tokens", "estimated_replica_hours", "estimated_wall_hours"):
        assert est[key]["low"] < est[key]["expected"] < est[key]["high"], key
    assert est["scenario_pool"] == {"scenarios": 336, "items": 672, "enough": False, "expected_accepted_at_most": 336}
    given = plan.estimate(m, target=1000, slots=2, scenarios_available=336, throughput=50.0)
    assert given["estimated_replica_hours"]["expected"] == pytest.approx(hours / 10)
    assert given["completion_tokens_per_s_per_replica"] == {"main": 50.0}


def test_estimate_with_two_pools_charges_each_its_roles():
    usage = {"atomic_task": {"calls": 10, "unparseable": 0, "prompt_tokens": 100, "completion_tokens": 300},
             "assistant_agent": {"calls": 10, "unparseable": 0, "prompt_tokens": 100, "completion_tokens": 700}}
    small = PoolConfig(name="small", roles=("atomic_task",), replicas=1, num_gpus=1)
    big = PoolConfig(name="big", roles=("assistant_agent",), replicas=2, num_gpus=4,
                     engine={"tensor_parallel_size": 4})
    m = plan.measure(_summary(usage=usage), _costs(), [small, big], {})
    assert m["pools"]["small"]["completion_tokens_per_s_per_replica"] == 3.0
    assert m["pools"]["big"]["completion_tokens_per_s_per_replica"] == 3.5
    assert m["prefix_cache_hit_rate"] is None  # the engines reported none
    est = plan.estimate(m, target=100, slots=1, scenarios_available=1000)
    small_h, big_h = 100 * 200 * 0.3 / 3.0 / 3600, 100 * 200 * 0.7 / 3.5 / 3600
    assert est["estimated_replica_hours"]["expected"] == pytest.approx(small_h + big_h)
    assert est["estimated_gpu_hours"]["expected"] == pytest.approx(small_h * 1 + big_h * 4)
    assert est["estimated_wall_hours"]["expected"] == pytest.approx(max(small_h, big_h / 2))


def test_a_sample_that_accepted_nothing_gives_unbounded_costs_written_as_null():
    m = plan.measure(_summary(accepted=0), _costs(accepted=0), [POOL], METRICS)
    est = plan.estimate(m, target=10, slots=2, scenarios_available=5)
    doc = plan.plan_document(m, est, sample={"items": 10, "accepted": 0}, notes=["x"])
    assert doc["tokens_per_accepted"] is None and doc["estimated_gpu_hours"] is None
    assert doc["tokens_per_item"] == 1100  # what an item costs is known all the same
    assert doc["range"]["items_needed"][0] > 0  # the yield's upper bound still bounds the items from below
    json.dumps(doc, allow_nan=False)
    out = io.StringIO()
    plan.render(doc, out)
    assert "unbounded" in out.getvalue()


def test_plan_document_has_the_required_keys_as_numbers_and_ranges():
    m = plan.measure(_summary(), _costs(), [POOL], METRICS)
    est = plan.estimate(m, target=1000, slots=2, scenarios_available=336)
    doc = plan.plan_document(m, est, sample={"items": 10, "accepted": 5}, notes=[])
    for key in ("tokens_per_accepted", "llm_calls_per_accepted", "accepted_per_item", "estimated_replica_hours",
                "estimated_gpu_hours", "estimated_wall_hours"):
        assert isinstance(doc[key], float), key
        low, high = doc["range"][key]
        assert low <= doc[key] <= high, key
    assert doc["range"]["method"] == plan.RANGE_METHOD and doc["target_accepted"] == 1000
    out = io.StringIO()
    plan.render(doc, out)
    text = out.getvalue()
    assert "Estimate for 1,000 accepted trajectories" in text and "estimated_gpu_hours" in text
    assert "assistant_agent" in text


def test_the_throughput_assumption_says_where_the_rate_comes_from():
    m = plan.measure(_summary(), _costs(), [POOL], METRICS)
    measured = plan.throughput_assumption(m, None, {"CPU": 2.0}, ["embedded"])
    assert "measured in the sample" in measured and "no GPU" in measured
    given = plan.throughput_assumption(m, 2500.0, {"CPU": 2.0}, ["embedded"])
    assert "2500 completion tokens/s per replica" in given and "not measured" in given and "embedded" in given


# -- the cluster ---------------------------------------------------------------------------

def test_the_embedded_default_fits_two_cores():
    cfg = load_config(ROOT / "configs" / "local.yaml")
    demand = plan.resource_demand(cfg)
    assert sum(res.get("CPU", 0) * n for _, res, n in demand) == pytest.approx(1 + 2 * 0.25 + 0.05)
    assert plan.cluster_fit(demand, [{"CPU": 2.0}]) is None


def test_a_pool_asking_for_gpus_on_a_cpu_machine_is_one_sentence():
    cfg = load_config(ROOT / "configs" / "local.yaml", ["pools.0.num_gpus=1"])
    message = plan.cluster_fit(plan.resource_demand(cfg), [{"CPU": 2.0}])
    assert message == ("this cluster cannot run the config: it needs 1 GPU in all (pool 'main' replicas: 1 x 1 GPU) "
                       "and has 0 GPU; add nodes (cluster/README.md), or lower pools[].replicas, num_gpus or num_cpus")


def test_replicas_must_fit_whole_on_one_node():
    cfg = load_config(ROOT / "configs" / "cluster-70b.yaml")  # 2 replicas x 4 GPU, 8 CPU
    demand = plan.resource_demand(cfg)
    assert plan.cluster_fit(demand, [{"GPU": 4, "CPU": 32}, {"GPU": 4, "CPU": 32}]) is None
    # Eight GPUs in all, but no node holds a replica's four.
    message = plan.cluster_fit(demand, [{"GPU": 2, "CPU": 16}] * 4)
    assert message is not None and "each needs 4 GPU and 8 CPU on one node" in message
    assert "only 0 of the 2 fit" in message and "the largest node has 2 GPU" in message
    assert "cannot run" in plan.cluster_fit(demand, [{"GPU": 4, "CPU": 64}])  # 4 of the 8 GPUs


# -- the scenario pool and the rounds ----------------------------------------------------

def test_the_pool_is_short_only_when_every_item_accepted_could_not_reach_the_target():
    assert plan.pool_shortfall(672, 336, 2) is None
    message = plan.pool_shortfall(1_000_000, 336, 2)
    assert message is not None and "336 scenarios x 2 slots = 672 distinct items" in message


def test_rounds_start_from_the_least_work_that_could_reach_the_target():
    # Nothing measured: as if every item were accepted.
    assert plan.round_scenarios(100, 0, 0, slots=2, shard_size=8) == 50
    # 50 of 100 accepted so far: the 50 missing at the yield's upper bound, not its point value.
    high = plan.wilson(50, 100)[1]
    assert plan.round_scenarios(100, 50, 100, slots=2, shard_size=8) == math.ceil(50 / (high * 2)) < 50
    # A few missing: one shard, not a sliver.
    assert plan.round_scenarios(100, 99, 200, slots=2, shard_size=8) == 8
    assert plan.round_scenarios(100, 100, 200, slots=2, shard_size=8) == 0


def test_a_resume_warns_when_the_measured_yield_cannot_reach_the_target():
    assert plan.expected_shortfall(100, 10, 20, items_left=200) is None  # 10 + 100 expected
    warning = plan.expected_shortfall(100, 10, 40, items_left=200)  # 10 + 50 expected
    assert warning is not None and "about 50 more" in warning and "90 still missing" in warning
    assert plan.expected_shortfall(100, 0, 0, items_left=10) is None  # nothing measured yet

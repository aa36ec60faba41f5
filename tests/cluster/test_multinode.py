"""The pipeline on several Ray nodes, and the loss of one of them mid-run.

Runs in its own process (tests/cluster/pipeline_run.py): a process joins one Ray
cluster, and the rest of the suite shares a single-node one.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ray


def test_a_worker_node_lost_mid_run_leaves_every_record_exactly_once(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tests.cluster.pipeline_run", str(tmp_path)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    out = json.loads(line)
    # Replicas are pinned one per worker node by their resources; the stage actors spread.
    assert out["placement"]["LLMReplica"] == ["a", "b"], out["placement"]
    stages = out["placement"].get("BottomUpStage", []) + out["placement"].get("SimulationStage", [])
    assert stages and "head" not in stages, out["placement"]
    assert 2 <= out["committed_before_loss"] < 12, "the node was removed too late to matter"
    # The fault happened: the node is gone, and with it a replica and stage actors.
    assert out["alive_nodes"] == 2 and out["lost_actors"] >= 3, out
    # The job finished on the remaining node, or failed and one resume finished it.
    if not out["first_attempt"]["finished"]:
        assert out["resumed"] and out["first_attempt"]["error"], out
    assert out["committed"] == out["expected"], "a record was lost or committed twice"

"""Run in its own process by tests/cluster/test_multinode.py: the whole pipeline on a
multi-node Ray cluster on this machine (ray.cluster_utils.Cluster), with the scripted
engine, replicas and stage actors pinned to the worker nodes by custom resources; then
one worker node is removed mid-run.

Usage: python -m tests.cluster.pipeline_run OUTPUT_DIR; prints one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import ray
from ray.cluster_utils import Cluster

from button_ray.pipeline import run_generate
from tests.storage import helpers as h


def _placement(names: dict[str, str]) -> dict[str, list[str]]:
    """Alive actors of ours by class, as the names of their nodes."""
    return {kind: sorted(names.get(a["Address"]["NodeID"], "head") for a in h.actors(kind, "ALIVE"))
            for kind in ("LLMReplica", "BottomUpStage", "SimulationStage")}


def main(output_dir: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = {name: cluster.add_node(num_cpus=2, resources={"llm": 1, "pipe": 4}) for name in ("a", "b")}
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}},
             logging_level="WARNING")
    names = {n.node_id: name for name, n in nodes.items()}
    run = h.cfg(os.path.join(output_dir, "run"), n=24, shard_size=2, slots=1, in_flight=4, latency_s=0.05)
    run = run.model_copy(update={
        "pools": (run.pools[0].model_copy(update={"replicas": 2, "resources": {"llm": 1}}),),
        "runtime": run.runtime.model_copy(update={"bottom_up_actors": 2, "simulation_actors": 2,
                                                  "actor_resources": {"pipe": 1}}),
    })
    out: dict = {"expected": h.expected_ids(run)}
    done: dict = {}

    def first_attempt() -> None:
        try:
            done["summary"] = run_generate(run)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            done["error"] = f"{type(exc).__name__}: {exc}"[:2000]

    worker = threading.Thread(target=first_attempt, daemon=True)
    worker.start()
    markers = os.path.join(output_dir, "run", "_commits")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (os.path.isdir(markers) and len(os.listdir(markers)) >= 2):
        time.sleep(0.2)
    out["placement"] = _placement(names)
    out["committed_before_loss"] = len(os.listdir(markers)) if os.path.isdir(markers) else 0
    on_b = {a["ActorID"] for kind in ("LLMReplica", "BottomUpStage", "SimulationStage")
            for a in h.actors(kind, "ALIVE") if names.get(a["Address"]["NodeID"]) == "b"}
    cluster.remove_node(nodes["b"])
    # The fault happened: every actor that lived on node b leaves the ALIVE state.
    out["lost_actors"] = len(h.wait_for(
        lambda: on_b if all(h.actor_info(i)["State"] != "ALIVE" or h.actor_info(i)["NumRestarts"] for i in on_b)
        else None, 120, "the actors of the removed node to die"))
    out["alive_nodes"] = sum(1 for n in ray.nodes() if n["Alive"])
    worker.join(600)
    out["first_attempt"] = {"finished": "summary" in done, "error": done.get("error")}
    out["resumed"] = False
    if "summary" not in done:
        out["resumed"] = True
        run_generate(run)
    out["committed"] = h.committed_ids(run.output.uri)
    print(json.dumps(out), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])

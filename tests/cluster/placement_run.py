"""Run in its own process by tests/cluster/test_placement.py: a multi-node Ray cluster on
this machine (ray.cluster_utils.Cluster) whose nodes declare GPUs they do not have.

Usage: python -m tests.cluster.placement_run CASE; prints one JSON line with the outcome.
Fake GPUs are resources Ray schedules by; the OracleEngine behind the replica never
touches a device, so placement and start-up are what is exercised.
"""

from __future__ import annotations

import json
import os
import sys

import ray
from ray.cluster_utils import Cluster

from button_ray.config import EngineConfig, PoolConfig
from button_ray.errors import EngineStartError
from button_ray.llm.replica import placement_groups, start_pools, stop_pools


def _pool(name: str, gpus: int, replicas: int = 1, start_timeout_s: float = 60, placement: str = "actor",
          pipeline: int = 1) -> PoolConfig:
    engine = EngineConfig(tensor_parallel_size=gpus // pipeline,
                          extra={"pipeline_parallel_size": pipeline} if pipeline > 1 else {})
    return PoolConfig(name=name, replicas=replicas, num_gpus=gpus, num_cpus=1, start_timeout_s=start_timeout_s,
                      placement=placement, engine_class="tests.fakes:OracleEngine", engine=engine)


CASES = {
    # A TP=4 replica and a TP=1 replica: each on a node with enough GPUs.
    "tp4": [_pool("big", 4), _pool("small", 1)],
    # No node has 8 GPUs.
    "infeasible": [_pool("huge", 8, start_timeout_s=5)],
    # Two TP=4 replicas, one 4-GPU node: the second waits for resources that are taken.
    "busy": [_pool("big", 4, replicas=2, start_timeout_s=5)],
    # A TP=4 replica in a placement group packed on one node: the 4 GPU bundles on gpu4.
    "pg_pack": [_pool("big", 4, placement="STRICT_PACK")],
    # Pipeline parallel over two nodes: each GPU bundle on its own node.
    "pg_spread": [_pool("pp", 2, placement="STRICT_SPREAD", pipeline=2)],
    # Two GPU bundles packed on one node, but no node has room once the first replica took it.
    "pg_busy": [_pool("big", 4, replicas=2, placement="STRICT_PACK", start_timeout_s=5)],
}


def main(case: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    nodes = {"gpu1": cluster.add_node(num_cpus=2, num_gpus=1), "gpu4": cluster.add_node(num_cpus=2, num_gpus=4)}
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}},
             logging_level="WARNING")
    node_names = {n.node_id: name for name, n in nodes.items()}
    out: dict = {"case": case}
    try:
        pools, infos = start_pools(CASES[case])
        out["placed"] = {}
        for name, (_, handles) in pools.items():
            for h in handles:
                info = ray.get(h.ready.remote())
                out["placed"][f"{name}/{info['index']}"] = {"node": node_names.get(info["node_id"], "head"),
                                                            "gpu_ids": info["gpu_ids"]}
            for i, group in enumerate(placement_groups(name)):
                table = ray.util.placement_group_table(group)
                out["placed"][f"{name}/{i}"]["bundles"] = [
                    {"node": node_names.get(table["bundles_to_node_id"][b], "head"), **bundle}
                    for b, bundle in table["bundles"].items()]
        stop_pools(pools)
    except EngineStartError as exc:
        out["error"] = str(exc)
    print(json.dumps(out), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])

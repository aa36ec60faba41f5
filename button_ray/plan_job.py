"""``button-ray plan``: check a config against the cluster, run a sample, estimate.

The estimates themselves are :mod:`button_ray.plan`; this module runs what they are
computed from: the checks ``generate`` makes, the cluster fit, and a sample run of
the first scenarios into a temporary output.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import ray

from button_ray.card import collect
from button_ray.config import OutputConfig, RunConfig
from button_ray.errors import ClusterFitError
from button_ray.inputs import input_options
from button_ray.pipeline import init_ray, run_generate
from button_ray.preflight import preflight
from button_ray.plan import (
    cluster_fit,
    estimate,
    measure,
    plan_document,
    pool_shortfall,
    resource_demand,
    throughput_assumption,
)
from button_ray.sink import OutputStore, iter_committed


def _item_costs(uri: str) -> dict[str, list[int]]:
    """Whether each committed item of the run at ``uri`` was accepted (1 or 0), and its
    LLM calls and tokens."""
    columns = ["llm_calls", "prompt_tokens", "completion_tokens"]
    costs: dict[str, list[int]] = {c: [] for c in ["accepted", *columns]}
    store = OutputStore(uri)
    for table in ("data", "rejected"):
        for batch in iter_committed(store, table, columns):
            costs["accepted"] += [int(table == "data")] * batch.num_rows
            for c in columns:
                costs[c] += batch.column(c).to_pylist()
    return costs


def run_plan(cfg: RunConfig, sample: int = 4, target: int | None = None, throughput: float | None = None,
             examples: int = 3) -> dict[str, Any]:
    """``button-ray plan``: the plan document (what plan.json holds).

    Checks what ``generate`` checks before it claims the output (the config, a probe
    written to the output, the input read whole, an output of another config refused),
    then whether the cluster can hold every replica and stage actor at once
    (a :class:`~button_ray.errors.ClusterFitError` before any engine starts). Then runs
    the first ``sample`` scenarios on the configured pools into a temporary output
    (never the user's), and measures and estimates from it (:mod:`button_ray.plan`).
    """
    pre = preflight(cfg)
    cfg = pre.cfg
    existing = pre.store.check_claim(pre.fingerprint)
    slots = cfg.method.atomic_tasks_per_scenario
    notes = []
    short = pool_shortfall(target, len(pre.scenarios), slots) if target is not None else None
    if short:
        notes.append(short)
        print(f"[button-ray] {short}", flush=True)
    init_ray(cfg)
    demand = resource_demand(cfg)
    misfit = cluster_fit(demand, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
    if misfit:
        raise ClusterFitError(misfit)
    cluster = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    n = min(sample, len(pre.scenarios))
    with tempfile.TemporaryDirectory(prefix="button-ray-plan-") as tmp:
        uri = os.path.join(tmp, "sample")
        # The sample reads the input as the run would, also when that borrows the output's options.
        sample_cfg = cfg.model_copy(update={
            "scenarios": cfg.scenarios.model_copy(
                update={"storage_options": input_options(cfg.scenarios, cfg.output.storage_options)}),
            "output": OutputConfig(uri=uri, shard_size=n),
        })
        print(f"[button-ray] plan: sampling {n} scenarios x {slots} slots on the configured pools into {uri}",
              flush=True)
        summary = run_generate(sample_cfg, limit=n)
        costs = _item_costs(uri)
        shown = collect(uri, examples=examples).examples
    measured = measure(summary, costs, cfg.pools, summary["replicas"])
    est = estimate(measured, target, slots, len(pre.scenarios), throughput) if target is not None else None
    if not measured["accepted"]:
        notes.append(f"the sample accepted none of its {measured['items']} items: the cost per accepted trajectory "
                     "is unbounded; read the funnel, or sample more scenarios (--sample)")
    if est is not None and not est["scenario_pool"]["enough"] and not short:
        notes.append(f"at the sample's yield ({measured['accepted_per_item']:.2f} accepted per item) {target} accepted "
                     f"trajectories need about {est['scenarios_needed']['expected']} scenarios, and the pool holds "
                     f"{len(pre.scenarios)}")
    if not any(p.num_gpus for p in cfg.pools):
        notes.append("the pools use no GPU: estimated_gpu_hours is 0, and the replica-hours are CPU replica-hours")
    notes.append(f"estimated_wall_hours excludes the engines' start ({summary['engine_start_s']:.0f} s in the sample)")
    return plan_document(
        measured, est,
        config_fingerprint=pre.fingerprint,
        models={p.name: p.engine.model for p in cfg.pools},
        output={"uri": cfg.output.uri, "resumes": bool(existing) and existing.get("fingerprint") == pre.fingerprint},
        cluster={"resources": cluster,
                 "demand": [{"what": what, "each": res, "count": count} for what, res, count in demand]},
        throughput_assumption=throughput_assumption(measured, throughput, cluster, (p.engine.model for p in cfg.pools)),
        sample={"scenarios": n, "items": summary["items"], "accepted": summary["emitted"],
                "rejected": summary["rejected"], "failed": summary["failed"], "funnel": summary["funnel"],
                "wall_time_s": summary["wall_time_s"], "engine_start_s": summary["engine_start_s"],
                "stream_time_s": summary["stream_time_s"],
                "examples": [{"record_id": rid, "messages": messages} for rid, messages in shown]},
        notes=notes,
    )

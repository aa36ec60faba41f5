"""The plan against reality: `button-ray plan` for a target, then the planned job.

Runs ``run_plan`` (the sample of ``--sample`` scenarios, the estimate for ``--target``
accepted trajectories), then ``generate --target-accepted`` with the same config into a
fresh output, and sets each prediction beside what the job measured: accepted
trajectories, items, LLM calls, tokens, replica-hours and wall time (the job's engines
up to its last commit, engine start excluded, as the estimate counts it), and whether
the measured value fell inside the plan's 95% range.

Run here: ``.venv/bin/python -m benchmarks.bench_plan --target 40`` (configs/local.yaml;
~25 minutes on 2 cores). On a GPU cluster: ``--config configs/cluster-8b.yaml --target
100000 --sample 64``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from benchmarks.common import REPO, now, table, write_result
from button_ray.config import load_config
from button_ray.pipeline import run_generate
from button_ray.plan_job import run_plan


def compare(plan: dict[str, Any], summary: dict[str, Any], replicas: int) -> list[dict[str, Any]]:
    """One row per predicted quantity: the plan's expected value and range, the job's."""
    totals = summary["totals"]
    hours = summary["stream_time_s"] / 3600
    measured = {
        "items_needed": summary["items"],
        "llm_calls": totals["calls"],
        "total_tokens": totals["prompt_tokens"] + totals["completion_tokens"],
        "completion_tokens": totals["completion_tokens"],
        "estimated_replica_hours": hours * replicas,
        "estimated_wall_hours": hours,
    }
    rows = [{"quantity": "accepted", "predicted": plan["target_accepted"], "low": None, "high": None,
             "measured": summary["emitted"], "inside": None}]
    for key, value in measured.items():
        low, high = plan["range"][key]
        inside = (low is None or low <= value) and (high is None or value <= high)
        rows.append({"quantity": key, "predicted": plan[key], "low": low, "high": high, "measured": value,
                     "inside": inside})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "local.yaml"))
    parser.add_argument("--sample", type=int, default=4, help="scenarios the plan samples")
    parser.add_argument("--target", type=int, default=40, help="accepted trajectories to plan and then generate")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override a.b=c")
    args = parser.parse_args()
    started = now()
    work = Path(tempfile.mkdtemp(prefix="bench_plan_"))
    cfg = load_config(args.config, [*args.overrides, f"output.uri={work / 'run'}"])
    address = cfg.runtime.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}, logging_level="WARNING")

    t0 = time.monotonic()
    plan = run_plan(cfg, sample=args.sample, target=args.target, examples=0)
    results: dict[str, Any] = {"comparison": None, "plan": plan, "plan_s": time.monotonic() - t0}
    # A job the plan says cannot end (nothing accepted, or too few scenarios) is not run.
    runnable = plan["items_needed"] is not None and plan["scenario_pool"]["enough"]
    if runnable:
        t1 = time.monotonic()
        summary = run_generate(cfg, target_accepted=args.target)
        results.update(job_s=time.monotonic() - t1, job_summary=summary,
                       comparison=compare(plan, summary, sum(p.replicas for p in cfg.pools)))
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    if runnable:
        print(table(["quantity", "predicted", "95% low", "95% high", "measured", "inside"],
                    [[r["quantity"], r["predicted"], r["low"], r["high"], r["measured"], r["inside"]]
                     for r in results["comparison"]]))
        print(f"plan {results['plan_s']:.0f} s (sample of {plan['sample']['items']} items, "
              f"{plan['sample']['accepted']} accepted); job {results['job_s']:.0f} s in "
              f"{summary['target']['rounds']} rounds, engine start {summary['engine_start_s']:.0f} s")
    else:
        print(f"[bench_plan] not running the job: {'; '.join(plan['notes'])}")
    path = write_result("bench_plan", {"config": args.config, "sample": args.sample, "target": args.target,
                                       "overrides": args.overrides}, results, started)
    print(f"[bench_plan] wrote {path}")

if __name__ == "__main__":
    main()

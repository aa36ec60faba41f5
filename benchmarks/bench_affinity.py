"""Prefix affinity: two replicas, trajectory-affine routing vs least-loaded routing.

The same items run twice through the full pipeline on a pool of two replicas:
``runtime.affinity_routing=true`` (every request of a trajectory goes to the replica
that served its first one, so its growing chat history is in that replica's prefix
cache) and ``false`` (each request goes to the replica with the fewest outstanding
requests). Reported per run, from vLLM's own scheduler stats (prefix-cache queries and
hits, in tokens, summed over both replicas): the prefix-cache hit rate; per stage (the
simulation's user/assistant/tool requests, where a trajectory re-sends its growing
history, vs the bottom-up ones), from vLLM's per-request count of prompt tokens served
from the cache (``RequestOutput.num_cached_tokens``); and, from the
requests the engines served (:mod:`benchmarks.recording_engine`, engine start-up
excluded): completion tokens/s and prompt+completion tokens/s.

Run here: ``.venv/bin/python -m benchmarks.bench_affinity`` (configs/local.yaml with 2
replicas, 8 scenarios). On a GPU cluster: ``--config configs/cluster-8b.yaml
--replicas 8 --scenarios 512``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray

from benchmarks.common import REPO, now, table, write_result
from benchmarks.recording_engine import RECORD_DIR_ENV, load_records
from button_ray.config import RunConfig, load_config
from button_ray.llm.contract import ROLES
from button_ray.pipeline import run_generate
from button_ray.top_down.simulate import ROLES as SIMULATION_ROLES

_STAGES = {"simulation": SIMULATION_ROLES,
           "bottom_up": tuple(r for r in ROLES if r not in SIMULATION_ROLES)}


def _config(cfg: RunConfig, replicas: int, affinity: bool, output: str) -> RunConfig:
    pools = tuple(p.model_copy(update={"replicas": replicas,
                                       "engine_class": "benchmarks.recording_engine:RecordingVLLMEngine"})
                  for p in cfg.pools)
    return cfg.model_copy(update={
        "pools": pools,
        "runtime": cfg.runtime.model_copy(update={"affinity_routing": affinity}),
        "output": cfg.output.model_copy(update={"uri": output}),
    })


def _run(cfg: RunConfig, scenarios: int, record_dir: Path) -> dict[str, Any]:
    for old in record_dir.glob("*.jsonl"):
        old.unlink()
    summary = run_generate(cfg, limit=scenarios)
    records = load_records(record_dir)
    wall = max(r["end"] for r in records) - min(r["start"] for r in records)
    completion = sum(r["completion_tokens"] for r in records)
    prompt = sum(len(r["prompt_token_ids"]) for r in records)
    metrics = [m for ms in summary["replicas"].values() for m in ms]
    by_stage = {}
    for stage, roles in _STAGES.items():
        rs = [r for r in records if r["role"] in roles]
        cached = sum(r["cached_prompt_tokens"] for r in rs)
        tokens = sum(len(r["prompt_token_ids"]) for r in rs)
        by_stage[stage] = {"requests": len(rs), "prompt_tokens": tokens, "cached_prompt_tokens": cached,
                           "hit_rate": cached / tokens if tokens else None}
    queries = sum(m["prefix_cache_queries"] for m in metrics)
    hits = sum(m["prefix_cache_hits"] for m in metrics)
    return {
        "requests": len(records),
        "requests_per_replica": [m["served"] for m in metrics],
        "wall_s": wall,
        "completion_tokens": completion,
        "prompt_tokens": prompt,
        "completion_tokens_per_s": completion / wall,
        "tokens_per_s": (completion + prompt) / wall,
        "prefix_cache_queries": queries,
        "prefix_cache_hits": hits,
        "prefix_cache_hit_rate": hits / queries if queries else None,
        "by_stage": by_stage,
        "items": summary["items"],
        "emitted": summary["emitted"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "local.yaml"))
    parser.add_argument("--scenarios", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override a.b=c")
    args = parser.parse_args()
    started = now()
    cfg = load_config(args.config, args.overrides)
    work = Path(tempfile.mkdtemp(prefix="bench_affinity_"))
    record_dir = work / "requests"
    record_dir.mkdir()
    env = {RECORD_DIR_ENV: str(record_dir), "PYTHONPATH": str(REPO)}
    os.environ.update(env)
    address = cfg.runtime.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    # A local cluster must fit the replicas' reserved CPUs even on a 2-core machine
    # (the reservations are bookkeeping; the engines share the cores either way).
    needed = sum(p.num_cpus for p in cfg.pools) * args.replicas + 2
    init_kwargs = {"num_cpus": max(os.cpu_count() or 1, int(needed + 0.999))} if address == "local" else {}
    ray.init(address=address, runtime_env={"env_vars": env}, logging_level="WARNING", **init_kwargs)

    runs = {}
    for name, affinity in (("affinity", True), ("least_loaded", False)):
        print(f"[bench_affinity] {name}: {args.scenarios} scenarios on {args.replicas} replicas ...", flush=True)
        runs[name] = _run(_config(cfg, args.replicas, affinity, str(work / name)), args.scenarios, record_dir)
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    print(table(["routing", "requests", "per replica", "wall s", "compl tok/s", "prompt+compl tok/s",
                 "prefix hit rate", "hit rate simulation", "hit rate bottom-up"],
                [[n, r["requests"], "/".join(map(str, r["requests_per_replica"])), r["wall_s"],
                  r["completion_tokens_per_s"], r["tokens_per_s"], r["prefix_cache_hit_rate"],
                  r["by_stage"]["simulation"]["hit_rate"], r["by_stage"]["bottom_up"]["hit_rate"]]
                 for n, r in runs.items()]))
    a, b = runs["affinity"], runs["least_loaded"]
    print(f"affinity vs least-loaded: simulation hit rate {a['by_stage']['simulation']['hit_rate']:.3f} vs "
          f"{b['by_stage']['simulation']['hit_rate']:.3f}; all requests {a['prefix_cache_hit_rate']:.3f} vs "
          f"{b['prefix_cache_hit_rate']:.3f}; completion tok/s x{a['completion_tokens_per_s'] / b['completion_tokens_per_s']:.2f}")
    path = write_result("bench_affinity", {"config": args.config, "scenarios": args.scenarios,
                                           "replicas": args.replicas, "overrides": args.overrides},
                        runs, started)
    print(f"[bench_affinity] wrote {path}")


if __name__ == "__main__":
    main()

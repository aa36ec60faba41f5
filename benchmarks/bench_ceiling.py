"""Engine ceiling vs pipeline: how much of the engine's own capacity the pipeline uses.

One run, one engine config, two measurements:

(a) **pipeline**: the full BUTTON pipeline (``run_generate``) with the production engine
    wrapped by :mod:`benchmarks.recording_engine`, which logs every request it serves
    (prompt token ids, sampling, completion length, start/end time). The window runs
    from the first request's start to the last one's end, so engine start-up is out.
(b) **ceiling**: the same recorded requests replayed as one flat batch on a fresh,
    warmed engine of the same config inside a Ray actor with the same resources:
    every prompt submitted at once, each output forced to the length seen in (a)
    (``min_tokens = max_tokens``, ``ignore_eos``). Same work, no turn-by-turn
    dependencies, no output constraints (xgrammar masks are part of the pipeline's
    cost, not of the engine's ceiling).

Headline: pipeline / ceiling in completion tokens/s, over two windows of (a): the
whole run, and its **feed window**, from the first request until the last item sends
its first one. After that no item enters and the run drains: the last trajectories'
sequential turns run with ever fewer beside them. A run of millions of items is all
feed window but for its last minutes, so the feed-window ratio is what the engines see
at scale; a benchmark-sized run needs more items than the pipeline holds in flight
(``runtime.items_in_flight_per_actor``) to have one. Also reported: prompt+completion
tokens/s, accepted trajectories and items per hour in (a) (what ``bench_naive``
compares against), the engine's prefix-cache hit rate in both, and the run's BUTTON
funnel with the unparseable share per role (``benchmarks/FUNNEL.md`` quotes it).

Run here: ``.venv/bin/python -m benchmarks.bench_ceiling`` (configs/local.yaml,
16 scenarios x 2 items; the config holds 12 items in flight per stage actor). On a GPU cluster: ``--config configs/cluster-8b.yaml
--scenarios 512`` (submit it with ``ray job submit --working-dir . --``); the ceiling
replays on one replica of the first pool, so compare it with the pipeline's tokens/s
per replica, which the table prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from benchmarks.common import REPO, feed_window, now, table, write_result
from benchmarks.recording_engine import RECORD_DIR_ENV, load_records
from button_ray.config import PoolConfig, RunConfig, load_config
from button_ray.pipeline import run_generate


class CeilingReplayer:
    """A Ray actor holding one engine of ``pool``'s config, replaying recorded requests."""

    def __init__(self, pool: PoolConfig) -> None:
        from button_ray.llm.vllm_engine import VLLMEngine

        self.engine = VLLMEngine(pool)

    async def start(self) -> None:
        await self.engine.start()

    async def _one(self, request_id: str, prompt_ids: list[int], n: int, temperature: float,
                   top_p: float, seed: int | None) -> int:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        llm = self.engine._llm
        params = SamplingParams(temperature=temperature, top_p=top_p, seed=seed, max_tokens=n,
                                min_tokens=n, ignore_eos=True, output_kind=RequestOutputKind.FINAL_ONLY)
        (engine_input,) = llm.renderer.render_cmpl([TokensPrompt(prompt_token_ids=prompt_ids)])
        final = None
        async for out in llm.generate(engine_input, params, request_id):
            final = out
        return len(final.outputs[0].token_ids)

    async def replay(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        # Warm-up on prompts that share nothing with the records (no prefix-cache gift).
        await asyncio.gather(*(self._one(f"warmup-{i}", [100 + i] * 64, 16, 0.7, 1.0, i) for i in range(4)))
        before = dict(self.engine.metrics())
        start = time.time()
        produced = await asyncio.gather(*(
            self._one(f"replay-{i}", r["prompt_token_ids"], max(1, r["completion_tokens"]),
                      r["temperature"], r["top_p"], r["seed"])
            for i, r in enumerate(records)
        ))
        wall = time.time() - start
        after = self.engine.metrics()
        return {"wall_s": wall, "completion_tokens": sum(produced),
                "prefix_cache_queries": after["prefix_cache_queries"] - before["prefix_cache_queries"],
                "prefix_cache_hits": after["prefix_cache_hits"] - before["prefix_cache_hits"]}


def _bench_config(cfg: RunConfig, output: str) -> RunConfig:
    pools = tuple(p.model_copy(update={"engine_class": "benchmarks.recording_engine:RecordingVLLMEngine"})
                  for p in cfg.pools)
    return cfg.model_copy(update={"pools": pools,
                                  "output": cfg.output.model_copy(update={"uri": output})})


def _rates(completion: int, prompt: int, wall: float) -> dict[str, float]:
    return {"completion_tokens_per_s": completion / wall, "tokens_per_s": (completion + prompt) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "local.yaml"))
    parser.add_argument("--scenarios", type=int, default=16, help="scenarios for the pipeline run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override a.b=c")
    parser.add_argument("--pipeline-only", action="store_true",
                        help="run (a) only, into results/bench_ceiling_pipeline.json: the pipeline's rates and "
                             "funnel (what bench_naive compares with, via --pipeline-result)")
    args = parser.parse_args()
    started = now()

    cfg = load_config(args.config, args.overrides)
    work = Path(tempfile.mkdtemp(prefix="bench_ceiling_"))
    record_dir = work / "requests"
    record_dir.mkdir()
    # The replica actors inherit this process's environment on a local cluster; the
    # runtime_env makes it explicit (and carries the repo for `benchmarks.*` imports).
    env = {RECORD_DIR_ENV: str(record_dir), "PYTHONPATH": str(REPO)}
    os.environ.update(env)
    ray.init(address=cfg.runtime.ray_address or os.environ.get("RAY_ADDRESS") or "local",
             runtime_env={"env_vars": env}, logging_level="WARNING")

    print(f"[bench_ceiling] (a) pipeline on {args.scenarios} scenarios ...", flush=True)
    summary = run_generate(_bench_config(cfg, str(work / "out")), limit=args.scenarios)
    records = load_records(record_dir)
    if not records:
        raise SystemExit("the pipeline served no request; nothing to compare")
    p_wall = max(r["end"] for r in records) - min(r["start"] for r in records)
    p_completion = sum(r["completion_tokens"] for r in records)
    p_prompt = sum(len(r["prompt_token_ids"]) for r in records)
    replica_metrics = [m for ms in summary["replicas"].values() for m in ms]
    pipeline = {
        "requests": len(records),
        "wall_s": p_wall,
        "completion_tokens": p_completion,
        "prompt_tokens": p_prompt,
        **_rates(p_completion, p_prompt, p_wall),
        "feed": feed_window([{**r, "prompt_tokens": len(r["prompt_token_ids"])} for r in records]),
        "items": summary["items"],
        "emitted": summary["emitted"],
        "accepted_per_hour": summary["emitted"] / p_wall * 3600,
        "items_per_hour": summary["items"] / p_wall * 3600,
        "replicas": sum(p.replicas for p in cfg.pools),
        "prefix_cache_hit_rate": _hit_rate(sum(m.get("prefix_cache_hits", 0) for m in replica_metrics),
                                           sum(m.get("prefix_cache_queries", 0) for m in replica_metrics)),
        "unparseable_share": summary["unparseable_share"],
        "funnel": summary["funnel"],
        "usage_by_role": summary["usage_by_role"],
        "errors": summary["errors"],
    }

    config = {"config": args.config, "scenarios": args.scenarios, "overrides": args.overrides,
              "run_config": cfg.model_dump(mode="json")}
    # Run (a) alone is already a result (the funnel, the pipeline's rates): keep it if (b) dies.
    name = "bench_ceiling_pipeline" if args.pipeline_only else "bench_ceiling"
    path = write_result(name, config, {"pipeline": pipeline, "ceiling": None}, started)
    if args.pipeline_only:
        feed = pipeline["feed"]
        print(f"[bench_ceiling] (a) {pipeline['completion_tokens_per_s']:.1f} completion tok/s over the run, "
              f"{feed['completion_tokens_per_s']:.1f} over its feed window ({feed['wall_s']:.0f}s, "
              f"{feed['mean_in_flight']:.1f} requests in flight); wrote {path}")
        ray.shutdown()
        return
    print(f"[bench_ceiling] (b) ceiling: replaying {len(records)} requests as one batch ...", flush=True)
    pool = cfg.pools[0]
    actor = ray.remote(CeilingReplayer).options(num_cpus=pool.num_cpus, num_gpus=pool.num_gpus).remote(pool)
    ray.get(actor.start.remote())
    replay = ray.get(actor.replay.remote(records))
    ray.kill(actor)
    c_wall = replay["wall_s"]
    ceiling = {"requests": len(records), "wall_s": c_wall, "completion_tokens": replay["completion_tokens"],
               "prompt_tokens": p_prompt, **_rates(replay["completion_tokens"], p_prompt, c_wall),
               "replicas": 1,
               "prefix_cache_hit_rate": _hit_rate(replay["prefix_cache_hits"], replay["prefix_cache_queries"])}
    # The ceiling runs on one replica: compare per replica.
    per_replica = pipeline["completion_tokens_per_s"] / pipeline["replicas"]
    ratio = per_replica / ceiling["completion_tokens_per_s"]
    ratio_all = (pipeline["tokens_per_s"] / pipeline["replicas"]) / ceiling["tokens_per_s"]
    feed = pipeline["feed"]
    ratio_feed = feed["completion_tokens_per_s"] / pipeline["replicas"] / ceiling["completion_tokens_per_s"]

    print(table(["stage", "in", "accepted", "rejected", "reasons"],
                [[r["stage"], r["in"], r["accepted"], r["rejected"],
                  ", ".join(f"{k}={v}" for k, v in r["reasons"].items())] for r in summary["funnel"]]))
    print(table(["role", "calls", "unparseable", "share", "prompt tok", "completion tok"],
                [[role, u["calls"], u["unparseable"], u["unparseable"] / u["calls"] if u["calls"] else 0.0,
                  u["prompt_tokens"], u["completion_tokens"]] for role, u in summary["usage_by_role"].items()]))
    print(f"funnel: {summary['emitted']}/{summary['items']} emitted, {summary['failed']} failed; "
          f"unparseable share {summary['unparseable_share']:.1%} (target < 5%)")
    print(table(
        ["run", "requests", "wall s", "compl tok", "compl tok/s/replica", "prompt+compl tok/s/replica",
         "prefix hit"],
        [["pipeline", len(records), p_wall, p_completion, per_replica,
          pipeline["tokens_per_s"] / pipeline["replicas"], pipeline["prefix_cache_hit_rate"]],
         ["pipeline, feed window", feed["requests_started"], feed["wall_s"], feed["completion_tokens"],
          feed["completion_tokens_per_s"] / pipeline["replicas"], feed["tokens_per_s"] / pipeline["replicas"], ""],
         ["ceiling", len(records), c_wall, replay["completion_tokens"], ceiling["completion_tokens_per_s"],
          ceiling["tokens_per_s"], ceiling["prefix_cache_hit_rate"]]],
    ))
    print(f"requests in flight (mean): {feed['mean_in_flight']:.1f} in the feed window, "
          f"{feed['mean_in_flight_drain']:.1f} in the drain")
    print(f"pipeline / ceiling: {ratio:.2f} in completion tokens/s over the whole run, {ratio_feed:.2f} over "
          f"its feed window; {ratio_all:.2f} in prompt+completion tokens/s (target >= 0.85) | pipeline: {pipeline['emitted']}/{pipeline['items']} accepted, "
          f"{pipeline['accepted_per_hour']:.0f} accepted/h, {pipeline['items_per_hour']:.0f} items/h")
    path = write_result(
        "bench_ceiling",
        config,
        {"pipeline": pipeline, "ceiling": ceiling, "ratio_completion_tokens_per_s": ratio,
         "ratio_completion_tokens_per_s_feed_window": ratio_feed, "ratio_tokens_per_s": ratio_all},
        started,
    )
    print(f"[bench_ceiling] wrote {path}")
    ray.shutdown()


def _hit_rate(hits: int, queries: int) -> float | None:
    return hits / queries if queries else None


if __name__ == "__main__":
    main()

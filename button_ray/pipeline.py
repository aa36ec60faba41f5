"""Ray wiring only: replicas, the Ray Data stream, the sink loop. No prompts here.

    items (from_items) ─► bottom-up actors ─► simulation actors ─► driver: sink + progress
                              └──────── PoolClient ────────┘
                                   LLM replica actors

Each pipeline actor runs many items at once: every Ray Data task carries one small
block, the actor accepts ``items_in_flight_per_actor`` concurrent calls, and each item
is its own coroutine. Nothing waits for a batch of LLM calls as a whole, so engines see
a steady stream (promise 1). Items carry their shard key; the driver commits a shard
as soon as its last item arrives (promise 3) and keeps only unfinished shards in memory.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from typing import Any, Awaitable, Callable

import numpy as np
import ray

from button_ray import summary as summ
from button_ray.config import MethodConfig, PoolConfig, RunConfig
from button_ray.inputs import check_input, read_scenarios
from button_ray.llm.pool import LLMUnavailableError, PoolClient
from button_ray.llm.replica import start_replicas
from button_ray.prompts import template_hashes
from button_ray.records import (
    ACCEPTED_SCHEMA,
    REJECTED_SCHEMA,
    WorkItem,
    derive_seed,
    item_row,
    stable_id,
)
from button_ray.sink import OutputStore, ShardPlan, plan_shards, redact

log = logging.getLogger(__name__)

class EngineStartError(RuntimeError):
    """A pool's replicas could not start their engines (the root cause is in the message)."""


StageFn = Callable[[WorkItem, Any, MethodConfig], Awaitable[WorkItem]]


def _stage_fn(name: str) -> StageFn:
    if name == "bottom_up":
        from button_ray.bottom_up import build_bundle

        return build_bundle
    if name == "simulate":
        from button_ray.top_down import simulate

        return simulate
    raise ValueError(f"unknown stage {name!r}")


class ItemStage:
    """Ray Data UDF: one method stage over rows, every row its own coroutine."""

    def __init__(self, stage: str, method: MethodConfig, pools: dict[str, tuple[PoolConfig, list[Any]]],
                 affinity: bool = True) -> None:
        self.stage = stage
        self.fn = _stage_fn(stage)
        self.method = method
        self.llm = PoolClient(pools, client_index=os.getpid(), affinity=affinity)

    async def _one(self, raw: str) -> str:
        item = WorkItem.model_validate_json(raw)
        if item.outcome != "pending":
            return raw
        try:
            item = await self.fn(item, self.llm, self.method)
        except (asyncio.CancelledError, LLMUnavailableError):
            # Not the record's fault: committing it as "failed" would lose it for good.
            # The job stops instead; uncommitted shards are redone on resume.
            raise
        except Exception as exc:  # noqa: BLE001 - any other error fails this item, never the job
            log.exception("item %s failed in %s", item.item_id, self.stage)
            item.fail(f"{type(exc).__name__}: {exc}")
        return item.model_dump_json()

    async def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        items = await asyncio.gather(*(self._one(raw) for raw in batch["item"]))
        return {"item": list(items), "shard": list(batch["shard"])}


class BottomUpStage(ItemStage):
    """The bottom-up stage; its own class so its actors are named after it in Ray's tools."""


class SimulationStage(ItemStage):
    """The simulation stage; its own class so its actors are named after it in Ray's tools."""


_STAGE_CLASSES = {"bottom_up": BottomUpStage, "simulate": SimulationStage}


def make_items(fingerprint: str, seed: int, plans: list[ShardPlan], scenarios: dict[str, Any],
               slots: int) -> list[dict[str, str]]:
    """Rows for every item of the pending shards; ids and seeds are deterministic."""
    rows = []
    for plan in plans:
        for sid in plan.scenario_ids:
            for slot in range(slots):
                item_id = stable_id(fingerprint, sid, slot)
                item = WorkItem(item_id=item_id, scenario=scenarios[sid], slot=slot,
                                seed=derive_seed(seed, item_id))
                rows.append({"item": item.model_dump_json(), "shard": plan.key})
    return rows


class ShardSink:
    """Collects finished items per shard and commits each shard once it is complete."""

    def __init__(self, store: OutputStore, fingerprint: str, plans: list[ShardPlan],
                 lineage: dict[str, Any], manifest_interval_s: float = 30.0) -> None:
        self.store = store
        self.fingerprint = fingerprint
        self.plans = {p.key: p for p in plans}
        self.lineage = lineage
        self.buffers: dict[str, list[WorkItem]] = {}
        self.markers: dict[str, dict[str, Any]] = {}
        self.manifest_interval_s = manifest_interval_s
        self._manifest_at = time.monotonic()

    def add(self, shard: str, item: WorkItem) -> None:
        buf = self.buffers.setdefault(shard, [])
        if any(i.item_id == item.item_id for i in buf):
            # At-least-once execution may deliver an item twice; the first one counts.
            return
        buf.append(item)
        plan = self.plans[shard]
        if len(buf) == plan.items:
            self._commit(plan, self.buffers.pop(shard))

    def _commit(self, plan: ShardPlan, items: list[WorkItem]) -> None:
        items.sort(key=lambda i: (plan.scenario_ids.index(i.scenario.scenario_id), i.slot))
        lineage = {**self.lineage, "shard": plan.key}
        accepted = [item_row(i, lineage) for i in items if i.outcome == "emitted"]
        rejected = [item_row(i, lineage) for i in items if i.outcome != "emitted"]
        stats = summ.new_stats()
        for i in items:
            summ.add_item(stats, i)
        marker = self.store.commit_shard(
            plan,
            ACCEPTED_SCHEMA.empty_table() if not accepted else _table(accepted, ACCEPTED_SCHEMA),
            REJECTED_SCHEMA.empty_table() if not rejected else _table(rejected, REJECTED_SCHEMA),
            stats,
        )
        self.markers[plan.key] = marker
        if time.monotonic() - self._manifest_at > self.manifest_interval_s:
            self.write_manifest()

    def write_manifest(self) -> None:
        self.store.write_manifest(self.fingerprint, self.markers.values())
        self._manifest_at = time.monotonic()


def _table(rows: list[dict[str, Any]], schema: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)


def _init_ray(cfg: RunConfig) -> None:
    if ray.is_initialized():
        return
    # Without an address, start a private local cluster: a bare ray.init() would join
    # any cluster that happens to run on the machine. `ray job submit` sets RAY_ADDRESS.
    address = cfg.runtime.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)


def _start_pools(cfg: RunConfig) -> tuple[dict[str, tuple[PoolConfig, list[Any]]], dict[str, Any]]:
    """Start every replica and wait until all are ready; fail fast with the root cause."""
    pools = {p.name: (p, start_replicas(p)) for p in cfg.pools}
    infos = {}
    for name, (pool, handles) in pools.items():
        try:
            ready = ray.get([h.ready.remote() for h in handles])
        except Exception as exc:
            for _, (_, hs) in pools.items():
                for h in hs:
                    ray.kill(h, no_restart=True)
            raise EngineStartError(f"pool {name!r} failed to start its engine: {exc}") from exc
        infos[name] = ready[0]
    return pools, infos


def _engine_activity(pools: dict[str, tuple[PoolConfig, list[Any]]]) -> str:
    """Requests served and in flight over all replicas, for the progress line."""
    metrics = ray.get([h.metrics.remote() for _, handles in pools.values() for h in handles], timeout=5)
    return (f"engines: {sum(m['served'] for m in metrics)} requests served, "
            f"{sum(m['in_flight'] for m in metrics)} in flight")


def _stop_pools(pools: dict[str, tuple[PoolConfig, list[Any]]]) -> None:
    for _, handles in pools.values():
        for h in handles:
            try:
                ray.kill(h, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


def run_generate(cfg: RunConfig, limit: int | None = None) -> dict[str, Any]:
    """Run (or resume) one generation job; return the summary written to summary.json."""
    started = time.monotonic()
    hashes = template_hashes()
    fingerprint = cfg.fingerprint(hashes)

    store = OutputStore(cfg.output.uri, cfg.output.storage_options)
    store.preflight()
    check_input(cfg.scenarios, cfg.output.storage_options)
    recorded = cfg.model_dump(mode="json")
    # _run.json records the config, never the storage credentials.
    recorded["output"]["storage_options"] = redact(recorded["output"]["storage_options"])
    resuming = store.claim(fingerprint, recorded)

    _init_ray(cfg)
    scenarios = read_scenarios(cfg.scenarios, limit)
    slots = cfg.method.atomic_tasks_per_scenario
    plans = plan_shards(fingerprint, [s.scenario_id for s in scenarios], cfg.output.shard_size, slots)
    committed = store.committed()
    pending = [p for p in plans if p.key not in committed]
    if resuming:
        print(f"[button-ray] resuming {cfg.output.uri}: {len(plans) - len(pending)} of {len(plans)} "
              "shards already committed", flush=True)

    sink = ShardSink(store, fingerprint, pending, lineage={})
    sink.markers = {k: m for k, m in committed.items() if k in {p.key for p in plans}}
    progress = summ.Progress(sum(p.items for p in pending), cfg.runtime.progress_interval_s)

    if pending:
        pools, infos = _start_pools(cfg)
        progress.probe = lambda: _engine_activity(pools)
        progress.start_heartbeat()
        try:
            sink.lineage = {
                "config_fingerprint": fingerprint,
                "models": {role: infos[p.name]["model"] for p in cfg.pools for role in p.roles},
                "engine_version": next(iter(infos.values()))["engine_version"],
                "template_hashes": hashes,
            }
            rows = make_items(fingerprint, cfg.seed, pending, {s.scenario_id: s for s in scenarios}, slots)
            _stream(cfg, pools, rows, sink, progress)
            progress.maybe_print(force=True)
            replica_metrics = {name: ray.get([h.metrics.remote() for h in handles])
                               for name, (_, handles) in pools.items()}
        finally:
            progress.stop_heartbeat()
            # The engines end with the job, also when it fails (e.g. storage gone).
            _stop_pools(pools)
    else:
        replica_metrics = {}

    sink.write_manifest()
    whole = summ.merge(m["stats"] for m in sink.markers.values())
    result = summ.build_summary(whole, time.monotonic() - started, progress.stats)
    result.update({"fingerprint": fingerprint, "output": cfg.output.uri,
                   "shards": len(sink.markers), "resumed": resuming, "replicas": replica_metrics})
    store.write_json("summary.json", result)
    if len(sink.markers) == len(plans):
        store.write_json("_SUCCESS", {"fingerprint": fingerprint, "shards": len(plans)})
    return result


def _stream(cfg: RunConfig, pools: dict[str, tuple[PoolConfig, list[Any]]], rows: list[dict[str, str]],
            sink: ShardSink, progress: summ.Progress) -> None:
    import ray.data
    from ray.data import ActorPoolStrategy

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    rt = cfg.runtime
    # One small block per Ray Data task: the actor holds many tasks at once, and a
    # slow item only delays the few rows of its own block.
    rows_per_block = max(1, min(rt.batch_size, 4))
    ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / rows_per_block)))
    for stage, actors in (("bottom_up", rt.bottom_up_actors), ("simulate", rt.simulation_actors)):
        ds = ds.map_batches(
            _STAGE_CLASSES[stage],
            fn_constructor_kwargs={"stage": stage, "method": cfg.method, "pools": pools,
                                   "affinity": rt.affinity_routing},
            batch_size=rows_per_block,
            batch_format="numpy",
            compute=ActorPoolStrategy(
                size=actors,
                max_concurrent_calls_per_actor=rt.items_in_flight_per_actor,
                max_tasks_in_flight_per_actor=rt.items_in_flight_per_actor,
            ),
            num_cpus=rt.actor_num_cpus,
        )
    batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
    try:
        for batch in batches:
            for raw, shard in zip(batch["item"], batch["shard"]):
                item = WorkItem.model_validate_json(raw)
                sink.add(str(shard), item)
                progress.update(item)
    finally:
        # On an error (a failed commit) stop the stream now: its actors are released
        # instead of working on for a job that has ended.
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    if sink.buffers:
        missing = {k: sink.plans[k].items - len(v) for k, v in sink.buffers.items()}
        raise RuntimeError(f"stream ended with incomplete shards (shard: items missing): {missing}")

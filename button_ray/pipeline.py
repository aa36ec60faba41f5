"""Ray wiring only: replicas, the Ray Data stream, the sink loop. No prompts here.

    shard rows ─► items ─► bottom-up actors ─► simulation actors ─► driver: sink + progress
                                  └──────── PoolClient ────────┘
                                       LLM replica actors

Each pipeline actor runs many items at once: every Ray Data task carries one small
block, the actor accepts ``items_in_flight_per_actor`` concurrent calls, and each item
is its own coroutine. Nothing waits for a batch of LLM calls as a whole, so engines see
a steady stream. Items carry their shard key; the driver commits a shard as soon as its
last item arrives and keeps only unfinished shards in memory.
The source is lazy too: the driver hands Ray Data one row per pending shard, and one
Ray Data task expands shards into item rows, at most a window of items ahead of the
driver (:class:`SourceGate`), so memory does not grow with the size of the run.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Iterator

import numpy as np
import ray

from button_ray import summary as summ
from button_ray.card import collect, write_card
from button_ray.config import ITEM_SOURCE_CPUS, MethodConfig, OutputConfig, RunConfig
from button_ray.errors import ClusterFitError, LLMUnavailableError, TargetError
from button_ray.inputs import input_options, read_scenarios
from button_ray.llm.pool import PoolClient
from button_ray.llm.replica import Pools, start_pools, stop_pools
from button_ray.near_dup import NearDuplicateIndex, index_for
from button_ray.plan import (
    cluster_fit,
    estimate,
    expected_shortfall,
    measure,
    plan_document,
    pool_shortfall,
    resource_demand,
    round_scenarios,
    throughput_assumption,
)
from button_ray.records import (
    ACCEPTED_SCHEMA,
    REJECTED_SCHEMA,
    Scenario,
    WorkItem,
    derive_seed,
    item_row,
    stable_id,
    to_table,
)
from button_ray.sink import OutputStore, ShardPlan, covered_scenarios, iter_committed, plan_shards, redact

log = logging.getLogger(__name__)

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

    def __init__(self, stage: str, method: MethodConfig, pools: Pools,
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


def shard_items(fingerprint: str, seed: int, shard: str, scenarios: Iterable[Scenario],
                slots: int) -> Iterator[dict[str, str]]:
    """The item rows of one shard, in order; ids and seeds are deterministic."""
    for scenario in scenarios:
        for slot in range(slots):
            item_id = stable_id(fingerprint, scenario.scenario_id, slot)
            item = WorkItem(item_id=item_id, scenario=scenario, slot=slot, seed=derive_seed(seed, item_id))
            yield {"item": item.model_dump_json(), "shard": shard}


def make_items(fingerprint: str, seed: int, plans: list[ShardPlan], scenarios: dict[str, Any],
               slots: int) -> list[dict[str, str]]:
    """Rows for every item of the pending shards, all at once (small runs, benchmarks)."""
    rows: list[dict[str, str]] = []
    for plan in plans:
        rows.extend(shard_items(fingerprint, seed, plan.key, (scenarios[sid] for sid in plan.scenario_ids), slots))
    return rows


def shard_rows(plans: list[ShardPlan], scenarios: dict[str, Scenario]) -> list[dict[str, str]]:
    """The item source the driver hands Ray Data: one small row per pending shard.

    A shard row carries its key and its scenarios (JSON); :func:`expand_shards` turns it
    into the shard's item rows inside a Ray Data task, so the driver never holds the
    items of the run (their number grows with the run, the shards' only with the input).
    """
    return [{"shard": plan.key,
             "scenarios": json.dumps([scenarios[sid].model_dump(mode="json") for sid in plan.scenario_ids])}
            for plan in plans]


def expand_shards(batch: dict[str, np.ndarray], fingerprint: str, seed: int, slots: int,
                  gate: Any = None) -> dict[str, list[str]]:
    """Ray Data UDF (a plain task): shard rows -> their item rows.

    Before a shard is expanded, ``gate`` (a :class:`SourceGate`) must grant its items, so
    the expansion never runs more than a window of items ahead of the driver. (Grants
    are per shard: Ray Data passes a task's output on only when the UDF returns.)
    """
    items: list[str] = []
    shards: list[str] = []
    for shard, raw in zip(batch["shard"], batch["scenarios"]):
        shard = str(shard)
        scenarios = json.loads(raw)
        if gate is not None:
            ray.get(gate.acquire.remote(shard, len(scenarios) * slots))
        for row in shard_items(fingerprint, seed, shard, (Scenario.model_validate(s) for s in scenarios), slots):
            items.append(row["item"])
            shards.append(shard)
    return {"item": items, "shard": shards}


class SourceGate:
    """Credits for the item source: at most ``window`` items between expansion and driver.

    Ray Data paces a stage by the bytes its queued blocks hold, and an item row is a few
    hundred bytes, so without this the expansion would run to the end of the input and
    queue every item (several KiB each in the driver's executor). The expansion asks for
    each shard's items (:meth:`acquire`); the driver returns credits as items arrive
    (:meth:`deliver`). A grant is remembered per shard, so an expansion task that Ray
    retries does not spend credits twice; items delivered twice (at-least-once) return
    credits twice, which only widens the window a little.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.issued = 0
        self.delivered = 0
        self.max_ahead = 0
        self.granted: set[str] = set()
        self._changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def acquire(self, shard: str, n: int) -> None:
        """Return once the ``n`` items of ``shard`` may be expanded."""
        cond = self._condition()
        async with cond:
            if shard in self.granted:
                return
            # A shard larger than the window waits for an empty pipeline, then goes alone.
            await cond.wait_for(lambda: self.issued + n <= self.delivered + self.window
                                or self.issued <= self.delivered)
            self.issued += n
            self.granted.add(shard)
            self.max_ahead = max(self.max_ahead, self.issued - self.delivered)

    async def deliver(self, n: int) -> None:
        """``n`` items reached the driver: their credits go back to the expansion."""
        cond = self._condition()
        async with cond:
            self.delivered += n
            cond.notify_all()

    async def stats(self) -> dict[str, int]:
        return {"window": self.window, "issued": self.issued, "delivered": self.delivered,
                "max_ahead": self.max_ahead}


def source_window(rt: Any, max_shard_items: int) -> int:
    """Items the source may run ahead: twice what the stage actors hold at once, and
    at least two shards (a shard is granted whole)."""
    in_stages = rt.items_in_flight_per_actor * (rt.bottom_up_actors + rt.simulation_actors)
    return 2 * max(in_stages, max_shard_items)


@dataclass(frozen=True)
class ItemSource:
    """What the stream reads: one row per pending shard, expanded into items by Ray Data."""

    shards: list[dict[str, str]]
    fingerprint: str
    seed: int
    slots: int
    max_shard_items: int

    def dataset(self, rows_per_block: int, gate: Any = None, window: int = 256) -> Any:
        """A lazy dataset of item rows in blocks of at most ``rows_per_block`` rows."""
        import ray.data
        from ray.data import TaskPoolStrategy
        from ray.data._internal.logical.operators import MapBatches, StreamingRepartition

        # One expansion task at a time, on a sliver of a CPU: never starved by replicas
        # that reserve every core, and never more than one worker process.
        one_task = TaskPoolStrategy(size=1)
        ds = ray.data.from_items(self.shards, override_num_blocks=max(1, len(self.shards)))
        ds = ds.map_batches(
            expand_shards,
            fn_kwargs={"fingerprint": self.fingerprint, "seed": self.seed, "slots": self.slots, "gate": gate},
            batch_size=1,
            batch_format="numpy",
            compute=one_task,
            num_cpus=ITEM_SOURCE_CPUS,
        )
        # Streaming repartition: a shard's items leave as blocks of 1-4 rows, so each
        # stage task still carries a few rows.
        ds = ds.repartition(target_num_rows_per_block=rows_per_block)
        # Ray Data fuses the split into the expansion task only when both have the same
        # remote args and compute, which repartition() does not take (Ray 2.60); unfused,
        # every shard would pay a second task of 1 whole CPU (unschedulable when replicas
        # hold every core). And the task's output stream may hold a window of blocks:
        # Ray's default of 2 caps the source at 2 blocks per executor tick (~20 items/s).
        split = ds._logical_plan.dag
        expand = split.input_dependencies[0] if isinstance(split, StreamingRepartition) else None
        if not isinstance(expand, MapBatches):
            raise RuntimeError(f"unexpected Ray Data plan after repartition(): {split!r}")
        for op in (expand, split):
            op.ray_remote_args.update(num_cpus=ITEM_SOURCE_CPUS, _generator_backpressure_num_objects=2 * max(window, 1))
        object.__setattr__(split, "compute", one_task)
        return ds


def _bounded_block_stats() -> type:
    """A Ray Data execution callback that keeps each operator's per-block stats short.

    Ray Data (2.60) appends one ``BlockStats`` per output block of every operator for the
    whole execution, and every 5 s sends them all, inside the iteration stats, to its
    stats actor. With a block per item per stage, the driver and that actor grew by
    ~10 KiB per item (the driver at 1 GiB after 55k items) and the stream slowed down.
    Only ``Dataset.stats()`` reads those lists; the last ``KEEP`` blocks per operator
    are kept for it.
    """
    from ray.data._internal.execution.execution_callback import ExecutionCallback

    class BoundedBlockStats(ExecutionCallback):
        KEEP = 1000

        def on_execution_step(self, executor: Any) -> None:
            for op in getattr(executor, "_topology", None) or ():
                blocks = getattr(op, "_output_blocks_stats", None)
                if isinstance(blocks, list) and len(blocks) > 2 * self.KEEP:
                    del blocks[: len(blocks) - self.KEEP]

    return BoundedBlockStats


class ShardSink:
    """Collects finished items per shard and commits each shard once it is complete.

    With ``duplicates`` (a :class:`~button_ray.near_dup.NearDuplicateIndex`), an emitted
    item whose composite task nearly duplicates one emitted before in the run is rejected
    here (stage ``dedup``): the driver is the one place that sees every item. With
    ``target_accepted``, :attr:`reached` turns true at the commit that brings the
    committed accepted trajectories to the target.
    """

    def __init__(self, store: OutputStore, fingerprint: str, plans: list[ShardPlan],
                 lineage: dict[str, Any], manifest_interval_s: float = 30.0,
                 duplicates: NearDuplicateIndex | None = None, target_accepted: int | None = None) -> None:
        self.store = store
        self.duplicates = duplicates
        self.fingerprint = fingerprint
        self.plans = {p.key: p for p in plans}
        self.lineage = lineage
        self.buffers: dict[str, dict[str, WorkItem]] = {}  # shard -> item id -> item
        self.markers: dict[str, dict[str, Any]] = {}
        self.manifest_interval_s = manifest_interval_s
        self._manifest_at = time.monotonic()
        self.target_accepted = target_accepted
        self.reached = False

    def add_plans(self, plans: list[ShardPlan]) -> None:
        """Expect the items of more shards (the next round of a run to a target)."""
        self.plans.update((p.key, p) for p in plans)

    def accepted(self) -> int:
        """Accepted trajectories in the committed shards."""
        return sum(m["stats"]["emitted"] for m in self.markers.values())

    def add(self, shard: str, item: WorkItem) -> bool:
        """Take one finished item; False if it was delivered before (it is ignored)."""
        # At-least-once execution may deliver an item twice; the first one counts,
        # also when its shard is committed already.
        if shard in self.markers:
            return False
        buf = self.buffers.setdefault(shard, {})
        if item.item_id in buf:
            return False
        self._check_duplicate(item)
        buf[item.item_id] = item
        plan = self.plans[shard]
        if len(buf) == plan.items:
            self._commit(plan, list(self.buffers.pop(shard).values()))
        return True

    def _check_duplicate(self, item: WorkItem) -> None:
        if self.duplicates is None or item.outcome != "emitted" or item.bundle is None:
            return
        match = self.duplicates.add(item.item_id, item.bundle.composition.composite_task)
        if match is not None:
            item.reject("dedup", "near_duplicate", f"composite task nearly duplicates record {match.kept_id} "
                        f"(estimated similarity {match.similarity:.2f})")

    def index_committed(self) -> None:
        """Put the composite tasks of the committed shards into ``duplicates`` (a resume),
        one shard's two columns at a time."""
        if self.duplicates is None:
            return
        import pyarrow.parquet as pq

        for marker in self.markers.values():
            raw = self.store.read_bytes(marker["files"]["data"]["path"])
            table = pq.read_table(io.BytesIO(raw), columns=["record_id", "composite_task"])
            for record_id, task in zip(table["record_id"].to_pylist(), table["composite_task"].to_pylist()):
                self.duplicates.add(record_id, task or "")

    def missing(self) -> dict[str, int]:
        """Items not delivered, per uncommitted shard (also shards that delivered none)."""
        return {key: plan.items - len(self.buffers.get(key, {}))
                for key, plan in self.plans.items() if key not in self.markers}

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
            to_table(accepted, ACCEPTED_SCHEMA),
            to_table(rejected, REJECTED_SCHEMA),
            stats,
        )
        self.markers[plan.key] = marker
        if self.target_accepted is not None and not self.reached:
            self.reached = self.accepted() >= self.target_accepted
        if time.monotonic() - self._manifest_at > self.manifest_interval_s:
            self.write_manifest()

    def write_manifest(self) -> None:
        self.store.write_manifest(self.fingerprint, self.markers.values())
        self._manifest_at = time.monotonic()


def init_ray(cfg: RunConfig) -> None:
    """Join the cluster ``cfg`` names (``runtime.ray_address``, else ``RAY_ADDRESS``), else
    start a private local one; nothing when Ray is up already."""
    if ray.is_initialized():
        return
    # Without an address, start a private local cluster: a bare ray.init() would join
    # any cluster that happens to run on the machine. `ray job submit` sets RAY_ADDRESS.
    address = cfg.runtime.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)


def _engine_activity(pools: Pools, since: float) -> str:
    """Requests served and in flight over all replicas, and the engines' completion
    tokens/s since ``since`` (what the engines produce now, not only finished items)."""
    metrics = ray.get([h.metrics.remote() for _, handles in pools.values() for h in handles], timeout=5)
    line = (f"engines: {sum(m['served'] for m in metrics)} requests served, "
            f"{sum(m['in_flight'] for m in metrics)} in flight")
    tokens = [m.get("completion_tokens") for m in metrics]
    if tokens and all(t is not None for t in tokens):
        line += f", {sum(tokens) / max(time.monotonic() - since, 1e-9):.1f} completion tok/s"
    return line


def _recorded_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as written to _run.json: storage credentials never in clear."""
    recorded = cfg.model_dump(mode="json")
    recorded["output"]["storage_options"] = redact(recorded["output"]["storage_options"])
    if recorded["scenarios"]["storage_options"] is not None:
        recorded["scenarios"]["storage_options"] = redact(recorded["scenarios"]["storage_options"])
    return recorded


@dataclass(frozen=True)
class Preflight:
    """What a run checks before it claims its output (``generate`` and ``plan`` alike)."""

    cfg: RunConfig  #: the config carrying its prompt templates, read once
    fingerprint: str
    template_hashes: dict[str, str]
    store: OutputStore
    scenarios: list[Scenario]


def preflight(cfg: RunConfig, limit: int | None = None) -> Preflight:
    """The prompt templates read, the config's fingerprint, a probe written to the
    output, the input read whole.

    A problem fails here with one sentence (a ConfigError, OutputError or InputError),
    before the output is claimed and before Ray starts. ``limit`` (else
    ``scenarios.limit``) keeps the first scenarios.
    """
    # Read once, before anything else: a missing or malformed template stops the job before
    # Ray starts, and the workers render the very texts the fingerprint hashed.
    cfg = cfg.with_templates()
    hashes = cfg.method.templates().hashes()
    store = OutputStore(cfg.output.uri, cfg.output.storage_options)
    store.preflight()
    scenarios = read_scenarios(cfg.scenarios, limit, input_options(cfg.scenarios, cfg.output.storage_options))
    return Preflight(cfg, cfg.fingerprint(hashes), hashes, store, scenarios)


def next_shards(cfg: RunConfig, fingerprint: str, scenario_ids: list[str], markers: dict[str, dict[str, Any]],
                target_accepted: int | None = None) -> list[ShardPlan]:
    """The shards a run starts next, given the committed ``markers``: every requested
    scenario not committed yet, or, towards a target, the next round of them
    (:func:`button_ray.plan.round_scenarios`). [] when there is nothing left to do,
    also when the committed items accepted none (no number of rounds would reach a target).
    """
    slots, shard_size = cfg.method.atomic_tasks_per_scenario, cfg.output.shard_size
    covered = covered_scenarios(markers.values())
    pending = [sid for sid in scenario_ids if sid not in covered]
    if target_accepted is not None:
        stats = summ.merge(m["stats"] for m in markers.values())
        if stats["items"] and not stats["emitted"]:
            return []
        pending = pending[: round_scenarios(target_accepted, stats["emitted"], stats["items"], slots, shard_size)]
    return plan_shards(fingerprint, pending, shard_size, slots)


def _target_outcome(target: int, stats: dict[str, Any], pool: list[str], covered: set[str],
                    rounds: int) -> dict[str, Any]:
    """The ``target`` entry of summary.json: reached or not, and why a run stopped short."""
    reached = stats["emitted"] >= target
    stopped = None
    if not reached and stats["items"] and not stats["emitted"]:
        stopped = (f"none of the {stats['items']} committed items was accepted, so no number of scenarios reaches "
                   "the target; read the funnel in summary.json and fix the config (a new config needs a new output)")
    elif not reached:
        stopped = (f"the scenario pool ran out: its {len(pool)} scenarios gave {stats['emitted']} of the {target} "
                   f"accepted trajectories asked ({len(set(pool) - covered)} scenarios not run); grow the scenario "
                   "source (button-ray scenarios) and run the same command again")
    return {"accepted": target, "committed_accepted": stats["emitted"], "reached": reached, "rounds": rounds,
            "stopped": stopped}


def run_generate(cfg: RunConfig, limit: int | None = None, target_accepted: int | None = None) -> dict[str, Any]:
    """Run (or resume) one generation job; return the summary written to summary.json.

    Everything that can be checked is checked before the output is claimed: the output
    is writable and the input is read whole. A resume skips the scenarios of committed
    shards; ``limit`` (or ``scenarios.limit``) and the shard size change what is pending,
    never what is committed.

    With ``target_accepted`` the run works in rounds until that many accepted
    trajectories are committed (the pool is every scenario, up to ``scenarios.limit``):
    each round is sized from the yield of the committed shards
    (:func:`button_ray.plan.round_scenarios`), and the stream stops at the commit that
    reaches the target, so the run passes it by less than one shard's items. A pool too
    small to give the target even if every item were accepted fails up front
    (:class:`~button_ray.errors.TargetError`).
    """
    started = time.monotonic()
    pre = preflight(cfg, limit)
    cfg = pre.cfg
    slots = cfg.method.atomic_tasks_per_scenario
    if target_accepted is not None and (short := pool_shortfall(target_accepted, len(pre.scenarios), slots)):
        raise TargetError(short)
    store, fingerprint = pre.store, pre.fingerprint
    resuming = store.claim(fingerprint, _recorded_config(cfg))

    committed = store.committed()
    requested = [s.scenario_id for s in pre.scenarios]
    # Every committed shard stays in the manifest, also those beyond this run's limit.
    sink = ShardSink(store, fingerprint, [], lineage={}, duplicates=index_for(cfg.method.content),
                     target_accepted=target_accepted)
    sink.markers = dict(committed)
    covered = covered_scenarios(committed.values()) & set(requested)
    if resuming:
        print(f"[button-ray] resuming {cfg.output.uri}: {len(covered)} of {len(requested)} scenarios already "
              f"committed ({len(committed)} shards, {sink.accepted()} accepted trajectories)", flush=True)
    if target_accepted is not None:
        stats = summ.merge(m["stats"] for m in committed.values())
        warning = expected_shortfall(target_accepted, stats["emitted"], stats["items"],
                                     (len(requested) - len(covered)) * slots)
        if warning:
            print(f"[button-ray] {warning}", flush=True)

    def next_round() -> list[ShardPlan]:
        plans = next_shards(cfg, fingerprint, requested, sink.markers, target_accepted)
        if target_accepted is not None and plans:
            print(f"[button-ray] round: {sum(len(p.scenario_ids) for p in plans)} scenarios "
                  f"({sum(p.items for p in plans)} items) for the {target_accepted - sink.accepted()} accepted "
                  f"trajectories still missing of {target_accepted}", flush=True)
        return plans

    pending = next_round()
    progress = summ.Progress(0, cfg.runtime.progress_interval_s)
    ran: dict[str, Any] = {"replicas": {}, "engine_start_s": 0.0, "stream_time_s": 0.0, "rounds": 0}
    if pending:
        # _SUCCESS describes the run that wrote it; this one has work left.
        store.remove("_SUCCESS")
        sink.index_committed()
        try:
            ran = _run_rounds(cfg, pre, pending, next_round, sink, progress)
        except BaseException:
            # Shards committed since the last manifest stay visible to readers.
            try:
                sink.write_manifest()
            except Exception as exc:  # noqa: BLE001 - the first error is the one to report
                log.warning("could not rewrite manifest.json after the failure: %s", exc)
            raise

    sink.write_manifest()
    whole = summ.merge(m["stats"] for m in sink.markers.values())
    result = summ.build_summary(whole, time.monotonic() - started, progress.stats)
    result.update({"fingerprint": fingerprint, "output": cfg.output.uri, "shards": len(sink.markers),
                   "resumed": resuming, "replicas": ran["replicas"], "engine_start_s": ran["engine_start_s"],
                   "stream_time_s": ran["stream_time_s"]})
    covered = covered_scenarios(sink.markers.values())
    success: dict[str, Any] = {"fingerprint": fingerprint, "shards": len(sink.markers), "scenarios": len(requested)}
    if target_accepted is None:
        done = set(requested) <= covered
    else:
        result["target"] = _target_outcome(target_accepted, whole, requested, covered, ran["rounds"])
        done = result["target"]["reached"]
        success.update(target_accepted=target_accepted, accepted=whole["emitted"])
    store.write_json("summary.json", result)
    if done:
        store.write_json("_SUCCESS", success)
    try:
        write_card(cfg.output.uri, cfg.output.storage_options)
    except Exception as exc:  # noqa: BLE001 - the records are committed; a card can be written later
        log.warning("could not write the dataset card (%s: %s); `button-ray card %s` writes it",
                    type(exc).__name__, exc, cfg.output.uri)
    return result


def _run_rounds(cfg: RunConfig, pre: Preflight, plans: list[ShardPlan], next_round: Callable[[], list[ShardPlan]],
                sink: ShardSink, progress: summ.Progress) -> dict[str, Any]:
    """Start Ray and the engines once; stream ``plans`` into ``sink``, then every round
    ``next_round`` gives, until it gives none or the sink reaches its target.

    Returns the replicas' metrics by pool, the engines' start time, the time from the
    engines up to the end of the last round, and the number of rounds.
    """
    init_ray(cfg)
    begun = time.monotonic()
    pools, infos = start_pools(cfg.pools)
    engines_up = time.monotonic()
    progress.probe = lambda: _engine_activity(pools, engines_up)
    progress.start_heartbeat()
    scenarios = {s.scenario_id: s for s in pre.scenarios}
    rounds = 0
    try:
        sink.lineage = {
            "config_fingerprint": pre.fingerprint,
            "models": {role: infos[p.name]["model"] for p in cfg.pools for role in p.roles},
            "engine_version": next(iter(infos.values()))["engine_version"],
            "template_hashes": pre.template_hashes,
        }
        while plans:
            rounds += 1
            sink.add_plans(plans)
            progress.total += sum(p.items for p in plans)
            source = ItemSource(shard_rows(plans, scenarios), pre.fingerprint, cfg.seed,
                                cfg.method.atomic_tasks_per_scenario, max(p.items for p in plans))
            _stream(cfg, pools, source, sink, progress)
            plans = [] if sink.reached else next_round()
        progress.maybe_print(force=True)
        return {"replicas": {name: ray.get([h.metrics.remote() for h in handles])
                             for name, (_, handles) in pools.items()},
                "engine_start_s": engines_up - begun, "stream_time_s": time.monotonic() - engines_up,
                "rounds": rounds}
    finally:
        progress.stop_heartbeat()
        # The engines end with the job, also when it fails (e.g. storage gone).
        stop_pools(pools)


def _stream(cfg: RunConfig, pools: Pools, source: ItemSource,
            sink: ShardSink, progress: summ.Progress) -> dict[str, int]:
    """Run the stream into ``sink``; return the source gate's counters."""
    import ray.data
    from ray.data import ActorPoolStrategy

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    # Ray Data polls each task's memory from a thread it starts per task: with a task
    # per item per stage that was ~12% of a stage actor's CPU (bench_overhead).
    ctx.memory_usage_poll_interval_s = None
    rt = cfg.runtime
    # One small block per Ray Data task: the actor holds many tasks at once, and a
    # slow item only delays the few rows of its own block.
    rows_per_block = rt.batch_size  # 1-4, checked by RuntimeConfig
    # items_in_flight_per_actor counts items; each actor call carries a block of them.
    calls_per_actor = -(-rt.items_in_flight_per_actor // rows_per_block)
    window = source_window(rt, source.max_shard_items)
    gate = ray.remote(SourceGate).options(num_cpus=0, max_restarts=-1, max_task_retries=-1).remote(window)
    batches = None
    try:
        ds = source.dataset(rows_per_block, gate, window)
        # The dataset's own copy of the context: the callback applies to this stream only.
        ds.context.custom_execution_callback_classes = [*ds.context.custom_execution_callback_classes,
                                                        _bounded_block_stats()]
        for stage, actors in (("bottom_up", rt.bottom_up_actors), ("simulate", rt.simulation_actors)):
            ds = ds.map_batches(
                _STAGE_CLASSES[stage],
                fn_constructor_kwargs={"stage": stage, "method": cfg.resolved_method(), "pools": pools,
                                       "affinity": rt.affinity_routing},
                batch_size=rows_per_block,
                batch_format="numpy",
                compute=ActorPoolStrategy(
                    size=actors,
                    max_concurrent_calls_per_actor=calls_per_actor,
                    max_tasks_in_flight_per_actor=calls_per_actor,
                ),
                num_cpus=rt.actor_num_cpus,
            )
        batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
        # Credits go back to the source in small lots (one actor call per lot, not per item).
        lot, arrived = max(1, window // 16), 0
        for batch in batches:
            for raw, shard in zip(batch["item"], batch["shard"]):
                if sink.reached:
                    break
                item = WorkItem.model_validate_json(raw)
                if sink.add(str(shard), item):
                    progress.update(item)
                arrived += 1
            if sink.reached:
                # The target is committed: the items still in flight are not needed.
                break
            if arrived >= lot:
                gate.deliver.remote(arrived)
                arrived = 0
        gate_stats = ray.get(gate.stats.remote())
    finally:
        # On an error (a failed commit), or once the target is committed, stop the stream
        # now: its actors are released instead of working on for a job that has ended.
        close = getattr(batches, "close", None)
        if close is not None:
            close()
        ray.kill(gate, no_restart=True)
    missing = sink.missing()
    if missing and not sink.reached:
        raise RuntimeError(f"stream ended with incomplete shards (shard: items missing): {missing}")
    return gate_stats


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

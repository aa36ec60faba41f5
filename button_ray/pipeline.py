"""The job: start Ray and the engines, stream the pending shards, commit them, stop.

    shard rows ─► items ─► bottom-up actors ─► simulation actors ─► outcomes ─► driver (ledger)
                                 └──── PoolClient ────┘      │ parts                   │
                                   LLM replica actors        ▼                         ▼
                                                     object storage ◄──── commit tasks (shard files + marker)

The item source (:mod:`button_ray.source`) and the stage actors (:mod:`button_ray.stages`)
run in Ray Data; the simulation actors write every finished item as a part
(:mod:`button_ray.parts`) and return only its outcome, so trajectories never pass
through the driver. The driver keeps the ledger (:mod:`button_ray.ledger`), hands each
complete shard to a commit task, and writes the manifest and the summary.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable

import ray

from button_ray import compat
from button_ray import summary as summ
from button_ray.card import write_card
from button_ray.config import RunConfig
from button_ray.errors import TargetError, ours
from button_ray.commits import Commits
from button_ray.ledger import ShardLedger
from button_ray.llm.pool import metrics_within
from button_ray.llm.replica import Pools, start_pools, stop_pools
from button_ray.near_dup import check_for
from button_ray.parts import PARTS_DIR, Outcome, durable_outcomes
from button_ray.plan import expected_shortfall, pool_shortfall, round_scenarios
from button_ray.preflight import Preflight, preflight, recorded_config
from button_ray.records import stable_id
from button_ray.sink import ShardPlan, covered_scenarios, plan_shards
from button_ray.source import ItemSource, SourceGate, shard_rows, source_window
from button_ray.stages import STAGE_CLASSES

log = logging.getLogger(__name__)

def init_ray(cfg: RunConfig) -> None:
    """Join the cluster ``cfg`` names (``runtime.ray_address``, else ``RAY_ADDRESS``), else
    start a private local one; nothing when Ray is up already."""
    if ray.is_initialized():
        return
    # Without an address, start a private local cluster: a bare ray.init() would join
    # any cluster that happens to run on the machine. `ray job submit` sets RAY_ADDRESS.
    address = cfg.runtime.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)


def engine_activity(pools: Pools, since: float) -> str:
    """Requests served and in flight over all replicas, and the engines' completion
    tokens/s since ``since`` (what the engines produce now, not only finished items)."""
    metrics = ray.get([h.metrics.remote() for _, handles in pools.values() for h in handles], timeout=5)
    line = (f"engines: {sum(m['served'] for m in metrics)} requests served, "
            f"{sum(m['in_flight'] for m in metrics)} in flight")
    tokens = [m.get("completion_tokens") for m in metrics]
    if tokens and all(t is not None for t in tokens):
        line += f", {sum(tokens) / max(time.monotonic() - since, 1e-9):.1f} completion tok/s"
    return line


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
    shards and the items that parts hold; ``limit`` (or ``scenarios.limit``) and the
    shard size change what is pending, never what is committed.

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
    resuming = store.claim(fingerprint, recorded_config(cfg))

    committed = store.committed()
    requested = [s.scenario_id for s in pre.scenarios]
    # Every committed shard stays in the manifest, also those beyond this run's limit.
    ledger = ShardLedger(duplicates=check_for(cfg.method.content), target_accepted=target_accepted)
    ledger.markers = dict(committed)
    commits = Commits(store, fingerprint, ledger)
    covered = covered_scenarios(committed.values()) & set(requested)
    if resuming:
        print(f"[button-ray] resuming {cfg.output.uri}: {len(covered)} of {len(requested)} scenarios already "
              f"committed ({len(committed)} shards, {ledger.accepted()} accepted trajectories)", flush=True)
    if target_accepted is not None:
        stats = summ.merge(m["stats"] for m in committed.values())
        warning = expected_shortfall(target_accepted, stats["emitted"], stats["items"],
                                     (len(requested) - len(covered)) * slots)
        if warning:
            print(f"[button-ray] {warning}", flush=True)

    def next_round() -> list[ShardPlan]:
        plans = next_shards(cfg, fingerprint, requested, ledger.markers, target_accepted)
        if target_accepted is not None and plans:
            print(f"[button-ray] round: {sum(len(p.scenario_ids) for p in plans)} scenarios "
                  f"({sum(p.items for p in plans)} items) for the {target_accepted - ledger.accepted()} accepted "
                  f"trajectories still missing of {target_accepted}", flush=True)
        return plans

    pending = next_round()
    progress = summ.Progress(0, cfg.runtime.progress_interval_s)
    ran: dict[str, Any] = {"replicas": {}, "engine_start_s": 0.0, "stream_time_s": 0.0, "rounds": 0}
    if pending:
        # _SUCCESS describes the run that wrote it; this one has work left.
        store.remove("_SUCCESS")
        ledger.index_committed(store)
        durable = durable_outcomes(store)
        if resuming and durable:
            print(f"[button-ray] {len(durable)} finished items of uncommitted shards found in {PARTS_DIR}/; "
                  "they are not run again", flush=True)
        try:
            ran = _run_rounds(cfg, pre, pending, next_round, ledger, commits, durable, progress)
        except BaseException:
            # Shards committed since the last manifest stay visible to readers.
            try:
                commits.write_manifest()
            except Exception as exc:  # noqa: BLE001 - the first error is the one to report
                log.warning("could not rewrite manifest.json after the failure: %s", exc)
            raise

    commits.write_manifest()
    whole = summ.merge(m["stats"] for m in ledger.markers.values())
    result = summ.build_summary(whole, time.monotonic() - started, progress.stats)
    result.update({"fingerprint": fingerprint, "output": cfg.output.uri, "shards": len(ledger.markers),
                   "resumed": resuming, "replicas": ran["replicas"], "engine_start_s": ran["engine_start_s"],
                   "stream_time_s": ran["stream_time_s"]})
    covered = covered_scenarios(ledger.markers.values())
    success: dict[str, Any] = {"fingerprint": fingerprint, "shards": len(ledger.markers),
                               "scenarios": len(requested)}
    if target_accepted is None:
        done = set(requested) <= covered
    else:
        result["target"] = _target_outcome(target_accepted, whole, requested, covered, ran["rounds"])
        done = result["target"]["reached"]
        success.update(target_accepted=target_accepted, accepted=whole["emitted"])
    store.write_json("summary.json", result)
    if done:
        store.write_json("_SUCCESS", success)
        # Parts left by duplicate deliveries or a differently cut resume: nothing reads them.
        store.remove_tree(PARTS_DIR)
    try:
        write_card(cfg.output.uri, cfg.output.storage_options)
    except Exception as exc:  # noqa: BLE001 - the records are committed; a card can be written later
        log.warning("could not write the dataset card (%s: %s); `button-ray card %s` writes it",
                    type(exc).__name__, exc, cfg.output.uri)
    return result


def _replica_metrics(pools: Pools, timeout_s: float = 10.0) -> dict[str, list[dict[str, Any]]]:
    """Each replica's metrics by pool; a replica that cannot answer (its node is gone and
    no other node can hold its restart) is reported as unavailable, not waited for."""
    return {name: [m if m is not None else {"unavailable": True} for m in metrics_within(handles, timeout_s)]
            for name, (_, handles) in pools.items()}


def _take_durable(plans: list[ShardPlan], fingerprint: str, slots: int, durable: dict[str, Outcome],
                  ledger: ShardLedger, commits: Commits) -> dict[str, list[str]]:
    """Give the ledger the items of ``plans`` that parts hold already (a resume); their
    ids by shard, for the source to skip. A shard whose items all are is committed now."""
    skip: dict[str, list[str]] = {}
    if not durable:  # a fresh run: no ids to hash
        return skip
    for plan in plans:
        ids = [stable_id(fingerprint, sid, slot) for sid in plan.scenario_ids for slot in range(slots)]
        for item_id in ids:
            if item_id in durable:
                skip.setdefault(plan.key, []).append(item_id)
                _, request = ledger.add(plan.key, durable.pop(item_id))
                if request is not None:
                    commits.submit(request)
    return skip


def _run_rounds(cfg: RunConfig, pre: Preflight, plans: list[ShardPlan], next_round: Callable[[], list[ShardPlan]],
                ledger: ShardLedger, commits: Commits, durable: dict[str, Outcome],
                progress: summ.Progress) -> dict[str, Any]:
    """Start Ray and the engines once; stream ``plans``, then every round ``next_round``
    gives, until it gives none or the ledger reaches its target.

    Returns the replicas' metrics by pool, the engines' start time, the time from the
    engines up to the end of the last round, and the number of rounds.
    """
    init_ray(cfg)
    compat.check()
    begun = time.monotonic()
    pools, infos = start_pools(cfg.pools)
    engines_up = time.monotonic()
    progress.probe = lambda: engine_activity(pools, engines_up)
    progress.start_heartbeat()
    scenarios = {s.scenario_id: s for s in pre.scenarios}
    slots = cfg.method.atomic_tasks_per_scenario
    rounds = 0
    try:
        lineage = {
            "config_fingerprint": pre.fingerprint,
            "models": {role: infos[p.name]["model"] for p in cfg.pools for role in p.roles},
            "engine_version": next(iter(infos.values()))["engine_version"],
            "template_hashes": pre.template_hashes,
        }
        while plans:
            rounds += 1
            ledger.add_plans(plans)
            skip = _take_durable(plans, pre.fingerprint, slots, durable, ledger, commits)
            todo = [p for p in plans if len(skip.get(p.key, ())) < p.items]
            progress.total += sum(p.items for p in todo) - sum(len(skip.get(p.key, ())) for p in todo)
            if todo:
                source = ItemSource(shard_rows(todo, scenarios, skip), pre.fingerprint, cfg.seed, slots,
                                    max(p.items for p in todo))
                _stream(cfg, pools, source, lineage, ledger, commits, progress)
            commits.harvest(wait=True)
            plans = [] if ledger.reached else next_round()
        progress.maybe_print(force=True)
        return {"replicas": _replica_metrics(pools),
                "engine_start_s": engines_up - begun, "stream_time_s": time.monotonic() - engines_up,
                "rounds": rounds}
    finally:
        progress.stop_heartbeat()
        # The engines end with the job, also when it fails (e.g. storage gone).
        stop_pools(pools)


def set_data_context() -> None:
    """Ray Data's settings for our streams (the generate and the scenario jobs)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    # Ray Data polls each task's memory from a thread it starts per task: with a task
    # per item per stage that was ~12% of a stage actor's CPU (bench_overhead).
    ctx.memory_usage_poll_interval_s = None
    # A stage's own error (storage gone, no engine answering) reaches the driver as itself,
    # not as Ray Data's generic UserCodeException.
    ctx.raise_original_map_exception = True


def unwrapped(batches: Any) -> Any:
    """``batches``, with a stage's own error (one of ours) re-raised as itself, so the CLI
    prints its one sentence instead of a remote traceback."""
    try:
        yield from batches
    except ray.exceptions.RayTaskError as exc:
        raise ours(exc) from None


def _stream(cfg: RunConfig, pools: Pools, source: ItemSource, lineage: dict[str, Any], ledger: ShardLedger,
            commits: Commits, progress: summ.Progress) -> dict[str, int]:
    """Run the stream: outcomes into ``ledger``, complete shards to ``commits``; return
    the source gate's counters."""
    from ray.data import ActorPoolStrategy

    set_data_context()
    rt = cfg.runtime
    # The driver's executor pays per block: larger blocks make it cheaper per item. A
    # finished item is durable at once (the writer does not wait for its block); a slow
    # item only holds back the rows of its own block on their way to the next stage.
    rows_per_block = rt.batch_size
    # items_in_flight_per_actor counts items; each actor call carries a block of them.
    calls_per_actor = -(-rt.items_in_flight_per_actor // rows_per_block)
    window = source_window(rt, source.max_shard_items)
    gate = ray.remote(SourceGate).options(num_cpus=0, max_restarts=-1, max_task_retries=-1).remote(window)
    writer = {"output_uri": cfg.output.uri, "storage_options": commits.worker_options, "lineage": lineage}
    batches = None
    try:
        ds = source.dataset(rows_per_block, gate, window)
        # The dataset's own copy of the context: the callback applies to this stream only.
        ds.context.custom_execution_callback_classes = [*ds.context.custom_execution_callback_classes,
                                                        compat.bounded_block_stats()]
        for stage, actors in (("bottom_up", rt.bottom_up_actors), ("simulate", rt.simulation_actors)):
            ds = ds.map_batches(
                STAGE_CLASSES[stage],
                fn_constructor_kwargs={"stage": stage, "method": cfg.resolved_method(), "pools": pools,
                                       "affinity": rt.affinity_routing, **(writer if stage == "simulate" else {})},
                batch_size=rows_per_block,
                batch_format="numpy",
                compute=ActorPoolStrategy(
                    size=actors,
                    max_concurrent_calls_per_actor=calls_per_actor,
                    max_tasks_in_flight_per_actor=calls_per_actor,
                ),
                num_cpus=rt.actor_num_cpus,
                resources=dict(rt.actor_resources) or None,
            )
        batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
        # Credits go back to the source in small lots (one actor call per lot, not per item).
        lot, arrived = max(1, window // 16), 0
        for batch in unwrapped(batches):
            for raw in batch["outcome"]:
                outcome = json.loads(raw)
                new, request = ledger.add(outcome["shard"], outcome)
                if new:
                    progress.update(outcome["stats"])
                if request is not None:
                    commits.submit(request)
                arrived += 1
            commits.harvest()
            if ledger.full:
                # The commits handed out reach the target: the items in flight are not needed.
                break
            if arrived >= lot:
                gate.deliver.remote(arrived)
                arrived = 0
        gate_stats = ray.get(gate.stats.remote())
    finally:
        # On an error (a failed commit), or once the target is reached, stop the stream
        # now: its actors are released instead of working on for a job that has ended.
        close = getattr(batches, "close", None)
        if close is not None:
            close()
        ray.kill(gate, no_restart=True)
    missing = {k: n for k, n in ledger.missing().items() if n}
    if missing and not ledger.full:
        raise RuntimeError(f"stream ended with incomplete shards (shard: items missing): {missing}")
    return gate_stats

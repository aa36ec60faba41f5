"""A Ray actor hosting one engine replica.

Ray concerns only: admission (the actor's ``max_concurrency`` bounds requests in the
engine; the rest wait in Ray's queue), restarts (``max_restarts``), and exit when the
engine is dead so that Ray replaces the process instead of it looping on errors. The
engine is started lazily on the first call after every (re)start, so a restarted actor
comes back without the driver's help. An engine that cannot start on that path is a
dead replica (:class:`ReplicaFatalError`), never a record's failure: the callers fail
over, and the job stops if no replica comes back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Sequence

import ray

from button_ray.config import PoolConfig
from button_ray.errors import EngineStartError, ReplicaFatalError, ReplicaNotReadyError
from button_ray.llm.contract import LLMRequest, LLMResponse
from button_ray.llm.engine import load_engine_class

log = logging.getLogger(__name__)

#: Delay before a replica with a dead engine exits: long enough for the error reply to
#: leave the actor, short enough that callers' retries land on a fresh process.
_EXIT_DELAY_S = 0.2
#: How long :func:`stop_pools` lets the replicas shut their engines down before killing
#: them (vLLM takes about a second; a replica never placed never answers).
_SHUTDOWN_TIMEOUT_S = 10.0


class LLMReplica:
    """One engine behind a Ray actor; wrap with :func:`replica_actor_class`."""

    def __init__(self, pool: PoolConfig, index: int) -> None:
        self.pool = pool
        self.index = index
        self.engine = load_engine_class(pool.engine_class)(engine_pool(pool))
        self._started = False
        self._ready_at = 0.0
        self._start_task: asyncio.Task | None = None
        self._exiting = False
        self.served = 0
        self.in_flight = 0
        #: Requests that waited for the engine to (re)load: the pool client sends none
        #: that may wait while another replica is ready.
        self.waited_for_load = 0

    async def _ensure_started(self) -> None:
        if not self._started:
            await asyncio.shield(self._begin_start())

    def _begin_start(self) -> asyncio.Task:
        # One start per process, in a task of its own: a caller cancelled while it waits
        # does not cancel the load, and callers after a failed start get its error
        # instead of starting the engine again.
        if self._start_task is None:
            self._start_task = asyncio.ensure_future(self._start())
        return self._start_task

    async def _start(self) -> None:
        await self.engine.start()
        self._ready_at = time.monotonic()
        self._started = True

    def _start_failed(self) -> bool:
        return self._start_task is not None and self._start_task.done() and not self._started

    async def ready(self) -> dict[str, Any]:
        """Start the engine; return what the driver records in lineage.

        Also the pool clients' readiness probe: it returns once the engine of this
        process is loaded, so a client that saw the replica fail learns when it may route
        to it again, and the probe itself starts the engine of a restarted replica."""
        if self._exiting:
            # Between a dead engine and the exit: not ready, the process is going away.
            raise ReplicaFatalError(f"replica {self.pool.name}/{self.index} is exiting (dead engine)")
        await self._ensure_started()
        ctx = ray.get_runtime_context()
        return {
            "pool": self.pool.name,
            "index": self.index,
            "model": self.engine.model_name,
            "engine_version": self.engine.engine_version,
            "pid": os.getpid(),
            "node_id": ctx.get_node_id(),
            "gpu_ids": ctx.get_accelerator_ids().get("GPU", []),
        }

    # Ten or more calls per trajectory: their task events (kept by the GCS, sent by
    # every caller) would grow with the run and say nothing the metrics do not.
    @ray.method(enable_task_events=False)
    async def generate(self, request: LLMRequest, wait_for_load: bool = True) -> LLMResponse:
        """Serve one request; on a dead engine, answer the error and exit the process.

        While the engine is (re)loading, a request that may not wait for it
        (``wait_for_load=False``: the caller has a ready replica) is refused with
        :class:`ReplicaNotReadyError`, and the load goes on."""
        if not self._started and not self._start_failed():
            if not wait_for_load:
                self._begin_start()
                raise ReplicaNotReadyError(f"replica {self.pool.name}/{self.index} is loading its engine")
            self.waited_for_load += 1
        self.in_flight += 1
        try:
            try:
                await self._ensure_started()
            except Exception as exc:
                raise ReplicaFatalError(f"engine could not start: {type(exc).__name__}: {exc}") from exc
            response = await self.engine.generate(request)
        except ReplicaFatalError:
            log.error("replica %s/%d: engine is dead; exiting so Ray replaces it", self.pool.name, self.index)
            self._exiting = True
            asyncio.get_running_loop().call_later(_EXIT_DELAY_S, os._exit, 1)
            raise
        finally:
            self.in_flight -= 1
        self.served += 1
        return response

    @ray.method(concurrency_group="control")
    async def shutdown(self) -> None:
        """Shut the engine down, so that its processes and memory end in order, not with a
        killed actor or in the interpreter's teardown (where vLLM's finalizer fails)."""
        # An engine still loading is ended by the kill that follows.
        if self._started:
            await self.engine.shutdown()

    @ray.method(concurrency_group="control")
    async def metrics(self) -> dict[str, Any]:
        """Engine counters, requests in flight now, whether the engine is still (re)starting
        and for how long it has been ready (a request's deadline counts from then: the
        load time is not the request's), and this process's identity (pid changes on restart)."""
        return {**self.engine.metrics(), "served": self.served, "in_flight": self.in_flight,
                "waited_for_load": self.waited_for_load,
                "starting": not self._started and not self._start_failed(),
                "ready_for_s": time.monotonic() - self._ready_at if self._started else 0.0,
                "pid": os.getpid(), "index": self.index}


def engine_pool(pool: PoolConfig) -> PoolConfig:
    """``pool`` as its engine sees it: placed in a placement group, vLLM runs its ranks as
    Ray workers in the group's GPU bundles (the replica's own bundle holds no GPU)."""
    if pool.placement == "actor" or "distributed_executor_backend" in pool.engine.extra:
        return pool
    extra = {**pool.engine.extra, "distributed_executor_backend": "ray"}
    return pool.model_copy(update={"engine": pool.engine.model_copy(update={"extra": extra})})


def placement_bundles(pool: PoolConfig) -> list[dict[str, float]]:
    """One replica's placement group: its own bundle (CPU and custom resources), then one
    1-GPU bundle per engine rank."""
    own = {**({"CPU": pool.num_cpus} if pool.num_cpus else {}), **pool.resources}
    return [own or {"CPU": 0.01}, *({"GPU": 1.0} for _ in range(int(pool.num_gpus)))]


#: Placement groups this driver created, by pool name (removed by :func:`stop_pools`).
_GROUPS: dict[str, list[Any]] = {}


def start_replicas(pool: PoolConfig, name_prefix: str | None = None) -> list[Any]:
    """Create ``pool.replicas`` actors (not yet ready: call ``ready`` on each)."""
    # metrics() answers even when max_inflight requests fill the default group: the
    # pool client asks it whether a replica past a deadline is busy or hung.
    cls = ray.remote(concurrency_groups={"control": 2})(LLMReplica)
    handles = []
    for i in range(pool.replicas):
        options: dict[str, Any] = {
            "num_cpus": pool.num_cpus,
            "num_gpus": pool.num_gpus,
            "resources": dict(pool.resources),
            "max_concurrency": pool.max_inflight,
            # Replace a dead replica; callers retry its in-flight requests elsewhere.
            "max_restarts": -1,
            "max_task_retries": 0,
            # vLLM logs every engine step detail at INFO; job logs want our progress lines.
            # Env vars merge with the job's runtime_env; the user's setting wins.
            "runtime_env": {"env_vars": {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}},
        }
        if name_prefix:
            options["name"] = f"{name_prefix}-{pool.name}-{i}"
        if pool.placement != "actor":
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            group = placement_group(placement_bundles(pool), strategy=pool.placement)
            _GROUPS.setdefault(pool.name, []).append(group)
            # The replica sits in bundle 0; the engine's rank workers it starts are
            # captured into the group and take the GPU bundles.
            options.update(num_cpus=0, num_gpus=0, resources={}, scheduling_strategy=PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True))
        handles.append(cls.options(**options).remote(pool, i))
    return handles


def placement_groups(pool_name: str) -> list[Any]:
    """The placement groups of a pool's replicas, in replica order ([] with placement 'actor')."""
    return list(_GROUPS.get(pool_name, ()))


Pools = dict[str, tuple[PoolConfig, list[Any]]]


def start_pools(pools: Sequence[PoolConfig]) -> tuple[Pools, dict[str, dict[str, Any]]]:
    """Start every pool's replicas and wait until each is ready (its engine loaded).

    Returns the pools (config, handles) by name and each pool's first ``ready`` info.
    A replica that fails to start, or is not ready within its pool's
    ``start_timeout_s``, stops every replica and raises :class:`EngineStartError`
    with one sentence naming the cause.
    """
    started: Pools = {}
    try:
        for pool in pools:
            started[pool.name] = (pool, start_replicas(pool))
        infos = {name: _wait_ready(pool, handles) for name, (pool, handles) in started.items()}
    except BaseException:
        stop_pools(started)
        raise
    return started, infos


def stop_pools(pools: Pools) -> None:
    """Shut every replica's engine down (waiting at most ``_SHUTDOWN_TIMEOUT_S``), then kill
    the replicas of ``pools``."""
    handles = [h for _, pool_handles in pools.values() for h in pool_handles]
    shutdowns = []
    for h in handles:
        try:
            shutdowns.append(h.shutdown.remote())
        except Exception:  # noqa: BLE001 - already gone
            pass
    if shutdowns:
        ray.wait(shutdowns, num_returns=len(shutdowns), timeout=_SHUTDOWN_TIMEOUT_S)
    for h in handles:
        try:
            ray.kill(h, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
    from ray.util.placement_group import remove_placement_group

    for name in pools:
        for group in _GROUPS.pop(name, ()):
            try:
                remove_placement_group(group)
            except Exception:  # noqa: BLE001 - already gone with its cluster
                pass


def _wait_ready(pool: PoolConfig, handles: list[Any]) -> dict[str, Any]:
    refs = [h.ready.remote() for h in handles]
    deadline = time.monotonic() + pool.start_timeout_s
    infos: dict[int, dict[str, Any]] = {}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            waiting = [i for i, ref in enumerate(refs) if ref in pending]
            raise EngineStartError(_not_ready(pool, handles, waiting))
        try:
            infos[refs.index(done[0])] = ray.get(done[0])
        except Exception as exc:  # noqa: BLE001 - the engine's own error is the message
            raise EngineStartError(f"pool {pool.name!r} failed to start its engine: {exc}") from exc
    return infos[0]


def _resources(pool: PoolConfig) -> dict[str, float]:
    return {**{k: v for k, v in (("CPU", pool.num_cpus), ("GPU", pool.num_gpus)) if v}, **pool.resources}


def _fmt(resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(resources.items())) or "nothing"


def _not_ready(pool: PoolConfig, handles: list[Any], waiting: list[int]) -> str:
    """Why replicas ``waiting`` of ``pool`` are not ready: placed and loading, or not placed."""
    loading = []
    for i in waiting:
        try:
            if ray.get(handles[i].metrics.remote(), timeout=5)["starting"]:
                loading.append(i)
        except Exception:  # noqa: BLE001 - an actor not placed yet does not answer
            pass
    which = f"replica{'s' if len(waiting) > 1 else ''} {', '.join(map(str, waiting))} of pool {pool.name!r}"
    after = f"after {pool.start_timeout_s:g} s"
    if loading:
        return (f"{which} did not start {after}: the engine is still loading (model download or load); "
                f"raise pools[].start_timeout_s, or cache the weights near the nodes")
    if pool.placement != "actor":
        free = ray.available_resources()
        return (f"{which} not placed {after}: its placement group ({_fmt(_resources(pool))} in bundles "
                f"{placement_bundles(pool)}, strategy {pool.placement}) cannot be placed (free in the whole "
                f"cluster now: {_fmt({k: free.get(k, 0) for k in ('CPU', 'GPU')})}); add nodes, choose a looser "
                "placement, or lower replicas")
    demand = _resources(pool)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(all(n.get(k, 0) >= v for k, v in demand.items()) for n in nodes):
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        return (f"{which} cannot be placed: each replica needs {_fmt(demand)} on one node, and no node of this "
                f"cluster has that many (the largest has {_fmt({k: largest.get(k, 0) for k in ('CPU', 'GPU')})}); "
                "add such nodes (cluster/README.md) or lower num_gpus with tensor_parallel_size")
    free = ray.available_resources()
    return (f"{which} not placed {after}: each replica needs {_fmt(demand)} on one node, and the nodes that have "
            f"that many are busy (free in the whole cluster now: {_fmt({k: free.get(k, 0) for k in demand})}); "
            "free them, add nodes, or lower replicas")

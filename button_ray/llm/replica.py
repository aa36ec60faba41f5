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
from typing import Any

import ray

from button_ray.config import PoolConfig
from button_ray.llm.contract import LLMRequest, LLMResponse, ReplicaFatalError
from button_ray.llm.engine import load_engine_class

log = logging.getLogger(__name__)

#: Delay before a replica with a dead engine exits: long enough for the error reply to
#: leave the actor, short enough that callers' retries land on a fresh process.
_EXIT_DELAY_S = 0.2


class LLMReplica:
    """One engine behind a Ray actor; wrap with :func:`replica_actor_class`."""

    def __init__(self, pool: PoolConfig, index: int) -> None:
        self.pool = pool
        self.index = index
        self.engine = load_engine_class(pool.engine_class)(pool)
        self._started = False
        self._start_error: BaseException | None = None
        self._start_lock = asyncio.Lock()
        self.served = 0
        self.in_flight = 0

    async def _ensure_started(self) -> None:
        if self._started:
            return
        async with self._start_lock:
            if self._start_error is not None:
                # Requests queued behind a failed start do not start the engine again.
                raise self._start_error
            if not self._started:
                try:
                    await self.engine.start()
                except Exception as exc:
                    self._start_error = exc
                    raise
                self._started = True

    async def ready(self) -> dict[str, Any]:
        """Start the engine; return what the driver records in lineage."""
        await self._ensure_started()
        return {
            "pool": self.pool.name,
            "index": self.index,
            "model": self.engine.model_name,
            "engine_version": self.engine.engine_version,
            "pid": os.getpid(),
        }

    # Ten or more calls per trajectory: their task events (kept by the GCS, sent by
    # every caller) would grow with the run and say nothing the metrics do not.
    @ray.method(enable_task_events=False)
    async def generate(self, request: LLMRequest) -> LLMResponse:
        """Serve one request; on a dead engine, answer the error and exit the process."""
        self.in_flight += 1
        try:
            try:
                await self._ensure_started()
            except Exception as exc:
                raise ReplicaFatalError(f"engine could not start: {type(exc).__name__}: {exc}") from exc
            response = await self.engine.generate(request)
        except ReplicaFatalError:
            log.error("replica %s/%d: engine is dead; exiting so Ray replaces it", self.pool.name, self.index)
            asyncio.get_running_loop().call_later(_EXIT_DELAY_S, os._exit, 1)
            raise
        finally:
            self.in_flight -= 1
        self.served += 1
        return response

    @ray.method(concurrency_group="control")
    async def metrics(self) -> dict[str, Any]:
        """Engine counters, requests in flight now, and this process's identity (pid changes on restart)."""
        return {**self.engine.metrics(), "served": self.served, "in_flight": self.in_flight,
                "pid": os.getpid(), "index": self.index}


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
        handles.append(cls.options(**options).remote(pool, i))
    return handles

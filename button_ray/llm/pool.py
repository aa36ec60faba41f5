"""The client side of the replica pools: routing, failover and deadlines.

A :class:`PoolClient` lives in every pipeline actor and implements ``LLMClient``.
Routing is decided locally, with no router actor on the request path (no extra hop,
no central bottleneck):

* a request with an ``affinity_key`` seen before goes to the replica that served that
  key (one trajectory stays on one replica, so its growing prefix stays cached);
* otherwise the replica with the fewest requests outstanding from this client wins
  (ties broken by a per-client rotation, so many clients do not pile onto replica 0).

A replica that dies mid-request (actor error, or its engine reported dead) is skipped
and the request goes to another replica; Ray restarts the dead one. The client then
counts that replica as not ready and routes nothing to it while another replica is
ready: a restarted replica loads its engine first (minutes for a large model), and a
request sent there would wait for the whole load. A readiness probe (the replica's
``ready``, which also starts the engine of a restarted replica) tells the client when
to route there again. A new client first asks every replica (a control call, answered at
once) and counts one that does not answer within a few seconds as not ready: a client
made after a node was lost (a restarted stage actor) must not send requests to a
replica whose restart no node can hold.

Deadlines tell a hung engine from a busy one, and count from when the replica's engine
became ready (a load is not the request's time): past ``request_timeout_s`` a request is
given up only if its replica completed no request at all during a further progress
window. A slow engine with a deep queue (a CPU, a saturated GPU) keeps its requests. A
replica still (re)loading its engine refuses a request while the client has a ready
one (the request moves there); with none ready, the request waits for the load, for up
to ``start_timeout_s``. A replica that
serves nothing has its request cancelled and retried once elsewhere, and a second such
timeout stops the job (:class:`LLMUnavailableError`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

from button_ray.config import PoolConfig
from button_ray.errors import LLMRequestError, LLMUnavailableError, ReplicaFatalError, ReplicaNotReadyError
from button_ray.llm.contract import LLMRequest, LLMResponse

log = logging.getLogger(__name__)

_AFFINITY_CAPACITY = 100_000
#: How long a new client waits for each replica's first answer before routing to it.
_FIRST_CHECK_S = 5.0
#: Past the deadline, how long a replica gets to show progress (complete any request).
_PROGRESS_WINDOW_S = 60.0
#: First and longest pause between readiness probes of a replica that did not answer one
#: (its process is being restarted, or its engine failed to start).
_PROBE_BACKOFF_S = (0.5, 10.0)


def metrics_within(handles: list[Any], timeout_s: float) -> list[dict[str, Any] | None]:
    """Each replica's metrics (a control call, never queued behind requests), or None for
    one that does not answer within ``timeout_s`` (dead, or restarting on a node that is
    gone)."""
    refs = [h.metrics.remote() for h in handles]
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    out: list[dict[str, Any] | None] = []
    for ref in refs:
        try:
            out.append(ray.get(ref) if ref in done else None)
        except Exception:  # noqa: BLE001 - the replica's actor failed
            out.append(None)
    return out


def answering(handles: list[Any], timeout_s: float = _FIRST_CHECK_S) -> list[bool]:
    """Whether each replica answers its metrics within ``timeout_s`` with its engine up."""
    return [m is not None and not m["starting"] for m in metrics_within(handles, timeout_s)]


class _Pool:
    def __init__(self, config: PoolConfig, handles: list[Any], rotation: int) -> None:
        self.config = config
        self.handles = handles
        self.outstanding = [0] * len(handles)
        # start_pools waited for every replica, but a client made later (a stage actor
        # Ray restarted after a node was lost) may find one that never comes back: a
        # request sent there would wait out its whole deadline.
        self.ready = answering(handles)
        self._probes: dict[int, asyncio.Task] = {}
        self.affinity: OrderedDict[str, int] = OrderedDict()
        self._tiebreak = itertools.count(rotation)

    def any_ready(self, besides: int | None = None) -> bool:
        return any(ok for i, ok in enumerate(self.ready) if i != besides)

    def pick(self, key: str | None, exclude: set[int]) -> int:
        held = self.affinity.get(key) if key is not None else None
        if held is not None and held not in exclude and (self.ready[held] or not self.any_ready()):
            self.affinity.move_to_end(key)
            return held
        n = len(self.handles)
        start = next(self._tiebreak) % n
        order = [(start + i) % n for i in range(n)]
        allowed = [i for i in order if i not in exclude] or order
        candidates = [i for i in allowed if self.ready[i]] or allowed
        choice = min(candidates, key=lambda i: self.outstanding[i])
        if key is not None:
            self.affinity[key] = choice
            self.affinity.move_to_end(key)
            if len(self.affinity) > _AFFINITY_CAPACITY:
                self.affinity.popitem(last=False)
        return choice

    def not_ready(self, idx: int) -> None:
        """Route nothing to replica ``idx`` (while another is ready) until its probe answers."""
        self.ready[idx] = False
        self.keep_probing()

    def keep_probing(self) -> None:
        """Probe every replica counted as not ready that has no probe running (a probe
        ends with the event loop that ran it)."""
        for idx, ok in enumerate(self.ready):
            probe = self._probes.get(idx)
            if not ok and (probe is None or probe.done()):
                self._probes[idx] = asyncio.get_running_loop().create_task(self._probe(idx))

    async def _probe(self, idx: int) -> None:
        pause, longest = _PROBE_BACKOFF_S
        while True:
            try:
                await self.handles[idx].ready.remote()
            except Exception:  # noqa: BLE001 - restarting, or its engine failed to start: ask again
                await asyncio.sleep(pause)
                pause = min(2 * pause, longest)
                continue
            self.ready[idx] = True
            return


class PoolClient:
    """``LLMClient`` over one or more replica pools (one per role group)."""

    def __init__(
        self,
        pools: dict[str, tuple[PoolConfig, list[Any]]],
        client_index: int = 0,
        max_failovers: int = 6,
        affinity: bool = True,
    ) -> None:
        self._pools = {name: _Pool(cfg, handles, client_index) for name, (cfg, handles) in pools.items()}
        self._by_role = {role: name for name, (cfg, _) in pools.items() for role in cfg.roles}
        self.max_failovers = max_failovers
        self.affinity = affinity
        self.failovers = 0
        self.timeouts = 0
        #: Requests refused by a (re)loading replica and sent to a ready one.
        self.moved = 0

    def outstanding(self) -> dict[str, list[int]]:
        return {name: list(p.outstanding) for name, p in self._pools.items()}

    async def generate(self, request: LLMRequest) -> LLMResponse:
        pool = self._pools[self._by_role[request.role]]
        key = request.affinity_key if self.affinity else None
        exclude: set[int] = set()
        timed_out = False
        last_error: BaseException | None = None
        pool.keep_probing()
        for attempt in range(self.max_failovers + 1):
            idx = pool.pick(key, exclude)
            pool.outstanding[idx] += 1
            # A request waits for a (re)loading engine only when no other replica is ready.
            ref = pool.handles[idx].generate.remote(request, not pool.any_ready(besides=idx))
            try:
                return await self._wait(pool, idx, ref)
            except LLMRequestError:
                raise
            except ReplicaNotReadyError:
                self.moved += 1
                pool.not_ready(idx)
            except (asyncio.TimeoutError, GetTimeoutError) as exc:
                ray.cancel(ref)
                self.timeouts += 1
                if timed_out:
                    raise LLMUnavailableError(
                        f"request {request.request_id} exceeded {pool.config.request_timeout_s}s twice "
                        "on replicas that completed no request meanwhile (hung engines)"
                    ) from exc
                timed_out, last_error = True, exc
            except (ActorDiedError, ActorUnavailableError, RayActorError, ReplicaFatalError) as exc:
                last_error = exc
                self.failovers += 1
                log.warning("replica %s/%d failed (%s); retrying elsewhere", pool.config.name, idx,
                            type(exc).__name__)
                pool.not_ready(idx)
                if not pool.any_ready():
                    # Back off so a restarting replica (and its engine) has time to come back.
                    await asyncio.sleep(min(0.5 * 2**attempt, 10.0))
            finally:
                pool.outstanding[idx] -= 1
            exclude.add(idx)
            if len(exclude) >= len(pool.handles):
                exclude.clear()
            if key is not None:
                pool.affinity.pop(key, None)
        raise LLMUnavailableError(
            f"request {request.request_id}: no replica of pool {pool.config.name!r} answered "
            f"after {self.max_failovers + 1} attempts: {last_error!r}"
        )

    async def _wait(self, pool: _Pool, idx: int, ref: Any) -> LLMResponse:
        """Await ``ref``, sent to replica ``idx`` of ``pool``.

        The deadline counts from when the replica's engine became ready, not from the
        send; past it, wait on while the replica keeps completing requests. While its
        engine is (re)loading, wait for the load, for at most ``start_timeout_s``.
        """
        handle, timeout = pool.handles[idx], pool.config.request_timeout_s
        fut = asyncio.wrap_future(ref.future())
        sent = time.monotonic()
        window = min(timeout, _PROGRESS_WINDOW_S)
        wait = timeout
        progress: dict[str, Any] | None = None
        loading_since: float | None = None
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(fut), wait)
            except asyncio.TimeoutError:
                pass
            now = await _progress(handle)
            # A replica this client saw fail and has not seen ready since is being
            # restarted, not hung, also while its new process does not answer yet.
            if now["starting"] if now is not None else not pool.ready[idx]:
                loading_since = loading_since if loading_since is not None else time.monotonic()
                if time.monotonic() - loading_since > pool.config.start_timeout_s:
                    break
                wait = window
                continue
            if now is None:
                break
            loading_since = None
            counted = min(time.monotonic() - sent, now["ready_for_s"])
            if counted < timeout:
                wait = timeout - counted
                continue
            if progress is not None and now["served"] <= progress["served"]:
                break
            progress, wait = now, window
        fut.cancel()
        raise asyncio.TimeoutError


async def _progress(handle: Any) -> dict[str, Any] | None:
    """Requests the replica has completed and whether it is starting (None: it does not answer)."""
    try:
        return await asyncio.wait_for(handle.metrics.remote(), timeout=_PROGRESS_WINDOW_S / 2)
    except Exception:  # noqa: BLE001 - a replica that cannot report is treated as hung
        return None

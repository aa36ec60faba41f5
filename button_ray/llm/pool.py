"""The client side of the replica pools: routing, failover and deadlines.

A :class:`PoolClient` lives in every pipeline actor and implements ``LLMClient``.
Routing is decided locally, with no router actor on the request path (no extra hop,
no central bottleneck):

* a request with an ``affinity_key`` seen before goes to the replica that served that
  key (one trajectory stays on one replica, so its growing prefix stays cached);
* otherwise the replica with the fewest requests outstanding from this client wins
  (ties broken by a per-client rotation, so many clients do not pile onto replica 0).

A replica that dies mid-request (actor error, or its engine reported dead) is skipped
and the request goes to another replica; Ray restarts the dead one.

Deadlines tell a hung engine from a busy one: past ``request_timeout_s`` a request is
given up only if its replica completed no request at all during a further progress
window. A slow engine with a deep queue (a CPU, a saturated GPU) keeps its requests, and
so does a replica that is (re)loading its engine, for up to ``start_timeout_s``;
a replica that serves nothing has its request cancelled and retried once elsewhere,
and a second such timeout stops the job (:class:`LLMUnavailableError`).
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
from button_ray.errors import LLMRequestError, LLMUnavailableError, ReplicaFatalError
from button_ray.llm.contract import LLMRequest, LLMResponse

log = logging.getLogger(__name__)

_AFFINITY_CAPACITY = 100_000
#: Past the deadline, how long a replica gets to show progress (complete any request).
_PROGRESS_WINDOW_S = 60.0


class _Pool:
    def __init__(self, config: PoolConfig, handles: list[Any], rotation: int) -> None:
        self.config = config
        self.handles = handles
        self.outstanding = [0] * len(handles)
        self.affinity: OrderedDict[str, int] = OrderedDict()
        self._tiebreak = itertools.count(rotation)

    def pick(self, key: str | None, exclude: set[int]) -> int:
        if key is not None and key in self.affinity and self.affinity[key] not in exclude:
            self.affinity.move_to_end(key)
            return self.affinity[key]
        n = len(self.handles)
        start = next(self._tiebreak) % n
        order = [(start + i) % n for i in range(n)]
        candidates = [i for i in order if i not in exclude] or order
        choice = min(candidates, key=lambda i: self.outstanding[i])
        if key is not None:
            self.affinity[key] = choice
            self.affinity.move_to_end(key)
            if len(self.affinity) > _AFFINITY_CAPACITY:
                self.affinity.popitem(last=False)
        return choice


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

    def outstanding(self) -> dict[str, list[int]]:
        return {name: list(p.outstanding) for name, p in self._pools.items()}

    async def generate(self, request: LLMRequest) -> LLMResponse:
        pool = self._pools[self._by_role[request.role]]
        key = request.affinity_key if self.affinity else None
        exclude: set[int] = set()
        timed_out = False
        last_error: BaseException | None = None
        for attempt in range(self.max_failovers + 1):
            idx = pool.pick(key, exclude)
            pool.outstanding[idx] += 1
            ref = pool.handles[idx].generate.remote(request)
            try:
                return await self._wait(pool.handles[idx], ref, pool.config.request_timeout_s,
                                        pool.config.start_timeout_s)
            except LLMRequestError:
                raise
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

    async def _wait(self, handle: Any, ref: Any, timeout: float, start_timeout: float) -> LLMResponse:
        """Await ``ref``; past ``timeout``, wait on while ``handle`` keeps completing requests,
        or is (re)starting its engine (for at most ``start_timeout``: a load is not a hang)."""
        fut = asyncio.wrap_future(ref.future())
        window = min(timeout, _PROGRESS_WINDOW_S)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            pass
        progress = await _progress(handle)
        loading_since: float | None = None
        while progress is not None:
            try:
                return await asyncio.wait_for(asyncio.shield(fut), window)
            except asyncio.TimeoutError:
                now = await _progress(handle)
                if now is None:
                    break
                if now["starting"]:
                    loading_since = loading_since if loading_since is not None else time.monotonic()
                    if time.monotonic() - loading_since > start_timeout:
                        break
                    continue
                loading_since = None
                if now["served"] <= progress["served"]:
                    break
                progress = now
        fut.cancel()
        raise asyncio.TimeoutError


async def _progress(handle: Any) -> dict[str, Any] | None:
    """Requests the replica has completed and whether it is starting (None: it does not answer)."""
    try:
        return await asyncio.wait_for(handle.metrics.remote(), timeout=_PROGRESS_WINDOW_S / 2)
    except Exception:  # noqa: BLE001 - a replica that cannot report is treated as hung
        return None

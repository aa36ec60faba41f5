"""Router and replica actors on a real local Ray cluster, with a scripted engine
(``tests.fakes.EchoEngine``: no language model, scripted latency, load time and faults)."""

import asyncio
import time

import pytest

from button_ray.config import EngineConfig, PoolConfig
from button_ray.llm.contract import ChatMessage, LLMRequest
from button_ray.llm.pool import PoolClient
from button_ray.llm.replica import Pools, start_replicas, stop_pools
from tests.storage.helpers import actor_info

pytestmark = pytest.mark.ray


@pytest.fixture
def replicas(ray_local):
    """Starts a pool's replica actors; stops them when the test ends, also when it fails."""
    started: Pools = {}

    def start(pool: PoolConfig) -> list:
        handles = start_replicas(pool)
        started[f"{pool.name}-{len(started)}"] = (pool, handles)
        return handles

    yield start
    stop_pools(started)


def _pool(**extra) -> PoolConfig:
    return PoolConfig(replicas=2, num_cpus=0.1, engine_class="tests.fakes:EchoEngine",
                      engine=EngineConfig(extra=extra))


def _restarts(handle) -> int:
    """How often Ray restarted the replica actor."""
    return actor_info(handle._actor_id.hex())["NumRestarts"]


def _req(i: int, key: str | None) -> LLMRequest:
    return LLMRequest(role="assistant_agent", messages=(ChatMessage(role="user", content="x"),),
                      affinity_key=key, request_id=f"r{i}")


def test_affinity_holds_and_load_spreads(ray_local, replicas):
    pool = _pool(latency_s=0.02)
    handles = replicas(pool)
    ray_local.get([h.ready.remote() for h in handles])
    client = PoolClient({"main": (pool, handles)})

    async def trajectory(t: int):
        for turn in range(5):
            resp = await client.generate(_req(t * 10 + turn, f"traj-{t}"))
            assert resp.text == f"r{t * 10 + turn}"

    async def main():
        await asyncio.gather(*(trajectory(t) for t in range(40)))

    asyncio.run(main())
    metrics = ray_local.get([h.metrics.remote() for h in handles])
    keys = [set(m["affinity_keys"]) for m in metrics]
    assert keys[0].isdisjoint(keys[1]), "a trajectory was split across replicas"
    assert keys[0] | keys[1] == {f"traj-{t}" for t in range(40)}
    served = [m["served"] for m in metrics]
    assert sum(served) == 200
    assert min(served) >= 60, f"load did not spread: {served}"


def test_without_affinity_least_outstanding_spreads_one_key(ray_local, replicas):
    pool = _pool(latency_s=0.05)
    handles = replicas(pool)
    ray_local.get([h.ready.remote() for h in handles])
    client = PoolClient({"main": (pool, handles)}, affinity=False)

    async def main():
        await asyncio.gather(*(client.generate(_req(i, "same-key")) for i in range(20)))

    asyncio.run(main())
    served = [m["served"] for m in ray_local.get([h.metrics.remote() for h in handles])]
    assert served == [10, 10]


def test_dead_engine_replica_is_replaced_and_request_retried(ray_local, replicas):
    pool = _pool(die_after=3)
    handles = replicas(pool)
    infos = ray_local.get([h.ready.remote() for h in handles])
    client = PoolClient({"main": (pool, handles)})

    async def main():
        return await asyncio.gather(*(client.generate(_req(i, None)) for i in range(12)))

    responses = asyncio.run(main())
    # Every request answered exactly once, although replicas died along the way.
    assert sorted(r.text for r in responses) == sorted(f"r{i}" for i in range(12))
    assert client.failovers >= 1
    after = ray_local.get([h.metrics.remote() for h in handles])
    assert {m["pid"] for m in after} != {i["pid"] for i in infos}, "no replica process was replaced"


def test_a_busy_replica_keeps_a_request_past_its_deadline(ray_local, replicas, monkeypatch):
    """Past the deadline, a replica that keeps completing other requests is slow, not hung."""
    from button_ray.llm import pool as pool_mod

    monkeypatch.setattr(pool_mod, "_PROGRESS_WINDOW_S", 1.0)
    pool = PoolConfig(replicas=1, num_cpus=0.1, engine_class="tests.fakes:EchoEngine", request_timeout_s=1.0,
                      engine=EngineConfig(extra={"latency_s": 0.1, "latency_by_request": {"r0": 4.0}}))
    handles = replicas(pool)
    ray_local.get([h.ready.remote() for h in handles])
    client = PoolClient({"main": (pool, handles)})

    async def others():
        for i in range(1, 60):  # ~6 s of other requests completing meanwhile
            await client.generate(_req(i, None))

    async def main():
        slow, _ = await asyncio.gather(client.generate(_req(0, None)), others())
        return slow

    assert asyncio.run(main()).text == "r0"
    assert client.timeouts == 0
    assert ray_local.get(handles[0].metrics.remote())["requests"] == 60  # r0 was sent once


def test_a_hung_replica_times_out_and_the_job_stops(ray_local, replicas, monkeypatch):
    """A request on replicas that complete nothing is retried once elsewhere, then stops the job."""
    from button_ray.llm import pool as pool_mod
    from button_ray.errors import LLMUnavailableError

    monkeypatch.setattr(pool_mod, "_PROGRESS_WINDOW_S", 1.0)
    pool = PoolConfig(replicas=2, num_cpus=0.1, engine_class="tests.fakes:EchoEngine", request_timeout_s=1.0,
                      engine=EngineConfig(extra={"latency_by_request": {"r0": 3600.0}}))
    handles = replicas(pool)
    ray_local.get([h.ready.remote() for h in handles])
    client = PoolClient({"main": (pool, handles)})
    with pytest.raises(LLMUnavailableError, match="hung engines"):
        asyncio.run(client.generate(_req(0, None)))
    assert client.timeouts == 2
    # One attempt on each replica, each cancelled.
    assert [ray_local.get(h.metrics.remote())["requests"] for h in handles] == [1, 1]
    assert [ray_local.get(h.metrics.remote())["in_flight"] for h in handles] == [0, 0]


def test_a_replica_reloading_its_engine_keeps_its_requests_past_the_deadline(ray_local, replicas, monkeypatch):
    """A replica restarted after a dead engine takes longer to load than a request's deadline:
    the load is not a hang, so its requests wait (bounded by start_timeout_s) instead of
    timing out twice and stopping the job."""
    from button_ray.llm import pool as pool_mod

    monkeypatch.setattr(pool_mod, "_PROGRESS_WINDOW_S", 1.0)
    pool = PoolConfig(replicas=1, num_cpus=0.1, engine_class="tests.fakes:EchoEngine", request_timeout_s=1.0,
                      start_timeout_s=60, engine=EngineConfig(extra={"die_after": 2, "restart_latency_s": 6.0}))
    handles = replicas(pool)
    first = ray_local.get(handles[0].ready.remote())
    client = PoolClient({"main": (pool, handles)})

    async def main():
        return [(await client.generate(_req(i, None))).text for i in range(4)]

    assert asyncio.run(main()) == ["r0", "r1", "r2", "r3"]
    # The fault happened: the engine died, the replica came back in a new process, and
    # with no other replica the retried request waited there for the 6 s load.
    assert client.failovers >= 1
    after = ray_local.get(handles[0].metrics.remote())
    assert after["pid"] != first["pid"] and _restarts(handles[0]) == 1
    assert after["waited_for_load"] >= 1
    assert client.timeouts == 0, "the reload was counted against the request's deadline"


def test_a_restarted_replica_gets_no_request_until_its_engine_is_ready(ray_local, replicas):
    """Replica 0 is killed and Ray restarts it; its scripted engine then loads for 6 s.
    Meanwhile the client sends every request to replica 1 (a request that meets the
    loading replica first is refused there and moved), and no deadline (2 s) fails; once
    the readiness probe finds replica 0 loaded, it gets requests again."""
    pool = PoolConfig(replicas=2, num_cpus=0.1, engine_class="tests.fakes:EchoEngine", request_timeout_s=2.0,
                      engine=EngineConfig(extra={"latency_s": 0.05, "restart_latency_s": 6.0}))
    handles = replicas(pool)
    first = ray_local.get([h.ready.remote() for h in handles])
    client = PoolClient({"main": (pool, handles)}, affinity=False)
    ray_local.kill(handles[0], no_restart=False)
    sent = []

    async def worker():
        t0 = time.monotonic()
        while time.monotonic() - t0 < 12:  # across the restart and load, and after it
            i = len(sent)
            sent.append(i)
            assert (await client.generate(_req(i, None))).text == f"r{i}"

    async def main():
        await asyncio.gather(*(worker() for _ in range(4)))

    asyncio.run(main())
    restarted, other = ray_local.get([h.metrics.remote() for h in handles])
    assert restarted["pid"] != first[0]["pid"] and _restarts(handles[0]) == 1
    assert restarted["waited_for_load"] == 0, "a request waited for the restarted replica's engine to load"
    assert restarted["served"] > 0, "the restarted replica got no request after it was ready"
    assert restarted["served"] + other["served"] == len(sent)
    assert client.timeouts == 0


def test_stopping_a_pool_shuts_each_engine_down_before_the_kill(ray_local, tmp_path):
    pool = _pool(shutdown_dir=str(tmp_path))
    handles = start_replicas(pool)
    try:
        pids = {info["pid"] for info in ray_local.get([h.ready.remote() for h in handles])}
    finally:
        stop_pools({"main": (pool, handles)})
    assert {int(p.stem) for p in tmp_path.glob("*.shutdown")} == pids

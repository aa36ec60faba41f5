"""Router and replica actors on a real local Ray cluster, with a scripted engine."""

import asyncio

import pytest

from button_ray.config import EngineConfig, PoolConfig
from button_ray.llm.contract import ChatMessage, LLMRequest
from button_ray.llm.pool import PoolClient
from button_ray.llm.replica import start_replicas

pytestmark = pytest.mark.ray


def _pool(**extra) -> PoolConfig:
    return PoolConfig(replicas=2, num_cpus=0.1, engine_class="tests.fakes:EchoEngine",
                      engine=EngineConfig(extra=extra))


def _req(i: int, key: str | None) -> LLMRequest:
    return LLMRequest(role="assistant_agent", messages=(ChatMessage(role="user", content="x"),),
                      affinity_key=key, request_id=f"r{i}")


def test_affinity_holds_and_load_spreads(ray_local):
    pool = _pool(latency_s=0.02)
    handles = start_replicas(pool)
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
    for h in handles:
        ray_local.kill(h, no_restart=True)


def test_without_affinity_least_outstanding_spreads_one_key(ray_local):
    pool = _pool(latency_s=0.05)
    handles = start_replicas(pool)
    ray_local.get([h.ready.remote() for h in handles])
    client = PoolClient({"main": (pool, handles)}, affinity=False)

    async def main():
        await asyncio.gather(*(client.generate(_req(i, "same-key")) for i in range(20)))

    asyncio.run(main())
    served = [m["served"] for m in ray_local.get([h.metrics.remote() for h in handles])]
    assert served == [10, 10]
    for h in handles:
        ray_local.kill(h, no_restart=True)


def test_dead_engine_replica_is_replaced_and_request_retried(ray_local):
    pool = _pool(die_after=3)
    handles = start_replicas(pool)
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
    for h in handles:
        ray_local.kill(h, no_restart=True)

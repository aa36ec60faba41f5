"""The stage actors: Ray Data UDFs that run the method's stages over item rows.

Each actor runs many items at once: every Ray Data task carries one small block, the
actor accepts several concurrent calls, and each item is its own coroutine, so engines
see a steady stream. The method itself (:mod:`button_ray.bottom_up`,
:mod:`button_ray.top_down`) never touches Ray; these classes are the only wiring
between the two. The simulation actor is also the writer: it stores the items it
finishes as parts (:mod:`button_ray.parts`) and returns only their small outcomes.
:class:`ScenarioStage` is `button-ray scenarios`' stage: one extraction or expansion
per row.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any, Awaitable, Callable

import numpy as np

from button_ray.bottom_up.scenarios import JobOutcome, ScenarioJob, run_scenario_job
from button_ray.config import MethodConfig, ScenarioConfig
from button_ray.errors import LLMUnavailableError
from button_ray.llm.pool import PoolClient
from button_ray.llm.replica import Pools
from button_ray.near_dup import signer_for
from button_ray.parts import GroupWriter, PartWriter, durable_outcomes
from button_ray.records import WorkItem
from button_ray.storage import Storage

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

    def __init__(self, stage: str, method: MethodConfig, pools: Pools, affinity: bool = True) -> None:
        self.stage = stage
        self.fn = _stage_fn(stage)
        self.method = method
        self.llm = PoolClient(pools, client_index=os.getpid(), affinity=affinity)

    async def _run(self, raw: str) -> WorkItem:
        item = WorkItem.model_validate_json(raw)
        if item.outcome != "pending":
            return item
        try:
            return await self.fn(item, self.llm, self.method)
        except (asyncio.CancelledError, LLMUnavailableError):
            # Not the record's fault: committing it as "failed" would lose it for good.
            # The job stops instead; uncommitted shards are redone on resume.
            raise
        except Exception as exc:  # noqa: BLE001 - any other error fails this item, never the job
            log.exception("item %s failed in %s", item.item_id, self.stage)
            return item.fail(f"{type(exc).__name__}: {exc}")

    async def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        items = await asyncio.gather(*(self._run(raw) for raw in batch["item"]))
        return {"item": [i.model_dump_json() for i in items], "shard": list(batch["shard"])}


class BottomUpStage(ItemStage):
    """The bottom-up stage; its own class so its actors are named after it in Ray's tools."""


class SimulationStage(ItemStage):
    """The simulation stage and the writer: each finished item becomes a part in the
    output as soon as it finishes (not when its block does), and the call returns one
    small outcome row per item once all are durable."""

    def __init__(self, stage: str, method: MethodConfig, pools: Pools, affinity: bool = True, *,
                 output_uri: str, storage_options: dict[str, Any], lineage: dict[str, Any]) -> None:
        import ray

        super().__init__(stage, method, pools, affinity)
        store = Storage(output_uri, storage_options)
        self.writer = GroupWriter(PartWriter(store, lineage, signer_for(method.content)))
        # Restarted after a crash, this actor gets the crashed one's blocks again, and
        # parts hold the items it finished (a block's items are stored one by one): those
        # are reported from their parts, not run again.
        self.stored = durable_outcomes(store) if ray.get_runtime_context().was_current_actor_reconstructed else {}

    async def _finish(self, shard: str, raw: str) -> str:
        outcome = self.stored.get(WorkItem.model_validate_json(raw).item_id) if self.stored else None
        if outcome is None:
            outcome = await self.writer.write(shard, await self._run(raw))
        return json.dumps(outcome, ensure_ascii=False)

    async def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        outcomes = await asyncio.gather(*(self._finish(str(s), raw) for s, raw in zip(batch["shard"], batch["item"])))
        return {"outcome": list(outcomes)}


class ScenarioStage:
    """Ray Data UDF of the scenario pool job: one extraction or expansion per row
    (:func:`button_ray.bottom_up.scenarios.run_scenario_job`), every row its own coroutine.

    Rows carry ``pos`` (the job's place in its round) and the job's JSON; the output rows
    ``pos`` and the outcome's JSON, so the driver can put the round back in order.
    """

    def __init__(self, method: MethodConfig, scenarios: ScenarioConfig, pools: Pools) -> None:
        self.method = method
        self.scenarios = scenarios
        self.llm = PoolClient(pools, client_index=os.getpid())

    async def _run(self, raw: str) -> str:
        job = ScenarioJob.model_validate_json(raw)
        try:
            outcome = await run_scenario_job(job, self.llm, self.method, self.scenarios)
        except (asyncio.CancelledError, LLMUnavailableError):
            # Not the row's fault: the job stops, as the generate job does.
            raise
        except Exception as exc:  # noqa: BLE001 - any other error drops this row, never the job
            log.exception("%s %d failed", job.role, job.index)
            outcome = JobOutcome(reason=f"failed:{type(exc).__name__}")
        return outcome.model_dump_json()

    async def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        outcomes = await asyncio.gather(*(self._run(str(raw)) for raw in batch["job"]))
        return {"pos": list(batch["pos"]), "outcome": outcomes}


STAGE_CLASSES = {"bottom_up": BottomUpStage, "simulate": SimulationStage}

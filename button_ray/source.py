"""The item source: pending shards become a lazy stream of item rows.

The driver hands Ray Data one small row per pending shard (its key, its scenarios, the
items a part already holds); one Ray Data task expands each shard into item rows, in
blocks of a few rows, at most a window of items ahead of the driver
(:class:`SourceGate`), so memory does not grow with the size of the run. Item ids and
seeds are deterministic: the same config gives the same items on every attempt.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import ray.data
from ray.data import TaskPoolStrategy

from button_ray import compat
from button_ray.config import ITEM_SOURCE_CPUS
from button_ray.records import Scenario, WorkItem, derive_seed, stable_id
from button_ray.sink import ShardPlan


def shard_items(fingerprint: str, seed: int, shard: str, scenarios: Iterable[Scenario],
                slots: int, skip: frozenset[str] = frozenset()) -> Iterator[dict[str, str]]:
    """The item rows of one shard, in order, but those in ``skip``; ids and seeds are
    deterministic."""
    for scenario in scenarios:
        for slot in range(slots):
            item_id = stable_id(fingerprint, scenario.scenario_id, slot)
            if item_id in skip:
                continue
            item = WorkItem(item_id=item_id, scenario=scenario, slot=slot, seed=derive_seed(seed, item_id))
            yield {"item": item.model_dump_json(), "shard": shard}


def make_items(fingerprint: str, seed: int, plans: list[ShardPlan], scenarios: dict[str, Any],
               slots: int) -> list[dict[str, str]]:
    """Rows for every item of the pending shards, all at once (small runs, benchmarks)."""
    rows: list[dict[str, str]] = []
    for plan in plans:
        rows.extend(shard_items(fingerprint, seed, plan.key, (scenarios[sid] for sid in plan.scenario_ids), slots))
    return rows


def shard_rows(plans: list[ShardPlan], scenarios: dict[str, Scenario],
               skip: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """One small row per pending shard: its key, its scenarios (JSON) and the ids of its
    items that parts hold already (``skip``, by shard: they are not run again)."""
    return [{"shard": plan.key,
             "scenarios": json.dumps([scenarios[sid].model_dump(mode="json") for sid in plan.scenario_ids]),
             "skip": json.dumps((skip or {}).get(plan.key, []))}
            for plan in plans]


def expand_shards(batch: dict[str, np.ndarray], fingerprint: str, seed: int, slots: int,
                  gate: Any = None) -> dict[str, list[str]]:
    """Ray Data UDF (a plain task): shard rows -> their item rows.

    Before a shard is expanded, ``gate`` (a :class:`SourceGate`) must grant its items, so
    the expansion never runs more than a window of items ahead of the driver. (Grants
    are per shard: Ray Data passes a task's output on only when the UDF returns.)
    """
    import ray

    items: list[str] = []
    shards: list[str] = []
    for shard, raw, skip in zip(batch["shard"], batch["scenarios"], batch["skip"]):
        shard = str(shard)
        scenarios = (Scenario.model_validate(s) for s in json.loads(raw))
        rows = list(shard_items(fingerprint, seed, shard, scenarios, slots, frozenset(json.loads(skip))))
        if gate is not None:
            ray.get(gate.acquire.remote(shard, len(rows)))
        items += [r["item"] for r in rows]
        shards += [shard] * len(rows)
    return {"item": items, "shard": shards}


class SourceGate:
    """Credits for the item source: at most ``window`` items between expansion and driver.

    Ray Data paces a stage by the bytes its queued blocks hold, and an item row is a few
    hundred bytes, so without this the expansion would run to the end of the input and
    queue every item. The expansion asks for each shard's items (:meth:`acquire`); the
    driver returns credits as outcomes arrive (:meth:`deliver`). A grant is remembered
    per shard, so an expansion task that Ray retries does not spend credits twice; items
    delivered twice (at-least-once) return credits twice, which only widens the window
    a little.
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

    shards: list[dict[str, Any]]
    fingerprint: str
    seed: int
    slots: int
    max_shard_items: int

    def dataset(self, rows_per_block: int, gate: Any = None, window: int = 256) -> Any:
        """A lazy dataset of item rows in blocks of at most ``rows_per_block`` rows.

        One expansion task at a time, on a sliver of a CPU: never starved by replicas
        that reserve every core, and never more than one worker process. A streaming
        repartition cuts a shard's items into blocks of 1-4 rows, so each stage task
        carries a few rows (Ray Data merges what a task yields into blocks of
        ``target_max_block_size``, a setting for the whole dataset).
        """
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
        ds = ds.repartition(target_num_rows_per_block=rows_per_block)
        compat.fuse_into_source(ds, one_task, {"num_cpus": ITEM_SOURCE_CPUS, **compat.source_remote_args(window)})
        return ds

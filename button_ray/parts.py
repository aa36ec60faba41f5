"""Parts: finished items made durable where they finish; shards committed from them.

Trajectories never pass through the driver. The simulation actor writes each item
as a part object the moment it finishes (:class:`GroupWriter`: items that finish
together share a part), before it reports it::

    _parts/<shard>/<kind>-<uuid>.parquet    rows of one shard, in the final schema of
                                            ``kind`` (data or rejected), one PUT each

and tells the driver only each item's :data:`Outcome` (id, part, one-item stats, and
the signature of its composite task for the near-duplicate check). Every outcome the
driver sees is therefore durable. When all items of a shard are, a commit task reads
the parts the driver chose (one per item: a retried block may have written an item
twice), writes the shard's data and rejected files and its marker exactly as before
(:meth:`~button_ray.sink.OutputStore.commit_shard`), then deletes the parts whose
items it committed. A killed driver, writer or node costs at most the items in flight:
a resume reads the outcomes stored in the parts' footers (:func:`durable_outcomes`)
and runs only the items no part holds. Parts are never read by users' readers: they
live outside ``data/`` and ``rejected/`` and the manifest never names them.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from button_ray import summary as summ
from button_ray.near_dup import Signer
from button_ray.records import ACCEPTED_SCHEMA, REJECTED_SCHEMA, WorkItem, item_row, to_table
from button_ray.sink import OutputStore, ShardPlan
from button_ray.storage import Storage

log = logging.getLogger(__name__)

PARTS_DIR = "_parts"
#: Parquet footer key holding the outcomes of a part's rows (JSON list).
_OUTCOMES_KEY = b"button_ray.outcomes"
_SCHEMAS = {"data": ACCEPTED_SCHEMA, "rejected": REJECTED_SCHEMA}
#: Concurrent footer reads when a resume looks for durable items.
_READERS = 16

#: What the driver learns of a finished item: ``id``, ``shard``, ``part`` (the object
#: holding its row), ``kind`` (data or rejected), ``stats`` (the item alone, in
#: :mod:`button_ray.summary` form) and, for an emitted item when the run checks near
#: duplicates, ``task_sig`` and ``dialogue_sig`` (MinHash signatures of its composite
#: task and dialogue, :class:`button_ray.near_dup.Signer`: the writer hashes, the driver
#: only looks up).
Outcome = dict[str, Any]


class PartWriter:
    """Writes finished items as part objects (in the stage actor that finished them)."""

    def __init__(self, store: Storage, lineage: dict[str, Any], signer: Signer | None = None) -> None:
        self.store = store
        self.lineage = lineage
        self.signer = signer

    def write(self, finished: Iterable[tuple[str, WorkItem]]) -> list[Outcome]:
        """Write the ``(shard, item)`` pairs, one part per shard and kind; their outcomes.

        Returns only once every part is stored, so an outcome is a durable item.
        """
        groups: dict[tuple[str, str], list[tuple[WorkItem, Outcome]]] = defaultdict(list)
        for shard, item in finished:
            kind = "data" if item.outcome == "emitted" else "rejected"
            outcome = {"id": item.item_id, "shard": shard, "kind": kind, "stats": summ.item_stats(item)}
            if kind == "data" and self.signer is not None:
                task = item.bundle.composition.composite_task if item.bundle else ""
                outcome.update(self.signer.signatures(task, item.messages))
            groups[(shard, kind)].append((item, outcome))
        outcomes: list[Outcome] = []
        for (shard, kind), pairs in groups.items():
            rel = f"{PARTS_DIR}/{shard}/{kind}-{uuid.uuid4().hex}.parquet"
            rows = [item_row(item, {**self.lineage, "shard": shard}) for item, _ in pairs]
            stored = [o for _, o in pairs]
            table = to_table(rows, _SCHEMAS[kind]).replace_schema_metadata(
                {_OUTCOMES_KEY: json.dumps(stored, ensure_ascii=False)})
            buf = io.BytesIO()
            pq.write_table(table, buf, compression="zstd")
            try:
                self.store.write_file(rel, buf.getvalue())
            except Exception as exc:
                raise self.store.storage_error(exc, f"could not store the finished items of shard {shard}") from exc
            outcomes.extend({**o, "part": rel} for o in stored)
        return outcomes


class GroupWriter:
    """A :class:`PartWriter` for many concurrent items: each finished item is written at
    once, never held back by the slower items of its block; items that finish while a
    write runs go together in the next one (group commit: one PUT per shard and kind for
    all of them), so the writes per item fall as the actor gets busier.
    """

    def __init__(self, writer: PartWriter) -> None:
        self.writer = writer
        self._waiting: list[tuple[str, WorkItem, asyncio.Future[Outcome]]] = []
        self._lock = asyncio.Lock()

    async def write(self, shard: str, item: WorkItem) -> Outcome:
        """Store ``item`` (of ``shard``); its outcome once it is durable."""
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((shard, item, done))
        async with self._lock:
            if not done.done():  # else an earlier holder of the lock wrote it
                group, self._waiting = self._waiting, []
                try:
                    # Storage calls block: in a thread, the actor's other items keep running.
                    outcomes = await asyncio.to_thread(self.writer.write, [(s, i) for s, i, _ in group])
                except BaseException as exc:
                    for _, _, waiting in group:
                        if waiting is not done:
                            waiting.set_exception(exc)
                    raise
                for (_, _, waiting), outcome in zip(group, outcomes):
                    waiting.set_result(outcome)
        return await done


def _part_outcomes(store: Storage, path: str) -> list[Outcome]:
    """The outcomes in one part's footer (a ranged read, not the rows)."""
    with store.fs.open(path, "rb") as f:
        meta = pq.read_schema(f).metadata or {}
    rel = path[len(store.root) + 1:]
    return [{**o, "part": rel} for o in json.loads(meta.get(_OUTCOMES_KEY, b"[]"))]


def durable_outcomes(store: Storage) -> dict[str, Outcome]:
    """Every item some part holds, by item id (the first part by name when several do).

    A fresh run has no ``_parts/`` and pays one listing; a resume reads the footers of
    the parts its killed predecessor left (at most the items that were in flight plus
    those of its uncommitted shards).
    """
    paths = sorted(store.find(PARTS_DIR))
    found: dict[str, Outcome] = {}
    if not paths:
        return found
    with ThreadPoolExecutor(min(_READERS, len(paths))) as pool:
        for outcomes in pool.map(lambda p: _part_outcomes(store, p), paths):
            for o in outcomes:
                found.setdefault(o["id"], o)
    return found


def _as_rejected(table: pa.Table, details: list[str]) -> pa.Table:
    """Accepted rows turned into rejected rows by the run-wide near-duplicate check."""
    n = table.num_rows
    fixed = {"outcome": pa.array(["rejected"] * n), "stage": pa.array(["dedup"] * n),
             "reason": pa.array(["near_duplicate"] * n), "detail": pa.array(details)}
    return pa.table([fixed[f.name] if f.name in fixed else table.column(f.name).cast(f.type)
                     for f in REJECTED_SCHEMA], schema=REJECTED_SCHEMA)


def _in_plan_order(table: pa.Table, plan: ShardPlan) -> pa.Table:
    order = {sid: i for i, sid in enumerate(plan.scenario_ids)}
    keys = [(order[s], slot) for s, slot in zip(table.column("scenario_id").to_pylist(),
                                                table.column("slot").to_pylist())]
    return table.take(pa.array(sorted(range(len(keys)), key=keys.__getitem__), type=pa.int64()))


def commit_from_parts(store: OutputStore, plan: ShardPlan, chosen: dict[str, Outcome],
                      duplicates: dict[str, str], stats: dict[str, Any]) -> dict[str, Any]:
    """Commit ``plan`` from its parts; return the marker. Safe to run again.

    ``chosen`` holds every item of the shard (item id -> its outcome, naming the part to
    take its row from); ``duplicates`` the emitted items the driver found to be near
    duplicates (item id -> detail), committed as rejected; ``stats`` the shard's counts.
    """
    by_part: dict[str, list[str]] = defaultdict(list)
    for item_id, outcome in chosen.items():
        by_part[outcome["part"]].append(item_id)
    tables: dict[str, list[pa.Table]] = {"data": [], "rejected": []}
    spent: list[str] = []
    for rel, ids in by_part.items():
        part = pq.read_table(io.BytesIO(store.read_bytes(rel)))
        kind = chosen[ids[0]]["kind"]  # a part holds one kind
        if set(part.column("record_id").to_pylist()) <= chosen.keys():
            spent.append(rel)
        part = part.replace_schema_metadata(None)
        tables[kind].append(part.filter(pc.is_in(part.column("record_id"), pa.array(ids))))
    accepted = pa.concat_tables(tables["data"]) if tables["data"] else ACCEPTED_SCHEMA.empty_table()
    rejected = pa.concat_tables(tables["rejected"]) if tables["rejected"] else REJECTED_SCHEMA.empty_table()
    if duplicates:
        dup = pc.is_in(accepted.column("record_id"), pa.array(list(duplicates)))
        moved = accepted.filter(dup)
        details = [duplicates[r] for r in moved.column("record_id").to_pylist()]
        rejected = pa.concat_tables([rejected, _as_rejected(moved, details)])
        accepted = accepted.filter(pc.invert(dup))
    marker = store.commit_shard(plan, _in_plan_order(accepted, plan), _in_plan_order(rejected, plan), stats)
    # The marker is written: the parts are garbage now. One that also holds an item of
    # another shard (a resume cut the shards differently) stays until the run completes.
    for rel in spent:
        try:
            store.remove(rel)
        except Exception as exc:  # noqa: BLE001 - a leftover part is ignored by readers and resumes
            log.warning("could not delete part %s after committing shard %s: %s", rel, plan.key, exc)
    return marker

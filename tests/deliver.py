"""Deliver finished items the way the pipeline does, without Ray: parts written by a
:class:`~button_ray.parts.PartWriter`, outcomes into a ledger, complete shards
committed in place (where the pipeline submits a commit task)."""

from __future__ import annotations

from typing import Any, Iterable

from button_ray.ledger import ShardLedger
from button_ray.parts import PartWriter, commit_from_parts
from button_ray.records import WorkItem
from button_ray.sink import OutputStore

LINEAGE = {"config_fingerprint": "fp", "models": {}, "engine_version": "x", "template_hashes": {}}


def deliver(store: OutputStore, ledger: ShardLedger, shard: str, items: Iterable[WorkItem],
            lineage: dict[str, Any] = LINEAGE) -> list[bool]:
    """Write ``items`` as one block's parts and hand their outcomes to ``ledger``; whether
    each was new to it."""
    taken = []
    signer = ledger.duplicates.signer if ledger.duplicates is not None else None
    for outcome in PartWriter(store, lineage, signer).write((shard, i) for i in items):
        new, request = ledger.add(shard, outcome)
        taken.append(new)
        if request is not None:
            ledger.committed(commit_from_parts(store, request.plan, request.chosen, request.duplicates,
                                               request.stats))
    return taken

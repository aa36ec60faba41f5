"""The driver's ledger: which items of which shard are durable, and when to commit.

The driver never holds a trajectory. It receives one small outcome per finished item
(:data:`button_ray.parts.Outcome`: its id, the part holding its row, its stats, the
signature of its composite task), counts them per shard, runs the run-wide
near-duplicate check on those signatures (the driver is the one place that sees every
item; the writers hash, the driver only looks up), and once a shard's
items are all durable hands out a :class:`CommitRequest`, which a commit task carries
out (:func:`button_ray.parts.commit_from_parts`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from button_ray import summary as summ
from button_ray.near_dup import DuplicateCheck
from button_ray.parts import Outcome
from button_ray.sink import OutputStore, ShardPlan


#: How a near duplicate's detail names what it duplicates, by kind of text compared.
_LABELS = {"task": "composite task", "dialogue": "dialogue"}


@dataclass(frozen=True)
class CommitRequest:
    """Everything a commit task needs: the shard, the part of each of its items, the
    near duplicates (item id -> detail) to commit as rejected, and the shard's stats."""

    plan: ShardPlan
    chosen: dict[str, Outcome]
    duplicates: dict[str, str]
    stats: dict[str, Any]


class ShardLedger:
    """Outcomes per shard until each shard is complete; markers of committed shards.

    With ``target_accepted``, the ledger stops handing out commits once the shards
    committed or being committed hold that many accepted trajectories (:attr:`full`),
    and :attr:`reached` turns true when the commits that got there are done.
    """

    def __init__(self, duplicates: DuplicateCheck | None = None, target_accepted: int | None = None) -> None:
        self.duplicates = duplicates
        self.target_accepted = target_accepted
        self.plans: dict[str, ShardPlan] = {}
        self.open: dict[str, dict[str, Outcome]] = {}  # shard -> item id -> outcome
        self.near: dict[str, dict[str, str]] = {}  # shard -> item id -> near-duplicate detail
        self.committing: dict[str, int] = {}  # shard -> accepted trajectories in it
        self.markers = {}

    @property
    def markers(self) -> dict[str, dict[str, Any]]:
        """Commit markers by shard key (a resume sets the committed ones)."""
        return self._markers

    @markers.setter
    def markers(self, markers: dict[str, dict[str, Any]]) -> None:
        self._markers = dict(markers)
        # Kept as a count: the driver asks for it after every block (``full``).
        self._accepted = sum(m["stats"]["emitted"] for m in self._markers.values())

    def add_plans(self, plans: list[ShardPlan]) -> None:
        """Expect the items of more shards (a round of the run)."""
        self.plans.update((p.key, p) for p in plans)

    def accepted(self) -> int:
        """Accepted trajectories in the committed shards."""
        return self._accepted

    @property
    def full(self) -> bool:
        """The commits handed out reach the target: no more are needed."""
        return self.target_accepted is not None and \
            self.accepted() + sum(self.committing.values()) >= self.target_accepted

    @property
    def reached(self) -> bool:
        """The committed shards hold the target's accepted trajectories."""
        return self.target_accepted is not None and self.accepted() >= self.target_accepted

    def add(self, shard: str, outcome: Outcome) -> tuple[bool, CommitRequest | None]:
        """Take one durable item's outcome: (new?, the shard's commit if it is complete).

        At-least-once execution may deliver an item twice; the first one counts, also
        when its shard is committed already.
        """
        if shard in self.markers or shard in self.committing:
            return False, None
        got = self.open.setdefault(shard, {})
        if outcome["id"] in got:
            return False, None
        if outcome["kind"] == "data" and self.duplicates is not None:
            found = self.duplicates.check_outcome(outcome["id"], outcome)
            if found is not None:
                kind, match = found
                self.near.setdefault(shard, {})[outcome["id"]] = (
                    f"{_LABELS[kind]} nearly duplicates record {match.kept_id} "
                    f"(estimated similarity {match.similarity:.2f})")
                outcome = {**outcome, "stats": summ.as_near_duplicate(outcome["stats"])}
        got[outcome["id"]] = outcome
        plan = self.plans[shard]
        if len(got) < plan.items or self.full:
            return True, None
        chosen = self.open.pop(shard)
        stats = summ.merge(o["stats"] for o in chosen.values())
        self.committing[shard] = stats["emitted"]
        return True, CommitRequest(plan, chosen, self.near.pop(shard, {}), stats)

    def committed(self, marker: dict[str, Any]) -> None:
        """A commit task finished: ``marker`` is the shard's commit marker."""
        self.committing.pop(marker["key"], None)
        previous = self._markers.get(marker["key"])
        self._accepted += marker["stats"]["emitted"] - (previous["stats"]["emitted"] if previous else 0)
        self._markers[marker["key"]] = marker

    def index_committed(self, store: OutputStore) -> None:
        """Put the committed shards' records into the near-duplicate check (a resume), one
        shard's columns at a time."""
        if self.duplicates is None:
            return
        for marker in self.markers.values():
            raw = store.read_bytes(marker["files"]["data"]["path"])
            table = pq.read_table(io.BytesIO(raw), columns=["record_id", "composite_task", "messages"])
            for record_id, task, messages in zip(*(table[c].to_pylist() for c in table.column_names)):
                self.duplicates.check_texts(record_id, task or "", messages or [])

    def missing(self) -> dict[str, int]:
        """Items not delivered, per shard neither committed nor being committed."""
        return {key: plan.items - len(self.open.get(key, {}))
                for key, plan in self.plans.items() if key not in self.markers and key not in self.committing}

"""Commit tasks: the driver hands each complete shard to a small Ray task, which commits
it from its parts (:func:`button_ray.parts.commit_from_parts`) on whichever node has a
sliver of CPU; the driver only collects the markers.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from button_ray.config import ITEM_SOURCE_CPUS
from button_ray.errors import ours
from button_ray.ledger import CommitRequest, ShardLedger
from button_ray.parts import commit_from_parts
from button_ray.sink import OutputStore
from button_ray.storage import for_workers


def commit_task(uri: str, storage_options: dict[str, Any], request: CommitRequest) -> dict[str, Any]:
    """Ray task: commit one shard from its parts (the driver only submits it)."""
    return commit_from_parts(OutputStore(uri, storage_options), request.plan, request.chosen,
                             request.duplicates, request.stats)


class Commits:
    """Commit tasks in flight; each marker goes to the ledger as its task finishes, and
    the manifest is rewritten every ``manifest_interval_s``."""

    def __init__(self, store: OutputStore, fingerprint: str, ledger: ShardLedger,
                 manifest_interval_s: float = 30.0) -> None:
        self.store = store
        self.fingerprint = fingerprint
        self.ledger = ledger
        self.manifest_interval_s = manifest_interval_s
        self._manifest_at = time.monotonic()
        self._task = ray.remote(commit_task).options(num_cpus=ITEM_SOURCE_CPUS, max_retries=3)
        #: The storage options the writers and commit tasks get (the driver's S3 settings added).
        self.worker_options = for_workers(store.uri, store.storage_options)
        self.running: dict[Any, str] = {}

    def submit(self, request: CommitRequest) -> None:
        ref = self._task.remote(self.store.uri, self.worker_options, request)
        self.running[ref] = request.plan.key

    def harvest(self, wait: bool = False) -> None:
        """Take the markers of the finished commits (all of them with ``wait``); a failed
        commit raises its own error (e.g. OutputError: storage gone)."""
        while self.running:
            done, _ = ray.wait(list(self.running), num_returns=len(self.running) if wait else 1,
                               timeout=None if wait else 0)
            if not done:
                break
            for ref in done:
                self.running.pop(ref)
                try:
                    self.ledger.committed(ray.get(ref))
                except ray.exceptions.RayTaskError as exc:
                    raise ours(exc) from None
        if time.monotonic() - self._manifest_at > self.manifest_interval_s:
            self.write_manifest()

    def write_manifest(self) -> None:
        self.store.write_manifest(self.fingerprint, self.ledger.markers.values())
        self._manifest_at = time.monotonic()

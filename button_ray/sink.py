"""Sharded Parquet output with commit markers, a manifest and resume.

Layout under the output URI (local path or any fsspec URI)::

    _run.json                  config fingerprint + config of the run (resume check)
    data/shard-<key>.parquet   accepted trajectories of one shard
    rejected/shard-<key>.parquet   rejected and failed items of the shard
    _commits/shard-<key>.json  commit marker, written only after both files are complete
    _parts/<key>/*.parquet     finished items of uncommitted shards (button_ray.parts);
                               never read by readers, deleted once committed
    manifest.json              committed shards and row counts (what readers read)
    summary.json               the funnel over every committed shard
    _SUCCESS                   every requested input has an outcome (removed when a
                               run with pending work starts)

A shard is a group of scenarios; its key is a hash of the config fingerprint and its
scenario ids. A run skips the scenarios that committed shards cover (whatever shard
size or limit committed them) and cuts the rest into shards, so a rerun computes the
same keys for the same pending work and overwrites the orphans of a crashed attempt.
Object stores make a file visible only once it is completely written, so "marker
exists" implies "data complete". Listings are never trusted from a cache.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from button_ray.errors import OutputError
from button_ray.records import stable_id
from button_ray.storage import Storage, _retry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardPlan:
    """One shard: which scenarios it covers and how many items it must collect."""

    key: str
    scenario_ids: tuple[str, ...]
    items: int


def plan_shards(fingerprint: str, scenario_ids: list[str], shard_size: int, slots: int,
                covered: Iterable[str] = ()) -> list[ShardPlan]:
    """Cut the ordered scenarios not yet ``covered`` into shards of ``shard_size`` scenarios.

    ``covered`` holds the scenarios of committed shards: what is committed stays as it
    was committed, whatever the limit or shard size of a later run, and only the rest is
    cut anew. The same pending scenarios and shard size give the same keys, so a rerun
    after a crash overwrites its orphans.
    """
    done = set(covered)
    pending = [sid for sid in scenario_ids if sid not in done]
    plans = []
    for start in range(0, len(pending), shard_size):
        ids = tuple(pending[start : start + shard_size])
        plans.append(ShardPlan(key=stable_id(fingerprint, *ids), scenario_ids=ids, items=len(ids) * slots))
    return plans


def covered_scenarios(markers: Iterable[dict[str, Any]]) -> set[str]:
    """The scenario ids whose items are committed (every slot of each)."""
    return {sid for m in markers for sid in m["scenario_ids"]}



class OutputStore(Storage):
    """The run's output: its claim, commit markers, shard files and manifest."""

    def check_claim(self, fingerprint: str) -> dict[str, Any] | None:
        """What :meth:`claim` would find, without writing: the earlier run's record
        (``_run.json``), or None for a new output. An OutputError when the output holds
        committed records of another config.
        """
        existing = self._read_json("_run.json")
        if existing is not None and existing.get("fingerprint") != fingerprint and self.committed():
            raise OutputError(
                f"output {self.uri!r} holds committed records of config fingerprint "
                f"{existing.get('fingerprint')} but this config's fingerprint is {fingerprint}; resume with "
                "the same config, or pass a new --output"
            )
        return existing

    def claim(self, fingerprint: str, config: dict[str, Any]) -> bool:
        """Record this run's fingerprint, or check it matches; True when resuming.

        An output whose earlier attempt committed nothing (it failed to start, or its
        input was wrong) takes the new config: only committed records tie an output to
        a config.
        """
        existing = self.check_claim(fingerprint)
        if existing is not None and existing.get("fingerprint") == fingerprint:
            return True
        if existing is not None:
            print(f"[button-ray] {self.uri}: an earlier attempt with config fingerprint "
                  f"{existing.get('fingerprint')} committed nothing; starting over with fingerprint {fingerprint}",
                  flush=True)
        self.write_json("_run.json", {"fingerprint": fingerprint, "config": config, "created": time.time()})
        return False

    def committed(self) -> dict[str, dict[str, Any]]:
        """Commit markers by shard key (listed fresh, never from a cache)."""
        self.fs.invalidate_cache()
        commits_dir = self.path("_commits")
        try:
            names = _retry(lambda: self.fs.ls(commits_dir, detail=False, refresh=True), f"list {commits_dir}")
        except FileNotFoundError:
            return {}
        markers = {}
        for name in names:
            base = name.rsplit("/", 1)[-1]
            if base.startswith("shard-") and base.endswith(".json"):
                marker = self._read_json(f"_commits/{base}")
                if marker is not None:
                    markers[marker["key"]] = marker
        return markers

    def commit_shard(
        self, plan: ShardPlan, accepted: pa.Table, rejected: pa.Table, stats: dict[str, Any]
    ) -> dict[str, Any]:
        """Write both tables, then the marker. Idempotent for the same shard key.

        A failure at any step leaves no marker, so the shard is not committed and a
        resume rewrites it; the error names the shard and says how to go on.
        """
        files = {}
        try:
            for kind, table in (("data", accepted), ("rejected", rejected)):
                buf = io.BytesIO()
                pq.write_table(table, buf, compression="zstd")
                rel = f"{kind}/shard-{plan.key}.parquet"
                self._write_bytes(rel, buf.getvalue())
                files[kind] = {"path": rel, "rows": table.num_rows, "bytes": buf.tell()}
            marker = {
                "key": plan.key,
                "scenario_ids": list(plan.scenario_ids),
                "files": files,
                "stats": stats,
                "committed_at": time.time(),
            }
            self.write_json(f"_commits/shard-{plan.key}.json", marker)
        except Exception as exc:
            raise self.storage_error(exc, f"could not commit shard {plan.key}") from exc
        return marker

    def write_manifest(self, fingerprint: str, markers: Iterable[dict[str, Any]]) -> None:
        """List the committed shards for readers (written whole, in one PUT)."""
        shards = sorted(
            ({"key": m["key"], "data": m["files"]["data"]["path"], "rows": m["files"]["data"]["rows"],
              "rejected": m["files"]["rejected"]["path"], "rejected_rows": m["files"]["rejected"]["rows"]}
             for m in markers),
            key=lambda s: s["key"],
        )
        try:
            self.write_json("manifest.json", {
                "fingerprint": fingerprint,
                "shards": shards,
                "rows": sum(s["rows"] for s in shards),
                "rejected_rows": sum(s["rejected_rows"] for s in shards),
            })
        except Exception as exc:
            raise self.storage_error(exc, "could not write manifest.json") from exc

    def manifest(self) -> dict[str, Any] | None:
        return self._read_json("manifest.json")



def committed_manifest(store: OutputStore) -> dict[str, Any]:
    """The run's manifest (what readers read), or an OutputError saying there is none."""
    manifest = store.manifest()
    if manifest is None:
        raise OutputError(f"{store.uri!r} has no manifest.json: not a button_ray output, or nothing committed yet")
    return manifest


def iter_committed(store: OutputStore, table: str = "data", columns: list[str] | None = None,
                   batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
    """The committed rows of ``table`` as record batches of at most ``batch_size`` rows,
    one shard file at a time, in manifest order: memory does not grow with the run."""
    for shard in committed_manifest(store)["shards"]:
        with store.fs.open(store.path(shard[table]), "rb") as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns)


def read_committed(uri: str, table: str = "data", storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Read the committed rows of a run through its manifest (``data`` or ``rejected``)."""
    store = OutputStore(uri, storage_options or {})
    tables = [pq.read_table(io.BytesIO(store.read_bytes(shard[table])))
              for shard in committed_manifest(store)["shards"]]
    if not tables:
        from button_ray.records import ACCEPTED_SCHEMA, REJECTED_SCHEMA

        return (ACCEPTED_SCHEMA if table == "data" else REJECTED_SCHEMA).empty_table()
    return pa.concat_tables(tables)

"""Sharded Parquet output with commit markers, a manifest and resume.

Layout under the output URI (local path or any fsspec URI)::

    _run.json                  config fingerprint + config of the run (resume check)
    data/shard-<key>.parquet   accepted trajectories of one shard
    rejected/shard-<key>.parquet   rejected and failed items of the shard
    _commits/shard-<key>.json  commit marker, written only after both files are complete
    manifest.json              committed shards and row counts (what readers read)
    summary.json, _SUCCESS     written when every input has an outcome

A shard is a fixed group of scenarios; its key is a hash of the config fingerprint and
its scenario ids, so a re-run computes the same keys, overwrites orphans of a crashed
attempt and skips committed shards. Object stores make a file visible only once it is
completely written, so "marker exists" implies "data complete". Listings are never
trusted from a cache.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from button_ray.records import stable_id


class OutputError(RuntimeError):
    """The output location cannot be used (unwritable, or belongs to another config)."""


@dataclass(frozen=True)
class ShardPlan:
    """One shard: which scenarios it covers and how many items it must collect."""

    key: str
    scenario_ids: tuple[str, ...]
    items: int


def plan_shards(fingerprint: str, scenario_ids: list[str], shard_size: int, slots: int) -> list[ShardPlan]:
    """Cut the ordered scenario list into shards of ``shard_size`` scenarios."""
    plans = []
    for start in range(0, len(scenario_ids), shard_size):
        ids = tuple(scenario_ids[start : start + shard_size])
        plans.append(ShardPlan(key=stable_id(fingerprint, *ids), scenario_ids=ids, items=len(ids) * slots))
    return plans


def _fs_options(uri: str, options: dict[str, Any]) -> dict[str, Any]:
    opts = dict(options)
    if uri.startswith(("s3://", "s3a://", "gs://", "gcs://")):
        # Markers written by this or another process must be seen at once.
        opts.setdefault("use_listings_cache", False)
        opts.setdefault("skip_instance_cache", True)
    return opts


@dataclass
class OutputStore:
    """All reads and writes of one run's output location."""

    uri: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **_fs_options(self.uri, self.storage_options))
        self.root = self.root.rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # -- small objects -------------------------------------------------------------
    def _write_bytes(self, rel: str, data: bytes) -> None:
        path = self.path(rel)
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if isinstance(self.fs, LocalFileSystem):
            # Local files become visible on open; a rename makes them appear complete.
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, path)
        else:
            with self.fs.open(path, "wb") as f:
                f.write(data)

    def _read_json(self, rel: str) -> Any | None:
        try:
            with self.fs.open(self.path(rel), "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None

    def write_json(self, rel: str, obj: Any) -> None:
        self._write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True).encode())

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    # -- preflight and run record --------------------------------------------------
    def preflight(self) -> None:
        """Write and delete a probe object; one clear sentence on failure."""
        probe = f"_probe-{uuid.uuid4().hex[:8]}"
        try:
            self._write_bytes(probe, b"ok")
            self.fs.rm(self.path(probe))
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot write here"
            raise OutputError(
                f"cannot write to output {self.uri!r} ({type(exc).__name__}: {exc}); "
                "check the URI, the bucket and the credentials"
            ) from exc

    def claim(self, fingerprint: str, config: dict[str, Any]) -> bool:
        """Record this run's fingerprint, or check it matches; True when resuming."""
        existing = self._read_json("_run.json")
        if existing is None:
            self.write_json("_run.json", {"fingerprint": fingerprint, "config": config,
                                          "created": time.time()})
            return False
        if existing.get("fingerprint") != fingerprint:
            raise OutputError(
                f"output {self.uri!r} holds a run with config fingerprint {existing.get('fingerprint')} "
                f"but this config's fingerprint is {fingerprint}; resume with the same config, "
                "or pass a new --output"
            )
        return True

    # -- shards ----------------------------------------------------------------------
    def committed(self) -> dict[str, dict[str, Any]]:
        """Commit markers by shard key (listed fresh, never from a cache)."""
        self.fs.invalidate_cache()
        commits_dir = self.path("_commits")
        try:
            names = self.fs.ls(commits_dir, detail=False)
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
        """Write both tables, then the marker. Idempotent for the same shard key."""
        files = {}
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
        return marker

    def write_manifest(self, fingerprint: str, markers: Iterable[dict[str, Any]]) -> None:
        shards = sorted(
            ({"key": m["key"], "data": m["files"]["data"]["path"], "rows": m["files"]["data"]["rows"],
              "rejected": m["files"]["rejected"]["path"], "rejected_rows": m["files"]["rejected"]["rows"]}
             for m in markers),
            key=lambda s: s["key"],
        )
        self.write_json("manifest.json", {
            "fingerprint": fingerprint,
            "shards": shards,
            "rows": sum(s["rows"] for s in shards),
            "rejected_rows": sum(s["rejected_rows"] for s in shards),
        })

    def manifest(self) -> dict[str, Any] | None:
        return self._read_json("manifest.json")


def read_committed(uri: str, table: str = "data", storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Read the committed rows of a run through its manifest (``data`` or ``rejected``)."""
    store = OutputStore(uri, storage_options or {})
    manifest = store.manifest()
    if manifest is None:
        raise OutputError(f"{uri!r} has no manifest.json: not a button_ray output, or nothing committed yet")
    tables = []
    for shard in manifest["shards"]:
        with store.fs.open(store.path(shard[table]), "rb") as f:
            tables.append(pq.read_table(f))
    if not tables:
        from button_ray.records import ACCEPTED_SCHEMA, REJECTED_SCHEMA

        return (ACCEPTED_SCHEMA if table == "data" else REJECTED_SCHEMA).empty_table()
    return pa.concat_tables(tables)

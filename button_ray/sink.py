"""Sharded Parquet output with commit markers, a manifest and resume.

Layout under the output URI (local path or any fsspec URI)::

    _run.json                  config fingerprint + config of the run (resume check)
    data/shard-<key>.parquet   accepted trajectories of one shard
    rejected/shard-<key>.parquet   rejected and failed items of the shard
    _commits/shard-<key>.json  commit marker, written only after both files are complete
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

import errno
import io
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from button_ray.errors import OutputError
from button_ray.records import stable_id

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Protocols whose files are objects: one PUT each, no directories, no rename.
_OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "abfs", "az", "oss"}

#: Bounded retries of a storage call that failed for a transient reason (after the
#: client's own retries): waits of 1, 2, 4 s, so a short outage is ridden out and a
#: long one ends the job (committed shards stay committed; the same command resumes).
STORAGE_ATTEMPTS = 4
STORAGE_BACKOFF_S = 1.0

#: storage_options keys whose values are written into the output (_run.json) as they are:
#: where the storage is and how it is addressed. Every other value may be a secret (a key,
#: a token, a connection string, a service-account file) and is written as '***'.
_SAFE_OPTION_KEYS = frozenset({
    "endpoint_url", "region_name", "region", "addressing_style", "signature_version", "use_ssl",
    "verify", "anon", "requester_pays", "use_listings_cache", "skip_instance_cache", "listings_expiry_time",
    "version_aware", "cache_regions", "default_block_size", "default_fill_cache", "default_cache_type",
    "max_concurrency", "fixed_upload_size", "s3_additional_kwargs", "retries", "max_attempts", "mode",
    "connect_timeout", "read_timeout", "max_pool_connections", "project", "location", "account_name",
    "auto_mkdir",
})
#: Option keys whose dict values hold more options (recursed into, not redacted whole).
_NESTED_OPTION_KEYS = frozenset({"client_kwargs", "config_kwargs", "s3", "retries"})


def _is_transient(exc: BaseException) -> bool:
    """Worth retrying: 5xx, connection refused/reset, timeouts. Not: missing, denied, misconfigured."""
    if isinstance(exc, (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError,
                        NotADirectoryError, OutputError)):
        return False
    try:
        from botocore import exceptions as boto
    except ImportError:  # pragma: no cover - s3fs brings botocore
        boto = None
    if boto is not None:
        if isinstance(exc, (boto.ConnectionError, boto.HTTPClientError, boto.IncompleteReadError)):
            return True  # refused, reset, closed, timed out
        if isinstance(exc, boto.BotoCoreError):
            return False  # no credentials, no region, bad parameters: retrying cannot help
    # s3fs reports 5xx (after botocore's own retries) as OSError(EIO); also timeouts.
    return isinstance(exc, (OSError, TimeoutError))


def _retry(op: Callable[[], T], what: str, attempts: int | None = None) -> T:
    attempts = STORAGE_ATTEMPTS if attempts is None else attempts
    for attempt in range(attempts):
        try:
            return op()
        except Exception as exc:  # noqa: BLE001 - re-raised unless transient
            if attempt + 1 >= attempts or not _is_transient(exc):
                raise
            wait = STORAGE_BACKOFF_S * 2**attempt
            log.warning("storage: %s failed (%s: %s); retrying in %.0f s", what, type(exc).__name__, exc, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _endpoint(options: dict[str, Any]) -> str:
    return (options.get("client_kwargs", {}).get("endpoint_url") or options.get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            or "the default endpoint")


def describe_storage_error(exc: BaseException, uri: str, options: dict[str, Any]) -> str:
    """One sentence naming what to fix for a failed access to ``uri``."""
    # The server's own words, kept inside this one sentence.
    detail = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace(". ", "; ").rstrip(".")
    names = {c.__name__ for c in type(exc).__mro__}
    is_s3 = uri.startswith(("s3://", "s3a://"))
    if "NoCredentialsError" in names:
        return (f"no credentials found for output {uri!r}: set output.storage_options key and secret, "
                "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"} or (
        isinstance(exc, OSError) and exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ETIMEDOUT)
    ):
        where = _endpoint(options) if is_s3 else "the storage service"
        return (f"cannot reach {where} for output {uri!r} ({detail}): check that the server is up and "
                "output.storage_options.client_kwargs.endpoint_url (or AWS_ENDPOINT_URL)")
    if isinstance(exc, PermissionError):
        return (f"output {uri!r} refused this client ({detail}): check the credentials (output.storage_options "
                "key and secret, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and their write permission")
    if isinstance(exc, FileNotFoundError) and ("bucket" in str(exc).lower() or "NoSuchBucket" in repr(exc.__cause__)):
        bucket = uri.split("://", 1)[-1].split("/", 1)[0]
        return f"the bucket {bucket!r} of output {uri!r} does not exist: create it, or fix output.uri"
    return f"cannot write to output {uri!r} ({detail}): check the URI, the bucket and the credentials"


def redact(options: Any) -> Any:
    """A copy of (nested) storage options where only known-safe values stay in clear.

    An allowlist, not a list of secret-looking names: a new backend's credential
    (an Azure ``connection_string``, a ``credentials`` file) must never reach the output.
    """
    if not isinstance(options, dict):
        return "***"
    out: dict[str, Any] = {}
    for k, v in options.items():
        if isinstance(v, dict) and k in _NESTED_OPTION_KEYS:
            out[k] = redact(v)
        elif k in _SAFE_OPTION_KEYS and (v is None or isinstance(v, (bool, int, float, str))):
            out[k] = v
        else:
            out[k] = "***"
    return out


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
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        self.object_store = bool(set(protocols) & _OBJECT_STORES)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # -- small objects -------------------------------------------------------------
    def _put(self, path: str, data: bytes) -> None:
        if self.object_store:
            # One PUT: the object appears whole or not at all. No makedirs: on s3fs it
            # would create a missing bucket instead of reporting it.
            self.fs.pipe_file(path, data)
            return
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        if isinstance(self.fs, LocalFileSystem):
            # Local files become visible on open; a rename makes them appear complete.
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, path)
        else:
            with self.fs.open(path, "wb") as f:
                f.write(data)

    def _write_bytes(self, rel: str, data: bytes, attempts: int | None = None) -> None:
        path = self.path(rel)
        _retry(lambda: self._put(path, data), f"write {path}", attempts)

    def read_bytes(self, rel: str) -> bytes:
        path = self.path(rel)
        return _retry(lambda: self.fs.cat_file(path), f"read {path}")

    def _read_json(self, rel: str) -> Any | None:
        try:
            return json.loads(self.read_bytes(rel))
        except FileNotFoundError:
            return None

    def write_file(self, rel: str, data: bytes) -> None:
        """Write ``rel`` whole (one PUT on an object store; a rename locally)."""
        self._write_bytes(rel, data)

    def write_json(self, rel: str, obj: Any) -> None:
        self._write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True).encode())

    def exists(self, rel: str) -> bool:
        path = self.path(rel)
        return bool(_retry(lambda: self.fs.exists(path), f"check {path}"))

    # -- preflight and run record --------------------------------------------------
    def preflight(self) -> None:
        """Write and delete a probe object; one clear sentence naming what to fix on failure.

        No retries of our own here (the client's own still apply): a wrong endpoint,
        bucket or key should be reported in seconds, before any engine starts.
        """
        probe = f"_probe-{uuid.uuid4().hex[:8]}"
        try:
            self._write_bytes(probe, b"ok", attempts=1)
            self.fs.rm_file(self.path(probe))
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot write here"
            raise OutputError(describe_storage_error(exc, self.uri, self.storage_options)) from exc

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

    def remove(self, rel: str) -> None:
        """Delete ``rel`` if it exists."""
        path = self.path(rel)

        def rm() -> None:
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                pass

        _retry(rm, f"delete {path}")

    # -- shards ----------------------------------------------------------------------
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
            raise self._storage_error(exc, f"could not commit shard {plan.key}") from exc
        return marker

    def _storage_error(self, exc: Exception, what: str) -> Exception:
        """``exc`` as one sentence that says how to go on, if it is a storage failure."""
        if not (_is_transient(exc) or isinstance(exc, (FileNotFoundError, PermissionError))):
            return exc
        return OutputError(
            f"{what}: {describe_storage_error(exc, self.uri, self.storage_options)}"
            "; shards committed before are kept, and the same command resumes the run"
        )

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
            raise self._storage_error(exc, "could not write manifest.json") from exc

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

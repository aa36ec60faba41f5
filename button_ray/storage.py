"""Storage primitives for a run's output: whole-object writes, bounded retries, errors.

Everything here is about one location (a local path or any fsspec URI) and knows
nothing of shards: :mod:`button_ray.sink` builds the commit protocol on top. Object
stores (S3, GCS, ...) make an object visible only once it is completely written, so
each object is written in one PUT and never renamed; a local file is written to a
temporary name and renamed into place. Listings are never trusted from a cache.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from button_ray.errors import OutputError


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

#: What the driver's environment may hold for S3 (as botocore reads it), by the
#: storage_options key that carries it to the workers.
_S3_ENV = (("key", "AWS_ACCESS_KEY_ID"), ("secret", "AWS_SECRET_ACCESS_KEY"), ("token", "AWS_SESSION_TOKEN"))


def for_workers(uri: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` plus what the driver's environment adds for ``uri``, for the workers
    that write parts and commits.

    A driver may get its S3 credentials and endpoint from ``AWS_*`` variables that the
    cluster's nodes do not have (a driver joining a running cluster); the workers then
    get them in their arguments, never in a runtime environment the dashboard shows.
    Nothing is added where the options set it already, or for other protocols.
    """
    if not uri.startswith(("s3://", "s3a://")):
        return options
    out = dict(options)
    for key, var in _S3_ENV:
        if key not in out and os.environ.get(var):
            out[key] = os.environ[var]
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client = dict(out.get("client_kwargs") or {})
    if endpoint and "endpoint_url" not in out and "endpoint_url" not in client:
        out["client_kwargs"] = {**client, "endpoint_url": endpoint}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region and "region_name" not in (out.get("client_kwargs") or {}):
        out["client_kwargs"] = {**(out.get("client_kwargs") or {}), "region_name": region}
    return out


def _fs_options(uri: str, options: dict[str, Any]) -> dict[str, Any]:
    opts = dict(options)
    if uri.startswith(("s3://", "s3a://", "gs://", "gcs://")):
        # Markers written by this or another process must be seen at once.
        opts.setdefault("use_listings_cache", False)
        opts.setdefault("skip_instance_cache", True)
    return opts


@dataclass
class Storage:
    """Whole-object reads and writes under one location (local path or fsspec URI)."""

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
    def find(self, rel: str) -> list[str]:
        """Every object under ``rel`` (full paths), listed fresh; [] when there is none."""
        self.fs.invalidate_cache()
        path = self.path(rel)
        try:
            return list(_retry(lambda: self.fs.find(path), f"list {path}"))
        except FileNotFoundError:
            return []

    def remove_tree(self, rel: str) -> None:
        """Delete every object under ``rel`` (and, on a file system, its directories)."""
        path = self.path(rel)
        if not self.object_store:
            if self.fs.exists(path):
                _retry(lambda: self.fs.rm(path, recursive=True), f"delete {path}")
            return
        paths = self.find(rel)  # objects only: an object store has no directory to remove
        if paths:
            _retry(lambda: self.fs.rm(paths), f"delete {len(paths)} objects under {path}")

    def storage_error(self, exc: Exception, what: str) -> Exception:
        """``exc`` as one sentence that says how to go on, if it is a storage failure."""
        if not (_is_transient(exc) or isinstance(exc, (FileNotFoundError, PermissionError))):
            return exc
        return OutputError(
            f"{what}: {describe_storage_error(exc, self.uri, self.storage_options)}"
            "; shards committed before are kept, and the same command resumes the run"
        )

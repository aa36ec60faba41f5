"""Chaos tests share the session's SeaweedFS server with tests/storage (one process)."""

from tests.storage.conftest import s3_server, seaweedfs  # noqa: F401 - fixtures

"""Fixtures for tests against a real S3 server (SeaweedFS, see tests/storage/seaweed.py)."""

from __future__ import annotations

import pytest

from tests.storage import seaweed as _seaweed


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A running SeaweedFS S3 server for the session (one per session, shared with tests/chaos).

    ``seaweedfs.storage_options`` are the s3fs options, ``seaweedfs.uri(name)`` a fresh
    ``s3://`` run location, ``seaweedfs.stop()`` / ``seaweedfs.start()`` take the server
    away and bring it back (same ports and data) mid-test.
    """
    server = _seaweed.acquire(tmp_path_factory)
    yield server
    _seaweed.release()


@pytest.fixture
def s3_server(seaweedfs):
    """The session server, guaranteed running when the test starts and when it ends."""
    seaweedfs.start()
    yield seaweedfs
    seaweedfs.start()

"""Shared fixtures: one local Ray cluster per test session (started only if needed)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster (2 logical CPUs more than the machine has, for actors)."""
    import ray

    if not ray.is_initialized():
        # address="local": always a fresh cluster of our own, never one that another
        # process on this machine started with `ray start` (ray.init() would join it).
        ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING",
                 runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}})
    yield ray
    ray.shutdown()

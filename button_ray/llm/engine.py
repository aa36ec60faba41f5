"""The contract between a replica actor and the engine it hosts.

The replica actor (``llm/replica.py``) owns Ray concerns: restarts, admission, exit on a
dead engine. The engine owns inference: loading the model, applying the chat template,
mapping output constraints, validating requests against the context window. The
production engine is ``button_ray.llm.vllm_engine:VLLMEngine``; tests and benchmarks
may put a scripted engine behind the same actor through ``PoolConfig.engine_class``.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from button_ray.config import PoolConfig
from button_ray.llm.contract import LLMRequest, LLMResponse


class Engine(Protocol):
    """One inference engine inside one replica actor."""

    def __init__(self, pool: PoolConfig) -> None: ...

    @property
    def model_name(self) -> str:
        """Name recorded in every record's lineage."""
        ...

    @property
    def engine_version(self) -> str:
        """Engine name and version recorded in lineage (e.g. ``vllm-0.32.0``)."""
        ...

    async def start(self) -> None:
        """Load the model; raise on a configuration the engine cannot run."""
        ...

    async def generate(self, request: LLMRequest) -> LLMResponse:
        """Serve one request.

        Raises ``LLMRequestError`` for a request the engine must not run (the caller
        rejects the record) and ``ReplicaFatalError`` when the engine is dead.
        """
        ...

    def metrics(self) -> dict[str, Any]:
        """Engine counters, e.g. ``prefix_cache_queries`` / ``prefix_cache_hits`` (tokens)."""
        ...

    async def shutdown(self) -> None:
        """Stop the engine and free what it holds (processes, memory); the replica actor
        calls it before it is killed. Safe to call twice."""
        ...


def load_engine_class(path: str) -> type[Engine]:
    """Import ``module:Class``; raise ValueError naming the path if it does not resolve."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        raise ValueError(f"engine_class {path!r} must look like 'package.module:Class'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"engine_class {path!r} cannot be imported: {exc}") from exc

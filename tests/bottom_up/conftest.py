"""Shared fixtures for the bottom-up tests: a config, items, and scripted handlers."""

from __future__ import annotations

import os

# The embedded MiniLM model must load without the Hugging Face Hub; set before
# sentence-transformers (and huggingface_hub) are imported by any test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections import defaultdict  # noqa: E402
from typing import Callable, Iterable  # noqa: E402

import pytest  # noqa: E402

import numpy as np  # noqa: E402

from button_ray.bottom_up import scenarios  # noqa: E402
from button_ray.bottom_up.common import normalize  # noqa: E402
from button_ray.config import MethodConfig  # noqa: E402
from button_ray.llm.contract import LLMRequest, LLMResponse  # noqa: E402
from button_ray.records import Scenario, WorkItem, derive_seed, stable_id  # noqa: E402
from tests.oracles.bottom_up import respond  # noqa: E402


def make_item(item_id: str = "run0/s1/0", scenario: str = "tracking a parcel") -> WorkItem:
    """A fresh pending item."""
    return WorkItem(
        item_id=item_id,
        scenario=Scenario(scenario_id="s1", text=scenario),
        slot=0,
        seed=derive_seed(item_id),
    )


def truncated(text: str = '{"task": "Find the deliv') -> LLMResponse:
    """A response cut at max_tokens."""
    return LLMResponse(text=text, finish_reason="length", prompt_tokens=10, completion_tokens=160)


def scripted(overrides: dict[str, Iterable[str | LLMResponse]] | None = None) -> Callable:
    """A handler answering each role from its scripted outputs, in order, then from the oracle."""
    queues: dict[str, list] = defaultdict(list, {k: list(v) for k, v in (overrides or {}).items()})

    def handler(request: LLMRequest) -> str | LLMResponse:
        queue = queues[request.role]
        if queue:
            return queue.pop(0)
        out = respond(request)
        assert out is not None, f"no scripted answer for role {request.role}"
        return out

    return handler


def _hash_encoder(texts: list[str]) -> np.ndarray:
    """A random unit vector per normalized text (no model needed): in 256 dimensions two
    different texts are nowhere near cosine 0.85, so only exact repeats collapse."""
    rows = []
    for text in texts:
        rng = np.random.default_rng(int(stable_id(normalize(text)), 16))
        v = rng.standard_normal(256)
        rows.append(v / np.linalg.norm(v))
    return np.asarray(rows, dtype=np.float32)


def model_free_dedup(threshold: float = 0.85) -> scenarios.Deduplicator:
    """A scenario deduplicator that needs no embedding model (see :func:`_hash_encoder`)."""
    return scenarios.Deduplicator(threshold, encoder=_hash_encoder)


@pytest.fixture
def cfg() -> MethodConfig:
    return MethodConfig()


@pytest.fixture
def item() -> WorkItem:
    return make_item()

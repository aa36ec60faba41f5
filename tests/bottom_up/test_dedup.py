"""Near-duplicate removal: the real embedded all-MiniLM-L6-v2 model (offline), and the blocked check."""

from __future__ import annotations

import os

import numpy as np

from button_ray.bottom_up import dedup, scenarios
from button_ray.config import ScenarioConfig


def test_paraphrases_collapse_and_different_scenarios_stay() -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    texts = [
        "booking a flight",
        "booking a flight ticket",
        "Booking a flight.",
        "booking flights",
        "tracking a parcel",
        "tracking parcels",
        "paying the electricity bill",
        "adopting a pet from a shelter",
    ]
    kept = dedup.dedup(texts, threshold=0.85)
    assert kept == [
        "booking a flight",
        "tracking a parcel",
        "paying the electricity bill",
        "adopting a pet from a shelter",
    ]


def test_threshold_one_keeps_everything_but_exact_repeats() -> None:
    kept = dedup.dedup(["booking a flight", "booking a flight ticket", "BOOKING A FLIGHT!"], threshold=1.0)
    assert kept == ["booking a flight", "booking a flight ticket"]


def test_incremental_dedup_remembers_earlier_batches() -> None:
    dd = dedup.Deduplicator(0.85)
    assert dd.add(["booking a flight", "tracking a parcel"]) == ["booking a flight", "tracking a parcel"]
    assert dd.add(["booking flights", "renewing a passport"]) == ["renewing a passport"]


def test_default_list_has_no_near_duplicates_at_the_default_threshold() -> None:
    items = scenarios.load_default_scenarios()
    assert dedup.dedup(items, ScenarioConfig().dedup_threshold) == items


def test_blocked_check_keeps_what_the_plain_greedy_check_keeps(monkeypatch) -> None:
    """Blocks and kept-vector slices change the memory, not the pool: the same texts are
    kept as by comparing each text with every text kept before it."""
    rng = np.random.default_rng(7)
    base = rng.standard_normal((60, 16))
    # Every third text is a small perturbation of an earlier one: near duplicates across blocks.
    vectors = np.vstack([base[i] if i % 3 else base[i // 2] + 0.2 * rng.standard_normal(16) for i in range(60)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [f"text {i}" for i in range(60)]
    table = dict(zip(texts, vectors.astype(np.float32)))

    def encoder(batch: list[str]) -> np.ndarray:
        return np.stack([table[t] for t in batch])

    expected: list[int] = []
    for i, v in enumerate(vectors.astype(np.float32)):
        if not expected or float((vectors.astype(np.float32)[expected] @ v).max()) < 0.9:
            expected.append(i)
    assert 10 < len(expected) < 60
    monkeypatch.setattr(dedup, "BLOCK", 7)
    monkeypatch.setattr(dedup, "KEPT_SLICE", 5)
    dd = dedup.Deduplicator(0.9, encoder=encoder)
    kept = dd.add(texts[:25]) + dd.add(texts[25:])
    assert kept == [texts[i] for i in expected]
    stats = dd.stats()
    assert stats["texts_in"] == stats["embedded"] == 60 and stats["kept"] == len(expected)

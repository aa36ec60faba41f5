"""Near-duplicate removal with the real embedded all-MiniLM-L6-v2 model (offline)."""

from __future__ import annotations

import os

from button_ray.bottom_up import scenarios
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
    kept = scenarios.dedup(texts, threshold=0.85)
    assert kept == [
        "booking a flight",
        "tracking a parcel",
        "paying the electricity bill",
        "adopting a pet from a shelter",
    ]


def test_threshold_one_keeps_everything_but_exact_repeats() -> None:
    kept = scenarios.dedup(["booking a flight", "booking a flight ticket", "BOOKING A FLIGHT!"], threshold=1.0)
    assert kept == ["booking a flight", "booking a flight ticket"]


def test_incremental_dedup_remembers_earlier_batches() -> None:
    dd = scenarios.Deduplicator(0.85)
    assert dd.add(["booking a flight", "tracking a parcel"]) == ["booking a flight", "tracking a parcel"]
    assert dd.add(["booking flights", "renewing a passport"]) == ["renewing a passport"]


def test_default_list_has_no_near_duplicates_at_the_default_threshold() -> None:
    items = scenarios.load_default_scenarios()
    assert scenarios.dedup(items, ScenarioConfig().dedup_threshold) == items

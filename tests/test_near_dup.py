"""Run-wide near-duplicate detection: the MinHash/LSH index and the driver's sink."""

from __future__ import annotations

import asyncio
import random

import pytest
from pydantic import ValidationError

from button_ray import near_dup
from button_ray.config import ContentConfig
from button_ray.near_dup import NearDuplicateIndex, index_for
from button_ray.ledger import ShardLedger
from button_ray.records import Scenario, WorkItem
from button_ray.sink import OutputStore, plan_shards, read_committed
from button_ray.source import shard_items
from tests.deliver import deliver

TASK = ("Find a hotel in Lisbon for 3 June 2025 for 2 people, then book the cheapest one with free "
        "cancellation and send the confirmation to my email address.")  # fmt: skip
WORDS = [f"w{i}" for i in range(5000)]


def random_text(rng: random.Random, n: int = 25) -> str:
    return " ".join(rng.choices(WORDS, k=n))


def test_a_signature_made_elsewhere_finds_the_same_duplicates() -> None:
    """The writers sign with their own Signer, the driver's check only looks up: the two
    must agree, also through the outcome's text encoding."""
    check = near_dup.check_for(ContentConfig())
    writer = near_dup.Signer(ContentConfig())
    assert check.check_texts("first", TASK, []) is None
    sent = writer.signatures(TASK.replace("email address", "email"), [])
    assert set(sent) == {"task_sig"} and len(sent["task_sig"]) < 400
    kind, match = check.check_outcome("near", sent)
    assert kind == "task" and match.kept_id == "first"
    other = writer.signatures("Track my parcel 1Z999 to Oslo and reschedule its delivery for Friday.", [])
    assert check.check_outcome("other", other) is None
    assert near_dup.check_for(ContentConfig(near_duplicate_threshold=None)) is None


def _dialogue(request: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You can call these functions: " + " ".join(WORDS[:300])},
            {"role": "user", "content": request},
            {"role": "assistant", "content": "I will look that up for you with the hotel search function."},
            {"role": "tool", "content": '{"hotels": ["Casa Azul", "Hotel Tejo"], "cheapest": "Casa Azul"}'},
            {"role": "assistant", "content": answer}]


def test_whole_dialogues_are_compared_when_asked_and_a_duplicate_is_kept_in_neither_index() -> None:
    """Two records with different composite tasks but the same dialogue: the dialogue
    check rejects the second, naming the first; a record rejected by either check enters
    neither index (its task is no reference for later records); the system prompt, shared
    by many dialogues, is not compared."""
    both = near_dup.check_for(ContentConfig(near_duplicate_dialogue_threshold=0.8))
    tasks_only = near_dup.check_for(ContentConfig())
    answer = ("Casa Azul is the cheapest hotel in Lisbon with free cancellation on 3 June; I booked it for two "
              "people and sent the confirmation to your email address, reference number 4471.")
    first = _dialogue(TASK, answer)
    # Another composite task, the same conversation but for one word.
    copy = _dialogue(TASK.replace("email address", "inbox"), answer)
    for check in (both, tasks_only):
        assert check.check_texts("first", TASK, first) is None
    kind, match = both.check_texts("copy", "Book a hotel room in Lisbon for two.", copy)
    assert (kind, match.kept_id) == ("dialogue", "first")
    assert tasks_only.check_texts("copy", "Book a hotel room in Lisbon for two.", copy) is None
    # The rejected copy's task was not indexed: the same task with a new dialogue is kept.
    fresh = _dialogue("Book a hotel room in Lisbon for two.",
                      "Hotel Tejo has a double room on 3 June at 96 euros a night; shall I book it for you?")
    assert both.check_texts("later", "Book a hotel room in Lisbon for two.", fresh) is None
    # Dialogues sharing only their system prompt are not duplicates.
    other = _dialogue("What is the weather in Oslo tomorrow afternoon, and should I take an umbrella?",
                      "Tomorrow afternoon in Oslo: 4 degrees with light rain from 14:00, so take an umbrella.")
    assert both.check_texts("oslo", "Weather in Oslo", other) is None
    assert both.indexes["dialogue"].size == 3 and both.indexes["task"].size == 3


def test_exact_and_near_duplicates_name_the_kept_text() -> None:
    index = NearDuplicateIndex(0.8)
    assert index.add("first", TASK) is None
    assert index.add("again", TASK) == ("first", 1.0)
    near = index.add("near", TASK.replace("email address", "email"))  # one 3-gram of 25 changed
    assert near is not None and near.kept_id == "first" and near.similarity >= 0.8
    assert index.add("other", "Track my parcel 1Z999 to Oslo and reschedule its delivery for Friday.") is None
    # Another city and date: the same template, a different task.
    assert index.add("porto", TASK.replace("Lisbon", "Porto").replace("3 June", "9 July")) is None
    assert index.size == 3


def test_duplicates_are_found_across_merges_and_memory_per_text_is_bounded() -> None:
    rng = random.Random(0)
    index = NearDuplicateIndex(0.8)
    texts = [random_text(rng) for _ in range(5000)]  # past the buffer: several merges into the sorted arrays
    assert [index.add(f"t{i}", t) for i, t in enumerate(texts)] == [None] * len(texts)
    for i in (0, 1234, 4999):  # an early one (sorted arrays) and the newest (buffer)
        assert index.add(f"copy{i}", texts[i]) == (f"t{i}", 1.0)
    # ~350 bytes a text, and the arrays grow by doubling: at most twice that.
    assert index.nbytes() / index.size < 2 * 400


def test_capacity_bounds_the_index_but_not_the_checks() -> None:
    rng = random.Random(1)
    index = NearDuplicateIndex(0.8, capacity=10)
    texts = [random_text(rng) for _ in range(20)]
    for i, t in enumerate(texts):
        assert index.add(f"t{i}", t) is None
    assert index.size == 10
    assert index.add("late copy", texts[3]) == ("t3", 1.0)
    assert index.add("not indexed", texts[15]) is None


def test_config() -> None:
    assert index_for(ContentConfig(near_duplicate_threshold=None)) is None
    index = index_for(ContentConfig(near_duplicate_permutations=32, near_duplicate_bands=8))
    assert index is not None and index.bands == 8 and index.threshold == 0.8
    with pytest.raises(ValidationError, match="multiple"):
        ContentConfig(near_duplicate_permutations=64, near_duplicate_bands=10)
    with pytest.raises(ValueError):
        near_dup.NearDuplicateIndex(0.8, num_perm=64, bands=10)


def _emitted_items(shard: str, scenarios: list[Scenario], tasks: list[str]) -> list[WorkItem]:
    """Emitted items (oracle trajectories) of ``shard`` whose composite tasks are ``tasks``."""
    from button_ray.top_down import simulate
    from tests.fakes import ScriptedLLM
    from tests.oracles.top_down import respond
    from tests.top_down.helpers import BUNDLE, cfg

    items = [WorkItem.model_validate_json(r["item"]) for r in shard_items("fp", 0, shard, scenarios, 1)]
    for item, task in zip(items, tasks):
        item.bundle = BUNDLE.model_copy(
            update={"composition": BUNDLE.composition.model_copy(update={"composite_task": task})}
        )

    async def run() -> list[WorkItem]:
        return await asyncio.gather(*(simulate(i, ScriptedLLM(respond), cfg()) for i in items))

    done = asyncio.run(run())
    assert all(i.outcome == "emitted" for i in done), [i.rejection for i in done]
    return done


def _rejected(uri: str) -> dict[str, tuple[str, str, str]]:
    table = read_committed(uri, "rejected").to_pylist()
    return {r["record_id"]: (r["stage"], r["reason"], r["detail"]) for r in table}


def test_the_ledger_rejects_near_duplicates_also_of_committed_shards(tmp_path) -> None:
    scenarios = [Scenario(scenario_id=f"s{i}", text=f"Scenario {i}") for i in range(4)]
    first, second = plan_shards("fp", [s.scenario_id for s in scenarios], 2, slots=1)
    other = "Check the weather and local time in Oslo, then suggest an activity for the afternoon."
    uri = str(tmp_path / "out")
    store = OutputStore(uri)
    store.preflight()
    ledger = ShardLedger(duplicates=near_dup.check_for(ContentConfig()))
    ledger.add_plans([first])
    a, b = _emitted_items(first.key, scenarios[:2], [TASK, TASK.replace("email address", "email")])
    deliver(store, ledger, first.key, [a, b])
    store.write_manifest("fp", ledger.markers.values())
    assert read_committed(uri, "data").column("record_id").to_pylist() == [a.item_id]
    stage, reason, detail = _rejected(uri)[b.item_id]
    assert (stage, reason) == ("dedup", "near_duplicate") and a.item_id in detail
    assert ledger.markers[first.key]["stats"]["rejected"] == {"dedup": {"near_duplicate": 1}}

    # A resume: the committed tasks are indexed again before new items arrive.
    resumed = ShardLedger(duplicates=near_dup.check_for(ContentConfig()))
    resumed.markers = store.committed()
    resumed.index_committed(store)
    resumed.add_plans([second])
    c, d = _emitted_items(second.key, scenarios[2:], [TASK, other])
    deliver(store, resumed, second.key, [c, d])
    store.write_manifest("fp", resumed.markers.values())
    assert a.item_id in _rejected(uri)[c.item_id][2]
    assert d.item_id in read_committed(uri, "data").column("record_id").to_pylist()

"""Runs written directly as committed Parquet shards, without Ray or an engine.

The rows go through the sink's real row building (``records.item_row``) and commit
protocol (``OutputStore.commit_shard``, ``write_manifest``), so readers, exports and the
card see exactly what a pipeline run leaves; only the trajectories are scripted. Used by
the export and card tests and by ``benchmarks/bench_export.py`` (10k-100k rows).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from button_ray import summary as summ
from button_ray.button_format import to_button_messages
from button_ray.records import (
    ACCEPTED_SCHEMA,
    REJECTED_SCHEMA,
    Composition,
    FunctionDef,
    Scenario,
    StageUsage,
    TaskBundle,
    ToolCall,
    TrajectoryStats,
    Turn,
    WorkItem,
    item_row,
    stable_id,
    to_table,
)
from button_ray.sink import OutputStore, ShardPlan

FINGERPRINT = "synthetic0000000"
LINEAGE = {
    "config_fingerprint": FINGERPRINT,
    "models": {"user_agent": "synthetic-model", "assistant_agent": "synthetic-model", "tool_agent": "synthetic-model"},
    "engine_version": "synthetic-0",
    "template_hashes": {"system_template.txt": "0" * 64},
}

SEARCH = FunctionDef(
    name="search_flights",
    description="Find flights between two cities on a date.",
    parameters={
        "origin": {"type": "str", "description": "Departure city."},
        "destination": {"type": "string", "description": "Arrival city."},
        "date": {"type": "date", "description": "Day of travel, YYYY-MM-DD."},
        "cabin": {"type": "string", "enum": ["economy", "business"], "description": "Cabin class."},
    },
    required=("origin", "destination", "date"),
    responses={"flights": {"type": "list", "description": "Matching flight numbers."}},
)
BOOK = FunctionDef(
    name="book_flight",
    description="Book seats on a flight for passengers.",
    parameters={
        "flight": {"type": "str", "description": "Flight number."},
        "passengers": {"type": "list", "description": "Who travels.", "items": {
            "type": "dict", "properties": {"name": {"type": "str"}, "age": {"type": "int"}}, "required": ["name"]}},
    },
    required=("flight", "passengers"),
    responses={"booking_id": {"type": "string", "description": "Booking reference."}},
)
HOTEL = FunctionDef(
    name="find_hotel",
    description="Find a hotel in a city.",
    parameters={"city": {"type": "string", "description": "City."},
                "nights": {"type": "int", "description": "Nights."}},
    required=("city",),
    responses={"hotel": {"type": "string", "description": "Hotel name."}},
)
CITIES = ("Lisbon", "Oslo", "Kyoto", "Lima", "Accra", "Perth", "Quebec", "Tbilisi", "Hanoi", "Bergen")


def emitted_item(i: int) -> WorkItem:
    """The ``i``-th scripted trajectory; three shapes in turn: parallel calls, one call per
    turn, and a clarification question before the calls."""
    city, home = CITIES[i % len(CITIES)], CITIES[(i + 3) % len(CITIES)]
    date = f"2026-{i % 12 + 1:02d}-{i % 28 + 1:02d}"
    search = ToolCall(name="search_flights", arguments={"origin": home, "destination": city, "date": date})
    hotel = ToolCall(name="find_hotel", arguments={"city": city, "nights": i % 5 + 1})
    book = ToolCall(name="book_flight", arguments={"flight": f"BR{i:05d}", "passengers": [{"name": "Ana", "age": 30}]})
    found = {"flights": [f"BR{i:05d}"]}
    stay = {"hotel": f"Hotel {city} {i}"}
    booked = {"booking_id": f"B-{i}"}
    user = Turn(role="user", content=f"I want to fly from {home} to {city} on {date} and stay {i % 5 + 1} nights.")
    final = Turn(role="assistant", thought="Everything is booked.",
                 final=f"Flight BR{i:05d} is booked (B-{i}) and Hotel {city} {i} is free.")
    shape = i % 3
    if shape == 0:
        turns = [user,
                 Turn(role="assistant", thought="Plan: flights and hotel at once, then book.", calls=(search, hotel)),
                 Turn(role="tool", results=(found, stay)),
                 Turn(role="assistant", thought="Now book the flight.", calls=(book,)),
                 Turn(role="tool", results=(booked,)), final]
    else:
        clarify = [Turn(role="assistant", thought="For how many passengers?"),
                   Turn(role="user", content="Just me, Ana, 30.")] if shape == 2 else []
        turns = [user, *clarify,
                 Turn(role="assistant", thought="Plan: search, then hotel, then book.", calls=(search,)),
                 Turn(role="tool", results=(found,)),
                 Turn(role="assistant", thought="", calls=(hotel,)),
                 Turn(role="tool", results=(stay,)),
                 Turn(role="assistant", thought="Book it.", calls=(book,)),
                 Turn(role="tool", results=(booked,)), final]
    parallel = shape == 0
    functions = (SEARCH, HOTEL, BOOK)
    assistant = [t for t in turns if t.role == "assistant"]
    item = WorkItem(
        item_id=stable_id(FINGERPRINT, i), scenario=Scenario(scenario_id=f"s{i}", text=f"a trip to {city}"),
        slot=0, seed=i, outcome="emitted", parallel=parallel, turns=tuple(turns),
        bundle=TaskBundle(atomic_task=f"Find flights to {city}.", composition=Composition(
            strategy="parallel_then_sequential", subtasks=("Find flights.", "Find a hotel.", "Book the flight."),
            composite_task=f"Fly to {city}, find a hotel, book."), functions=((SEARCH,), (HOTEL,), (BOOK,))),
        stats=TrajectoryStats(assistant_turns=len(assistant), calls=sum(len(t.calls) for t in assistant),
                              calls_per_turn=tuple(len(t.calls) for t in assistant),
                              clarifications=int(shape == 2), prompt_tokens=900 + i % 50,
                              completion_tokens=200 + i % 30),
        messages=tuple(to_button_messages(functions, parallel, turns)),
    )
    item.usage["assistant_agent"] = StageUsage(calls=4, prompt_tokens=900 + i % 50, completion_tokens=200 + i % 30)
    return item


def rejected_item(i: int) -> WorkItem:
    """A scripted rejection (the trajectory filter found a repeated call)."""
    item = WorkItem(item_id=stable_id(FINGERPRINT, "rejected", i), scenario=Scenario(scenario_id=f"r{i}", text="x"),
                    slot=0, seed=i)
    item.usage_for("assistant_agent").calls = 3
    return item.reject("trajectory_filter", "repeated_call", "search_flights twice")


def write_run(uri: str, rows: int, shard_rows: int = 64, storage_options: dict[str, Any] | None = None,
              finished: bool = True, rejected_per_shard: int = 1) -> OutputStore:
    """Commit ``rows`` scripted trajectories in shards of ``shard_rows`` (plus rejections),
    write the manifest, and ``_SUCCESS`` when ``finished``."""
    store = OutputStore(uri, storage_options or {})
    markers = []
    for start in range(0, rows, shard_rows):
        items = [emitted_item(i) for i in range(start, min(rows, start + shard_rows))]
        items += [rejected_item(start + j) for j in range(rejected_per_shard)]
        plan = ShardPlan(key=stable_id(FINGERPRINT, start), scenario_ids=tuple(i.scenario.scenario_id for i in items),
                         items=len(items))
        lineage = {**LINEAGE, "shard": plan.key}
        stats = summ.new_stats()
        for item in items:
            summ.add_item(stats, item)
        markers.append(store.commit_shard(
            plan,
            to_table([item_row(i, lineage) for i in items if i.outcome == "emitted"], ACCEPTED_SCHEMA),
            to_table([item_row(i, lineage) for i in items if i.outcome != "emitted"], REJECTED_SCHEMA),
            stats,
        ))
    store.write_manifest(FINGERPRINT, markers)
    if finished:
        store.write_json("_SUCCESS", {"fingerprint": FINGERPRINT, "shards": len(markers)})
    return store


def write_old_run(uri: str, rows: int) -> Path:
    """A finished local run in the schema written before the training columns: no
    ``openai_messages`` or ``tools``, and the lineage mappings as Arrow maps."""
    store = write_run(uri, rows, shard_rows=8)
    mapping = pa.map_(pa.string(), pa.string())
    for path in Path(store.root).glob("*/shard-*.parquet"):
        table = pq.read_table(path)
        table = table.drop_columns([c for c in ("openai_messages", "tools") if c in table.column_names])
        for name in ("models", "template_hashes"):
            pairs = [list(json.loads(v).items()) for v in table.column(name).to_pylist()]
            table = table.set_column(table.schema.get_field_index(name), pa.field(name, mapping),
                                     pa.array(pairs, type=mapping))
        pq.write_table(table, path)
    return Path(store.root)


def add_invalid_shard(store: OutputStore, record_id: str = "broken-1") -> None:
    """Commit one more shard, last in manifest order, whose row is not a BUTTON record."""
    marker = store.commit_shard(
        ShardPlan(key="zzzz", scenario_ids=("broken",), items=1),
        to_table([{"record_id": record_id, "messages": [{"role": "user", "content": "hi"}]}], ACCEPTED_SCHEMA),
        REJECTED_SCHEMA.empty_table(), {"items": 1})
    store.write_manifest(FINGERPRINT, [*store.committed().values(), marker])

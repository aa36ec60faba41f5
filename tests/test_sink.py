"""The commit protocol on a local directory (the S3 variants live in tests/storage)."""

import pyarrow as pa
import pytest

from button_ray.records import ACCEPTED_SCHEMA, REJECTED_SCHEMA
from button_ray.sink import OutputError, OutputStore, plan_shards, read_committed


def _rows(n, shard):
    return pa.Table.from_pylist(
        [{"record_id": f"r{shard}-{i}", "messages": [{"role": "user", "content": "hi"}]} for i in range(n)],
        schema=ACCEPTED_SCHEMA,
    )


def test_plan_shards_deterministic_and_covering():
    ids = [f"s{i}" for i in range(10)]
    a = plan_shards("fp", ids, 4, slots=2)
    assert [len(p.scenario_ids) for p in a] == [4, 4, 2]
    assert [p.items for p in a] == [8, 8, 4]
    assert a == plan_shards("fp", ids, 4, slots=2)
    assert a[0].key != plan_shards("other", ids, 4, slots=2)[0].key


def test_commit_then_read_through_manifest(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    store.preflight()
    plans = plan_shards("fp", ["a", "b", "c"], 2, slots=1)
    m0 = store.commit_shard(plans[0], _rows(2, 0), REJECTED_SCHEMA.empty_table(), {"items": 2})
    # An orphan data file of the second shard (crash before its marker) is not visible.
    store._write_bytes(f"data/shard-{plans[1].key}.parquet", b"partial garbage")
    assert set(store.committed()) == {plans[0].key}
    store.write_manifest("fp", [m0])
    table = read_committed(str(tmp_path / "out"))
    assert table.column("record_id").to_pylist() == ["r0-0", "r0-1"]
    # The resumed commit of shard 2 overwrites the orphan.
    m1 = store.commit_shard(plans[1], _rows(1, 1), REJECTED_SCHEMA.empty_table(), {"items": 1})
    store.write_manifest("fp", [m0, m1])
    assert read_committed(str(tmp_path / "out")).num_rows == 3


def test_claim_refuses_other_fingerprint(tmp_path):
    store = OutputStore(str(tmp_path))
    assert store.claim("fp1", {}) is False
    assert store.claim("fp1", {}) is True
    with pytest.raises(OutputError, match="fingerprint"):
        store.claim("fp2", {})


def test_preflight_unwritable(tmp_path):
    # A regular file where a directory must go: unwritable even for root.
    (tmp_path / "file").write_text("x")
    store = OutputStore(str(tmp_path / "file" / "out"))
    with pytest.raises(OutputError, match="cannot write to output"):
        store.preflight()


def test_shard_sink_counts_a_redelivered_item_once(tmp_path):
    from button_ray.pipeline import ShardSink, shard_items
    from button_ray.records import Scenario, WorkItem

    scenarios = [Scenario(scenario_id=f"s{i}", text=f"Scenario {i}", source="x.txt") for i in range(3)]
    (plan,) = plan_shards("fp", [s.scenario_id for s in scenarios], 4, slots=2)
    items = [WorkItem.model_validate_json(r["item"]) for r in shard_items("fp", 0, plan.key, scenarios, 2)]
    for item in items:
        item.fail("scripted")
    store = OutputStore(str(tmp_path / "out"))
    store.preflight()
    lineage = {"config_fingerprint": "fp", "models": {}, "engine_version": "x", "template_hashes": {}}
    sink = ShardSink(store, "fp", [plan], lineage=lineage)
    # Out of order, an item delivered twice before the commit and once after it
    # (at-least-once execution).
    for item in [items[0], *reversed(items[2:]), items[0], items[1], items[3]]:
        sink.add(plan.key, item)
    assert set(sink.markers) == {plan.key} and not sink.buffers
    sink.write_manifest()
    ids = read_committed(str(tmp_path / "out"), "rejected").column("record_id").to_pylist()
    assert len(ids) == len(set(ids)) == 6

"""The commit protocol on a local directory (the S3 variants live in tests/storage)."""

import pyarrow as pa
import pytest

from button_ray.errors import OutputError
from button_ray.records import ACCEPTED_SCHEMA, REJECTED_SCHEMA
from button_ray.sink import OutputStore, plan_shards, read_committed


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


def test_claim_refuses_other_fingerprint_once_something_is_committed(tmp_path, capsys):
    store = OutputStore(str(tmp_path))
    assert store.claim("fp1", {}) is False
    assert store.claim("fp1", {}) is True
    # Nothing committed yet: a corrected config takes the output over, and says so.
    assert store.claim("fp2", {}) is False
    assert "committed nothing" in capsys.readouterr().out
    (plan,) = plan_shards("fp2", ["a"], 2, slots=1)
    store.commit_shard(plan, _rows(1, 0), REJECTED_SCHEMA.empty_table(), {"items": 1})
    assert store.claim("fp2", {}) is True
    with pytest.raises(OutputError, match="committed records of config fingerprint fp2"):
        store.claim("fp1", {})


def test_plan_shards_skips_covered_scenarios_whatever_their_shards():
    from button_ray.sink import covered_scenarios

    ids = [f"s{i}" for i in range(10)]
    first = plan_shards("fp", ids[:6], 4, slots=1)  # [s0..s3], [s4, s5]
    markers = [{"scenario_ids": list(p.scenario_ids)} for p in first]
    assert plan_shards("fp", ids[:5], 4, slots=1, covered=covered_scenarios(markers)) == []
    grown = plan_shards("fp", ids, 3, slots=1, covered=covered_scenarios(markers))
    assert [p.scenario_ids for p in grown] == [("s6", "s7", "s8"), ("s9",)]
    assert not {p.key for p in grown} & {p.key for p in first}


@pytest.mark.parametrize("options, clear", [
    ({"key": "AKIA", "secret": "s", "client_kwargs": {"endpoint_url": "http://h:1", "aws_session_token": "t"}},
     {"client_kwargs": {"endpoint_url": "http://h:1"}}),
    ({"connection_string": "DefaultEndpointsProtocol=https;AccountKey=abc", "account_name": "acct"},
     {"account_name": "acct"}),
    ({"token": "/path/sa.json", "project": "p", "credentials": {"private_key": "k"}}, {"project": "p"}),
    ({"config_kwargs": {"retries": {"max_attempts": 3}}, "region_name": "eu"},
     {"config_kwargs": {"retries": {"max_attempts": 3}}, "region_name": "eu"}),
])
def test_redact_keeps_only_known_safe_options(options, clear):
    from button_ray.storage import redact

    red = redact(options)

    def leaves(d, prefix=()):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from leaves(v, prefix + (k,))
            else:
                yield prefix + (k,), v

    for path, value in leaves(red):
        node = clear
        for part in path:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        assert value == (node if node != {} else "***"), (path, value)
    assert "abc" not in repr(red) and "AKIA" not in repr(red) and "private_key" not in repr(red)


def test_a_storage_error_on_the_manifest_is_one_sentence(tmp_path, monkeypatch):
    from button_ray import storage

    store = OutputStore(str(tmp_path / "out"))
    monkeypatch.setattr(storage, "STORAGE_ATTEMPTS", 1)

    def refused(path, data):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(store, "_put", refused)
    with pytest.raises(OutputError, match="could not write manifest.json: .*the same command resumes"):
        store.write_manifest("fp", [])


def test_preflight_unwritable(tmp_path):
    # A regular file where a directory must go: unwritable even for root.
    (tmp_path / "file").write_text("x")
    store = OutputStore(str(tmp_path / "file" / "out"))
    with pytest.raises(OutputError, match="cannot write to output"):
        store.preflight()


def _one_shard_of_failed_items(tmp_path, n_scenarios: int):
    """One shard of ``n_scenarios`` x 2 items, each failed (a small row), and an empty output."""
    from button_ray.records import Scenario, WorkItem
    from button_ray.source import shard_items

    scenarios = [Scenario(scenario_id=f"s{i}", text=f"Scenario {i}", source="x.txt") for i in range(n_scenarios)]
    (plan,) = plan_shards("fp", [s.scenario_id for s in scenarios], n_scenarios, slots=2)
    items = [WorkItem.model_validate_json(r["item"]) for r in shard_items("fp", 0, plan.key, scenarios, 2)]
    for item in items:
        item.fail("scripted")
    store = OutputStore(str(tmp_path / "out"))
    store.preflight()
    return plan, items, store


def test_the_ledger_counts_a_redelivered_item_once_and_commits_from_parts(tmp_path):
    """Items arrive as parts (one per delivered block), out of order, one twice before the
    commit and once after it (at-least-once execution): the shard commits every item
    once, in plan order, and its spent parts are deleted after the marker."""
    from button_ray.ledger import ShardLedger
    from button_ray.parts import PARTS_DIR, durable_outcomes
    from tests.deliver import deliver

    plan, items, store = _one_shard_of_failed_items(tmp_path, 3)
    ledger = ShardLedger()
    ledger.add_plans([plan])
    taken = deliver(store, ledger, plan.key, [items[0], *reversed(items[2:])])
    assert len(durable_outcomes(store)) == 5 and not ledger.markers  # durable, not committed
    taken += deliver(store, ledger, plan.key, [items[0], items[1]])
    taken += deliver(store, ledger, plan.key, [items[3]])
    # Redeliveries are not new (the progress line counts only new items).
    assert taken == [True, True, True, True, True, False, True, False]
    assert set(ledger.markers) == {plan.key} and not ledger.open and ledger.missing() == {}
    store.write_manifest("fp", ledger.markers.values())
    ids = read_committed(str(tmp_path / "out"), "rejected").column("record_id").to_pylist()
    assert ids == [i.item_id for i in items]  # each once, in plan order
    # The part delivered after the commit stays (nothing reads it; a complete run removes it).
    assert [p.rsplit("/", 2)[-2] for p in store.find(PARTS_DIR)] == [plan.key]


def test_a_complete_run_leaves_no_parts(tmp_path):
    """Parts are staging: once every shard is committed, nothing of them is left, not even
    the empty directories of a local output."""
    from button_ray.parts import PARTS_DIR

    store = OutputStore(str(tmp_path / "out"))
    store.write_file(f"{PARTS_DIR}/k1/data-a.parquet", b"x")
    (tmp_path / "out" / PARTS_DIR / "k2").mkdir(parents=True)
    store.remove_tree(PARTS_DIR)
    assert not (tmp_path / "out" / PARTS_DIR).exists()
    store.remove_tree(PARTS_DIR)  # nothing there: no error


def test_the_group_writer_stores_each_item_when_it_finishes_and_groups_the_busy_ones(tmp_path):
    """One block of items: a slow item does not hold the others back (their parts exist
    while it still runs), items finishing while a write runs share the next write, and
    every outcome names a part that holds its item."""
    import asyncio
    import threading

    from button_ray.parts import PARTS_DIR, GroupWriter, PartWriter, durable_outcomes
    from button_ray.records import WorkItem
    from tests.deliver import LINEAGE

    plan, items, store = _one_shard_of_failed_items(tmp_path, 5)
    writes: list[int] = []
    first_write_started, release_first_write = threading.Event(), threading.Event()

    class Recording(PartWriter):
        def write(self, finished):
            finished = list(finished)
            writes.append(len(finished))
            if len(writes) == 1:  # hold the first write until the others queue behind it
                first_write_started.set()
                release_first_write.wait(10)
            return super().write(finished)

    group = GroupWriter(Recording(store, LINEAGE))

    async def block() -> tuple[list, set]:
        slow_may_finish = asyncio.Event()

        async def finish(item: WorkItem, slow: bool):
            if slow:
                await slow_may_finish.wait()
            return await group.write(plan.key, item)

        tasks = [asyncio.create_task(finish(item, slow=(n == 0))) for n, item in enumerate(items)]
        await asyncio.to_thread(first_write_started.wait, 10)
        await asyncio.sleep(0.05)  # the others queue behind the first write
        release_first_write.set()
        deadline = asyncio.get_running_loop().time() + 10
        while len(durable_outcomes(store)) < len(items) - 1 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        durable_before_slow = set(durable_outcomes(store))
        slow_may_finish.set()
        return await asyncio.gather(*tasks), durable_before_slow

    outcomes, durable_before_slow = asyncio.run(block())
    assert durable_before_slow == {i.item_id for i in items[1:]}  # all but the slow one, while it ran
    assert writes == [1, len(items) - 2, 1]  # the first alone, the busy ones together, the slow one
    assert [o["id"] for o in outcomes] == [i.item_id for i in items]
    stored = durable_outcomes(store)
    assert {o["id"]: o["part"] for o in outcomes} == {k: v["part"] for k, v in stored.items()}
    assert len(store.find(PARTS_DIR)) == 3

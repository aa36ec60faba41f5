"""The whole pipeline on a real local Ray cluster with the scripted OracleEngine.

These tests are about orchestration (streaming, sharding, commits, resume, counting);
the real-engine end to end test is tests/test_end_to_end.py.
"""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from button_ray.button_format import validate_button_record
from button_ray.config import (
    EngineConfig,
    JudgeConfig,
    MethodConfig,
    OutputConfig,
    PoolConfig,
    RunConfig,
    ScenarioConfig,
)
from button_ray.errors import EngineStartError, OutputError
from button_ray.pipeline import run_generate
from button_ray.sink import OutputStore, read_committed
from button_ray.templates import load_templates, shipped_dir

pytestmark = pytest.mark.ray


def _cfg(out, n=6, **extra) -> RunConfig:
    return RunConfig(
        scenarios=ScenarioConfig(limit=n),
        method=MethodConfig(atomic_tasks_per_scenario=2),
        pools=(PoolConfig(num_cpus=0.1, engine_class="tests.fakes:OracleEngine",
                          engine=EngineConfig(extra=extra)),),
        output=OutputConfig(uri=str(out), shard_size=4),
    )


def _all_ids(uri):
    accepted = read_committed(uri, "data").column("record_id").to_pylist()
    rejected = read_committed(uri, "rejected").column("record_id").to_pylist()
    return accepted, rejected


def test_generate_writes_committed_shards_and_exact_format(ray_local, tmp_path):
    out = tmp_path / "run"
    result = run_generate(_cfg(out))
    assert result["items"] == 12
    assert result["emitted"] + result["rejected"] + result["failed"] == 12
    assert result["emitted"] > 0
    accepted, rejected = _all_ids(str(out))
    assert len(accepted) == result["emitted"] and len(rejected) == result["rejected"] + result["failed"]
    assert len(set(accepted + rejected)) == 12, "an item is missing or duplicated"
    assert not (out / "_parts").exists(), "a complete run leaves its parts behind"
    table = read_committed(str(out), "data")
    for row in table.to_pylist():
        record = {"messages": row["messages"]}
        assert validate_button_record(record) == []
        assert row["config_fingerprint"] == result["fingerprint"]
        assert json.loads(row["models"])["assistant_agent"] == "oracle-engine"
    assert (out / "_SUCCESS").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["funnel"][0]["in"] == 12
    # The judge is off by default: no call, null scores.
    assert "dialogue_judge" not in summary["usage_by_role"] and summary["judge"]["judged"] == 0
    assert table.column("judge_helpfulness").null_count == table.num_rows
    # Two shards of <= 4 scenarios each, each with a marker and both tables.
    markers = list((out / "_commits").iterdir())
    assert len(markers) == 2
    for m in markers:
        marker = json.loads(m.read_text())
        assert pq.read_table(out / marker["files"]["data"]["path"]).num_rows == marker["files"]["data"]["rows"]


def test_resume_of_finished_run_makes_no_llm_calls(ray_local, tmp_path):
    out = tmp_path / "run"
    first = run_generate(_cfg(out))
    before = _all_ids(str(out))
    again = run_generate(_cfg(out))
    assert again["resumed"] is True
    assert again["this_attempt"]["calls"] == 0 and again["this_attempt"]["items"] == 0
    assert _all_ids(str(out)) == before
    assert again["emitted"] == first["emitted"]


def test_resume_after_partial_run_completes_without_duplicates(ray_local, tmp_path):
    out = tmp_path / "run"
    run_generate(_cfg(out, n=4))  # one full shard committed
    grown = run_generate(_cfg(out, n=10))  # same fingerprint: the limit is not an output choice
    assert grown["this_attempt"]["items"] == 12  # only the 6 new scenarios x 2 slots ran
    accepted, rejected = _all_ids(str(out))
    assert len(accepted) + len(rejected) == 20 == len(set(accepted + rejected))


def test_changed_config_on_same_output_is_refused(ray_local, tmp_path):
    out = tmp_path / "run"
    run_generate(_cfg(out, n=2))
    changed = _cfg(out, n=2).model_copy(update={"seed": 7})
    with pytest.raises(OutputError, match="fingerprint"):
        run_generate(changed)


def test_a_prompt_edited_in_a_copied_directory_reaches_the_workers_and_the_lineage(ray_local, tmp_path):
    prompts = Path(shutil.copytree(shipped_dir(), tmp_path / "prompts"))
    edited = prompts / "atomic_task.j2"
    edited.write_text(edited.read_text().replace("Scenario: {{ scenario }}", "Scenario: at the lighthouse, {{ scenario }}"))
    cfg = _cfg(tmp_path / "run", n=2)
    cfg = cfg.model_copy(update={"method": cfg.method.model_copy(update={"prompts_dir": str(prompts)})})
    result = run_generate(cfg)
    assert result["fingerprint"] != _cfg(tmp_path / "run", n=2).fingerprint()
    rows = read_committed(str(tmp_path / "run"), "data").to_pylist()
    # The oracle engine writes the prompt's scenario line into the atomic task.
    assert rows and all("at the lighthouse" in row["atomic_task"] for row in rows)
    hashes = json.loads(rows[0]["template_hashes"])
    assert hashes == load_templates(prompts).hashes() and hashes["atomic_task.j2"] != load_templates().hashes()["atomic_task.j2"]


def test_garbage_model_rejects_every_item_and_counts_them(ray_local, tmp_path):
    out = tmp_path / "run"
    result = run_generate(_cfg(out, n=3, garbage=True))
    assert result["emitted"] == 0 and result["failed"] == 0
    assert result["rejected"] == 6
    assert result["funnel"][0]["rejected"] == 6  # all at the first stage
    assert result["unparseable_share"] == 1.0
    assert read_committed(str(out), "rejected").num_rows == 6


def test_engine_that_cannot_start_stops_the_job_with_the_cause(ray_local, tmp_path):
    with pytest.raises(EngineStartError, match="model weights not found"):
        run_generate(_cfg(tmp_path / "run", n=2, fail_start=True))
    assert not OutputStore(str(tmp_path / "run")).committed()


def test_items_stream_without_lockstep(ray_local, tmp_path):
    """With one actor per stage, the engine sees many items at once (not one batch's worth)."""
    cfg = _cfg(tmp_path / "run", n=40, latency_s=0.2)
    cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"items_in_flight_per_actor": 64})})
    result = run_generate(cfg)
    assert result["items"] == 80
    peak = result["replicas"]["main"][0]["max_in_flight"]
    # 80 items across two stages; lockstep batches of 1-4 rows would cap this at 8.
    assert peak >= 40, f"engine saw at most {peak} concurrent requests"


def test_items_in_flight_counts_items_not_blocks(ray_local, tmp_path):
    """With 4 rows per block, an actor holding 4 items takes one block at a time, not 4."""
    from tests.fakes import read_traces

    traces = tmp_path / "traces"
    traces.mkdir()
    cfg = _cfg(tmp_path / "run", n=20, latency_s=0.05, trace_dir=str(traces))
    cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(
        update={"items_in_flight_per_actor": 4, "batch_size": 4})})
    assert run_generate(cfg)["items"] == 40
    (events,) = read_traces(str(traces)).values()
    open_requests: dict[str, int] = {}  # item id -> its requests in the engine now
    peak = 0
    for event, request_id, _, _ in events:
        item = request_id.split("/")[0]
        open_requests[item] = open_requests.get(item, 0) + (1 if event == "start" else -1)
        peak = max(peak, sum(1 for n in open_requests.values() if n > 0))
    # Two stages x 4 items; counting blocks as items would allow 2 x 4 x 4.
    assert 4 < peak <= 8, f"{peak} items had requests in the engine at once"


# -- the lazy item source ---------------------------------------------------------------

def _source_fixture(n_scenarios=7, slots=3, shard_size=2, seed=11):
    from button_ray.records import scenario_id
    from button_ray.records import Scenario
    from button_ray.sink import plan_shards

    fingerprint = "f" * 16
    scenarios = [Scenario(scenario_id=scenario_id(f"Scenario {i}: book a table"), text=f"Scenario {i}: book a table",
                          source="x.txt") for i in range(n_scenarios)]
    by_id = {s.scenario_id: s for s in scenarios}
    plans = plan_shards(fingerprint, [s.scenario_id for s in scenarios], shard_size, slots)
    return fingerprint, seed, slots, plans, by_id


def test_shard_expansion_gives_the_same_items_ids_and_seeds():
    """One row per shard, expanded in a task: exactly the rows (ids, seeds, order) of before;
    items a part holds already are skipped."""
    import numpy as np

    from button_ray.records import WorkItem, derive_seed, stable_id
    from button_ray.source import expand_shards, make_items, shard_rows

    def expand(row):
        out = expand_shards({k: np.array([v]) for k, v in row.items()}, fingerprint, seed, slots)
        return [{"item": i, "shard": s} for i, s in zip(out["item"], out["shard"])]

    fingerprint, seed, slots, plans, by_id = _source_fixture()
    rows = shard_rows(plans, by_id)
    assert len(rows) == len(plans) == 4  # one small row per shard, not per item
    expanded = [r for row in rows for r in expand(row)]
    assert expanded == make_items(fingerprint, seed, plans, by_id, slots)
    skipped = [WorkItem.model_validate_json(r["item"]).item_id for r in expanded[:2]]
    assert expand(shard_rows(plans[:1], by_id, {plans[0].key: skipped})[0]) == expanded[2:plans[0].items]
    for row, (plan, sid, slot) in zip(expanded, [(p, sid, k) for p in plans for sid in p.scenario_ids
                                                 for k in range(slots)]):
        item = WorkItem.model_validate_json(row["item"])
        assert row["shard"] == plan.key and item.scenario == by_id[sid] and item.slot == slot
        assert item.item_id == stable_id(fingerprint, sid, slot)
        assert item.seed == derive_seed(seed, item.item_id)


def test_source_gate_bounds_the_expansion_and_counts_a_retried_shard_once():
    import asyncio

    from button_ray.source import SourceGate

    async def scenario():
        gate = SourceGate(window=10)
        await gate.acquire("a", 6)
        await gate.acquire("a", 6)  # a retried expansion of shard a: no new credits spent
        assert (await gate.stats())["issued"] == 6
        blocked = asyncio.ensure_future(gate.acquire("b", 6))  # 6 + 6 > 10: waits
        await asyncio.sleep(0.05)
        assert not blocked.done()
        await gate.deliver(2)
        await asyncio.wait_for(blocked, 1)
        stats = await gate.stats()
        assert stats["issued"] == 12 and stats["max_ahead"] == 10
        # A shard larger than the window goes alone once everything issued has arrived.
        big = asyncio.ensure_future(gate.acquire("c", 50))
        await asyncio.sleep(0.05)
        assert not big.done()
        await gate.deliver(10)
        await asyncio.wait_for(big, 1)

    asyncio.run(scenario())


def test_item_source_streams_small_blocks_within_its_window(ray_local):
    """The expansion runs as one fused task, emits blocks of <= rows_per_block rows and
    never gets more than the window ahead of the consumer."""
    import ray

    from button_ray.source import ItemSource, SourceGate, make_items, shard_rows

    fingerprint, seed, slots, plans, by_id = _source_fixture(n_scenarios=9, slots=3, shard_size=2)
    source = ItemSource(shard_rows(plans, by_id), fingerprint, seed, slots, max(p.items for p in plans))
    window = 2 * source.max_shard_items  # 12 items
    gate = ray.remote(SourceGate).options(num_cpus=0).remote(window)
    try:
        ds = source.dataset(2, gate, window)
        got = []
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            assert 1 <= len(batch["item"]) <= 2
            got += [{"item": str(i), "shard": str(s)} for i, s in zip(batch["item"], batch["shard"])]
            gate.deliver.remote(len(batch["item"]))
        stats = ray.get(gate.stats.remote())
    finally:
        ray.kill(gate)
    expected = make_items(fingerprint, seed, plans, by_id, slots)
    assert sorted(got, key=lambda r: r["item"]) == sorted(expected, key=lambda r: r["item"])
    assert stats["issued"] == len(expected) == 27
    assert stats["max_ahead"] <= window
    assert "MapBatches(expand_shards)->StreamingRepartition" in ds.stats(), "the split was not fused"


def test_ray_data_per_block_stats_are_bounded():
    """Ray Data keeps a stats record per output block for the whole execution; the
    pipeline's execution callback trims it, so a long stream does not grow the driver."""
    from types import SimpleNamespace

    from button_ray.compat import bounded_block_stats

    callback = bounded_block_stats()()
    keep = callback.KEEP
    class Op:  # hashable, like Ray Data's operators (the keys of the executor's topology)
        def __init__(self, **attrs):
            self.__dict__.update(attrs)

    long_op, short_op, other_op = Op(_output_blocks_stats=list(range(3 * keep))), \
        Op(_output_blocks_stats=list(range(keep))), Op()
    callback.on_execution_step(SimpleNamespace(_topology={long_op: 0, short_op: 0, other_op: 0}))
    assert long_op._output_blocks_stats == list(range(2 * keep, 3 * keep))  # the newest are kept
    assert len(short_op._output_blocks_stats) == keep
    callback.on_execution_step(SimpleNamespace(_topology=None))  # before the executor has a topology


def test_block_stats_trim_reaches_real_ray_data_operators(ray_local):
    """The same callback on a real stream: Ray Data's map operators hold the per-block
    list the trim relies on (a renamed attribute would silently switch it off)."""
    import ray.data

    from button_ray.compat import bounded_block_stats

    seen: dict[str, int] = {}

    class Probe(bounded_block_stats()):
        KEEP = 5

        def after_execution_succeeds(self, executor):
            for op in executor._topology:
                if hasattr(op, "_output_blocks_stats"):
                    seen[op.name] = len(op._output_blocks_stats)

    ds = ray.data.range(60, override_num_blocks=60).map_batches(lambda b: b, batch_size=None)
    ds.context.custom_execution_callback_classes = [Probe]
    assert sum(len(b["id"]) for b in ds.iter_batches(batch_size=None)) == 60
    map_ops = {name: n for name, n in seen.items() if "MapBatches" in name}
    assert map_ops, f"no map operator exposes _output_blocks_stats: {seen}"
    assert all(n <= 2 * Probe.KEEP for n in map_ops.values()), map_ops


def test_progress_probe_reports_what_the_engines_produce_now(ray_local):
    """Finished items alone read as a stalled job early on; the probe adds the engines' rate."""
    import time

    import ray

    from button_ray.pipeline import engine_activity

    @ray.remote(num_cpus=0)
    class Replica:
        def __init__(self, tokens):
            self.tokens = tokens

        def metrics(self):
            return {"served": 3, "in_flight": 2, "completion_tokens": self.tokens}

    handles = [Replica.remote(100), Replica.remote(140)]
    since = time.monotonic() - 4.0
    line = engine_activity({"main": (None, handles)}, since)
    elapsed = time.monotonic() - since
    assert line.startswith("engines: 6 requests served, 4 in flight, ")
    rate = float(line.rsplit(", ", 1)[1].split()[0])
    assert 240 / elapsed - 0.1 <= rate <= 60.05  # 240 tokens over 4 s plus the time the call took


def test_finished_run_carries_the_training_forms_and_a_dataset_card(ray_local, tmp_path):
    """On scripted-engine output: the Parquet's OpenAI columns and the three exports agree
    call for call, and the run ends with its dataset card."""
    from tests.training_checks import assert_formats_agree

    out = tmp_path / "run"
    result = run_generate(_cfg(out, n=4))
    assert result["emitted"] >= 1
    assert assert_formats_agree(out, tmp_path) == result["emitted"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and f"{result['emitted']} trajectories generated" in card
    assert "| assistant_agent | `oracle-engine` |" in card and len(list((out / "card").glob("*.png"))) == 5


def test_the_dialogue_judge_scores_every_dialogue_and_rejects_the_low_ones(ray_local, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(out, n=4, judge_low_share=0.5)
    cfg = cfg.model_copy(update={"method": cfg.method.model_copy(update={"judge": JudgeConfig(enabled=True)})})
    result = run_generate(cfg)
    judged = next(row for row in result["funnel"] if row["stage"] == "dialogue_judge")
    assert judged["reasons"].keys() == {"judge_low_score"} and 0 < judged["rejected"] < judged["in"]
    assert result["usage_by_role"]["dialogue_judge"]["calls"] == judged["in"]
    data = read_committed(str(out), "data").to_pylist()
    assert data and all((r["judge_helpfulness"], r["judge_correctness"], r["judge_naturalness"]) == (5, 5, 4)
                        for r in data)
    low = [r for r in read_committed(str(out), "rejected").to_pylist() if r["stage"] == "dialogue_judge"]
    assert len(low) == judged["rejected"] and all(r["judge_correctness"] == 1 and r["judge_reason"] for r in low)
    assert result["judge"]["judged"] == result["emitted"] and result["judge"]["mean"]["naturalness"] == 4.0
    assert "## Judge scores" in (out / "README.md").read_text()

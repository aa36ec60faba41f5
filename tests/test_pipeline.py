"""The whole pipeline on a real local Ray cluster with the scripted OracleEngine.

These tests are about orchestration (streaming, sharding, commits, resume, counting);
the real-engine end to end test is tests/test_end_to_end.py.
"""

import json

import pyarrow.parquet as pq
import pytest

from button_ray.button_format import validate_button_record
from button_ray.config import EngineConfig, MethodConfig, OutputConfig, PoolConfig, RunConfig, ScenarioConfig
from button_ray.pipeline import EngineStartError, run_generate
from button_ray.sink import OutputError, OutputStore, read_committed

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
    table = read_committed(str(out), "data")
    for row in table.to_pylist():
        record = {"messages": row["messages"]}
        assert validate_button_record(record) == []
        assert row["config_fingerprint"] == result["fingerprint"]
        assert dict(row["models"])["assistant_agent"] == "oracle-engine"
    assert (out / "_SUCCESS").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["funnel"][0]["in"] == 12
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

"""`button-ray scenarios` distributed: Ray Data scenario actors on a real local Ray
cluster, the scripted OracleEngine behind the real replica actor, and the dedup in its
own actor (with the model-free encoder of tests/bottom_up/conftest.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from button_ray.bottom_up.scenarios import build_scenario_pool
from button_ray.config import EngineConfig, MethodConfig, PoolConfig, RunConfig, RuntimeConfig, ScenarioConfig
from button_ray.errors import InputError, OutputError
from button_ray.scenario_job import run_scenario_job
from tests.bottom_up.conftest import _hash_encoder, model_free_dedup, scripted
from tests.bottom_up.test_scenarios import GLAIVE
from tests.fakes import ScriptedLLM
from tests.storage.helpers import all_actor_ids

BASE = ["booking a flight", "Booking a flight.", "tracking a parcel"]
CONVERSATIONS = [GLAIVE, {"messages": [{"role": "user", "content": "Renew my library books"}]}]


def _cfg(actors: int, **extra) -> RunConfig:
    return RunConfig(
        scenarios=ScenarioConfig(concurrency=8),
        method=MethodConfig(retries=1),
        pools=(PoolConfig(num_cpus=0.1, engine_class="tests.fakes:OracleEngine", engine=EngineConfig(extra=extra)),),
        runtime=RuntimeConfig(bottom_up_actors=actors),
    )


def _inputs(tmp_path) -> tuple[str, str]:
    base, seeds = tmp_path / "base.txt", tmp_path / "seeds.jsonl"
    base.write_text("\n".join(BASE) + "\n")
    seeds.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    return str(base), str(seeds)


@pytest.mark.ray
def test_two_actors_give_the_pool_one_actor_and_the_driver_give(ray_local, tmp_path):
    base, seeds = _inputs(tmp_path)
    pools, stats = {}, {}
    for actors in (1, 2):
        before = all_actor_ids("ScenarioStage")
        out = tmp_path / f"pool{actors}.txt"
        stats[actors] = run_scenario_job(_cfg(actors), seeds, base, 40, str(out), encoder=_hash_encoder)
        pools[actors] = out.read_text().splitlines()
        # One actor pool per stream (the extraction, then each expansion round).
        assert len(all_actor_ids("ScenarioStage") - before) == actors * (1 + stats[actors]["rounds"])

    local, local_stats = asyncio.run(build_scenario_pool(
        BASE, CONVERSATIONS, 40, ScriptedLLM(scripted()), MethodConfig(retries=1), ScenarioConfig(concurrency=8),
        deduplicator=model_free_dedup()))
    assert pools[2] == pools[1] == [s.text for s in local]
    assert len(pools[1]) == 40 and pools[1][:2] == ["booking a flight", "tracking a parcel"]
    for key in ("from_list", "extracted", "expanded", "duplicates_removed", "rounds", "failures", "usage"):
        assert stats[2][key] == stats[1][key] == local_stats[key], key
    assert stats[2]["actors"] == 2 and stats[2]["rows"] == stats[1]["rows"] >= 38
    assert stats[2]["dedup"]["kept"] >= 40 and stats[2]["dedup"]["embedded"] >= stats[2]["dedup"]["kept"]


@pytest.mark.ray
def test_a_row_that_never_parses_is_dropped_and_counted(ray_local, tmp_path, capfd):
    base, _ = _inputs(tmp_path)
    out = tmp_path / "pool.txt"
    cfg = _cfg(2, garbage_requests=["scenario_expansion/1/"])
    stats = run_scenario_job(cfg, None, base, 12, str(out), encoder=_hash_encoder)
    pool = out.read_text().splitlines()
    assert len(pool) == 12 == stats["size"]
    assert stats["failures"] == {"scenario_expansion:bad_json": 1}
    # Both attempts of the row were answered, neither parsed.
    assert stats["usage"]["scenario_expansion"]["unparseable"] == 2
    # The last progress line (printed at the end of the stream) counts the row as rejected.
    last = [line for line in capfd.readouterr().err.splitlines() if line.startswith("[button-ray ")][-1]
    assert f"items {stats['rows']}/{stats['rows']}" in last and "rejected 1 failed 0" in last


def test_input_and_output_errors_stop_the_job_before_ray_starts(tmp_path, monkeypatch):
    import button_ray.scenario_job as scenario_job

    monkeypatch.setattr(scenario_job, "init_ray", lambda cfg: pytest.fail("Ray started"))
    base, seeds = _inputs(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n{not json\n')
    with pytest.raises(InputError, match="bad.jsonl line 2: not valid JSON"):
        run_scenario_job(_cfg(1), str(bad), base, 10, str(tmp_path / "pool.txt"))
    with pytest.raises(FileNotFoundError):
        run_scenario_job(_cfg(1), str(tmp_path / "missing.jsonl"), base, 10, str(tmp_path / "pool.txt"))
    with pytest.raises(OutputError, match="does not exist"):
        run_scenario_job(_cfg(1), seeds, base, 10, str(tmp_path / "no" / "pool.txt"))

"""What a resume may change: the limit, the shard size, engine memory; a failed first
attempt does not lock the output; infrastructure errors never become records.

Real local Ray cluster, the scripted OracleEngine behind the real replica actor.
Every test checks the exact committed record ids against ids computed independently
(tests/storage/helpers.py).
"""

from __future__ import annotations

import json

import pytest

from button_ray.errors import EngineStartError, InputError
from button_ray.pipeline import run_generate
from button_ray.sink import OutputStore, read_committed
from tests.storage import helpers as h

pytestmark = pytest.mark.ray


def _ids(uri):
    accepted = read_committed(uri, "data").column("record_id").to_pylist()
    rejected = read_committed(uri, "rejected").column("record_id").to_pylist()
    return accepted + rejected


def _with(cfg, **updates):
    """A copy of ``cfg`` with section fields replaced, e.g. output={"shard_size": 2}."""
    sections = {name: getattr(cfg, name).model_copy(update=fields) for name, fields in updates.items()}
    return cfg.model_copy(update=sections)


def test_a_smaller_limit_keeps_every_committed_record(ray_local, tmp_path):
    uri = str(tmp_path / "run")
    run = h.cfg(uri, n=6, shard_size=4, slots=2)  # shards of 4 and 2 scenarios
    run_generate(run)
    assert sorted(_ids(uri)) == sorted(h.expected_ids(run))
    again = run_generate(run, limit=5)  # the last shard is cut differently now
    assert again["this_attempt"]["calls"] == 0
    # Nothing vanished from the manifest: the committed last shard stays whole.
    ids = _ids(uri)
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(h.expected_ids(run))
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["rows"] + \
        json.loads((tmp_path / "run" / "manifest.json").read_text())["rejected_rows"] == 12
    assert (tmp_path / "run" / "_SUCCESS").exists()


def test_a_larger_limit_and_another_shard_size_run_only_the_new_scenarios(ray_local, tmp_path):
    uri = str(tmp_path / "run")
    run = h.cfg(uri, n=3, shard_size=4, slots=2)  # one partial shard
    run_generate(run)
    resized = _with(run, output={"shard_size": 2})
    # Engine memory is not an output choice: lowering it after an out-of-memory start is a resume.
    pool = resized.pools[0]
    resized = resized.model_copy(update={"pools": (pool.model_copy(update={"engine": pool.engine.model_copy(
        update={"gpu_memory_utilization": 0.2, "max_num_seqs": 8})}),)})
    assert resized.fingerprint() == run.fingerprint()
    grown = run_generate(resized, limit=7)
    assert grown["resumed"] is True
    assert grown["this_attempt"]["items"] == 8  # scenarios 4-7 only, the committed 3 skipped
    ids = _ids(uri)
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(h.expected_ids(run, n=7))
    assert len(OutputStore(uri).committed()) == 3  # 3 + (2 + 2)


def test_success_marker_is_removed_when_a_resume_with_pending_work_fails(ray_local, tmp_path, monkeypatch):
    uri = str(tmp_path / "run")
    run = h.cfg(uri, n=2, shard_size=2, slots=1)
    run_generate(run)
    assert (tmp_path / "run" / "_SUCCESS").exists()

    h.fail_commits_after(monkeypatch, 0, uri)
    with pytest.raises(Exception, match="scripted commit failure"):
        run_generate(run, limit=4)
    assert not (tmp_path / "run" / "_SUCCESS").exists()
    monkeypatch.undo()
    run_generate(run, limit=4)
    assert (tmp_path / "run" / "_SUCCESS").exists()
    assert sorted(_ids(uri)) == sorted(h.expected_ids(run, n=4))


def test_shards_committed_before_a_failure_are_in_the_manifest(ray_local, tmp_path, monkeypatch):
    uri = str(tmp_path / "run")
    run = h.cfg(uri, n=6, shard_size=2, slots=1, in_flight=1)
    commits = h.fail_commits_after(monkeypatch, 2, uri)
    with pytest.raises(Exception, match="scripted commit failure"):
        run_generate(run)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert sorted(s["key"] for s in manifest["shards"]) == sorted(commits())
    assert len(_ids(uri)) == 4


def test_a_failed_first_attempt_does_not_lock_the_output(ray_local, tmp_path, capsys):
    uri = str(tmp_path / "run")
    broken = h.cfg(uri, n=2, shard_size=2, slots=1, fail_start=True)
    with pytest.raises(EngineStartError, match="model weights not found"):
        run_generate(broken)
    assert json.loads((tmp_path / "run" / "_run.json").read_text())["fingerprint"] == broken.fingerprint()
    fixed = h.cfg(uri, n=2, shard_size=2, slots=1)
    assert fixed.fingerprint() != broken.fingerprint()
    result = run_generate(fixed)
    assert "committed nothing; starting over" in capsys.readouterr().out
    assert result["resumed"] is False
    assert sorted(_ids(uri)) == sorted(h.expected_ids(fixed))


def test_bad_input_fails_before_the_output_is_claimed(ray_local, tmp_path):
    source = tmp_path / "scenarios.jsonl"
    source.write_text('{"scenario": "Booking a flight"}\n{"scenario": 7}\n')
    run = h.cfg(str(tmp_path / "run"), n=2)
    run = run.model_copy(update={"scenarios": run.scenarios.model_copy(update={"source": str(source)})})
    with pytest.raises(InputError, match="scenarios.jsonl line 2: .* holds int"):
        run_generate(run)
    assert not (tmp_path / "run" / "_run.json").exists()
    source.write_text("")
    with pytest.raises(InputError, match="holds no scenarios"):
        run_generate(run)
    assert not (tmp_path / "run" / "_SUCCESS").exists()


def test_an_engine_that_cannot_restart_stops_the_job_and_fails_no_item(ray_local, tmp_path):
    """A replica restarted with an engine that cannot start: the job stops, no item is
    committed as failed, no _SUCCESS; once the engine can start, the same config finishes."""
    uri = str(tmp_path / "run")
    flag = tmp_path / "engine-broken"
    flag.write_text("x")
    run = h.cfg(uri, n=6, shard_size=1, slots=1, in_flight=2, die_after=12, fail_restart_if=str(flag))
    before = h.all_actor_ids("LLMReplica")
    with pytest.raises(Exception) as exc:
        run_generate(run)
    assert "no replica of pool 'main' answered" in str(exc.value)
    # The fault happened: the replica died and Ray restarted it at least once.
    (actor,) = [a for a in h.actors("LLMReplica") if a["ActorID"] not in before]
    assert int(actor["NumRestarts"]) >= 1
    assert not (tmp_path / "run" / "_SUCCESS").exists()
    store = OutputStore(uri)
    if store.manifest() is not None:
        failed = [o for o in read_committed(uri, "rejected").column("outcome").to_pylist() if o == "failed"]
        assert failed == [], "an infrastructure error was committed as a record's outcome"
    flag.unlink()
    result = run_generate(run)
    assert result["failed"] == 0
    ids = _ids(uri)
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(h.expected_ids(run))
    assert (tmp_path / "run" / "_SUCCESS").exists()

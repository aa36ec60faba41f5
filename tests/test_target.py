"""`generate --target-accepted`: rounds sized from the measured yield, a stop within one
shard of the target, resume, and a scenario pool too small for the target.

Real local Ray cluster, the scripted OracleEngine (tests/fakes.py) behind the real
replica actor; ``judge_no_share`` makes its judge reject about that share of the items,
so the yield is below 1 and the same items are rejected in every run.
"""

from __future__ import annotations

import json

import pytest

from button_ray import pipeline
from button_ray.cli import main
from button_ray.pipeline import run_generate
from button_ray.errors import TargetError
from button_ray.sink import OutputStore, read_committed
from tests.storage import helpers as h

pytestmark = pytest.mark.ray


def _accepted(uri: str) -> int:
    return read_committed(uri, "data").num_rows


def _assert_once_from_pool(run, uri: str, pool: int) -> list[str]:
    """Every committed record id is one of the pool's items, and none is committed twice."""
    ids = h.committed_ids(uri)
    assert len(ids) == len(set(ids)), "a record was committed twice"
    assert set(ids) <= set(h.ids_for(run.fingerprint(), pool, run.method.atomic_tasks_per_scenario))
    return ids


def test_a_run_to_a_target_tops_up_in_rounds_and_stops_within_a_shard(ray_local, tmp_path):
    uri = str(tmp_path / "run")
    run = h.cfg(uri, n=40, shard_size=3, slots=2, judge_no_share=0.5)
    result = run_generate(run, target_accepted=20)
    target = result["target"]
    # Round 1 runs the 10 scenarios that would do if every item were accepted; the judge
    # rejects about half, so more rounds top up.
    assert target["reached"] and target["rounds"] >= 2, target
    judge = next(row for row in result["funnel"] if row["stage"] == "composition_filter")
    assert judge["reasons"].get("judge_no", 0) > 0
    accepted = _accepted(uri)
    assert accepted == target["committed_accepted"] == result["emitted"]
    assert 20 <= accepted < 20 + 3 * 2, "passed the target by a shard's items or more"
    _assert_once_from_pool(run, uri, 40)
    assert result["items"] < 80, "the whole pool ran"
    success = json.loads((tmp_path / "run" / "_SUCCESS").read_text())
    assert success["target_accepted"] == 20 and success["accepted"] == accepted


def test_the_stream_stops_at_the_commit_that_reaches_the_target(ray_local, tmp_path, monkeypatch):
    # A round far larger than the target needs: the stop at the commit must bound it.
    monkeypatch.setattr(pipeline, "round_scenarios", lambda *args: 20)
    uri = str(tmp_path / "run")
    run = h.cfg(uri, n=20, shard_size=2, slots=1, in_flight=2)
    result = run_generate(run, target_accepted=5)
    assert result["target"]["reached"] and result["target"]["rounds"] == 1
    assert 5 <= _accepted(uri) < 5 + 2
    assert len(OutputStore(uri).committed()) < 10, "the round ran to its end"
    _assert_once_from_pool(run, uri, 20)


def test_a_run_to_a_target_resumes_exactly_once(ray_local, tmp_path, monkeypatch):
    uri = str(tmp_path / "run")
    run = h.cfg(uri, n=40, shard_size=2, slots=2, in_flight=2, judge_no_share=0.5)
    # Round 1 is 8 scenarios, 4 shards of 2 (16 items, fewer than 16 accepted): the
    # first commit of round 2 fails.
    h.fail_commits_after(monkeypatch, 4, uri)
    with pytest.raises(Exception, match="scripted commit failure"):
        run_generate(run, target_accepted=16)
    monkeypatch.undo()
    assert not (tmp_path / "run" / "_SUCCESS").exists()
    before = _assert_once_from_pool(run, uri, 40)
    assert len(before) == 16

    result = run_generate(run, target_accepted=16)  # the same command again
    assert result["resumed"] and result["target"]["reached"]
    ids = _assert_once_from_pool(run, uri, 40)
    assert set(before) < set(ids) and 16 <= _accepted(uri) < 16 + 4

    again = run_generate(run, target_accepted=16)  # reached: nothing left, no engine
    assert again["this_attempt"]["calls"] == 0 and h.committed_ids(uri) == ids
    more = run_generate(run, target_accepted=24)  # a larger target tops up the same output
    assert more["target"]["reached"] and 24 <= _accepted(uri) < 24 + 4
    assert set(ids) < set(_assert_once_from_pool(run, uri, 40))


def test_a_pool_that_cannot_give_the_target_fails_before_anything_starts(ray_local, tmp_path, capsys):
    uri = str(tmp_path / "run")
    with pytest.raises(TargetError, match=r"3 scenarios x 2 slots = 6 distinct items"):
        run_generate(h.cfg(uri, n=3, slots=2), target_accepted=7)
    assert not (tmp_path / "run" / "_run.json").exists()
    # tests/configs/oracle.yaml: 4 scenarios x 2 slots.
    cli = ["generate", "--config", "tests/configs/oracle.yaml", "--output", str(tmp_path / "cli")]
    assert main([*cli, "--target-accepted", "9"]) == 2
    assert "cannot give 9 accepted trajectories" in capsys.readouterr().err
    assert main([*cli, "--target-accepted", "2", "--num-scenarios", "2"]) == 2
    assert "give one" in capsys.readouterr().err
    assert not (tmp_path / "cli" / "_run.json").exists()


def test_a_run_that_uses_up_its_pool_says_so_and_leaves_no_success(ray_local, tmp_path, capsys):
    uri = str(tmp_path / "run")
    run = h.cfg(uri, n=4, shard_size=2, slots=2, judge_no_share=0.5)
    config = h.write_yaml_config(str(tmp_path / "run.yaml"), run)
    assert main(["generate", "--config", config, "--target-accepted", "8"]) == 1
    assert "target not reached: the scenario pool ran out" in capsys.readouterr().err
    h.assert_exact(uri, None, h.expected_ids(run))  # every item of the pool, once
    assert _accepted(uri) < 8 and not (tmp_path / "run" / "_SUCCESS").exists()


def test_a_run_whose_items_are_all_rejected_stops_after_its_first_round(ray_local, tmp_path):
    uri = str(tmp_path / "run")
    result = run_generate(h.cfg(uri, n=20, shard_size=2, slots=1, garbage=True), target_accepted=4)
    target = result["target"]
    assert not target["reached"] and target["rounds"] == 1 and result["items"] == 4
    assert target["stopped"].startswith("none of the 4 committed items was accepted")

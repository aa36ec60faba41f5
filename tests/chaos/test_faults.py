"""Faults injected into real runs: killed processes, storage gone, a crash mid-commit.

Every test first proves that its fault happened (a killed pid, a restart count, the
error the job ended with), then checks the exact set of committed record ids against
the set computed independently (tests/storage/helpers.py: expected_ids): nothing
missing, nothing duplicated. Runs use the OracleEngine behind the real replica actor;
fault plans reach the Ray workers through ``engine.extra`` (latency, trace), never
through driver-side patches, except the sink's own commit, which runs in the driver.
Output goes to the session's SeaweedFS server over S3.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import ray

from button_ray.button_format import validate_button_record
from button_ray.config import load_config
from button_ray.errors import OutputError
from button_ray.pipeline import run_generate
from button_ray.sink import OutputStore, read_committed
from tests.fakes import OracleEngine, in_flight, read_traces
from tests.storage import helpers as h

pytestmark = [pytest.mark.chaos, pytest.mark.s3, pytest.mark.ray]

RUN_TIMEOUT_S = 300


def _root(uri: str) -> str:
    return uri[len("s3://"):]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_dead(pid: int, timeout: float = 30) -> None:
    h.wait_for(lambda: not _pid_alive(pid), timeout, f"pid {pid} to exit")


# -- LLM replica -----------------------------------------------------------------------

def test_replica_killed_with_requests_in_flight(ray_local, s3_server, tmp_path):
    """SIGKILL the replica process mid-run: the pool retries after the restart, output exact."""
    trace = tmp_path / "trace"
    trace.mkdir()
    run = h.cfg(s3_server.uri("replica-kill"), s3_server.storage_options, n=4, shard_size=2, slots=2,
                latency_s=0.15, trace_dir=str(trace))
    before = h.all_actor_ids("LLMReplica")
    bg = h.Background(lambda: run_generate(run))

    def busy_replica():
        ours = [a for a in h.actors("LLMReplica", "ALIVE") if a["ActorID"] not in before and a["Pid"]]
        if not ours:
            return None
        metrics = ray.get(h.actor_handle(ours[0]["ActorID"]).metrics.remote())
        return (ours[0], metrics) if metrics["served"] >= 10 and metrics["in_flight"] > 0 else None

    actor, metrics = h.wait_for(busy_replica, 120, "the replica to be serving with requests in flight")
    pid = metrics["pid"]
    os.kill(pid, signal.SIGKILL)
    killed_in_flight = in_flight(read_traces(str(trace))[pid])
    _wait_dead(pid)
    result = bg.join(RUN_TIMEOUT_S)

    # The fault happened: the process is gone with requests in it, Ray restarted the
    # actor in a new process, and the requests it held were served again there.
    assert killed_in_flight, "no request was in flight in the killed replica"
    info = h.actor_info(actor["ActorID"])
    assert info["NumRestarts"] >= 1
    new_pids = {m["pid"] for m in result["replicas"]["main"]}
    assert pid not in new_pids
    traces = read_traces(str(trace))
    served_again = {e[1] for p, events in traces.items() if p != pid for e in events if e[0] == "end"}
    assert killed_in_flight <= served_again, "a request in flight in the killed replica was never retried"

    assert result["failed"] == 0
    h.assert_exact(run.output.uri, run.output.storage_options, h.expected_ids(run))
    h.assert_markers_complete(s3_server.fs(), _root(run.output.uri))


# -- simulation actor ------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 8])
def test_simulation_actor_killed_mid_trajectory(ray_local, s3_server, tmp_path, batch):
    """SIGKILL the Ray Data simulation actor while it holds trajectories: they are redone
    once; no committed trajectory lost, no half trajectory committed, no duplicate.

    With ``batch`` 8 the run is one shard of 8 items in one Ray Data block, some of them
    slow (the engine answers them at 1.5 s a request), and the kill waits until the fast
    ones are stored while the slow ones of the same block still run: what finished is
    durable at once, not when its block is done, and is not redone when Ray Data gives
    the block to the restarted actor."""
    trace = tmp_path / "trace"
    trace.mkdir()
    shards = 2 if batch == 1 else 1

    def config(engine: dict):
        run = h.cfg(s3_server.uri(f"sim-kill-{batch}"), s3_server.storage_options, n=4, shard_size=4 // shards,
                    slots=2, trace_dir=str(trace), **engine)
        return run.model_copy(update={"runtime": run.runtime.model_copy(update={"batch_size": batch})})

    run, slow_ids = config({"latency_s": 0.3}), set()
    # The engine's settings are part of the item ids: the first salt that makes 2-5 of
    # the 8 items slow (the same one every time for the same code).
    for salt in range(100 if batch > 1 else 0):
        engine = {"slow_share": 0.4, "slow_salt": str(salt), "slow_latency_s": 1.5, "latency_s": 0.05}
        run = config(engine)
        slow_ids = {i for i in h.expected_ids(run) if OracleEngine.slow(engine, i)}
        if 2 <= len(slow_ids) <= 5:
            break
    assert batch == 1 or 2 <= len(slow_ids) <= 5
    before = h.all_actor_ids("SimulationStage")
    bg = h.Background(lambda: run_generate(run))
    sim_roles = {"user_agent", "assistant_agent", "tool_agent"}

    def mid_trajectory():
        ours = [a for a in h.actors("SimulationStage", "ALIVE") if a["ActorID"] not in before and a["Pid"]]
        if not ours:
            return None
        events = [e for evs in read_traces(str(trace)).values() for e in evs]
        # Trajectories have had turns answered, and turns are in flight right now.
        turns = {e[3] for e in events if e[0] == "end" and e[2] in sim_roles}
        open_turns = {e[1] for e in events if e[0] == "start" and e[2] in sim_roles} - \
            {e[1] for e in events if e[0] == "end"}
        if batch > 1 and (not {r.split("/", 1)[0] for r in open_turns} & slow_ids or
                          not h.durable_uncommitted(run.output.uri, run.output.storage_options, set())):
            return None
        return (ours[0], turns) if turns and open_turns and not bg.done() else None

    actor, _ = h.wait_for(mid_trajectory, 120, "a trajectory in the middle of its turns")
    committed_before = h.marker_count(s3_server.fs(), _root(run.output.uri))
    # Items the writer (this actor) stored as parts before the kill.
    durable = h.durable_uncommitted(run.output.uri, run.output.storage_options, set())
    os.kill(actor["Pid"], signal.SIGKILL)
    at_kill = [e for evs in read_traces(str(trace)).values() for e in evs]
    _wait_dead(actor["Pid"])
    result = bg.join(RUN_TIMEOUT_S)

    # The trajectories the actor held were redone from their start (request ids are
    # deterministic, so their first turns were asked again) and completed.
    def starts(events):
        out: dict[str, int] = {}
        for e in events:
            if e[0] == "start" and e[2] in sim_roles:
                out[e[1]] = out.get(e[1], 0) + 1
        return out

    before_kill = starts(at_kill)
    after = starts([e for evs in read_traces(str(trace)).values() for e in evs])
    redone = {rid for rid, n in after.items() if before_kill.get(rid) and n > before_kill[rid]}
    assert redone, "no turn asked before the kill was asked again: nothing was redone"
    # What the killed writer had stored is not asked again: the kill cost only the items in flight.
    assert not {rid for rid in redone if rid.split("/", 1)[0] in durable}, "a durable item was redone"

    assert h.actor_info(actor["ActorID"])["NumRestarts"] >= 1, "Ray did not restart the killed actor"
    assert committed_before < shards, "the kill came after every shard was committed"
    if batch > 1:
        assert durable and not durable & slow_ids, "the fast items were not stored while the slow ones ran"
    assert result["failed"] == 0
    expected = h.expected_ids(run)
    h.assert_exact(run.output.uri, run.output.storage_options, expected)
    # Whole trajectories only: every committed accepted row is a valid BUTTON record.
    for row in read_committed(run.output.uri, "data", run.output.storage_options).to_pylist():
        assert validate_button_record({"messages": row["messages"]}) == []
    h.assert_markers_complete(s3_server.fs(), _root(run.output.uri))


# -- the driver ------------------------------------------------------------------------

def _cli(config_path: str, uri: str, env: dict[str, str], log_path: str) -> subprocess.Popen:
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "button_ray.cli", "generate", "--config", config_path, "--output", uri],
            cwd=os.getcwd(), env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    finally:
        log.close()


def test_driver_sigkilled_then_resumed_with_the_same_command(ray_local, s3_server, tmp_path):
    """kill -9 the `button-ray generate` driver after its first commit; the same command
    finishes the run without redoing committed shards."""
    uri = s3_server.uri("driver-kill")
    # Credentials and endpoint from AWS_* variables only: the YAML holds no secret.
    run = h.cfg(uri, None, n=6, shard_size=2, slots=1, in_flight=1, latency_s=0.1)
    config_path = h.write_yaml_config(str(tmp_path / "run.yaml"), run)
    run = load_config(config_path, [f"output.uri={uri}"])
    env = h.cli_env({**s3_server.env, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address})
    fs, root = s3_server.fs(), _root(uri)
    log_path = str(tmp_path / "cli.log")

    first = _cli(config_path, uri, env, log_path)
    try:
        h.wait_for(lambda: h.marker_count(fs, root) >= 1 or first.poll() is not None, 240,
                   "the first shard to be committed")
        assert first.poll() is None, f"driver ended early:\n{open(log_path).read()[-3000:]}"
        first.send_signal(signal.SIGKILL)
        assert first.wait(30) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
    markers_before = {m["key"]: m for m in h.assert_markers_complete(fs, root)}
    assert 1 <= len(markers_before) < 3, "the kill came too late to leave work for the resume"
    assert not fs.exists(f"{root}/_SUCCESS")
    # Items finished before the kill are durable as parts: the resume does not run them.
    durable = h.durable_uncommitted(uri, s3_server.storage_options, markers_before)

    second = _cli(config_path, uri, env, log_path)
    assert second.wait(RUN_TIMEOUT_S) == 0, open(log_path).read()[-3000:]
    assert "resuming" in open(log_path).read()
    summary = json.loads(fs.cat_file(f"{root}/summary.json"))
    assert summary["resumed"] is True and summary["items"] == 6
    assert summary["this_attempt"]["items"] == 6 - 2 * len(markers_before) - len(durable), \
        "committed shards or durable items were redone"
    markers_after = {m["key"]: m for m in h.assert_markers_complete(fs, root)}
    for key, marker in markers_before.items():
        assert markers_after[key]["committed_at"] == marker["committed_at"], "a committed shard was rewritten"
    assert fs.exists(f"{root}/_SUCCESS")
    h.assert_exact(uri, s3_server.storage_options, h.expected_ids(run))


# -- the commit itself -------------------------------------------------------------------

def test_crash_between_data_and_marker_then_resume(ray_local, s3_server, monkeypatch):
    """A commit task dies after a shard's data object is written, before its marker: the
    shard is not committed, and the resume overwrites the orphan."""
    run = h.cfg(s3_server.uri("torn-commit"), s3_server.storage_options, n=4, shard_size=2, slots=1)
    fs, root = s3_server.fs(), _root(run.output.uri)
    torn = h.tear_first_commit(monkeypatch, run.output.uri)
    with pytest.raises(RuntimeError, match="injected crash"):
        run_generate(run)
    monkeypatch.undo()

    key = torn.read_text()
    assert fs.exists(f"{root}/data/shard-{key}.parquet"), "the data object was not written before the crash"
    assert not fs.exists(f"{root}/_commits/shard-{key}.json")
    assert key not in OutputStore(run.output.uri, run.output.storage_options).committed()
    # Make the orphan unreadable: a resume that read it instead of rewriting it would fail.
    fs.pipe_file(f"{root}/data/shard-{key}.parquet", b"torn")

    result = run_generate(run)
    assert result["resumed"] is True
    # The torn shard's items were durable as parts: the resume committed them without
    # running them again.
    assert result["this_attempt"]["items"] <= 4 - 2
    markers = {m["key"]: m for m in h.assert_markers_complete(fs, root)}
    assert key in markers
    h.assert_exact(run.output.uri, run.output.storage_options, h.expected_ids(run))


# -- the storage -------------------------------------------------------------------------

def test_storage_server_stopped_mid_run_then_resume(ray_local, s3_server):
    """The S3 server dies mid-run: the job ends with a clear error and no torn commit;
    after the server is back, the same run finishes exactly."""
    # The client's own retries off: the sink's bounded retries (1 + 2 + 4 s) are what
    # rides out, then gives up on, the outage; the test does not wait out botocore's too.
    opts = {**s3_server.storage_options, "config_kwargs": {"retries": {"max_attempts": 1}}}
    run = h.cfg(s3_server.uri("server-down"), opts, n=6, shard_size=2, slots=1, in_flight=1, latency_s=0.1)
    fs, root = s3_server.fs(), _root(run.output.uri)
    bg = h.Background(lambda: run_generate(run))
    h.wait_for(lambda: h.marker_count(fs, root) >= 1 or bg.done(), 240, "the first commit")
    assert not bg.done(), "the run ended before the server could be stopped"
    s3_server.stop()
    with pytest.raises(OutputError, match="could not (commit|store the finished items of) shard .* cannot reach .* "
                       "same command resumes"):
        bg.join(RUN_TIMEOUT_S)
    s3_server.start()

    fs = s3_server.fs()
    markers_before = h.assert_markers_complete(fs, root)  # no marker without its data
    assert 1 <= len(markers_before) < 3
    durable = h.durable_uncommitted(run.output.uri, opts, {m["key"] for m in markers_before})
    result = run_generate(run)
    assert result["resumed"] is True
    assert result["this_attempt"]["items"] == 6 - 2 * len(markers_before) - len(durable)
    h.assert_exact(run.output.uri, run.output.storage_options, h.expected_ids(run))


def test_bucket_deleted_mid_run_ends_cleanly_and_a_resume_completes(ray_local, s3_server):
    bucket = f"vanishing-{os.getpid()}-{int(time.time())}"
    fs = s3_server.fs()
    fs.mkdir(bucket)
    uri = f"s3://{bucket}/run"
    run = h.cfg(uri, s3_server.storage_options, n=6, shard_size=2, slots=1, in_flight=1, latency_s=0.1)
    bg = h.Background(lambda: run_generate(run))
    h.wait_for(lambda: h.marker_count(fs, f"{bucket}/run") >= 1 or bg.done(), 240, "the first commit")
    assert not bg.done(), "the run ended before the bucket could be deleted"
    fs.rm(bucket, recursive=True)
    if fs.exists(bucket):
        fs.rmdir(bucket)
    assert not s3_server.fs().exists(bucket)
    with pytest.raises(OutputError, match=f"could not (commit|store the finished items of) shard .* the bucket "
                       f"'{bucket}' .* does not exist"):
        bg.join(RUN_TIMEOUT_S)
    assert not s3_server.fs().exists(bucket), "the sink re-created the deleted bucket"

    fs.mkdir(bucket)
    result = run_generate(run)
    assert result["items"] == 6
    h.assert_exact(uri, s3_server.storage_options, h.expected_ids(run))

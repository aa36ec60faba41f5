"""The commit protocol and whole runs on a real S3 server (SeaweedFS), through s3fs."""

from __future__ import annotations

import json
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from button_ray.errors import OutputError
from button_ray.pipeline import run_generate
from button_ray.records import ACCEPTED_SCHEMA, REJECTED_SCHEMA
from button_ray.sink import OutputStore, plan_shards, read_committed
from tests.storage import helpers as h
from tests.storage.seaweed import free_ports

pytestmark = pytest.mark.s3


def _rows(n, shard):
    return pa.Table.from_pylist(
        [{"record_id": f"r{shard}-{i}", "messages": [{"role": "user", "content": "hi"}]} for i in range(n)],
        schema=ACCEPTED_SCHEMA,
    )


# -- the protocol, no Ray --------------------------------------------------------------

def test_commit_protocol_on_s3(s3_server):
    uri = s3_server.uri("protocol")
    opts = s3_server.storage_options
    store = OutputStore(uri, opts)
    assert store.object_store
    # No cached listings: a marker written by another client is seen at once.
    assert store.fs.dircache.use_listings_cache is False
    store.preflight()
    plans = plan_shards("fp", ["a", "b", "c"], 2, slots=1)
    m0 = store.commit_shard(plans[0], _rows(2, 0), REJECTED_SCHEMA.empty_table(), {"items": 2})
    # An orphan data object of shard 2 (a crash before its marker) is not committed.
    store._write_bytes(f"data/shard-{plans[1].key}.parquet", b"partial garbage")
    assert set(store.committed()) == {plans[0].key}
    other = OutputStore(uri, opts)  # another process's view
    other.write_json(f"_commits/shard-{plans[1].key}.json", {"key": plans[1].key, "files": {}})
    assert set(store.committed()) == {plans[0].key, plans[1].key}
    store.fs.rm_file(store.path(f"_commits/shard-{plans[1].key}.json"))
    assert set(store.committed()) == {plans[0].key}
    store.write_manifest("fp", [m0])
    assert read_committed(uri, storage_options=opts).column("record_id").to_pylist() == ["r0-0", "r0-1"]
    # The resumed commit of shard 2 overwrites the orphan.
    m1 = store.commit_shard(plans[1], _rows(1, 1), REJECTED_SCHEMA.empty_table(), {"items": 1})
    store.write_manifest("fp", [m0, m1])
    assert read_committed(uri, storage_options=opts).num_rows == 3
    h.assert_markers_complete(s3_server.fs(), uri[len("s3://"):])


def test_no_bucket_or_directory_is_created_by_writes(s3_server):
    """s3fs.makedirs would create a missing bucket; the sink must report it instead."""
    store = OutputStore("s3://no-such-bucket-here/run", s3_server.storage_options)
    with pytest.raises(OutputError, match="bucket 'no-such-bucket-here' .* does not exist"):
        store.preflight()
    assert not s3_server.fs().exists("no-such-bucket-here")


@pytest.mark.parametrize("case", ["unreachable", "bad_secret", "no_credentials", "missing_bucket"])
def test_preflight_names_what_to_fix(s3_server, case, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    opts = s3_server.storage_options
    uri = s3_server.uri("preflight")
    if case == "unreachable":
        opts = {**opts, "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{free_ports(1)[0]}"}}
        expect = r"cannot reach http://127\.0\.0\.1:\d+ .*endpoint_url"
    elif case == "bad_secret":
        opts = {**opts, "secret": "wrong"}
        expect = r"refused this client .*check the credentials"
    elif case == "no_credentials":
        opts = {"client_kwargs": opts["client_kwargs"]}
        expect = r"no credentials found .*AWS_ACCESS_KEY_ID"
    else:
        uri = "s3://missing-bucket/run"
        expect = r"the bucket 'missing-bucket' of output .* does not exist: create it, or fix output.uri"
    started = time.monotonic()
    with pytest.raises(OutputError, match=expect) as err:
        OutputStore(uri, opts).preflight()
    assert time.monotonic() - started < 60
    message = str(err.value)
    assert "\n" not in message and message.count(". ") == 0, f"not one sentence: {message}"


def test_transient_outage_during_a_write_is_ridden_out(s3_server):
    """The server goes away while a write is attempted and comes back: the write lands once."""
    uri = s3_server.uri("outage")
    store = OutputStore(uri, s3_server.storage_options)
    store.preflight()
    s3_server.stop()
    s3_server.wait_port_closed()
    result: dict = {}

    def write():
        try:
            store.write_json("_commits/x.json", {"key": "x"})
            result["ok"] = True
        except BaseException as exc:  # noqa: BLE001
            result["error"] = exc

    t = threading.Thread(target=write)
    t.start()
    time.sleep(2)  # the first attempts fail with connection refused
    s3_server.start()
    t.join(120)
    assert result.get("ok"), result.get("error")
    assert json.loads(s3_server.fs().cat_file(uri[len("s3://"):] + "/_commits/x.json")) == {"key": "x"}


def test_transient_errors_are_retried_a_bounded_number_of_times(s3_server, monkeypatch):
    """503s and resets are retried (then the write lands once); a denial is not retried."""
    import errno

    from button_ray import storage

    monkeypatch.setattr(storage, "STORAGE_BACKOFF_S", 0.05)
    store = OutputStore(s3_server.uri("flaky"), s3_server.storage_options)
    real_pipe = store.fs.pipe_file
    calls = []

    def flaky(path, data, **kw):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(errno.EIO, "503 Service Unavailable (SlowDown)")
        if len(calls) == 2:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        return real_pipe(path, data, **kw)

    monkeypatch.setattr(store.fs, "pipe_file", flaky)
    store.write_json("_commits/x.json", {"key": "x"})
    assert len(calls) == 3 and store._read_json("_commits/x.json") == {"key": "x"}

    calls.clear()
    monkeypatch.setattr(store.fs, "pipe_file", lambda path, data, **kw: calls.append(path) or (_ for _ in ()).throw(
        OSError(errno.EIO, "503 Service Unavailable")))
    with pytest.raises(OSError, match="503"):
        store.write_json("_commits/y.json", {"key": "y"})
    assert len(calls) == storage.STORAGE_ATTEMPTS  # bounded

    calls.clear()
    monkeypatch.setattr(store.fs, "pipe_file", lambda path, data, **kw: calls.append(path) or (_ for _ in ()).throw(
        PermissionError("Access Denied")))
    with pytest.raises(PermissionError):
        store.write_json("_commits/z.json", {"key": "z"})
    assert len(calls) == 1  # not transient: no retry


def test_cli_reports_an_unreachable_endpoint_in_one_line_before_ray(s3_server, tmp_path):
    """`button-ray generate` with AWS_* variables pointing nowhere: exit 2, one line, no Ray."""
    import subprocess
    import sys

    env = h.cli_env({**s3_server.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_ports(1)[0]}",
                     "RAY_ADDRESS": "127.0.0.1:1"})  # a Ray start would fail loudly, not silently
    proc = subprocess.run(
        [sys.executable, "-m", "button_ray.cli", "generate", "--output", "s3://button-ray-test/cli-never",
         "--set", "seed=0"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("button-ray: cannot reach http://127.0.0.1:"), proc.stderr
    assert "endpoint_url (or AWS_ENDPOINT_URL)" in lines[0]


def test_run_record_keeps_no_secret(s3_server):
    from button_ray.storage import redact

    opts = s3_server.storage_options
    red = redact({**opts, "config_kwargs": {"retries": {"max_attempts": 3}}, "token": "t"})
    assert red["key"] == red["secret"] == red["token"] == "***"
    assert red["client_kwargs"] == opts["client_kwargs"]
    assert red["config_kwargs"] == {"retries": {"max_attempts": 3}}


# -- whole runs on S3 --------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(ray_local, seaweedfs):
    """One finished OracleEngine run on S3, shared by the read-back and resume tests."""
    seaweedfs.start()
    opts = seaweedfs.storage_options
    run = h.cfg(seaweedfs.uri("finished"), opts, n=4, shard_size=2, slots=2)
    result = run_generate(run)
    return run, result


@pytest.mark.ray
def test_run_on_s3_reads_back_exactly_through_the_manifest(finished_run, s3_server):
    run, result = finished_run
    uri, opts = run.output.uri, run.output.storage_options
    assert result["items"] == 8 and result["emitted"] + result["rejected"] + result["failed"] == 8
    assert result["emitted"] > 0
    h.assert_exact(uri, opts, h.expected_ids(run))
    fs, root = s3_server.fs(), uri[len("s3://"):]
    manifest = json.loads(fs.cat_file(f"{root}/manifest.json"))
    assert len(manifest["shards"]) == 2 and manifest["rows"] == result["emitted"]
    # The plain-pyarrow recipe of the README reads the same rows.
    table = pq.ParquetDataset([f"{root}/{s['data']}" for s in manifest["shards"]], filesystem=fs).read()
    assert sorted(table.column("record_id").to_pylist()) == sorted(
        read_committed(uri, "data", opts).column("record_id").to_pylist())
    assert fs.exists(f"{root}/_SUCCESS")
    markers = h.assert_markers_complete(fs, root)
    assert len(markers) == 2
    # The run record holds the config but not the credentials.
    recorded = json.loads(fs.cat_file(f"{root}/_run.json"))["config"]["output"]["storage_options"]
    assert recorded["secret"] == "***" and recorded["key"] == "***"
    assert recorded["client_kwargs"]["endpoint_url"] == s3_server.endpoint


@pytest.mark.ray
def test_resume_of_finished_s3_run_makes_no_llm_calls(finished_run, ray_local):
    run, first = finished_run
    before = h.committed_ids(run.output.uri, run.output.storage_options)
    replicas_before = h.all_actor_ids("LLMReplica")
    again = run_generate(run)
    assert again["resumed"] is True
    assert again["this_attempt"]["calls"] == 0 and again["this_attempt"]["items"] == 0
    assert h.all_actor_ids("LLMReplica") == replicas_before, "an engine was started for nothing"
    assert h.committed_ids(run.output.uri, run.output.storage_options) == before
    assert again["emitted"] == first["emitted"]


@pytest.mark.ray
def test_resume_with_changed_config_is_refused_on_s3(finished_run, ray_local):
    run, _ = finished_run
    replicas_before = h.all_actor_ids("LLMReplica")
    changed = run.model_copy(update={"seed": 7})
    with pytest.raises(OutputError, match="fingerprint .* resume with the same config, or pass a new --output"):
        run_generate(changed)
    assert h.all_actor_ids("LLMReplica") == replicas_before
    h.assert_exact(run.output.uri, run.output.storage_options, h.expected_ids(run))


@pytest.mark.ray
def test_unreachable_endpoint_fails_before_any_engine_starts(ray_local, s3_server):
    opts = {**s3_server.storage_options, "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{free_ports(1)[0]}"}}
    run = h.cfg("s3://button-ray-test/never", opts, n=2)
    replicas_before = h.all_actor_ids("LLMReplica")
    with pytest.raises(OutputError, match="cannot reach .* check that the server is up"):
        run_generate(run)
    assert h.all_actor_ids("LLMReplica") == replicas_before, "a replica actor was created"


@pytest.mark.ray
def test_garbage_model_on_s3_rejects_every_item_and_counts_them(ray_local, s3_server):
    run = h.cfg(s3_server.uri("garbage"), s3_server.storage_options, n=2, slots=2, garbage=True)
    result = run_generate(run)
    assert result["emitted"] == 0 and result["failed"] == 0 and result["rejected"] == 4
    assert read_committed(run.output.uri, "rejected", run.output.storage_options).num_rows == 4
    h.assert_exact(run.output.uri, run.output.storage_options, h.expected_ids(run))


# -- scenario input on S3 ------------------------------------------------------------------

@pytest.mark.ray
@pytest.mark.parametrize("where", ["own options", "output's options"])
def test_scenarios_on_s3_are_read_with_the_options_they_were_checked_with(ray_local, s3_server, tmp_path,
                                                                          monkeypatch, where):
    """No AWS_* variables: the endpoint and keys come only from the config."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    opts = s3_server.storage_options
    source = f"{s3_server.uri('input')}/scenarios.jsonl"
    texts = ["Renting a bike in a city", "Returning a faulty kettle", "Booking a dentist visit"]
    s3_server.fs().pipe_file(source[len("s3://"):], "".join(json.dumps({"scenario": t}) + "\n" for t in texts).encode())
    if where == "own options":
        run = h.cfg(str(tmp_path / "run"), n=3, slots=1)
        scenarios = run.scenarios.model_copy(update={"source": source, "storage_options": opts})
    else:
        run = h.cfg(s3_server.uri("out"), opts, n=3, slots=1)
        scenarios = run.scenarios.model_copy(update={"source": source})
    run = run.model_copy(update={"scenarios": scenarios})
    result = run_generate(run)
    assert result["items"] == 3 and result["failed"] == 0
    committed = read_committed(run.output.uri, "data", run.output.storage_options).to_pylist() + \
        read_committed(run.output.uri, "rejected", run.output.storage_options).to_pylist()
    assert sorted(r["scenario"] for r in committed) == sorted(texts)
    if where == "own options":
        recorded = json.loads((tmp_path / "run" / "_run.json").read_text())["config"]["scenarios"]
        assert recorded["storage_options"]["key"] == recorded["storage_options"]["secret"] == "***"

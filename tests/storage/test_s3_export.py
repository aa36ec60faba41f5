"""Exports, the dataset card and inspect on a real S3 server (SeaweedFS), both ways."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from button_ray.card import DISTRIBUTIONS, write_card
from button_ray.errors import OutputError
from button_ray.export import export
from tests import synthetic
from tests.training_checks import calls_from_button, calls_from_openai, calls_from_sharegpt, read_jsonl

pytestmark = pytest.mark.s3


def _lines(fs, path: str) -> list[dict]:
    return [json.loads(line) for line in fs.cat_file(path).decode().splitlines()]


def test_export_from_s3_to_s3_and_to_local(s3_server, tmp_path):
    opts = s3_server.storage_options
    run = s3_server.uri("export-run")
    synthetic.write_run(run, 45, shard_rows=20, storage_options=opts)
    fs = s3_server.fs()
    out = s3_server.uri("export-out")
    for fmt in ("button", "openai", "sharegpt"):
        result = export(run, f"{out}/{fmt}.jsonl", fmt, storage_options=opts)
        assert result.rows == 45 and result.finished
        local = export(run, str(tmp_path / f"{fmt}.jsonl"), fmt, storage_options=opts, out_storage_options={})
        assert local.rows == 45
        assert _lines(fs, f"{out[len('s3://'):]}/{fmt}.jsonl") == read_jsonl(tmp_path / f"{fmt}.jsonl")
    button, openai, sharegpt = (read_jsonl(tmp_path / f"{f}.jsonl") for f in ("button", "openai", "sharegpt"))
    for b, o, s in zip(button, openai, sharegpt):
        assert calls_from_openai(o["messages"]) == calls_from_sharegpt(s["conversations"]) == \
            calls_from_button(b["messages"])
    info = json.loads(fs.cat_file(f"{out[len('s3://'):]}/dataset_info.json"))
    assert info["sharegpt"]["file_name"] == "sharegpt.jsonl"
    parts = export(run, f"{out}/parts", "openai", storage_options=opts, max_rows_per_file=20)
    assert [p.rsplit("/", 1)[1] for p in parts.files] == [f"part-{i:05d}-of-00003.jsonl" for i in range(3)]
    assert [len(_lines(fs, p)) for p in parts.files] == [20, 20, 5]


def test_failed_export_to_s3_leaves_no_object(s3_server):
    opts = s3_server.storage_options
    run = s3_server.uri("export-bad")
    synthetic.add_invalid_shard(synthetic.write_run(run, 30, shard_rows=15, storage_options=opts))
    out = s3_server.uri("export-bad-out")
    with pytest.raises(OutputError, match="record broken-1"):
        export(run, f"{out}/o.jsonl", "openai", storage_options=opts)
    with pytest.raises(OutputError, match="record broken-1"):
        export(run, f"{out}/parts", "sharegpt", storage_options=opts, max_rows_per_file=10)
    fs = s3_server.fs()
    prefix = out[len("s3://"):]
    # No output object and no dataset_info.json (SeaweedFS keeps the folder the probe made).
    assert [p for p in fs.find(prefix) if p.rstrip("/") != prefix] == []
    bucket = out[len("s3://"):].split("/", 1)[0]
    uploads = fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])
    assert not [u for u in uploads if u["Key"].startswith(out.split("/", 3)[3])], "an upload was left open"


def test_card_and_inspect_on_s3(s3_server):
    opts = s3_server.storage_options
    run = s3_server.uri("card")
    synthetic.write_run(run, 25, shard_rows=10, storage_options=opts, finished=False)
    stats = write_card(run, opts)
    assert stats.rows == 25 and not stats.finished
    fs = s3_server.fs()
    root = run[len("s3://"):]
    assert "not finished" in fs.cat_file(f"{root}/README.md").decode()
    for key in DISTRIBUTIONS:
        assert fs.cat_file(f"{root}/card/{key}.png").startswith(b"\x89PNG")
    env = {**os.environ, **s3_server.env}
    proc = subprocess.run([sys.executable, "-m", "button_ray.cli", "inspect", run, "-n", "1"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "25 trajectories in the 3 shards committed so far" in proc.stdout and "example 1:" in proc.stdout

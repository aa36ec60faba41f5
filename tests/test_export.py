"""`button-ray export`: the three formats on a committed run, parts, streaming, and errors.

Runs are written directly as committed shards (``tests/synthetic.py``); the exports go
through the real CLI entry point, and the files are read back with plain ``json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from button_ray.button_format import validate_jsonl
from button_ray.cli import main
from button_ray.errors import OutputError
from button_ray.export import export
from button_ray.sink import OutputStore, iter_committed
from tests import synthetic
from tests.training_checks import (
    assert_formats_agree,
    calls_from_button,
    calls_from_openai,
    calls_from_sharegpt,
    committed_rows,
    read_jsonl,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """150 trajectories in 4 shards of 40 (the last one 30), finished."""
    path = tmp_path_factory.mktemp("export") / "run"
    synthetic.write_run(str(path), 150, shard_rows=40)
    return path


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["export", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_sentence(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("button-ray: "), err
    return lines[0]


def test_three_exports_agree_call_for_call_with_the_parquet(run, tmp_path):
    assert assert_formats_agree(run, tmp_path) == 150
    assert validate_jsonl(tmp_path / "button.jsonl") == {"valid": 150, "invalid": 0, "errors": []}
    for line in read_jsonl(tmp_path / "openai.jsonl"):
        assert set(line) == {"messages", "tools"}
        assert all(None not in m.values() for m in line["messages"])  # no null fields in the JSON form


def test_validate_applies_to_the_button_format_only(run, tmp_path, capsys):
    code, out, _ = _cli(capsys, str(run), str(tmp_path / "b.jsonl"), "--validate")
    assert code == 0 and '"invalid": 0' in out
    code, _, err = _cli(capsys, str(run), str(tmp_path / "o.jsonl"), "--format", "openai", "--validate")
    assert code == 2 and "BUTTON format only" in _one_sentence(err)
    assert not (tmp_path / "o.jsonl").exists()


def test_parts_of_at_most_n_rows(run, tmp_path, capsys):
    whole = tmp_path / "whole.jsonl"
    assert _cli(capsys, str(run), str(whole), "--format", "sharegpt")[0] == 0
    code, out, _ = _cli(capsys, str(run), str(tmp_path / "parts"), "--format", "sharegpt", "--max-rows-per-file", "40")
    assert code == 0 and "wrote 150 trajectories (sharegpt) to 4 files" in out
    parts = sorted((tmp_path / "parts").iterdir())
    assert [p.name for p in parts] == [f"part-{i:05d}-of-00004.jsonl" for i in range(4)]
    assert [len(read_jsonl(p)) for p in parts] == [40, 40, 40, 30]
    assert [r for p in parts for r in read_jsonl(p)] == read_jsonl(whole)
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert info["parts"]["file_name"] == "parts" and info["whole"]["file_name"] == "whole.jsonl"
    # A folder of parts loads as one dataset, as LLaMA-Factory loads it.
    from datasets import load_dataset

    parts_ds = load_dataset("json", data_files=str(tmp_path / "parts" / "*.jsonl"), split="train",
                            cache_dir=str(tmp_path / "hf"))
    assert len(parts_ds) == 150


def test_parts_need_a_new_or_empty_folder(run, tmp_path, capsys):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "part-00000-of-00009.jsonl").write_text("old\n")
    code, _, err = _cli(capsys, str(run), str(tmp_path / "parts"), "--max-rows-per-file", "40")
    assert code == 2 and "is not empty" in _one_sentence(err)
    assert [p.name for p in (tmp_path / "parts").iterdir()] == ["part-00000-of-00009.jsonl"]


def test_dataset_info_entry_joins_an_existing_file(run, tmp_path, capsys):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"alpaca_en": {"file_name": "alpaca_en.json"}}))
    code, out, _ = _cli(capsys, str(run), str(tmp_path / "button_sharegpt.jsonl"), "--format", "sharegpt")
    assert code == 0 and '"button_sharegpt": {' in out
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert set(info) == {"alpaca_en", "button_sharegpt"}
    assert info["button_sharegpt"]["file_name"] == "button_sharegpt.jsonl"
    (tmp_path / "dataset_info.json").write_text("not json")
    code, _, err = _cli(capsys, str(run), str(tmp_path / "again.jsonl"), "--format", "sharegpt")
    assert code == 2 and "dataset_info.json exists but is not a JSON object" in _one_sentence(err)
    assert not (tmp_path / "again.jsonl").exists() and (tmp_path / "dataset_info.json").read_text() == "not json"


def test_unfinished_run_exports_what_is_committed_and_says_so(tmp_path, capsys):
    synthetic.write_run(str(tmp_path / "run"), 30, shard_rows=20, finished=False)
    code, out, _ = _cli(capsys, str(tmp_path / "run"), str(tmp_path / "o.jsonl"), "--format", "openai")
    assert code == 0 and "is not finished (no _SUCCESS)" in out and "2 committed shards" in out
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 30


def test_run_with_nothing_accepted_gives_an_empty_file(tmp_path, capsys):
    synthetic.write_run(str(tmp_path / "run"), 0)
    assert _cli(capsys, str(tmp_path / "run"), str(tmp_path / "o.jsonl"))[0] == 0
    assert (tmp_path / "o.jsonl").read_text() == ""


@pytest.mark.parametrize("case", ["no manifest", "unknown format", "unwritable", "invalid record", "invalid in a part"])
def test_malformed_inputs_give_one_sentence_and_no_output(run, tmp_path, capsys, case):
    out = tmp_path / "out" / "o.jsonl"
    args = [str(run), str(out)]
    if case == "no manifest":
        (tmp_path / "empty").mkdir()
        args[0] = str(tmp_path / "empty")
        expected = "has no manifest.json"
    elif case == "unknown format":
        with pytest.raises(SystemExit) as stop:
            main(["export", *args, "--format", "alpaca"])
        assert stop.value.code == 2 and "invalid choice: 'alpaca'" in capsys.readouterr().err
        assert not out.parent.exists()
        return
    elif case == "unwritable":
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "o.jsonl"
        args[1] = str(out)
        expected = "cannot write to output"
    else:
        # A committed shard after the good ones holds a row that is not a BUTTON record.
        bad = tmp_path / "bad_run"
        synthetic.add_invalid_shard(synthetic.write_run(str(bad), 50, shard_rows=25))
        args[0] = str(bad)
        args += ["--format", "openai"]  # the button format copies records as they are; --validate checks them
        if case == "invalid in a part":
            args += ["--max-rows-per-file", "10"]
            out = tmp_path / "out"
            args[1] = str(out)
        expected = "record broken-1 of"
    code, _, err = _cli(capsys, *args)
    assert code == 2 and expected in _one_sentence(err)
    leftovers = [p for p in (tmp_path / "out").rglob("*")] if (tmp_path / "out").exists() else []
    assert [p for p in leftovers if p.is_file()] == [], "an output file was left behind"
    assert not out.is_file()


def test_export_streams_the_run_shard_by_shard_in_batches(run, tmp_path):
    """The reader holds one shard file at a time: it yields batches of at most the batch
    size, and a shard's file is opened only when the reader gets to it."""
    copy = tmp_path / "run"
    synthetic.write_run(str(copy), 150, shard_rows=40)
    store = OutputStore(str(copy))
    shards = json.loads((copy / "manifest.json").read_text())["shards"]
    batches = iter_committed(store, "data", ["record_id"], batch_size=16)
    first = next(batches)
    assert first.num_rows == 16
    for shard in shards[1:]:
        (copy / shard["data"]).unlink()  # not opened yet: the reader has not got there
    read = first.num_rows
    while read < shards[0]["rows"]:  # the rest of the first shard is still there to read
        read += next(batches).num_rows
    assert read == shards[0]["rows"]
    with pytest.raises(FileNotFoundError):
        next(batches)
    sizes = [b.num_rows for b in iter_committed(OutputStore(str(run)), "data", ["record_id"], batch_size=16)]
    assert max(sizes) == 16 and sum(sizes) == 150


def test_run_written_before_the_training_columns_exports_all_formats(tmp_path):
    """Shards without openai_messages/tools and with Arrow-map lineage (the earlier schema)."""
    old = synthetic.write_old_run(str(tmp_path / "old"), 20)
    exports = {fmt: export(str(old), str(tmp_path / f"{fmt}.jsonl"), fmt) for fmt in ("button", "openai", "sharegpt")}
    assert [e.rows for e in exports.values()] == [20, 20, 20]
    rows = committed_rows(old, ["messages"])
    for row, button, openai, sharegpt in zip(rows, *(read_jsonl(tmp_path / f"{f}.jsonl") for f in exports)):
        expected = calls_from_button(row["messages"])
        assert button["messages"] == row["messages"]
        assert calls_from_openai(openai["messages"]) == calls_from_sharegpt(sharegpt["conversations"]) == expected


def test_export_api_refuses_an_unknown_format(run, tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'csv'"):
        export(str(run), str(tmp_path / "o.csv"), "csv")
    with pytest.raises(OutputError, match="has no manifest.json"):
        export(str(tmp_path), str(tmp_path / "o.jsonl"))

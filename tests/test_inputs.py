"""Scenario input files: every bad value is one sentence naming the file and the line."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from button_ray.config import ScenarioConfig
from button_ray.errors import InputError
from button_ray.inputs import read_scenarios


def _read(path, **cfg):
    return read_scenarios(ScenarioConfig(source=str(path), **cfg))


def test_txt_jsonl_json_and_parquet_give_the_same_ordered_list(tmp_path):
    texts = ["Booking a flight", "Tracking a parcel", "booking  a FLIGHT", "Paying a bill"]
    (tmp_path / "s.txt").write_text("\n".join(texts[:2]) + "\n\n" + "\n".join(texts[2:]) + "\n")
    (tmp_path / "s.jsonl").write_text("".join(json.dumps({"scenario": t, "n": 1}) + "\n" for t in texts))
    (tmp_path / "s.json").write_text(json.dumps([{"scenario": t} for t in texts]))
    pq.write_table(pa.table({"scenario": texts}), tmp_path / "s.parquet")
    expected = ["Booking a flight", "Tracking a parcel", "Paying a bill"]  # the exact duplicate dropped
    for name in ("s.txt", "s.jsonl", "s.json", "s.parquet"):
        got = _read(tmp_path / name)
        assert [s.text for s in got] == expected, name
        assert got[0].source == name
    assert [s.text for s in read_scenarios(ScenarioConfig(source=str(tmp_path / "s.txt")), limit=2)] == expected[:2]


@pytest.mark.parametrize("name, content, message", [
    ("a.jsonl", '{"scenario": "Booking a flight"}\n{"scenario": 42}\n',
     r"a.jsonl line 2: field 'scenario' \(scenarios.text_field\) holds int, not text"),
    ("a.jsonl", '{"scenario": "Booking a flight"}\n\n{"scenario": ["x"]}\n', r"a.jsonl line 3: .* holds a list"),
    ("a.jsonl", '{"scenario": "Booking a flight"}\n{"scenario": "x"\n', r"a.jsonl line 2: not valid JSON"),
    ("a.jsonl", '{"scenario": "ok"}\n{"text": "x"}\n', r"a.jsonl line 2: no field 'scenario'.*fields: \['text'\]"),
    ("a.jsonl", '["Booking a flight"]\n', r"a.jsonl line 1: expected a JSON object"),
    ("a.jsonl", '{"scenario": null}\n', r"a.jsonl line 1: no value in field 'scenario'"),
    ("a.json", '[{"scenario": "ok"}, {"scenario": 3.5}]', r"a.json element 2: .* holds float"),
    ("a.jsonl", "", r"holds no scenarios"),
    ("a.txt", "\n  \n", r"holds no scenarios"),
])
def test_bad_values_name_the_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(InputError, match=message):
        _read(tmp_path / name)


def test_non_utf8_text_names_the_line(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"Booking a flight\nPaying a bill\nCaf\xe9 order\n")
    with pytest.raises(InputError, match=r"a.txt line 3: not UTF-8 text \(byte 0xe9\)"):
        _read(tmp_path / "a.txt")


def test_parquet_column_missing_or_not_text(tmp_path):
    pq.write_table(pa.table({"scenario": [1, 2]}), tmp_path / "n.parquet")
    with pytest.raises(InputError, match=r"n.parquet: column 'scenario' .* is int64, not text"):
        _read(tmp_path / "n.parquet")
    with pytest.raises(InputError, match=r"n.parquet has no column 'topic'.*columns: \['scenario'\]"):
        _read(tmp_path / "n.parquet", text_field="topic")
    pq.write_table(pa.table({"scenario": ["ok", None]}), tmp_path / "z.parquet")
    with pytest.raises(InputError, match=r"z.parquet row 2: no value"):
        _read(tmp_path / "z.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=r"bad.parquet: not a Parquet file"):
        _read(tmp_path / "bad.parquet")


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_is_refused(limit):
    with pytest.raises(InputError, match=f"at least 1, not {limit}"):
        read_scenarios(ScenarioConfig(), limit=limit)


def test_cli_refuses_num_scenarios_below_one(capsys):
    from button_ray.cli import main

    for value in ("0", "-3"):
        with pytest.raises(SystemExit) as exc:
            main(["generate", "--num-scenarios", value, "--output", "/nonexistent/never"])
        assert exc.value.code == 2
        assert "--num-scenarios: must be at least 1" in capsys.readouterr().err


def test_missing_file_and_unknown_format_are_one_sentence(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        _read(tmp_path / "nope.txt")
    (tmp_path / "s.csv").write_text("scenario\nBooking a flight\n")
    with pytest.raises(InputError, match=r"use a .txt, .jsonl, .json or .parquet file"):
        _read(tmp_path / "s.csv")

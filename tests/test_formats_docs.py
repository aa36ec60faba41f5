"""The reader snippets of docs/formats.md and of the README run as they are on a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import synthetic
from tests.training_checks import python_blocks, run_reader_snippet


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("docs") / "run"
    synthetic.write_run(str(path), 60, shard_rows=25)
    return path


def test_docs_formats_snippets_read_both_forms_with_pyarrow_duckdb_polars_and_datasets(run, tmp_path):
    out = run_reader_snippet(python_blocks("docs/formats.md"), run, tmp_path)
    lines = out.splitlines()
    # pyarrow: the first call of the first row, and its tools.
    assert lines[0].startswith("search_flights {") and "['search_flights', 'find_hotel', 'book_flight']" in lines[0]
    assert "('" in out and "'search_flights'" in out  # DuckDB rows
    assert "tool_call_id" in out and "call00000" in out  # Polars
    assert lines[-1] == "60 search_flights search_flights"  # datasets, renamed for TRL


def test_readme_training_formats_snippet(run, tmp_path):
    out = run_reader_snippet(python_blocks("README.md", "Training formats"), run, tmp_path)
    assert "tools" in out  # DuckDB's table

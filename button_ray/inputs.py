"""Scenario input: the shipped default list, or a file read with Ray Data via fsspec.

The ordered list of scenarios is what shards are cut from, so it must come out in the
same order every time: files are read with ``preserve_order``. Exact duplicates are
dropped (their ids would collide); near-duplicates are the ``scenarios`` job's business.
"""

from __future__ import annotations

from typing import Any

import fsspec

from button_ray.config import ScenarioConfig
from button_ray.records import Scenario, stable_id


class InputError(ValueError):
    """The scenario input cannot be read."""


def scenario_id(text: str) -> str:
    """Content-addressed id: the same scenario text has the same id in every run."""
    return stable_id("scenario", " ".join(text.lower().split()))


def check_input(cfg: ScenarioConfig, storage_options: dict[str, Any] | None = None) -> None:
    """Preflight: the input exists and has a supported format."""
    if cfg.source == "default":
        return
    if not cfg.source.endswith((".txt", ".jsonl", ".json", ".parquet")):
        raise InputError(f"scenarios.source {cfg.source!r}: use a .txt, .jsonl or .parquet file")
    try:
        fs, path = fsspec.core.url_to_fs(cfg.source, **(storage_options or {}))
        found = fs.exists(path)
    except Exception as exc:  # noqa: BLE001 - any failure here is "cannot reach the input"
        raise InputError(f"scenarios.source {cfg.source!r} cannot be reached: {exc}") from exc
    if not found:
        raise InputError(f"scenarios.source {cfg.source!r} does not exist")


def _read_texts(cfg: ScenarioConfig) -> list[str]:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    previous = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        if cfg.source.endswith(".txt"):
            rows = ray.data.read_text(cfg.source).iter_rows()
            return [r["text"] for r in rows]
        reader = ray.data.read_parquet if cfg.source.endswith(".parquet") else ray.data.read_json
        ds = reader(cfg.source)
        if cfg.text_field not in ds.columns():
            raise InputError(f"{cfg.source!r} has no column {cfg.text_field!r} (scenarios.text_field)")
        return [r[cfg.text_field] for r in ds.select_columns([cfg.text_field]).iter_rows()]
    finally:
        ctx.execution_options.preserve_order = previous


def read_scenarios(cfg: ScenarioConfig, limit: int | None = None) -> list[Scenario]:
    """The ordered, exact-deduplicated scenario list (Ray must be initialised for files)."""
    if cfg.source == "default":
        from button_ray.bottom_up.scenarios import load_default_scenarios

        texts, source = load_default_scenarios(), "default"
    else:
        texts, source = _read_texts(cfg), cfg.source.rsplit("/", 1)[-1]
    limit = limit or cfg.limit
    seen: set[str] = set()
    scenarios: list[Scenario] = []
    for text in texts:
        text = (text or "").strip()
        if not text:
            continue
        sid = scenario_id(text)
        if sid in seen:
            continue
        seen.add(sid)
        scenarios.append(Scenario(scenario_id=sid, text=text, source=source))
        if limit is not None and len(scenarios) >= limit:
            break
    return scenarios

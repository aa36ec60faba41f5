"""`button-ray scenarios`: build a scenario pool (extract, expand, deduplicate).

Small next to generation (one LLM call per scenario), so it runs on the driver with a
:class:`PoolClient` over the same replica pools; the embedding dedup runs in a thread.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import fsspec

from button_ray.config import RunConfig
from button_ray.errors import InputError


def _read_lines(path: str) -> list[str]:
    with fsspec.open(path, "r", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _read_conversations(path: str) -> list[Any]:
    rows = []
    for n, line in enumerate(_read_lines(path), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} line {n}: not valid JSON ({exc.msg})") from exc
    return rows


def run_scenario_job(cfg: RunConfig, seeds: str | None, base: str, target: int, out_path: str) -> dict[str, Any]:
    """Build the pool and write it one scenario per line; return the stats."""
    from button_ray.bottom_up.scenarios import build_scenario_pool, load_default_scenarios
    from button_ray.llm.pool import PoolClient
    from button_ray.llm.replica import start_pools, stop_pools
    from button_ray.pipeline import init_ray

    # Everything that can be wrong with the inputs and the prompts is found before Ray starts.
    method = cfg.resolved_method()
    base_texts = load_default_scenarios() if base == "default" else _read_lines(base)
    conversations = _read_conversations(seeds) if seeds else []
    init_ray(cfg)
    pools, _ = start_pools(cfg.pools)
    try:
        client = PoolClient(pools)
        pool, stats = asyncio.run(build_scenario_pool(base_texts, conversations, target, client, method, cfg.scenarios))
    finally:
        stop_pools(pools)
    with fsspec.open(out_path, "w", encoding="utf-8") as f:
        for scenario in pool:
            f.write(scenario.text + "\n")
    return {**stats, "output": out_path}

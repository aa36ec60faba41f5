"""Diversity per slot: how alike are the atomic tasks of one scenario's slots?

Runs the atomic-task stage alone (one real engine, in this process) for ``--scenarios``
scenarios x ``--slots`` slots, twice with the same engine: without askers
(``method.atomic_task_angles=[]``, every slot gets the same prompt and differs only by
its seed) and with the configured askers (slot k gets its own). Reported per run: the
near-duplicate rate (the share of tasks whose MiniLM cosine similarity to an earlier
task of the same scenario is at least ``--threshold``, the scenario pool's dedup
threshold), the mean pairwise cosine within a scenario, and the exact-duplicate rate.

Run here: ``.venv/bin/python -m benchmarks.bench_diversity`` (configs/local.yaml, 8 x 8,
~5 minutes on 2 cores). On a GPU: ``--config configs/cluster-8b.yaml``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from typing import Any

import numpy as np

from benchmarks.common import now, table, write_result
from button_ray.bottom_up import atomic
from button_ray.bottom_up.common import normalize
from button_ray.bottom_up.dedup import load_embedding_model
from button_ray.config import MethodConfig, load_config
from button_ray.inputs import read_scenarios
from button_ray.llm.engine import load_engine_class
from button_ray.records import Scenario, WorkItem, derive_seed, stable_id


def diversity(tasks: dict[str, list[str]], threshold: float) -> dict[str, float]:
    """Near-duplicate rate, mean pairwise cosine and exact-duplicate rate within scenarios."""
    model = load_embedding_model("embedded")
    near = exact = total = 0
    cosines: list[float] = []
    for texts in tasks.values():
        if not texts:
            continue
        vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        seen: set[str] = set()
        for i, text in enumerate(texts):
            total += 1
            exact += normalize(text) in seen
            seen.add(normalize(text))
            if i and float((vectors[:i] @ vectors[i]).max()) >= threshold:
                near += 1
        cosines += [float(vectors[i] @ vectors[j]) for i, j in itertools.combinations(range(len(texts)), 2)]
    return {
        "tasks": total,
        "near_duplicate_rate": near / total if total else 0.0,
        "exact_duplicate_rate": exact / total if total else 0.0,
        "mean_pairwise_cosine": float(np.mean(cosines)) if cosines else 0.0,
    }


async def atomic_tasks(llm: Any, method: MethodConfig, scenarios: list[Scenario], slots: int,
                       run: str) -> dict[str, list[str]]:
    """The accepted atomic task of every slot, per scenario text (rejected slots left out)."""

    async def one(scenario: Scenario, slot: int) -> tuple[str, str | None]:
        item_id = stable_id("bench_diversity", run, scenario.scenario_id, slot)
        item = WorkItem(item_id=item_id, scenario=scenario, slot=slot, seed=derive_seed(item_id))
        return scenario.text, await atomic.write_atomic_task(item, llm, method)

    results = await asyncio.gather(*(one(s, k) for s in scenarios for k in range(slots)))
    out: dict[str, list[str]] = {s.text: [] for s in scenarios}
    for text, task in results:
        if task is not None:
            out[text].append(task)
    return out


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    cfg = load_config(args.config, args.set)
    method = cfg.resolved_method()
    pool = cfg.pool_for("atomic_task")
    engine = load_engine_class(pool.engine_class)(pool)
    await engine.start()
    scenarios = read_scenarios(cfg.scenarios, args.scenarios)
    results: dict[str, Any] = {}
    try:
        # The same run id for both: only the prompt differs, not the seeds.
        for name, angles in (("same_prompt", ()), ("askers", method.atomic_task_angles)):
            run_method = method.model_copy(update={"atomic_task_angles": angles})
            tasks = await atomic_tasks(engine, run_method, scenarios, args.slots, "run")
            results[name] = {**diversity(tasks, args.threshold), "examples": dict(list(tasks.items())[:2])}
    finally:
        await engine.shutdown()
    results["model"] = engine.model_name
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/local.yaml")
    parser.add_argument("--scenarios", type=int, default=8)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--set", action="append", default=[], help="config override a.b=value")
    args = parser.parse_args(argv)
    started = now()
    results = asyncio.run(measure(args))
    rows = [(name, r["tasks"], f"{r['near_duplicate_rate']:.1%}", f"{r['exact_duplicate_rate']:.1%}",
             f"{r['mean_pairwise_cosine']:.3f}") for name, r in results.items() if isinstance(r, dict)]
    print(table(["prompts per slot", "tasks", "near-duplicates", "exact duplicates", "mean cosine"], rows))
    path = write_result("bench_diversity", vars(args), results, started)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

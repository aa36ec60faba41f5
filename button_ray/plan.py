"""Planning a run: what a sample measured, what a target count will cost, and whether
the cluster can hold the job. No Ray here: ``button_ray.pipeline.run_plan`` runs the
sample and hands this module its summary, its per-item token counts and the cluster's
resources; ``generate --target-accepted`` sizes its rounds with :func:`round_scenarios`.

The range of an estimate (``docs/plan.md``) is a 95% one, computed two ways. The share
of items accepted, and so the items and scenarios a target needs, has a Wilson score
interval. A cost per accepted trajectory (tokens, calls, and the hours that follow from
tokens) is a ratio of two sums over the sample's items, sum of the cost / number
accepted, so its interval is a percentile bootstrap over items: the items are resampled
with replacement, the ratio computed for each resample, and the 2.5th and 97.5th
percentiles kept. Resampling whole items keeps the link between being accepted and
costing more, and the ends are never negative. A few dozen items give a wide range:
the range says how far the sample alone can be trusted, nothing about how a cluster
other than the sample's performs.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence, TextIO

import numpy as np

from button_ray.config import ITEM_SOURCE_CPUS, PoolConfig, RunConfig

#: The two-sided 95% normal quantile: every interval here is a 95% one.
Z95 = 1.959963984540054
#: Bootstrap resamples of the sample's items, and their seed (the same sample, the same range).
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0

RANGE_METHOD = (
    "95%: a Wilson score interval on accepted per item (and the items and scenarios needed); a percentile bootstrap "
    f"over the sample's items ({BOOTSTRAP_RESAMPLES} resamples) on each cost per accepted trajectory (tokens, calls, "
    "and the hours computed from completion tokens)"
)


# -- intervals ---------------------------------------------------------------------------

def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a share: (0, 1) with no trials, never outside [0, 1]."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _div(a: float, b: float) -> float:
    return a / b if b > 0 else math.inf


def per_accepted(values: Sequence[float], accepted: Sequence[int]) -> dict[str, float]:
    """A per-item cost summed over the items, per accepted trajectory, with its
    percentile-bootstrap 95% range; ``accepted`` is 1 for an accepted item, else 0.
    A resample without an accepted item has an unbounded ratio (inf)."""
    cost, flags = np.asarray(values, dtype=float), np.asarray(accepted, dtype=float)
    n = len(cost)
    expected = _div(float(cost.sum()), float(flags.sum()))
    if n == 0:
        return {"expected": expected, "low": math.inf, "high": math.inf}
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    ratios = []
    # Resamples in chunks, so a large sample does not hold every resample's indices at once.
    chunk = max(1, 2_000_000 // n)
    for start in range(0, BOOTSTRAP_RESAMPLES, chunk):
        idx = rng.integers(0, n, size=(min(chunk, BOOTSTRAP_RESAMPLES - start), n))
        num, den = cost[idx].sum(axis=1), flags[idx].sum(axis=1)
        ratios.append(np.divide(num, den, out=np.full(len(num), np.inf), where=den > 0))
    every = np.concatenate(ratios)
    # Sample values, not interpolations: interpolating towards an infinite ratio gives nan.
    low, high = np.quantile(every, 0.025, method="lower"), np.quantile(every, 0.975, method="higher")
    return {"expected": expected, "low": float(low), "high": float(high)}


# -- the cluster -------------------------------------------------------------------------

def resource_demand(cfg: RunConfig) -> list[tuple[str, dict[str, float], int]]:
    """What a run of ``cfg`` reserves in Ray: (what, resources of one, how many)."""
    rt = cfg.runtime
    demand = [(f"pool {p.name!r} replica", {"GPU": p.num_gpus, "CPU": p.num_cpus, **p.resources}, p.replicas)
              for p in cfg.pools]
    stage = {"CPU": rt.actor_num_cpus, **rt.actor_resources}
    demand += [("bottom-up actor", stage, rt.bottom_up_actors),
               ("simulation actor", stage, rt.simulation_actors),
               ("item source task", {"CPU": ITEM_SOURCE_CPUS}, 1)]
    return [(what, {k: v for k, v in res.items() if v}, n) for what, res, n in demand]


def _fmt(resources: dict[str, float]) -> str:
    return " and ".join(f"{v:g} {k}" for k, v in sorted(resources.items(), reverse=True)) or "nothing"


_ADVICE = "add nodes (cluster/README.md), or lower pools[].replicas, num_gpus or num_cpus"


def cluster_fit(demand: list[tuple[str, dict[str, float], int]], nodes: list[dict[str, float]]) -> str | None:
    """None when every reservation of ``demand`` fits on ``nodes`` (each node's total
    resources) at once; else one sentence naming what is missing.

    The totals are compared first (the usual case: a pool asks for GPUs the cluster does
    not have); then each reservation is placed whole on one node, largest first.
    """
    need: dict[str, float] = {}
    for _, res, n in demand:
        for k, v in res.items():
            need[k] = need.get(k, 0.0) + v * n
    have = {k: sum(node.get(k, 0.0) for node in nodes) for k in need}
    short = {k: v for k, v in need.items() if v > have[k] + 1e-9}
    if short:
        who = "; ".join(f"{what}s: {n} x {_fmt({k: v for k, v in res.items() if k in short})}"
                        for what, res, n in demand if set(res) & set(short))
        return (f"this cluster cannot run the config: it needs {_fmt({k: need[k] for k in short})} in all "
                f"({who}) and has {_fmt({k: have[k] for k in short})}; {_ADVICE}")
    free = [dict(node) for node in nodes]
    bundles = [(what, res, i, n) for what, res, n in demand for i in range(n)]
    bundles.sort(key=lambda b: (b[1].get("GPU", 0.0), b[1].get("CPU", 0.0)), reverse=True)
    for what, res, i, n in bundles:
        node = next((f for f in free if all(f.get(k, 0.0) + 1e-9 >= v for k, v in res.items())), None)
        if node is None:
            largest = max(nodes, key=lambda f: tuple(f.get(k, 0.0) for k in sorted(res, reverse=True)), default={})
            return (f"this cluster cannot place every {what}: each needs {_fmt(res)} on one node, and only {i} of "
                    f"the {n} fit beside the rest (the largest node has {_fmt({k: largest.get(k, 0.0) for k in res})}"
                    f"); {_ADVICE}")
        for k, v in res.items():
            node[k] = node.get(k, 0.0) - v
    return None


# -- the scenario pool and the rounds of a run to a target ------------------------------

def pool_shortfall(target: int, scenarios: int, slots: int) -> str | None:
    """None when ``scenarios`` x ``slots`` distinct items can give ``target`` accepted at
    all (every item accepted); else the sentence saying they cannot."""
    if scenarios * slots >= target:
        return None
    return (f"the scenario pool cannot give {target} accepted trajectories: it holds {scenarios} scenarios x {slots} "
            f"slots = {scenarios * slots} distinct items, fewer than the target even if every item were accepted; "
            "grow it (button-ray scenarios --target N), raise method.atomic_tasks_per_scenario, or lower the target")


def expected_shortfall(target: int, accepted: int, items: int, items_left: int) -> str | None:
    """The sentence saying that, at the yield measured on ``items`` committed items, the
    ``items_left`` items of the pool are expected to fall short of ``target``; None when
    they are not (or nothing is measured yet)."""
    if not items or accepted >= target:
        return None
    more = items_left * accepted / items
    if accepted + more >= target:
        return None
    return (f"at the yield measured so far ({accepted} accepted of {items} items) the {items_left} items left in "
            f"the scenario pool are expected to give about {more:.0f} more accepted trajectories, short of the "
            f"{target - accepted} still missing: the run will likely stop with the pool used up")


def round_scenarios(target: int, accepted: int, items: int, slots: int, shard_size: int) -> int:
    """How many new scenarios the next round of a run to ``target`` starts.

    Enough for the accepted still missing at the high end of the yield's 95% interval
    (every item accepted before anything is measured), so a round rarely passes the
    target; at least one shard, so the last rounds are not slivers (a round of one
    shard passes the target by less than that shard's items).
    """
    missing = target - accepted
    if missing <= 0:
        return 0
    _, high = wilson(accepted, items)
    return max(math.ceil(missing / (high * slots)), shard_size)


# -- what the sample measured -------------------------------------------------------------

def measure(summary: dict[str, Any], items: dict[str, Sequence[int]], pools: Sequence[PoolConfig],
            replica_metrics: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The sample's numbers: the funnel's yield, calls and tokens per accepted trajectory
    (in all and by role), the prefix-cache hit rate and completion tokens/s per replica.

    ``items`` holds one value per item of the sample (accepted or not) under
    ``accepted`` (1 or 0), ``llm_calls``, ``prompt_tokens`` and ``completion_tokens``;
    ``summary`` is the sample's summary.json, ``replica_metrics`` its replicas' metrics
    by pool.
    """
    accepted, n = summary["emitted"], summary["items"]
    flags = items["accepted"]
    totals = [p + c for p, c in zip(items["prompt_tokens"], items["completion_tokens"])]
    usage = summary["usage_by_role"]
    seconds = summary.get("stream_time_s") or 0.0
    low, high = wilson(accepted, n)
    queries = sum(m.get("prefix_cache_queries", 0) for ms in replica_metrics.values() for m in ms)
    hits = sum(m.get("prefix_cache_hits", 0) for ms in replica_metrics.values() for m in ms)
    pool_rates = {}
    for pool in pools:
        completion = sum(usage.get(role, {}).get("completion_tokens", 0) for role in pool.roles)
        per_replica = [m["completion_tokens"] / seconds for m in replica_metrics.get(pool.name, [])
                       if seconds and m.get("completion_tokens") is not None]
        pool_rates[pool.name] = {
            "replicas": pool.replicas, "gpus_per_replica": pool.num_gpus,
            "completion_tokens": completion,
            "completion_tokens_per_s_per_replica": completion / seconds / pool.replicas if seconds else None,
            "completion_tokens_per_s_by_replica": per_replica or None,
        }
    return {
        "items": n, "accepted": accepted, "rejected": summary["rejected"], "failed": summary["failed"],
        "accepted_per_item": accepted / n if n else 0.0,
        "accepted_per_item_range": [low, high],
        # Per item, accepted or not: defined also when the sample accepted nothing.
        "llm_calls_per_item": _div(sum(items["llm_calls"]), n),
        "tokens_per_item": _div(sum(totals), n),
        "completion_tokens_per_item": _div(sum(items["completion_tokens"]), n),
        "llm_calls_per_accepted": per_accepted(items["llm_calls"], flags),
        "tokens_per_accepted": per_accepted(totals, flags),
        "prompt_tokens_per_accepted": per_accepted(items["prompt_tokens"], flags),
        "completion_tokens_per_accepted": per_accepted(items["completion_tokens"], flags),
        "by_role": {role: {"llm_calls": _div(u["calls"], accepted), "prompt_tokens": _div(u["prompt_tokens"], accepted),
                           "completion_tokens": _div(u["completion_tokens"], accepted)}
                    for role, u in sorted(usage.items())},
        "prefix_cache_hit_rate": hits / queries if queries else None,
        "stream_time_s": seconds,
        "engine_start_s": summary.get("engine_start_s"),
        "pools": pool_rates,
    }


# -- the estimate for a target ------------------------------------------------------------

def _scaled(value: dict[str, float], factor: float) -> dict[str, float]:
    return {k: v * factor for k, v in value.items()}


def estimate(measured: dict[str, Any], target: int, slots: int, scenarios_available: int,
             throughput: float | None = None) -> dict[str, Any]:
    """Items, scenarios, tokens and hours for ``target`` accepted trajectories, each as
    {"expected", "low", "high"} (inf where the sample cannot bound it).

    Replica-hours are completion tokens over completion tokens/s per replica, per pool:
    measured in the sample, or ``throughput`` for every pool (a rate measured elsewhere,
    e.g. a GPU's for a plan sampled on CPU). GPU-hours are replica-hours x GPUs per
    replica; wall hours are the slowest pool's replica-hours over its replicas.
    """
    p = measured["accepted_per_item"]
    p_low, p_high = measured["accepted_per_item_range"]
    items = {"expected": _div(target, p), "low": _div(target, p_high), "high": _div(target, p_low)}
    scenarios = {k: math.ceil(v / slots) if math.isfinite(v) else math.inf for k, v in items.items()}
    completion = measured["completion_tokens_per_accepted"]
    all_completion = sum(pool["completion_tokens"] for pool in measured["pools"].values())
    replica_hours, gpu_hours, wall_hours = ({"expected": 0.0, "low": 0.0, "high": 0.0} for _ in range(3))
    rates = {}
    for name, pool in measured["pools"].items():
        rate = throughput if throughput is not None else pool["completion_tokens_per_s_per_replica"]
        rates[name] = rate
        share = pool["completion_tokens"] / all_completion if all_completion else 0.0
        for k, v in completion.items():
            # A pool that wrote nothing costs nothing; one whose rate is unknown, unbounded hours.
            hours = _div(target * v * share, rate or 0.0) / 3600 if share else 0.0
            replica_hours[k] += hours
            gpu_hours[k] += hours * pool["gpus_per_replica"] if pool["gpus_per_replica"] else 0.0
            wall_hours[k] = max(wall_hours[k], hours / pool["replicas"])
    return {
        "target_accepted": target,
        "items_needed": items,
        "scenarios_needed": scenarios,
        "slots": slots,
        "scenario_pool": {"scenarios": scenarios_available, "items": scenarios_available * slots,
                          "enough": scenarios["expected"] <= scenarios_available,
                          "expected_accepted_at_most": scenarios_available * slots * p},
        "total_tokens": _scaled(measured["tokens_per_accepted"], target),
        "prompt_tokens": _scaled(measured["prompt_tokens_per_accepted"], target),
        "completion_tokens": _scaled(completion, target),
        "llm_calls": _scaled(measured["llm_calls_per_accepted"], target),
        "completion_tokens_per_s_per_replica": rates,
        "estimated_replica_hours": replica_hours,
        "estimated_gpu_hours": gpu_hours,
        "estimated_wall_hours": wall_hours,
    }


def throughput_assumption(measured: dict[str, Any], throughput: float | None, sampled_on: dict[str, float],
                          models: Iterable[str]) -> str:
    """The sentence plan.json and the printout carry about where the rate comes from."""
    hardware = (f"{sampled_on.get('GPU', 0):g} GPU" if sampled_on.get("GPU") else "no GPU") + \
        f", {sampled_on.get('CPU', 0):g} CPU"
    model = ", ".join(sorted(set(models)))
    if throughput is None:
        return (f"completion tokens/s per replica measured in the sample on this cluster ({hardware}) over its "
                f"stream, engine start excluded, at the sample's {measured['items']} items in flight at most: a run "
                "that keeps more items in flight batches more, so on a batching engine the hours are an upper bound")
    return (f"{throughput:g} completion tokens/s per replica for every pool, given with --throughput and not "
            f"measured (the sample ran on {hardware}): the hours hold if each replica of the target cluster "
            "sustains that rate at this job's mix of prompt and completion lengths; the yield and the tokens per "
            f"accepted trajectory come from the sample's model ({model}) and change with another model")


# -- plan.json and the printout ------------------------------------------------------------

def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_number(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_number(v) for v in value]
    return value


def plan_document(measured: dict[str, Any], est: dict[str, Any] | None, **context: Any) -> dict[str, Any]:
    """The content of plan.json: the required keys at the top as plain numbers (the
    expected value), every range under ``range`` as [low, high] (null: unbounded)."""
    doc: dict[str, Any] = {
        "accepted_per_item": measured["accepted_per_item"],
        "llm_calls_per_accepted": measured["llm_calls_per_accepted"]["expected"],
        "tokens_per_accepted": measured["tokens_per_accepted"]["expected"],
        "prompt_tokens_per_accepted": measured["prompt_tokens_per_accepted"]["expected"],
        "completion_tokens_per_accepted": measured["completion_tokens_per_accepted"]["expected"],
        **{k: measured[k] for k in ("llm_calls_per_item", "tokens_per_item", "completion_tokens_per_item")},
        "prefix_cache_hit_rate": measured["prefix_cache_hit_rate"],
        "by_role_per_accepted": measured["by_role"],
        "pools": measured["pools"],
        "range": {"confidence": 0.95, "method": RANGE_METHOD,
                  "accepted_per_item": measured["accepted_per_item_range"],
                  **{k: [measured[k]["low"], measured[k]["high"]] for k in (
                      "llm_calls_per_accepted", "tokens_per_accepted", "prompt_tokens_per_accepted",
                      "completion_tokens_per_accepted")}},
        **context,
    }
    if est is not None:
        keys = ("items_needed", "scenarios_needed", "total_tokens", "prompt_tokens", "completion_tokens", "llm_calls",
                "estimated_replica_hours", "estimated_gpu_hours", "estimated_wall_hours")
        doc.update({k: est[k]["expected"] for k in keys})
        doc["range"].update({k: [est[k]["low"], est[k]["high"]] for k in keys})
        doc.update({k: est[k] for k in ("target_accepted", "slots", "scenario_pool",
                                        "completion_tokens_per_s_per_replica")})
    return _json_number(doc)


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "unbounded"
    if isinstance(value, float) and abs(value) < 10 and value != int(value):
        return f"{value:.{max(digits, 2)}f}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.{digits}f}"


def render(doc: dict[str, Any], out: TextIO | None = None) -> None:
    """Print a plan (the content of plan.json) with rich."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, width=120)
    rng = doc["range"]
    measured = Table(title=f"Measured in the sample ({doc['sample']['items']} items, "
                           f"{doc['sample']['accepted']} accepted)")
    for col in ("measure", "value", "95% range"):
        measured.add_column(col, justify="left" if col == "measure" else "right")
    for key, label in (("accepted_per_item", "accepted per item"), ("llm_calls_per_accepted", "LLM calls per accepted"),
                       ("tokens_per_accepted", "tokens per accepted"),
                       ("prompt_tokens_per_accepted", "  prompt tokens per accepted"),
                       ("completion_tokens_per_accepted", "  completion tokens per accepted")):
        low, high = rng[key]
        measured.add_row(label, _num(doc[key], 3), f"{_num(low, 3)} - {_num(high, 3)}")
    for key, label in (("llm_calls_per_item", "LLM calls per item, accepted or not"),
                       ("tokens_per_item", "tokens per item, accepted or not")):
        measured.add_row(label, _num(doc[key], 3), "")
    hit = doc["prefix_cache_hit_rate"]
    measured.add_row("prefix-cache hit rate", "not reported by the engine" if hit is None else f"{hit:.2f}", "")
    for name, pool in doc["pools"].items():
        rate = pool["completion_tokens_per_s_per_replica"]
        measured.add_row(f"completion tok/s per replica, pool {name}", "not measured" if rate is None else _num(rate),
                         "")
    console.print(measured)
    roles = Table(title="Per accepted trajectory, by role")
    for col in ("role", "LLM calls", "prompt tokens", "completion tokens"):
        roles.add_column(col, justify="left" if col == "role" else "right")
    for role, u in doc["by_role_per_accepted"].items():
        roles.add_row(role, _num(u["llm_calls"]), _num(u["prompt_tokens"]), _num(u["completion_tokens"]))
    console.print(roles)
    if "target_accepted" in doc:
        est = Table(title=f"Estimate for {doc['target_accepted']:,} accepted trajectories")
        for col in ("quantity", "expected", "95% range"):
            est.add_column(col, justify="left" if col == "quantity" else "right")
        for key, label in (("items_needed", "items (scenario x slot)"),
                           ("scenarios_needed", f"scenarios at {doc['slots']} slots"),
                           ("llm_calls", "LLM calls"), ("total_tokens", "tokens (prompt + completion)"),
                           ("completion_tokens", "  completion tokens"),
                           ("estimated_replica_hours", "estimated_replica_hours"),
                           ("estimated_gpu_hours", "estimated_gpu_hours"),
                           ("estimated_wall_hours", "estimated_wall_hours")):
            low, high = rng[key]
            est.add_row(label, _num(doc[key], 2), f"{_num(low, 2)} - {_num(high, 2)}")
        console.print(est)
    for note in doc.get("notes", []):
        console.print(f"note: {note}", soft_wrap=True)

"""Counting outcomes: per-shard stats, the run funnel, live progress lines.

Every item ends in exactly one outcome, so per stage ``in = out + rejected`` and over
the run ``items = emitted + rejected + failed``; :func:`funnel` checks both.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from typing import Any, Callable, Iterable, TextIO

from button_ray.config import JUDGE_SCALE
from button_ray.llm.contract import ROLES
from button_ray.records import JUDGE_AXES, WorkItem

#: Stage order of the method (the item-level roles, then the simulation's own checks, the
#: dialogue judge, which runs on what they accept, and the run-wide near-duplicate check);
#: rejections are reported against these names.
STAGE_ORDER = (*(r for r in ROLES if not r.startswith("scenario_") and r != "dialogue_judge"),
               "simulation", "trajectory_filter", "dialogue_judge", "dedup")


#: Counts over emitted trajectories (the dialogue shape the data teaches).
SHAPE_KEYS = ("trajectories", "calls", "calling_turns", "parallel_trajectories", "parallel_calls",
              "parallel_calling_turns", "clarifications", "subtasks", "subtasks_without_function")


def new_stats() -> dict[str, Any]:
    return {"items": 0, "emitted": 0, "failed": 0, "rejected": {}, "errors": {}, "usage": {},
            "shape": dict.fromkeys(SHAPE_KEYS, 0), "judge": _new_judge()}


def _new_judge() -> dict[str, Any]:
    # Over emitted trajectories: how many the judge scored, and per axis the count of
    # each score of the scale (lists add up across shards).
    return {"judged": 0, **{axis: [0] * (JUDGE_SCALE[1] - JUDGE_SCALE[0] + 1) for axis in JUDGE_AXES}}


def _add_judge(total: dict[str, Any], judge: dict[str, Any]) -> None:
    total["judged"] += judge["judged"]
    for axis in JUDGE_AXES:
        total[axis] = [a + b for a, b in zip(total[axis], judge[axis])]


def _add_shape(shape: dict[str, int], item: WorkItem) -> None:
    if item.stats is None or item.bundle is None:
        return
    calling = [n for n in item.stats.calls_per_turn if n]
    counts = {
        "trajectories": 1,
        "calls": sum(calling),
        "calling_turns": len(calling),
        "parallel_trajectories": int(bool(item.parallel)),
        "parallel_calls": sum(calling) if item.parallel else 0,
        "parallel_calling_turns": len(calling) if item.parallel else 0,
        "clarifications": item.stats.clarifications,
        "subtasks": len(item.bundle.functions),
        "subtasks_without_function": sum(1 for group in item.bundle.functions if not group),
    }
    for key, n in counts.items():
        shape[key] = shape.get(key, 0) + n


def add_item(stats: dict[str, Any], item: WorkItem) -> None:
    """Count one finished item into ``stats`` (JSON-friendly, mergeable)."""
    stats["items"] += 1
    if item.outcome == "emitted":
        stats["emitted"] += 1
        _add_shape(stats.setdefault("shape", dict.fromkeys(SHAPE_KEYS, 0)), item)
        if item.judge is not None:
            judge = stats.setdefault("judge", _new_judge())
            judge["judged"] += 1
            for axis in JUDGE_AXES:
                judge[axis][getattr(item.judge, axis) - JUDGE_SCALE[0]] += 1
    elif item.outcome == "rejected" and item.rejection is not None:
        by_reason = stats["rejected"].setdefault(item.rejection.stage, {})
        by_reason[item.rejection.reason] = by_reason.get(item.rejection.reason, 0) + 1
    else:
        stats["failed"] += 1
        kind = (item.error or "unknown").split(":", 1)[0]
        stats["errors"][kind] = stats["errors"].get(kind, 0) + 1
    for role, u in item.usage.items():
        acc = stats["usage"].setdefault(role, {"calls": 0, "unparseable": 0, "prompt_tokens": 0,
                                               "completion_tokens": 0})
        for k in acc:
            acc[k] += getattr(u, k)


def item_stats(item: WorkItem) -> dict[str, Any]:
    """The stats of one finished item alone (what a stage actor reports for it)."""
    stats = new_stats()
    add_item(stats, item)
    return stats


def as_near_duplicate(stats: dict[str, Any]) -> dict[str, Any]:
    """One emitted item's stats (:func:`item_stats`) once the run-wide check rejects it."""
    return {**stats, "emitted": 0, "shape": dict.fromkeys(SHAPE_KEYS, 0), "judge": _new_judge(),
            "rejected": {"dedup": {"near_duplicate": 1}}}


def add_stats(total: dict[str, Any], s: dict[str, Any]) -> None:
    """Add the counts of ``s`` into ``total`` (in place)."""
    total["items"] += s["items"]
    total["emitted"] += s["emitted"]
    total["failed"] += s["failed"]
    for stage, reasons in s["rejected"].items():
        acc = total["rejected"].setdefault(stage, {})
        for reason, n in reasons.items():
            acc[reason] = acc.get(reason, 0) + n
    for kind, n in s["errors"].items():
        total["errors"][kind] = total["errors"].get(kind, 0) + n
    # Stats written before the shape was counted have none.
    for key, n in s.get("shape", {}).items():
        total["shape"][key] = total["shape"].get(key, 0) + n
    if "judge" in s:  # likewise the judge's scores
        _add_judge(total.setdefault("judge", _new_judge()), s["judge"])
    for role, u in s["usage"].items():
        acc = total["usage"].setdefault(role, {k: 0 for k in u})
        for k, v in u.items():
            acc[k] = acc.get(k, 0) + v


def merge(all_stats: Iterable[dict[str, Any]]) -> dict[str, Any]:
    total = new_stats()
    for s in all_stats:
        add_stats(total, s)
    return total


def funnel(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-stage rows: items in, accepted (passed on), rejected by reason."""
    rows = []
    remaining = stats["items"] - stats["failed"]
    stages = list(STAGE_ORDER) + sorted(set(stats["rejected"]) - set(STAGE_ORDER))
    for stage in stages:
        reasons = stats["rejected"].get(stage, {})
        rejected = sum(reasons.values())
        rows.append({"stage": stage, "in": remaining, "accepted": remaining - rejected,
                     "rejected": rejected, "reasons": dict(Counter(reasons).most_common())})
        remaining -= rejected
    if remaining != stats["emitted"]:
        raise AssertionError(f"funnel does not add up: {remaining} left after filters, {stats['emitted']} emitted")
    return rows


def shape(stats: dict[str, Any]) -> dict[str, Any]:
    """The emitted dialogues' shape: the counts, plus calls per calling turn (all, and with
    parallel calling on; BUTTONInstruct averages more than one)."""
    counts = dict(stats.get("shape") or dict.fromkeys(SHAPE_KEYS, 0))
    counts["calls_per_calling_turn"] = counts["calls"] / counts["calling_turns"] if counts["calling_turns"] else 0.0
    counts["parallel_calls_per_calling_turn"] = (
        counts["parallel_calls"] / counts["parallel_calling_turns"] if counts["parallel_calling_turns"] else 0.0
    )
    return counts


def judge_scores(stats: dict[str, Any]) -> dict[str, Any]:
    """The judge's scores of the emitted trajectories: how many it scored, and per axis
    the mean and the count of each score (``{"1": n, ...}``); judged 0 when it was off."""
    judge = stats.get("judge") or _new_judge()
    out: dict[str, Any] = {"judged": judge["judged"], "mean": {}, "counts": {}}
    for axis in JUDGE_AXES:
        scores = range(JUDGE_SCALE[0], JUDGE_SCALE[1] + 1)
        out["counts"][axis] = {str(v): n for v, n in zip(scores, judge[axis])}
        total = sum(v * n for v, n in zip(scores, judge[axis]))
        out["mean"][axis] = total / judge["judged"] if judge["judged"] else 0.0
    return out


def totals(stats: dict[str, Any]) -> dict[str, int]:
    keys = ("calls", "unparseable", "prompt_tokens", "completion_tokens")
    return {k: sum(u.get(k, 0) for u in stats["usage"].values()) for k in keys}


def funnel_table(rows: list[dict[str, Any]]) -> Any:
    """The funnel (:func:`funnel` rows) as a rich table."""
    from rich.table import Table

    table = Table(title="BUTTON funnel")
    for col in ("stage", "in", "accepted", "rejected", "top reasons"):
        table.add_column(col, justify="left" if col in ("stage", "top reasons") else "right")
    for row in rows:
        reasons = ", ".join(f"{k}={v}" for k, v in list(row["reasons"].items())[:4])
        table.add_row(row["stage"], str(row["in"]), str(row["accepted"]), str(row["rejected"]), reasons)
    return table


def render(summary: dict[str, Any], out: TextIO = sys.stdout) -> None:
    """Print the funnel and totals as a table (rich when the output is a terminal)."""
    from rich.console import Console

    console = Console(file=out, width=120)
    console.print(funnel_table(summary["funnel"]))
    t = summary["totals"]
    share = t["unparseable"] / t["calls"] if t["calls"] else 0.0
    console.print(
        f"items {summary['items']}: emitted {summary['emitted']}, rejected {summary['rejected']}, "
        f"failed {summary['failed']} | near-duplicates {summary['duplicate_rate']:.1%} | "
        f"LLM calls {t['calls']} (unparseable {share:.1%}), "
        f"prompt tokens {t['prompt_tokens']}, completion tokens {t['completion_tokens']} | "
        f"wall {summary['wall_time_s']:.0f}s, {summary['completion_tokens_per_s']:.1f} completion tok/s, "
        f"{summary['accepted_per_hour']:.0f} accepted/h"
    )
    sh = summary.get("shape")
    if sh and sh["trajectories"]:
        console.print(
            f"emitted dialogues: {sh['calls'] / sh['trajectories']:.1f} calls each, "
            f"{sh['calls_per_calling_turn']:.2f} calls per calling turn "
            f"({sh['parallel_calls_per_calling_turn']:.2f} with parallel calling on, "
            f"{sh['parallel_trajectories']} of {sh['trajectories']}), {sh['clarifications']} clarifications, "
            f"{sh['subtasks_without_function']} of {sh['subtasks']} sub-tasks without a function"
        )
    judge = summary.get("judge")
    if judge and judge["judged"]:
        means = ", ".join(f"{axis} {m:.2f}" for axis, m in judge["mean"].items())
        console.print(f"judge scores of {judge['judged']} emitted dialogues (mean, {JUDGE_SCALE[0]}-"
                      f"{JUDGE_SCALE[1]}): {means}")


def build_summary(stats: dict[str, Any], wall_time_s: float, attempt_stats: dict[str, Any]) -> dict[str, Any]:
    """The content of summary.json: whole-run counts plus this attempt's throughput."""
    t = totals(stats)
    attempt = totals(attempt_stats)
    rejected = sum(sum(r.values()) for r in stats["rejected"].values())
    duplicates = sum(stats["rejected"].get("dedup", {}).values())
    wall = max(wall_time_s, 1e-9)
    return {
        "items": stats["items"],
        "emitted": stats["emitted"],
        "rejected": rejected,
        "failed": stats["failed"],
        "errors": stats["errors"],
        "funnel": funnel(stats),
        "shape": shape(stats),
        "judge": judge_scores(stats),
        # Of the trajectories that passed every other filter, the share that were near-duplicates.
        "duplicate_rate": duplicates / (duplicates + stats["emitted"]) if duplicates else 0.0,
        "usage_by_role": stats["usage"],
        "totals": t,
        "unparseable_share": t["unparseable"] / t["calls"] if t["calls"] else 0.0,
        "wall_time_s": wall_time_s,
        "this_attempt": {"items": attempt_stats["items"], **attempt},
        "completion_tokens_per_s": attempt["completion_tokens"] / wall,
        "tokens_per_s": (attempt["prompt_tokens"] + attempt["completion_tokens"]) / wall,
        "accepted_per_hour": attempt_stats["emitted"] / wall * 3600,
    }


class Progress:
    """One plain log line every ``interval`` seconds: quiet enough for job logs.

    Lines come from finished items (:meth:`update`) and, between them, from a heartbeat
    thread (:meth:`start_heartbeat`): on a slow engine the first items take minutes, and
    a silent job looks hung. ``probe`` adds live engine activity (e.g. requests in
    flight) to each line; it must be quick and may fail (the line is printed without it).
    """

    def __init__(self, total_items: int, interval: float, out: TextIO = sys.stderr,
                 probe: Callable[[], str] | None = None) -> None:
        self.total = total_items
        self.interval = interval
        self.out = out
        self.probe = probe
        self.start = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = new_stats()

    def update(self, item_stats: dict[str, Any], force: bool = False) -> None:
        """Count one finished item (its :func:`item_stats`)."""
        with self._lock:
            add_stats(self.stats, item_stats)
        self.maybe_print(force)

    def maybe_print(self, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last < self.interval:
                return
            self._last = now
            s, t = self.stats, totals(self.stats)
            rejected = sum(sum(r.values()) for r in s["rejected"].values())
            elapsed = now - self.start
            line = (
                f"[button-ray {elapsed:6.0f}s] items {s['items']}/{self.total} | emitted {s['emitted']} "
                f"rejected {rejected} failed {s['failed']} | LLM calls {t['calls']} | "
                f"{t['completion_tokens'] / max(elapsed, 1e-9):.1f} tok/s in finished items"
            )
        if self.probe is not None:
            try:
                line += f" | {self.probe()}"
            except Exception:  # noqa: BLE001 - progress must never fail the job
                pass
        print(line, file=self.out, flush=True)

    def start_heartbeat(self) -> None:
        """Print at least every ``interval`` seconds until :meth:`stop_heartbeat`."""
        def beat() -> None:
            while not self._stop.wait(self.interval / 2):
                self.maybe_print()

        self._thread = threading.Thread(target=beat, name="button-ray-progress", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

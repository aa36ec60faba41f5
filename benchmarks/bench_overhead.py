"""Our own overhead and memory at scale: the real pipeline behind a zero-latency engine.

``tests.fakes:OracleEngine`` answers every request at once with a valid output, behind
the real replica actor, so everything measured here is our code and Ray's: the item
source, the Ray Data stages, the per-request actor calls, the (de)serialisation of the
work items, the parts the simulation actors write, the driver's ledger and the commit tasks.

For each size N the real ``button_ray.pipeline.run_generate`` runs in a FRESH process
(a child of this script, so peak memory is per size) on a fresh private local Ray
cluster, over a synthetic scenario file of N / slots distinct lines with
``method.atomic_tasks_per_scenario = slots``. While it runs, this (parent) process
samples the RSS of the child (the driver) and of every process under it (the Ray
workers: stage actors, the replica, idle workers; and Ray's own daemons) every 0.5 s.

    python -m benchmarks.bench_overhead --trajectories 10000 100000

Reported per size: wall time of the stream (Ray and engine start excluded) and of the
whole job, trajectories/s and per CPU core, LLM calls per trajectory and per second,
peak RSS of the driver (sampled and ru_maxrss) and of the workers (largest single
worker, and the peak of their sum), peak object store use, and the ratio of each
memory figure between the largest and the smallest size (flat = close to 1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, machine_cpu_s, now, table, write_result

MiB = 2**20


# -- child: one size, one fresh process -------------------------------------------------

def _write_scenarios(path: Path, count: int) -> None:
    cities = ("Lisbon", "Oslo", "Kyoto", "Lima", "Accra", "Perth", "Quebec", "Tbilisi", "Hanoi", "Bergen")
    with path.open("w") as f:
        for i in range(count):
            f.write(f"Scenario {i}: plan a trip to {cities[i % len(cities)]} for {i % 7 + 2} people "
                    f"with a budget of {100 + i} euros\n")


def _object_store_sampler(stop: threading.Event, out: dict[str, Any]) -> None:
    """Peak object store bytes in use (and spilled), from the raylet, every 2 s."""
    try:
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        state = get_state_from_address(ray.get_runtime_context().gcs_address)
    except Exception as exc:  # noqa: BLE001 - optional figure
        out["error"] = repr(exc)
        return
    while not stop.wait(2.0):
        try:
            stats = get_memory_info_reply(state, timeout_seconds=5).store_stats
        except Exception as exc:  # noqa: BLE001 - optional figure
            out["error"] = repr(exc)
            continue
        out["peak_used_bytes"] = max(out.get("peak_used_bytes", 0), int(stats.object_store_bytes_used))
        out["peak_spilled_bytes"] = max(out.get("peak_spilled_bytes", 0), int(stats.spilled_bytes_total))
        out["samples"] = out.get("samples", 0) + 1


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MiB


def run_child(n: int, slots: int, shard_size: int, actors: int, in_flight: int, batch_size: int,
              result_path: Path, profile: str | None) -> None:
    import ray

    from button_ray import pipeline
    from button_ray.config import (EngineConfig, MethodConfig, OutputConfig, PoolConfig, RunConfig,
                                   RuntimeConfig, ScenarioConfig)

    if n % slots:
        raise SystemExit(f"--trajectories {n} is not a multiple of --slots {slots}")
    work = Path(tempfile.mkdtemp(prefix=f"bench_overhead_{n}_"))
    scenarios = work / "scenarios.txt"
    _write_scenarios(scenarios, n // slots)
    cfg = RunConfig(
        scenarios=ScenarioConfig(source=str(scenarios)),
        method=MethodConfig(atomic_tasks_per_scenario=slots),
        pools=(PoolConfig(num_cpus=0.1, engine_class="tests.fakes:OracleEngine", engine=EngineConfig()),),
        runtime=RuntimeConfig(bottom_up_actors=actors, simulation_actors=actors,
                              items_in_flight_per_actor=in_flight, batch_size=batch_size),
        output=OutputConfig(uri=str(work / "out"), shard_size=shard_size),
    )
    rss_before_ray = _rss_mib()
    t0 = time.monotonic()
    for attempt in range(3):
        try:
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING",
                     runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
            break
        except Exception as exc:  # noqa: BLE001 - a loaded machine can time out Ray's node startup
            if attempt == 2:
                raise
            print(f"[bench_overhead] ray.init failed ({exc}); retrying", file=sys.stderr, flush=True)
            ray.shutdown()
    ray_start_s = time.monotonic() - t0

    marks: dict[str, float] = {}
    real_stream, real_start_pools = pipeline._stream, pipeline.start_pools

    def timed_start_pools(*a: Any, **kw: Any) -> Any:
        t = time.monotonic()
        try:
            return real_start_pools(*a, **kw)
        finally:
            marks["engine_start_s"] = time.monotonic() - t

    def timed_stream(*a: Any, **kw: Any) -> Any:
        marks["rss_at_stream_start_mib"] = _rss_mib()
        t = marks["stream_started_at"] = time.monotonic()
        try:
            if profile:
                import cProfile

                prof = cProfile.Profile()
                try:
                    out = prof.runcall(real_stream, *a, **kw)
                finally:
                    prof.dump_stats(profile)
            else:
                out = real_stream(*a, **kw)
            marks["source_gate"] = out
            return out
        finally:
            marks["stream_s"] = time.monotonic() - t
            marks["rss_at_stream_end_mib"] = _rss_mib()

    from button_ray.ledger import ShardLedger

    real_add = ShardLedger.add

    timeline: list[tuple[float, int, float]] = []  # (s since stream start, items, driver RSS MiB)
    marks["timeline"] = timeline

    def timed_add(self: Any, shard: str, outcome: Any) -> Any:
        now_s = time.monotonic()
        marks.setdefault("first_item_at", now_s)
        marks["last_item_at"] = now_s
        marks["items"] = marks.get("items", 0) + 1
        if marks["items"] % max(1, n // 50) == 0:
            timeline.append((round(now_s - marks["stream_started_at"], 1), marks["items"], round(_rss_mib(), 1)))
        return real_add(self, shard, outcome)

    pipeline._stream, pipeline.start_pools = timed_stream, timed_start_pools
    ShardLedger.add = timed_add
    store: dict[str, Any] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_object_store_sampler, args=(stop, store), daemon=True)
    sampler.start()
    t1 = time.monotonic()
    summary = pipeline.run_generate(cfg)
    job_s = time.monotonic() - t1
    stop.set()
    sampler.join(timeout=10)
    out_bytes = sum(p.stat().st_size for p in (work / "out").rglob("*") if p.is_file())
    ray.shutdown()
    result = {
        "n": n,
        "scenarios": n // slots,
        "items": summary["items"],
        "emitted": summary["emitted"],
        "rejected": summary["rejected"],
        "failed": summary["failed"],
        "llm_calls": summary["totals"]["calls"],
        "shards": summary["shards"],
        "ray_start_s": ray_start_s,
        "job_s": job_s,
        **marks,
        "driver_rss_before_ray_mib": rss_before_ray,
        "driver_ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "object_store": store,
        "output_bytes": out_bytes,
        "load_avg_at_end": os.getloadavg(),
    }
    result_path.write_text(json.dumps(result))
    import shutil

    shutil.rmtree(work, ignore_errors=True)


# -- parent: sampling the child's process tree --------------------------------------------

def _label(title: str) -> str:
    for name in ("BottomUpStage", "SimulationStage", "LLMReplica"):
        if name in title:
            return name
    if title.startswith("ray::"):
        return title.split()[0][len("ray::"):].split(".")[0] or "ray"
    return "daemon:" + os.path.basename(title.split()[0]) if title else "daemon:?"


class TreeSampler(threading.Thread):
    """RSS of the driver and of every process under it, every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.stop = threading.Event()
        self.driver_peak = 0
        self.procs: dict[int, dict[str, Any]] = {}  # pid -> label, peak rss, last cpu seconds
        self.workers_sum_peak = 0
        self.all_sum_peak = 0
        self.samples = 0
        self.driver_peak_at = 0.0
        self.driver_timeline: list[tuple[float, float]] = []
        self.machine_cpu_start = self.machine_cpu_end = 0.0
        self.wall_start = self.wall_end = 0.0
        self.load_samples: list[float] = []

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        cache: dict[int, psutil.Process] = {}
        self.machine_cpu_start, self.wall_start = machine_cpu_s()[0], time.monotonic()
        while not self.stop.is_set():
            self.load_samples.append(os.getloadavg()[0])
            self.machine_cpu_end, self.wall_end = machine_cpu_s()[0], time.monotonic()
            try:
                rss = root.memory_info().rss
                if rss > self.driver_peak:
                    self.driver_peak, self.driver_peak_at = rss, time.monotonic()
                self.driver_timeline.append((round(time.monotonic(), 2), round(rss / MiB, 1)))
                driver_cpu = sum(root.cpu_times()[:2])
                children = root.children(recursive=True)
            except psutil.Error:
                break
            self.procs.setdefault(self.pid, {"label": "driver", "peak": 0, "cpu_s": 0.0})
            self.procs[self.pid]["cpu_s"] = driver_cpu
            workers_sum = all_sum = 0
            for child in children:
                proc = cache.setdefault(child.pid, child)
                try:
                    rss = proc.memory_info().rss
                    title = " ".join(proc.cmdline()[:1])
                    cpu = sum(proc.cpu_times()[:2])
                except psutil.Error:
                    continue
                entry = self.procs.setdefault(child.pid, {"label": "", "peak": 0, "cpu_s": 0.0})
                label = _label(title)
                if label != "IDLE" or not entry["label"]:
                    entry["label"] = label
                entry["peak"] = max(entry["peak"], rss)
                entry["cpu_s"] = cpu
                all_sum += rss
                if title.startswith("ray::"):
                    workers_sum += rss
            self.workers_sum_peak = max(self.workers_sum_peak, workers_sum)
            self.all_sum_peak = max(self.all_sum_peak, all_sum)
            self.samples += 1
            self.stop.wait(self.interval)

    def machine_load(self, ours_cpu_s: float) -> dict[str, Any]:
        """How busy the machine was, and how much of it was other processes (e.g. an engine)."""
        wall = max(self.wall_end - self.wall_start, 1e-9)
        busy = self.machine_cpu_end - self.machine_cpu_start
        return {"machine_busy_cores": busy / wall, "ours_cores": ours_cpu_s / wall,
                "others_cores": max(busy - ours_cpu_s, 0.0) / wall,
                "load_avg_1m_mean": sum(self.load_samples) / max(len(self.load_samples), 1)}

    def report(self) -> dict[str, Any]:
        workers = {pid: e for pid, e in self.procs.items()
                   if e["label"] != "driver" and not e["label"].startswith("daemon:")}
        by_label: dict[str, dict[str, Any]] = {}
        for e in workers.values():
            acc = by_label.setdefault(e["label"], {"processes": 0, "peak_rss_mib": 0.0})
            acc["processes"] += 1
            acc["peak_rss_mib"] = max(acc["peak_rss_mib"], e["peak"] / MiB)
        daemons = {e["label"]: e["peak"] / MiB for e in self.procs.values() if e["label"].startswith("daemon:")}
        return {
            "samples": self.samples,
            "driver_peak_rss_mib": self.driver_peak / MiB,
            "driver_peak_at": self.driver_peak_at,
            "driver_rss_timeline_mib": self.driver_timeline[::max(1, len(self.driver_timeline) // 200)],
            "worker_max_single_peak_rss_mib": max((e["peak"] for e in workers.values()), default=0) / MiB,
            "workers_sum_peak_rss_mib": self.workers_sum_peak / MiB,
            "tree_sum_peak_rss_mib": self.all_sum_peak / MiB,
            "workers_by_kind": by_label,
            "daemons_peak_rss_mib": daemons,
            "cpu_s_by_kind": _cpu_by_kind(self.procs),
        }


def _cpu_by_kind(procs: dict[int, dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for e in procs.values():
        out[e["label"]] = out.get(e["label"], 0.0) + e["cpu_s"]
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def sampled_child(module: str, args: list[str], label: str,
                  env: dict[str, str] | None = None) -> tuple[dict[str, Any], TreeSampler]:
    """Run ``python -m benchmarks.<module> <args> --result FILE`` in a fresh process while
    a :class:`TreeSampler` watches it and its children; the child's result and the sampler."""
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", f"benchmarks.{module}", *args, "--result", str(result_path)]
        env = {**os.environ, **(env or {}),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.Popen(cmd, cwd=REPO, env=env)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        rc = proc.wait()
        sampler.stop.set()
        sampler.join()
        if rc != 0:
            raise SystemExit(f"{label}: the child exited with {rc}")
        return json.loads(result_path.read_text()), sampler


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    child = ["--child", str(n), "--slots", str(args.slots), "--shard-size", str(args.shard_size), "--actors",
             str(args.actors), "--in-flight", str(args.in_flight), "--batch-size", str(args.batch_size)]
    if args.profile:
        child += ["--profile", f"{args.profile}.{n}.prof"]
    result, sampler = sampled_child("bench_overhead", child, f"size {n}")
    result.update(sampler.report())
    cores = os.cpu_count() or 1
    stream = result["stream_s"]
    # From the first to the last finished trajectory: without the stage actors' start.
    steady = max(result["last_item_at"] - result["first_item_at"], 1e-9)
    result["first_item_after_s"] = result["first_item_at"] - result["stream_started_at"]
    result["steady_s"] = steady
    result["traj_per_s_steady"] = (n - 1) / steady
    result["driver_peak_after_stream_start_s"] = result["driver_peak_at"] - result["stream_started_at"]
    result["stream_ended_after_start_s"] = result["stream_s"]
    tl = result.get("timeline") or []
    if len(tl) >= 4:
        half = len(tl) // 2
        (t0, i0, _), (t1, i1, _), (t2, i2, _) = tl[0], tl[half], tl[-1]
        result["traj_per_s_first_half"] = (i1 - i0) / max(t1 - t0, 1e-9)
        result["traj_per_s_second_half"] = (i2 - i1) / max(t2 - t1, 1e-9)
    result["traj_per_s"] = n / stream
    result["traj_per_s_per_core"] = result["traj_per_s_steady"] / cores
    result["traj_per_s_per_core_stream"] = n / stream / cores
    result["traj_per_s_job"] = n / result["job_s"]
    result["llm_calls_per_traj"] = result["llm_calls"] / n
    result["llm_calls_per_s"] = result["llm_calls"] / stream
    result["cpu_s_total"] = sum(result["cpu_s_by_kind"].values())
    result["traj_per_cpu_s"] = n / max(result["cpu_s_total"], 1e-9)
    result["machine"] = sampler.machine_load(result["cpu_s_total"])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trajectories", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--slots", type=int, default=10, help="method.atomic_tasks_per_scenario (<= 64)")
    ap.add_argument("--shard-size", type=int, default=64, help="output.shard_size (scenarios per shard)")
    ap.add_argument("--actors", type=int, default=1, help="actors per pipeline stage")
    ap.add_argument("--in-flight", type=int, default=64, help="runtime.items_in_flight_per_actor")
    ap.add_argument("--batch-size", type=int, default=1, help="runtime.batch_size (items per Ray Data block, 1-64)")
    ap.add_argument("--profile", help="cProfile the driver's stream into PREFIX.<n>.prof")
    ap.add_argument("--name", default="bench_overhead",
                    help="results/NAME.json (a variant's own file: e.g. bench_overhead_batch32)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_child(args.child, args.slots, args.shard_size, args.actors, args.in_flight, args.batch_size,
                  Path(args.result), args.profile)
        return

    started = now()
    cores = os.cpu_count()
    run_config = {
        "trajectories": args.trajectories, "slots": args.slots, "shard_size": args.shard_size,
        "actors_per_stage": args.actors, "items_in_flight_per_actor": args.in_flight,
        "batch_size": args.batch_size, "engine_class": "tests.fakes:OracleEngine", "ray_num_cpus": cores,
    }
    results = []
    for n in args.trajectories:
        print(f"[bench_overhead] {n} trajectories in a fresh process ...", flush=True)
        results.append(run_size(n, args))
        r = results[-1]
        print(f"[bench_overhead] {n}: stream {r['stream_s']:.1f}s, {r['traj_per_s']:.1f} traj/s, driver peak "
              f"{r['driver_peak_rss_mib']:.0f} MiB, workers sum peak {r['workers_sum_peak_rss_mib']:.0f} MiB; "
              f"other processes used {r['machine']['others_cores']:.2f} of {cores} cores; traj/s first half "
              f"{r.get('traj_per_s_first_half', 0):.1f}, second half {r.get('traj_per_s_second_half', 0):.1f}",
              flush=True)
        # Written after every size, so a long run that is stopped keeps what it measured.
        write_result(args.name, run_config, {"sizes": results, "complete": False}, started, "bench_overhead")

    rows = [(r["n"], r["stream_s"], r["job_s"], r["traj_per_s"], r["traj_per_s_steady"], r["traj_per_s_per_core"],
             r["traj_per_cpu_s"],
             r["llm_calls_per_traj"], r["llm_calls_per_s"], r["driver_peak_rss_mib"], r["driver_ru_maxrss_mib"],
             r["worker_max_single_peak_rss_mib"], r["workers_sum_peak_rss_mib"],
             r["object_store"].get("peak_used_bytes", 0) / MiB) for r in results]
    print()
    print(table(["trajectories", "stream s", "job s", "traj/s", "traj/s steady", f"steady/core ({cores})", "traj/CPU-s",
                 "LLM calls/traj", "LLM calls/s", "driver peak MiB", "driver maxrss MiB",
                 "worker max MiB", "workers sum MiB", "obj store MiB"], rows))
    ratios = {}
    if len(results) > 1:
        lo, hi = results[0], results[-1]
        keys = ("driver_peak_rss_mib", "driver_ru_maxrss_mib", "worker_max_single_peak_rss_mib",
                "workers_sum_peak_rss_mib", "tree_sum_peak_rss_mib")
        ratios = {k: hi[k] / lo[k] for k in keys if lo[k]}
        ratios["traj_per_s"] = hi["traj_per_s"] / lo["traj_per_s"]
        print()
        print(table([f"ratio {hi['n']}/{lo['n']}", "value"], [(k, v) for k, v in ratios.items()]))
    print()
    print(table(["trajectories", "worker kind", "processes", "peak RSS MiB"],
                [(r["n"], k, v["processes"], v["peak_rss_mib"]) for r in results
                 for k, v in sorted(r["workers_by_kind"].items())]))
    print()
    print(table(["trajectories", "process kind", "CPU s", "ms per trajectory"],
                [(r["n"], k, v, 1000 * v / r["n"]) for r in results for k, v in r["cpu_s_by_kind"].items()]))
    for r in results:
        print(f"{r['n']} trajectories: driver CPU per trajectory: "
              f"{1000 * r['cpu_s_by_kind'].get('driver', 0.0) / r['n']:.2f} ms")
    path = write_result(args.name, run_config,
                        {"sizes": results, "ratios_largest_over_smallest": ratios, "complete": True}, started,
                        "bench_overhead")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

"""Peak memory of `button-ray export` per format at 10x the rows: flat or not.

For each size N a synthetic run of N trajectories is committed directly as Parquet
shards (``tests/synthetic.py``: the sink's real row building and commit protocol, no
Ray, no engine), with ``--shard-rows`` rows per shard. Then each format is exported in a
FRESH process (a child of this script), so each peak is that export's alone: the child
reports its RSS after imports and its peak RSS during the export (sampled every 10 ms),
the wall time and the rows/s. Flat means the peak at the largest size is close to the one at the smallest.

    python -m benchmarks.bench_export --rows 10000 100000

Building the 100k-row run takes a few minutes (every row goes through ``item_row``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, now, table, write_result

MiB = 2**20
FORMATS = ("button", "openai", "sharegpt")


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MiB


def run_child(run: str, fmt: str, out: str, result_path: Path) -> None:
    from button_ray.export import export

    rss_after_imports = _rss_mib()
    # Sampled during the export itself: ru_maxrss would report the imports' peak, or the
    # parent's (Linux keeps it across exec).
    peak = [rss_after_imports]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], _rss_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.monotonic()
    result = export(run, out, fmt)
    wall = time.monotonic() - t
    stop.set()
    sampler.join()
    result_path.write_text(json.dumps({
        "rows": result.rows, "files": len(result.files), "wall_s": wall, "rows_per_s": result.rows / max(wall, 1e-9),
        "rss_after_imports_mib": rss_after_imports, "peak_rss_during_export_mib": max(peak[0], _rss_mib()),
        "output_bytes": sum(os.path.getsize(f) for f in result.files),
    }))


def export_in_child(run: Path, fmt: str, work: Path) -> dict[str, Any]:
    result_path = work / f"{fmt}.result.json"
    out = work / f"{fmt}.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-m", "benchmarks.bench_export", "--child", str(run), fmt, str(out),
                    "--result", str(result_path)], cwd=REPO, env=env, check=True)
    out.unlink()
    return json.loads(result_path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--shard-rows", type=int, default=640, help="rows per committed shard (64 scenarios x 10 slots)")
    ap.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    ap.add_argument("--child", nargs=3, metavar=("RUN", "FORMAT", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_child(*args.child, Path(args.result))
        return

    sys.path.insert(0, str(REPO))
    from tests.synthetic import write_run

    started = now()
    config = {"rows": args.rows, "shard_rows": args.shard_rows, "formats": args.formats}
    sizes = []
    for n in args.rows:
        work = Path(tempfile.mkdtemp(prefix=f"bench_export_{n}_"))
        try:
            t = time.monotonic()
            write_run(str(work / "run"), n, shard_rows=args.shard_rows)
            build_s = time.monotonic() - t
            run_bytes = sum(p.stat().st_size for p in (work / "run").rglob("*.parquet"))
            print(f"[bench_export] {n} rows committed in {build_s:.0f} s ({run_bytes / MiB:.1f} MiB of Parquet)",
                  flush=True)
            by_format = {}
            for fmt in args.formats:
                by_format[fmt] = export_in_child(work / "run", fmt, work)
                r = by_format[fmt]
                print(f"[bench_export] {n} {fmt}: {r['wall_s']:.1f} s, {r['rows_per_s']:.0f} rows/s, "
                      f"peak RSS {r['peak_rss_during_export_mib']:.0f} MiB (after imports "
                      f"{r['rss_after_imports_mib']:.0f})",
                      flush=True)
            sizes.append({"rows": n, "build_s": build_s, "run_parquet_bytes": run_bytes, "exports": by_format})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        write_result("bench_export", config, {"sizes": sizes, "complete": False}, started)

    key = "peak_rss_during_export_mib"
    rows = [(s["rows"], fmt, e["wall_s"], e["rows_per_s"], e["rss_after_imports_mib"], e[key],
             e[key] / sizes[0]["exports"][fmt][key])
            for s in sizes for fmt, e in s["exports"].items()]
    print()
    print(table(["rows", "format", "wall s", "rows/s", "RSS after imports MiB", "peak RSS in export MiB",
                 f"peak / peak at {sizes[0]['rows']}"], rows))
    ratios = {fmt: sizes[-1]["exports"][fmt][key] / sizes[0]["exports"][fmt][key] for fmt in args.formats}
    path = write_result("bench_export", config, {"sizes": sizes, "peak_ratio_largest_to_smallest": ratios,
                                                 "complete": True}, started)
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()

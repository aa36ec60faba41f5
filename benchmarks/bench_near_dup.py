"""The run-wide near-duplicate detector (``button_ray/near_dup.py``) at scale, alone.

Synthetic composite tasks, as the driver's sink sees them: each fills a task template's
ten slots (verbs, objects, cities, dates, counts, people) at random, so two of them
rarely share most of their word 3-grams; a share of them (``--dup-share``) are planted
near-duplicates of an earlier task: half exact copies in other case and punctuation,
half with one word inserted. Every task goes through ``NearDuplicateIndex.add``, as in
a run. Measured: tasks/s, the index's array bytes per kept task, the growth of the
process's peak RSS, the planted duplicates found (recall, per kind) and the generated
originals flagged (near-duplicates by chance or false positives).

    python -m benchmarks.bench_near_dup --tasks 100000
"""

from __future__ import annotations

import argparse
import random
import resource
import time

from benchmarks.common import now, table, write_result
from button_ray.config import ContentConfig
from button_ray.near_dup import index_for

VERBS = "find book compare check reserve order track cancel renew schedule plan pay".split()
OBJECTS = ("hotel room", "flight", "train ticket", "table", "parcel", "gym membership", "dentist visit",
           "car rental", "concert ticket", "grocery order", "museum tour", "phone contract", "bike repair")
CITIES = ("Lisbon Oslo Lima Cairo Dublin Quito Hanoi Perth Accra Riga Tunis Bern Porto Kyoto Austin Denver Nairobi "
          "Seoul Malmo Graz").split()
MONTHS = "January February March April May June July August September October November December".split()
PEOPLE = "my sister|my boss|the team|my parents|a client|my partner|the school|my landlord".split("|")
EXTRAS = ("with free cancellation", "before noon", "near the centre", "under 200 euros", "with breakfast",
          "for the cheapest price", "with a window seat", "close to the station", "with parking", "after 6 pm")


def original(rng: random.Random) -> str:
    return (f"{rng.choice(VERBS).capitalize()} a {rng.choice(OBJECTS)} in {rng.choice(CITIES)} on "
            f"{rng.randint(1, 28)} {rng.choice(MONTHS)} for {rng.randint(1, 9)} people {rng.choice(EXTRAS)}, then "
            f"{rng.choice(VERBS)} the {rng.choice(OBJECTS)} {rng.choice(EXTRAS)} and tell {rng.choice(PEOPLE)} "
            f"by {rng.randint(1, 12)} {rng.choice(MONTHS)}.")


def planted(rng: random.Random, text: str) -> tuple[str, str]:
    if rng.random() < 0.5:
        return "copy", text.upper().replace(",", "").replace(".", "!")
    words = text.split()
    words.insert(rng.randrange(1, len(words)), rng.choice(("please", "also", "quickly", "today")))
    return "one_word_added", " ".join(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--dup-share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = now()
    cfg = ContentConfig()
    index = index_for(cfg)
    assert index is not None
    rng = random.Random(args.seed)
    kept: list[str] = []
    found = {"copy": [0, 0], "one_word_added": [0, 0]}  # kind -> [planted, found]
    flagged_originals = 0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    for i in range(args.tasks):
        if kept and rng.random() < args.dup_share:
            kind, text = planted(rng, rng.choice(kept))
            found[kind][0] += 1
            found[kind][1] += index.add(f"t{i}", text) is not None
            continue
        text = original(rng)
        if index.add(f"t{i}", text) is None:
            kept.append(text)
        else:
            flagged_originals += 1
    elapsed = time.perf_counter() - t0
    rss_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    originals = args.tasks - sum(p for p, _ in found.values())
    results = {
        "tasks": args.tasks,
        "seconds": elapsed,
        "tasks_per_s": args.tasks / elapsed,
        "indexed": index.size,
        "index_mib": index.nbytes() / 2**20,
        "index_bytes_per_kept_task": index.nbytes() / max(1, index.size),
        # Includes the benchmark's own list of kept texts (~150 bytes each), an upper bound.
        "peak_rss_growth_mib": rss_growth_mib,
        "recall": {k: f / p if p else None for k, (p, f) in found.items()},
        "planted": {k: p for k, (p, _) in found.items()},
        "originals": originals,
        "originals_flagged": flagged_originals,
    }
    print(table(["tasks", "s", "tasks/s", "index MiB", "B/task", "RSS +MiB", "recall copy", "recall +1 word",
                 "originals flagged"],
                [[args.tasks, elapsed, results["tasks_per_s"], results["index_mib"],
                  results["index_bytes_per_kept_task"], rss_growth_mib, results["recall"]["copy"],
                  results["recall"]["one_word_added"], f"{flagged_originals}/{originals}"]]))  # fmt: skip
    config = {"tasks": args.tasks, "dup_share": args.dup_share, "seed": args.seed,
              "content": cfg.model_dump(include={"near_duplicate_threshold", "near_duplicate_permutations",
                                                 "near_duplicate_bands", "near_duplicate_capacity"})}  # fmt: skip
    print(f"wrote {write_result('bench_near_dup', config, results, started)}")


if __name__ == "__main__":
    main()

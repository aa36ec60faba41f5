"""``button-ray filter``: the trajectory filter's rules over any BUTTON JSON Lines file.

The same rules as a run's trajectory filter (``top_down/filter.py``: structure, then
content), with the same settings (``method.*`` of the config);
plan coverage is skipped, since a BUTTON record does not keep its sub-tasks; the
run-wide near-duplicate check compares first user messages (the composite task as the
user put it), keeping the first of near-duplicates. The input
is read one line at a time and kept lines are written as they come, byte for byte, so
memory does not grow with the file. A line that cannot be read as a record (not UTF-8,
not JSON, blank) is reported like a dropped record, with its line number: nothing is
dropped silently and no line stops the run.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import IO, Any

from button_ray.button_format import parse_button_record
from button_ray.config import MethodConfig
from button_ray.near_dup import DuplicateCheck, check_for
from button_ray.top_down.filter import filter_problem

#: Stage of a line that is not a record at all.
INPUT_STAGE = "input"
#: Stage of a record that breaks the BUTTON format (``docs/format.md``).
FORMAT_STAGE = "format"
FILTER_STAGE = "trajectory_filter"
DEDUP_STAGE = "dedup"


def record_problem(record: Any, cfg: MethodConfig) -> tuple[str, str, str] | None:
    """``(stage, reason, detail)`` for the first rule a BUTTON record breaks, or None."""
    try:
        parsed = parse_button_record(record)
    except ValueError as exc:
        return FORMAT_STAGE, "invalid_button_record", str(exc)
    problem = filter_problem(parsed.turns, parsed.functions, parallel=parsed.parallel, cfg=cfg)
    return (FILTER_STAGE, *problem) if problem else None


def _line_problem(
    raw: bytes, lineno: int, cfg: MethodConfig, duplicates: DuplicateCheck | None
) -> tuple[str, str, str] | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return INPUT_STAGE, "not_utf8", str(exc)
    if not text.strip():
        return INPUT_STAGE, "blank_line", "a BUTTON file holds one record per line"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return INPUT_STAGE, "not_json", str(exc)
    problem = record_problem(record, cfg)
    if problem is None and duplicates is not None:
        # The opening user message states the composite task (the user agent's brief).
        found = duplicates.check_texts(f"line {lineno}", record["messages"][1]["content"], record["messages"])
        if found is not None:
            kind, match = found
            what = "the first user message" if kind == "task" else "the dialogue"
            return DEDUP_STAGE, "near_duplicate", (f"{what} nearly duplicates the one of kept "
                                                   f"{match.kept_id} (estimated similarity {match.similarity:.2f})")
    return problem


def filter_jsonl(
    in_path: str | Path, out_path: str | Path, cfg: MethodConfig, report_path: str | Path | None = None
) -> dict[str, Any]:
    """Copy the records of ``in_path`` that pass every rule to ``out_path``; return the counts.

    The counts: ``lines``, ``kept``, ``dropped``, and ``reasons`` (``stage/reason`` ->
    count). With ``report_path``, a JSON report of the counts plus ``dropped_records``,
    one ``{"line", "stage", "reason", "detail"}`` per dropped line (1-based line numbers),
    built through a temporary file so that it too needs no memory per record.
    """
    counts: Counter[str] = Counter()
    lines = kept = 0
    duplicates = check_for(cfg.content)
    with open(in_path, "rb") as src, open(out_path, "wb") as out, tempfile.TemporaryFile("w+") as entries:
        for lines, raw in enumerate(src, start=1):
            problem = _line_problem(raw, lines, cfg, duplicates)
            if problem is None:
                kept += 1
                out.write(raw if raw.endswith(b"\n") else raw + b"\n")
                continue
            stage, reason, detail = problem
            counts[f"{stage}/{reason}"] += 1
            entries.write(json.dumps({"line": lines, "stage": stage, "reason": reason, "detail": detail[:500]},
                                     ensure_ascii=False) + "\n")
        summary = {"input": str(in_path), "output": str(out_path), "lines": lines, "kept": kept,
                   "dropped": lines - kept, "reasons": dict(counts.most_common())}
        if report_path is not None:
            entries.seek(0)
            with open(report_path, "w", encoding="utf-8") as report:
                _write_report(report, summary, entries)
    return summary


def _write_report(report: IO[str], summary: dict[str, Any], entries: IO[str]) -> None:
    # The counts as an object left open (without its closing "\n}"), then the entries
    # streamed in from the temporary file: one JSON document, never whole in memory.
    report.write(json.dumps(summary, indent=1, ensure_ascii=False)[:-2])
    report.write(',\n "dropped_records": [')
    for k, entry in enumerate(entries):
        report.write(("\n  " if k == 0 else ",\n  ") + entry.rstrip("\n"))
    report.write("\n ]\n}\n")

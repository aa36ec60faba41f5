"""`button-ray filter` over a BUTTON JSON Lines file: kept records byte for byte, every
dropped line reported with its number and reason, bad lines never fatal."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from button_ray.button_format import parse_button_record, to_button_messages
from button_ray.cli import main
from button_ray.records import TaskBundle, Turn
from button_ray.top_down import simulate
from tests.fakes import ScriptedLLM
from tests.oracles.top_down import respond
from tests.top_down.helpers import BUNDLE, cfg, make_item


CITIES = ("Paris", "Oslo", "Lima", "Cairo")


def good_records(n: int) -> list[dict]:
    """Oracle trajectories of ``n`` tasks that differ in their city (distinct, not near-duplicates)."""
    llm = ScriptedLLM(respond)
    items = asyncio.run(_simulate_all(llm, n))
    assert all(i.outcome == "emitted" for i in items), [i.rejection for i in items]
    return [{"messages": list(i.messages)} for i in items]


async def _simulate_all(llm: ScriptedLLM, n: int) -> list:
    def bundle(city: str) -> TaskBundle:
        task = BUNDLE.composition.composite_task.replace("Paris", city)
        return BUNDLE.model_copy(update={"composition": BUNDLE.composition.model_copy(update={"composite_task": task})})

    return await asyncio.gather(
        *(simulate(make_item(k, bundle(CITIES[k])), llm, cfg(parallel_ratio=0.5)) for k in range(n))
    )


def rewritten(record: dict, **changes: Turn) -> dict:
    """``record`` with some turns replaced (keys: ``t<index>``), rendered again."""
    parsed = parse_button_record(record)
    turns = list(parsed.turns)
    for key, turn in changes.items():
        turns[int(key[1:])] = turn
    return {"messages": to_button_messages(parsed.functions, parsed.parallel, turns)}


def line(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode()


def test_filter_keeps_good_records_and_reports_every_dropped_line(tmp_path: Path, capsys) -> None:
    good = good_records(3)
    template = good[0]
    ungrounded = rewritten(template, t0=Turn(role="user", content="Hello, I need help with something else."))
    looped = rewritten(template, **{f"t{len(parse_button_record(template).turns) - 1}": Turn(
        role="assistant", thought="Done.", final="Everything went well for you today. " * 8)})
    # Valid BUTTON, but a function name no caller could use: reported, not a crash.
    name = parse_button_record(template).functions[0].name
    foreign = json.loads(json.dumps(template).replace(f'\\"{name}\\"', f'\\"{name} v2\\"'))
    lines = [line(good[0]), b"not json at all\n", line(ungrounded), b"\n", b"\xff\xfe\n", line(good[1]),
             line({"messages": []}), line(looped), line(foreign), line(good[2]).rstrip(b"\n")]  # fmt: skip
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(lines))
    out, report = tmp_path / "out.jsonl", tmp_path / "report.json"

    assert main(["filter", str(src), str(out), "--report", str(report)]) == 0
    assert out.read_bytes() == line(good[0]) + line(good[1]) + line(good[2])
    summary = json.loads(capsys.readouterr().out)
    assert (summary["lines"], summary["kept"], summary["dropped"]) == (10, 3, 7)
    full = json.loads(report.read_text())
    assert full["reasons"] == summary["reasons"] == {
        "input/not_json": 1, "input/blank_line": 1, "input/not_utf8": 1, "format/invalid_button_record": 2,
        "trajectory_filter/ungrounded_argument": 1, "trajectory_filter/degenerate_text": 1,
    }  # fmt: skip
    dropped = {e["line"]: (e["stage"], e["reason"]) for e in full["dropped_records"]}
    assert dropped == {
        2: ("input", "not_json"), 3: ("trajectory_filter", "ungrounded_argument"), 4: ("input", "blank_line"),
        5: ("input", "not_utf8"), 7: ("format", "invalid_button_record"),
        8: ("trajectory_filter", "degenerate_text"), 9: ("format", "invalid_button_record"),
    }  # fmt: skip
    assert all(e["detail"] for e in full["dropped_records"])


def test_filter_settings_come_from_the_config(tmp_path: Path) -> None:
    record = good_records(1)[0]
    ungrounded = rewritten(record, t0=Turn(role="user", content="Hello, I need help with something else."))
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(line(ungrounded))
    assert main(["filter", str(src), str(out)]) == 0
    assert out.read_bytes() == b""
    assert main(["filter", str(src), str(out), "--set", "method.content.grounding=off"]) == 0
    assert out.read_bytes() == line(ungrounded)


def test_filter_missing_input(tmp_path: Path, capsys) -> None:
    assert main(["filter", str(tmp_path / "nope.jsonl"), str(tmp_path / "out.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_filter_drops_near_duplicates_naming_the_kept_line(tmp_path: Path) -> None:
    first, other = good_records(2)
    src, out, report = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "report.json"
    src.write_bytes(line(first) + line(other) + line(first))
    assert main(["filter", str(src), str(out), "--report", str(report)]) == 0
    assert out.read_bytes() == line(first) + line(other)
    (entry,) = json.loads(report.read_text())["dropped_records"]
    assert (entry["line"], entry["stage"], entry["reason"]) == (3, "dedup", "near_duplicate")
    assert "line 1" in entry["detail"]
    assert main(["filter", str(src), str(out), "--set", "method.content.near_duplicate_threshold=null"]) == 0
    assert out.read_bytes() == src.read_bytes()


def test_filter_drops_whole_dialogue_duplicates_when_asked(tmp_path: Path) -> None:
    """A record whose dialogue repeats a kept one's (its opening words changed: 0.94) is
    dropped by the dialogue check at 0.9, naming the kept line, and one in another city
    (0.81) is kept; the check is off by default."""
    first, other = good_records(2)
    copy = json.loads(json.dumps(first))
    copy["messages"][1]["content"] = "Hello there, good morning to you! " + copy["messages"][1]["content"]
    src, out, report = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "report.json"
    src.write_bytes(line(first) + line(other) + line(copy))
    tasks_off = ["--set", "method.content.near_duplicate_threshold=null"]
    assert main(["filter", str(src), str(out), *tasks_off]) == 0
    assert out.read_bytes() == src.read_bytes()
    assert main(["filter", str(src), str(out), "--report", str(report), *tasks_off,
                 "--set", "method.content.near_duplicate_dialogue_threshold=0.9"]) == 0
    assert out.read_bytes() == line(first) + line(other)
    (entry,) = json.loads(report.read_text())["dropped_records"]
    assert (entry["line"], entry["stage"], entry["reason"]) == (3, "dedup", "near_duplicate")
    assert entry["detail"].startswith("the dialogue nearly duplicates the one of kept line 1")

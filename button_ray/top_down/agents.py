"""The three simulated agents of BUTTON's top-down phase: request building and parsing.

Each agent is a pair ``*_request`` (build an :class:`LLMRequest`) and ``parse_*``
(turn the response into a value or raise :class:`ParseError`), run by
:func:`button_ray.steps.run_step`. Parsers are defensive: constraints keep a
constrained engine's output well-formed, but an engine may ignore them.

Chat histories are built by appending only (earlier messages are never rewritten), so
consecutive requests of one trajectory share a prefix for the engine's prefix cache.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

from button_ray.button_format import (
    CALL_CLOSE,
    CALL_OPEN,
    FINAL_CLOSE,
    FINAL_OPEN,
    dump_json,
    render_system_prompt,
)
from button_ray.config import MethodConfig
from button_ray.errors import ParseError
from button_ray.llm.contract import ChatMessage, LLMRequest, OutputConstraint, Role
from button_ray.records import FunctionDef, TaskBundle, ToolCall, Turn, derive_seed
from button_ray.specs import call_problem
from button_ray.top_down.grammar import assistant_grammar, tool_result_grammar, user_message_grammar

USER_TEMPLATE = "user_agent.j2"
ASSISTANT_TEMPLATE = "assistant_agent.j2"
TOOL_TEMPLATE = "tool_agent.j2"
_TAGS = (CALL_OPEN, CALL_CLOSE, FINAL_OPEN, FINAL_CLOSE)
#: Per strategy, the sub-tasks (0-based) each sub-task consumes the results of.
DEPENDS_ON: dict[str, dict[int, frozenset[int]]] = {
    "sequential": {1: frozenset({0})},
    "parallel_then_sequential": {2: frozenset({0, 1})},
}


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; Python's json accepts them unless told otherwise.
    raise ValueError(f"{name} is not valid JSON")


def tool_order(item_id: str, functions: Sequence[FunctionDef], shuffle: bool) -> tuple[FunctionDef, ...]:
    """The order of the tool list in the system message: a shuffle seeded from the record
    id (``MethodConfig.shuffle_tools``), else sub-task order."""
    order = list(functions)
    if shuffle:
        random.Random(derive_seed(item_id, "tool_order")).shuffle(order)
    return tuple(order)


@dataclass
class TrajectoryContext:
    """Everything about one trajectory that stays fixed while it is simulated."""

    item_id: str
    bundle: TaskBundle
    parallel: bool
    cfg: MethodConfig
    functions: tuple[FunctionDef, ...] = field(init=False)
    tools: tuple[FunctionDef, ...] = field(init=False)
    by_name: dict[str, FunctionDef] = field(init=False)
    apart: frozenset[frozenset[str]] = field(init=False)
    assistant_system: str = field(init=False)
    user_constraint: OutputConstraint | None = field(init=False)
    first_user_constraint: OutputConstraint | None = field(init=False)
    _tool_constraints: dict[str, OutputConstraint | None] = field(init=False, default_factory=dict)
    _assistant_constraints: dict[tuple, OutputConstraint | None] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        # ``functions`` stays in sub-task order (steering offers calls in that order);
        # ``tools`` is the order the saved system message shows.
        self.functions = self.bundle.flat_functions
        self.tools = tool_order(self.item_id, self.functions, self.cfg.shuffle_tools)
        self.by_name = {f.name: f for f in self.functions}
        subtask_of = {f.name: i for i, group in enumerate(self.bundle.functions) for f in group}
        depends = DEPENDS_ON.get(self.bundle.composition.strategy, {})
        self.apart = frozenset(
            frozenset({a, b})
            for a, i in subtask_of.items()
            for b, j in subtask_of.items()
            if i in depends.get(j, ())
        )
        composition = self.bundle.composition
        self.assistant_system = self.cfg.templates().render(
            ASSISTANT_TEMPLATE,
            part="system",
            system_prompt=render_system_prompt(self.tools, self.parallel),
            subtasks=composition.subtasks,
            subtask_functions=[[f.name for f in group] for group in self.bundle.functions],
            parallel=self.parallel,
            independent=self._independent_subtasks(),
        )
        self.user_constraint = self.first_user_constraint = None
        strength = self.cfg.strength("user_agent")
        if strength != "off":
            tight = self.cfg.tight
            self.user_constraint = _grammar(user_message_grammar(strength, tight))
            self.first_user_constraint = _grammar(user_message_grammar(strength, tight, self.cfg.user_openers))

    def _independent_subtasks(self) -> tuple[int, ...]:
        """1-based sub-tasks the assistant may call together (``MethodConfig.parallel_hints``):
        those that consume no other's result, when at least two have functions."""
        if not (self.parallel and self.cfg.parallel_hints):
            return ()
        depends = DEPENDS_ON.get(self.bundle.composition.strategy, {})
        consumed = set().union(*depends.values()) if depends else set()
        free = [i for i in sorted(consumed) if i not in depends and self.bundle.functions[i]]
        return tuple(i + 1 for i in free) if len(free) >= 2 else ()

    def steer(self, called: frozenset[str], calls_made: int, clarifications: int = 0) -> "Steer":
        """What the next assistant turn may do, given the names called so far, the number
        of calls made (``MethodConfig.steer_calls``; without it: any call or a final answer)
        and the questions asked (one more is allowed at ``structure`` strength while under
        ``max_clarifications``; the tight grammars of a small model allow none)."""
        cfg = self.cfg
        question = cfg.strength("assistant_agent") == "structure" and clarifications < cfg.max_clarifications
        if not cfg.steer_calls:
            return Steer(callable_names=None, allow_final=True, max_calls=cfg.max_calls_per_turn,
                         allow_question=question)
        cap = cfg.steer_max_calls or len(self.functions)
        remaining = tuple(f.name for f in self.functions if f.name not in called)
        can_call = bool(remaining) and calls_made < cap
        return Steer(
            callable_names=remaining if can_call else (),
            allow_final=calls_made >= cfg.min_calls or not can_call,
            max_calls=max(1, min(cfg.max_calls_per_turn, cap - calls_made)),
            allow_question=question,
        )

    @property
    def grounds_arguments(self) -> bool:
        """Whether call arguments are held to the dialogue's values (``TightConstraints.grounded_arguments``)."""
        return self.cfg.strength("assistant_agent") == "tight" and self.cfg.tight.grounded_arguments

    def assistant_constraint_for(
        self, steer: "Steer", grounded: tuple[Sequence[str], Sequence[float]] | None = None
    ) -> OutputConstraint | None:
        """The assistant grammar for ``steer`` and the dialogue's values ``grounded`` (see
        :attr:`grounds_arguments`; one grammar per distinct pair, built once)."""
        strength = self.cfg.strength("assistant_agent")
        if strength == "off":
            return None
        key = (steer, grounded)
        if key not in self._assistant_constraints:
            self._assistant_constraints[key] = _grammar(
                assistant_grammar(
                    self.functions,
                    parallel=self.parallel,
                    max_calls_per_turn=steer.max_calls,
                    strength=strength,
                    tight=self.cfg.tight,
                    callable_names=steer.callable_names,
                    allow_final=steer.allow_final,
                    allow_question=steer.allow_question,
                    apart=self.apart,
                    grounded=grounded,
                )
            )
        return self._assistant_constraints[key]

    @property
    def assistant_constraint(self) -> OutputConstraint | None:
        """The constraint of the first assistant turn (of every turn without steering)."""
        return self.assistant_constraint_for(self.steer(frozenset(), 0))

    def tool_constraint(self, fn: FunctionDef) -> OutputConstraint | None:
        """The tool agent's constraint for ``fn`` (built once per function and trajectory)."""
        strength = self.cfg.strength("tool_agent")
        if strength == "off":
            return None
        if fn.name not in self._tool_constraints:
            self._tool_constraints[fn.name] = _grammar(tool_result_grammar(fn, strength, self.cfg.tight))
        return self._tool_constraints[fn.name]

    def request(
        self, role: Role, request_id: str, messages: Sequence[ChatMessage], constraint: OutputConstraint | None
    ) -> LLMRequest:
        """A request of this trajectory (same affinity key: same replica, warm prefix cache)."""
        return LLMRequest(
            role=role,
            messages=tuple(messages),
            sampling=self.cfg.sampling.for_role(role),
            constraint=constraint,
            affinity_key=self.item_id,
            request_id=request_id,
        )


@dataclass(frozen=True)
class Steer:
    """What one assistant turn may do: call ``callable_names`` (None: any function, any
    number of times; empty: nothing), at most ``max_calls`` per turn, answer if
    ``allow_final``, ask the user a question (thought alone) if ``allow_question``."""

    callable_names: tuple[str, ...] | None
    allow_final: bool
    max_calls: int
    allow_question: bool = False


def _grammar(spec: str | None) -> OutputConstraint | None:
    return None if spec is None else OutputConstraint(kind="grammar", spec=spec)


# ------------------------------------------------------------------------- user agent


def user_kickoff(ctx: TrajectoryContext) -> ChatMessage:
    """The first message of the user agent's own chat: its instructions and the composite task."""
    text = ctx.cfg.templates().render(USER_TEMPLATE, task=ctx.bundle.composition.composite_task)
    return ChatMessage(role="user", content=text)


def user_request(ctx: TrajectoryContext, history: Sequence[ChatMessage], index: int) -> LLMRequest:
    """The user agent's ``index``-th message (0: the opening message; then clarification replies).

    ``history`` is the user agent's chat: the kickoff, then its own messages as
    ``assistant`` and the assistant agent's questions as ``user``.
    """
    constraint = ctx.first_user_constraint if index == 0 else ctx.user_constraint
    return ctx.request("user_agent", f"{ctx.item_id}/user/{index}", history, constraint)


def parse_user_message(text: str) -> str:
    """The user agent's message, stripped; empty or tag-bearing output is malformed."""
    message = text.strip()
    if not message:
        raise ParseError("empty_output")
    if any(tag in message for tag in _TAGS):
        raise ParseError("tag_in_message", message[:200])
    return message


# -------------------------------------------------------------------- assistant agent


def assistant_system_message(ctx: TrajectoryContext) -> ChatMessage:
    """The assistant agent's system message: the BUTTON prompt plus the sub-tasks and rules."""
    return ChatMessage(role="system", content=ctx.assistant_system)


def results_message(ctx: TrajectoryContext, content: str) -> ChatMessage:
    """A tool message as the assistant agent sees it (chat templates have no tool role here)."""
    text = ctx.cfg.templates().render(ASSISTANT_TEMPLATE, part="results", results=content)
    return ChatMessage(role="user", content=text)


def assistant_request(
    ctx: TrajectoryContext,
    history: Sequence[ChatMessage],
    turn_index: int,
    steer: Steer | None = None,
    grounded: tuple[Sequence[str], Sequence[float]] | None = None,
) -> LLMRequest:
    """The assistant agent's ``turn_index``-th turn given its chat so far (system first),
    constrained by ``steer`` (default: the first turn's) and, where arguments are
    grounded, the dialogue's values ``grounded``."""
    steer = steer or ctx.steer(frozenset(), 0)
    constraint = ctx.assistant_constraint_for(steer, grounded)
    return ctx.request("assistant_agent", f"{ctx.item_id}/assistant/{turn_index}", history, constraint)


def _parse_calls(body: str) -> list[Any]:
    try:
        raw, _ = json.JSONDecoder(parse_constant=_reject_constant).raw_decode(body.lstrip())
    except ValueError as exc:
        raise ParseError("bad_call_json", f"{exc}: {body[:200]}") from None
    if isinstance(raw, dict):
        raw = [raw]  # a lone call object is unambiguous
    if not isinstance(raw, list) or not raw:
        raise ParseError("bad_call_structure", body[:200])
    return raw


def parse_assistant_turn(ctx: TrajectoryContext, text: str, steer: Steer | None = None) -> Turn:
    """An assistant turn: thought plus calls, thought plus final answer, or prose alone.

    Prose alone (neither tag) is a question to the user: the clarification path.
    Malformed text raises a malformed :class:`ParseError`; a well-formed turn that
    breaks the method's rules (unknown function, wrong arguments, too many calls) or
    ``steer`` (a function already called, a final answer too early) raises one with
    ``malformed=False``. Both are retried by ``run_step``.
    """
    text = text.strip()
    if not text:
        raise ParseError("empty_output")
    if CALL_OPEN in text and FINAL_OPEN in text:
        raise ParseError("call_and_final", text[:200])
    if CALL_OPEN in text:
        thought, _, rest = text.partition(CALL_OPEN)
        calls = []
        for raw in _parse_calls(rest):
            if (
                not isinstance(raw, dict)
                or not isinstance(raw.get("name"), str)
                or not isinstance(raw.get("arguments"), dict)
                or set(raw) != {"name", "arguments"}
            ):
                raise ParseError("bad_call_structure", dump_json(raw)[:200])
            calls.append(ToolCall(name=raw["name"], arguments=raw["arguments"]))
        turn = Turn(role="assistant", thought=thought.strip(), calls=tuple(calls))
        _check_calls(ctx, turn)
        _check_steer(turn, steer)
    elif FINAL_OPEN in text:
        thought, _, rest = text.partition(FINAL_OPEN)
        answer = rest.partition(FINAL_CLOSE)[0].strip()
        if not answer:
            raise ParseError("empty_final", text[:200])
        turn = Turn(role="assistant", thought=thought.strip(), final=answer)
        if steer is not None and not steer.allow_final:
            raise ParseError("final_too_early", answer[:200], malformed=False)
    else:
        turn = Turn(role="assistant", thought=text)
    if any(tag in part for tag in _TAGS for part in (turn.thought, turn.final or "")):
        raise ParseError("stray_tag", text[:200])
    return turn


def _check_calls(ctx: TrajectoryContext, turn: Turn) -> None:
    if not ctx.parallel and len(turn.calls) > 1:
        raise ParseError("multiple_calls_in_off_mode", f"{len(turn.calls)} calls", malformed=False)
    if len(turn.calls) > ctx.cfg.max_calls_per_turn:
        raise ParseError("too_many_calls", f"{len(turn.calls)} calls", malformed=False)
    names = [c.name for c in turn.calls]
    for pair in ctx.apart:
        if pair <= set(names):
            # One consumes the other's result, which this turn cannot have yet: its
            # argument is a guess.
            raise ParseError("dependent_calls_in_one_turn", " + ".join(sorted(pair)), malformed=False)
    for call in turn.calls:
        problem = call_problem(call, ctx.by_name)
        if problem is not None:
            raise ParseError(problem[0], problem[1], malformed=False)
        if any(tag in dump_json(call.arguments) for tag in _TAGS):
            raise ParseError("stray_tag", call.name)


def _check_steer(turn: Turn, steer: Steer | None) -> None:
    # The grammar enforces this; an engine that ignores constraints gets it checked here.
    if steer is None or steer.callable_names is None:
        return
    names = [c.name for c in turn.calls]
    if len(names) > steer.max_calls:
        raise ParseError("too_many_calls", f"{len(names)} > {steer.max_calls}", malformed=False)
    for name in names:
        if name not in steer.callable_names or names.count(name) > 1:
            raise ParseError("function_already_called", name, malformed=False)


# ------------------------------------------------------------------------- tool agent


def tool_request(ctx: TrajectoryContext, call: ToolCall, turn_index: int, call_index: int) -> LLMRequest:
    """The tool agent's request for one call: one function definition and the call."""
    fn = ctx.by_name[call.name]
    prompt = ctx.cfg.templates().render(
        TOOL_TEMPLATE,
        function=dump_json(fn.as_button_dict()),
        call=dump_json({"name": call.name, "arguments": call.arguments}),
    )
    return ctx.request(
        "tool_agent",
        f"{ctx.item_id}/tool/{turn_index}/{call_index}",
        [ChatMessage(role="user", content=prompt)],
        ctx.tool_constraint(fn),
    )


def parse_tool_result(fn: FunctionDef, text: str) -> dict[str, Any]:
    """The tool result: the first JSON object in ``text``, holding every declared response key."""
    if not text.strip():
        raise ParseError("empty_output")
    start = text.find("{")
    if start < 0:
        raise ParseError("tool_result_not_json", text[:200])
    try:
        value, _ = json.JSONDecoder(parse_constant=_reject_constant).raw_decode(text[start:])
    except ValueError as exc:
        raise ParseError("tool_result_not_json", f"{exc}: {text[:200]}") from None
    missing = [k for k in fn.responses if k not in value]
    if missing:
        raise ParseError("tool_result_missing_key", ", ".join(missing), malformed=False)
    return value

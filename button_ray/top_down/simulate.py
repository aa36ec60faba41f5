"""The top-down simulation of one trajectory: a state machine over the three agents.

user message -> assistant turn -> (calls: every call's tool result, concurrently)
-> assistant turn -> ... -> final answer. An assistant turn that neither calls nor
answers is a question: the user agent replies (at most ``max_clarifications`` times).
Identical calls (same name, same arguments) share one tool-agent result. With
``MethodConfig.steer_calls`` each turn's grammar offers only the functions not called
yet, so no call repeats, and holds the final answer back until ``min_calls`` calls.

One coroutine per trajectory, only ``await`` on the engine: thousands run in one
event loop. Nothing here knows about Ray.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from button_ray import quality
from button_ray.button_format import assistant_content, to_button_messages, tool_content, validate_button_record
from button_ray.config import MethodConfig
from button_ray.errors import RecordError
from button_ray.llm.contract import ChatMessage, LLMClient, LLMRequest, LLMResponse
from button_ray.records import ToolCall, TrajectoryStats, Turn, WorkItem, stable_id
from button_ray.specs import call_key
from button_ray.steps import ParseError, StepResult, run_step
from button_ray.top_down import agents, judge
from button_ray.top_down.filter import filter_problem

ROLES = ("user_agent", "assistant_agent", "tool_agent")


def choose_parallel(item_id: str, ratio: float) -> bool:
    """Parallel calling on or off for a trajectory: a deterministic draw from its id."""
    return int(stable_id(item_id, "parallel", length=12), 16) / 16**12 < ratio


class _Rejected(RecordError):
    """Ends a simulation early; carries the rejection."""

    def __init__(self, stage: str, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.stage, self.reason, self.detail = stage, reason, detail


class _Simulation:
    """The mutable state of one trajectory while it is simulated."""

    def __init__(self, item: WorkItem, llm: LLMClient, ctx: agents.TrajectoryContext) -> None:
        self.item, self.llm, self.ctx, self.cfg = item, llm, ctx, ctx.cfg
        self.turns: list[Turn] = []
        # Each agent's own chat, append-only (prefix cache).
        self.assistant_chat: list[ChatMessage] = [agents.assistant_system_message(ctx)]
        self.user_chat: list[ChatMessage] = [agents.user_kickoff(ctx)]
        self.results: dict[str, dict[str, Any]] = {}
        self.assistant_turns = 0
        self.clarifications = 0
        self.called: set[str] = set()
        self.calls_made = 0

    def _check_budget(self) -> None:
        usage = [self.item.usage_for(role) for role in ROLES]
        spent = sum(u.prompt_tokens + u.completion_tokens for u in usage)
        budget = self.cfg.trajectory_budget(len(self.ctx.functions))
        if spent > budget:
            raise _Rejected("simulation", "token_budget", f"{spent} > {budget}")

    async def _step(
        self, stage: str, build: Callable[[int], LLMRequest], parse: Callable[[LLMResponse], Any]
    ) -> Any:
        result: StepResult[Any] = await run_step(
            self.llm, build, parse, self.item.usage_for(stage), self.cfg.retries
        )
        self._check_budget()
        if not result.ok:
            raise _Rejected(stage, result.reason or "unknown", result.detail)
        return result.value

    def _content(self, turn: Turn) -> Turn:
        """``turn`` if it keeps the content rules; else a retried rule break (a new seed
        is cheaper than losing the trajectory to the filter at the end)."""
        problem = quality.new_turn_problem(self.turns, turn, self.ctx.functions, self.cfg.content)
        if problem is not None:
            raise ParseError(*problem, malformed=False)
        return turn

    async def _user_message(self) -> None:
        index = self.clarifications
        history = list(self.user_chat)
        text = await self._step(
            "user_agent",
            lambda attempt: agents.user_request(self.ctx, history, index),
            lambda response: self._content(Turn(role="user", content=agents.parse_user_message(response.text))).content,
        )
        self.user_chat.append(ChatMessage(role="assistant", content=text))
        self.assistant_chat.append(ChatMessage(role="user", content=text))
        self.turns.append(Turn(role="user", content=text))

    async def _assistant_turn(self) -> Turn:
        if self.assistant_turns >= self.cfg.max_assistant_turns:
            raise _Rejected("simulation", "turn_limit", f"{self.assistant_turns} assistant turns")
        index = self.assistant_turns
        history = list(self.assistant_chat)
        steer = self.ctx.steer(frozenset(self.called), self.calls_made, self.clarifications)
        grounded = quality.grounding_candidates(self.turns) if self.ctx.grounds_arguments else None
        turn: Turn = await self._step(
            "assistant_agent",
            lambda attempt: agents.assistant_request(self.ctx, history, index, steer, grounded),
            lambda response: self._content(agents.parse_assistant_turn(self.ctx, response.text, steer)),
        )
        self.assistant_turns += 1
        self.called.update(c.name for c in turn.calls)
        self.calls_made += len(turn.calls)
        self.turns.append(turn)
        self.assistant_chat.append(ChatMessage(role="assistant", content=assistant_content(turn)))
        return turn

    async def _tool_result(self, call: ToolCall, turn_index: int, call_index: int) -> dict[str, Any]:
        fn = self.ctx.by_name[call.name]

        def parse(response: LLMResponse) -> dict[str, Any]:
            result = agents.parse_tool_result(fn, response.text)
            problem = quality.new_result_problem(result, fn, self.cfg.content)
            if problem is not None:
                raise ParseError(*problem, malformed=False)
            return result

        return await self._step(
            "tool_agent", lambda attempt: agents.tool_request(self.ctx, call, turn_index, call_index), parse
        )

    async def _run_calls(self, calls: tuple[ToolCall, ...]) -> None:
        turn_index = self.assistant_turns - 1
        keys = [call_key(c) for c in calls]
        # First occurrence of each call not answered before; the rest reuse its result.
        todo: dict[str, tuple[int, ToolCall]] = {}
        for j, (key, call) in enumerate(zip(keys, calls)):
            if key not in self.results and key not in todo:
                todo[key] = (j, call)
        outcomes = await asyncio.gather(
            *(self._tool_result(c, turn_index, j) for j, c in todo.values()), return_exceptions=True
        )
        # Every concurrent call has finished before any error propagates: no orphan tasks.
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        self.results.update(zip(todo, outcomes))
        results = tuple(self.results[k] for k in keys)
        self.turns.append(Turn(role="tool", results=results))
        self.assistant_chat.append(agents.results_message(self.ctx, tool_content(calls, results)))

    async def run(self) -> None:
        await self._user_message()
        while True:
            turn = await self._assistant_turn()
            if turn.final is not None:
                return
            if turn.calls:
                await self._run_calls(turn.calls)
                continue
            self.clarifications += 1
            if self.clarifications > self.cfg.max_clarifications:
                raise _Rejected("simulation", "clarification_limit", f"{self.clarifications} questions")
            self.user_chat.append(ChatMessage(role="user", content=turn.thought))
            await self._user_message()

    def stats(self) -> TrajectoryStats:
        assistant = [t for t in self.turns if t.role == "assistant"]
        usage = [self.item.usage_for(role) for role in ROLES]
        return TrajectoryStats(
            assistant_turns=len(assistant),
            calls=sum(len(t.calls) for t in assistant),
            calls_per_turn=tuple(len(t.calls) for t in assistant),
            clarifications=self.clarifications,
            prompt_tokens=sum(u.prompt_tokens for u in usage),
            completion_tokens=sum(u.completion_tokens for u in usage),
        )


async def simulate(item: WorkItem, llm: LLMClient, cfg: MethodConfig) -> WorkItem:
    """Simulate ``item``'s trajectory, filter it and render it in the BUTTON format.

    ``item.bundle`` must be set. Sets ``item.parallel``; on success fills ``turns``,
    ``stats`` and ``messages`` and marks the item ``emitted``; otherwise rejects it with
    the stage (``user_agent``, ``assistant_agent``, ``tool_agent``, ``simulation`` or
    ``trajectory_filter``: the structural rules, then the content rules) and a reason
    code. With ``method.judge`` on, a dialogue that passes is then judged (stage
    ``dialogue_judge``, see :mod:`.judge`). Engine errors propagate to the caller. Items
    that already have an outcome are returned unchanged.
    """
    if item.outcome != "pending":
        return item
    if item.bundle is None:
        raise ValueError(f"item {item.item_id} has no task bundle to simulate")
    item.parallel = choose_parallel(item.item_id, cfg.parallel_ratio)
    if not item.bundle.flat_functions:
        return item.reject("simulation", "no_functions", "the task bundle defines no function")
    if cfg.steer_calls and len(item.bundle.flat_functions) < cfg.min_calls:
        # Steering calls each function at most once: the filter's min_calls is out of reach.
        return item.reject(
            "simulation", "too_few_functions", f"{len(item.bundle.flat_functions)} < min_calls {cfg.min_calls}"
        )
    ctx = agents.TrajectoryContext(item_id=item.item_id, bundle=item.bundle, parallel=item.parallel, cfg=cfg)
    sim = _Simulation(item, llm, ctx)
    try:
        await sim.run()
    except _Rejected as rejected:
        return item.reject(rejected.stage, rejected.reason, rejected.detail)
    problem = filter_problem(sim.turns, ctx.functions, parallel=item.parallel, cfg=cfg, groups=item.bundle.functions)
    if problem is not None:
        return item.reject("trajectory_filter", *problem)
    messages = to_button_messages(ctx.tools, item.parallel, sim.turns)
    errors = validate_button_record({"messages": messages})
    if errors:
        # The filter and the renderer disagree: keep the record out rather than ship it.
        return item.reject("trajectory_filter", "invalid_button_record", "; ".join(errors[:3]))
    # Last: no judge call is spent on a dialogue that a rule costing no LLM call rejects.
    if cfg.judge.enabled and not await judge.judge_dialogue(item, messages, llm, cfg):
        return item
    item.turns = tuple(sim.turns)
    item.stats = sim.stats()
    item.messages = tuple(messages)
    item.outcome = "emitted"
    return item

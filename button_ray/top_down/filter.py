"""The trajectory filter (``docs/format.md``, "The trajectory filter").

Keep a trajectory only if: every non-final assistant turn has a parseable call list
(or is a clarification question the user answered); every called name exists;
required arguments are present and typed right; every tool result is a JSON object;
it ends with a final answer; it has enough calls and assistant turns; off-mode turns
hold one call; no identical call is repeated.

The simulation's parsers already enforce most of this per turn; the filter checks
the finished dialogue as a whole, so it also guards trajectories built elsewhere.
:func:`filter_problem` adds the content rules (``docs/quality.md``).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from button_ray import quality
from button_ray.config import MethodConfig
from button_ray.records import FunctionDef, Turn
from button_ray.specs import call_key, call_problem


def _is_json_object(value: Any) -> bool:
    try:
        return isinstance(value, dict) and json.loads(json.dumps(value, allow_nan=False)) == value
    except (TypeError, ValueError):
        return False


def trajectory_problem(
    turns: Sequence[Turn],
    functions: Sequence[FunctionDef],
    *,
    parallel: bool,
    min_calls: int,
    min_assistant_turns: int,
) -> tuple[str, str] | None:
    """``(reason, detail)`` for the first rule ``turns`` breaks, or None if it is kept."""
    by_name = {f.name: f for f in functions}
    if not turns or turns[0].role != "user":
        return "no_user_message", "the dialogue must open with the user"
    seen: set[str] = set()
    calls = assistant_turns = 0
    for i, turn in enumerate(turns):
        nxt = turns[i + 1] if i + 1 < len(turns) else None
        if turn.role == "tool":
            for result in turn.results:
                if not _is_json_object(result):
                    return "tool_result_not_json", f"turn {i}: {str(result)[:200]}"
            continue
        if turn.role != "assistant":
            continue
        assistant_turns += 1
        if turn.final is not None:
            if turn.calls:
                return "call_and_final", f"turn {i}"
            if not turn.final.strip():
                return "no_final_answer", f"turn {i}: empty final answer"
            if nxt is not None:
                return "final_not_last", f"turn {i}"
            continue
        if not turn.calls:
            if nxt is None or nxt.role != "user":
                return "missing_call_list", f"turn {i}"
            continue
        if not parallel and len(turn.calls) > 1:
            return "multiple_calls_in_off_mode", f"turn {i}: {len(turn.calls)} calls"
        for call in turn.calls:
            problem = call_problem(call, by_name)
            if problem is not None:
                return problem
            key = call_key(call)
            if key in seen:
                return "repeated_call", f"turn {i}: {call.name}"
            seen.add(key)
        calls += len(turn.calls)
        if nxt is None or nxt.role != "tool" or len(nxt.results) != len(turn.calls):
            return "missing_tool_results", f"turn {i}"
    last = turns[-1]
    if last.role != "assistant" or last.final is None:
        return "no_final_answer", f"the dialogue ends with a {last.role} turn"
    if calls < min_calls:
        return "too_few_calls", f"{calls} < {min_calls}"
    if assistant_turns < min_assistant_turns:
        return "too_few_turns", f"{assistant_turns} < {min_assistant_turns}"
    return None


def filter_problem(
    turns: Sequence[Turn],
    functions: Sequence[FunctionDef],
    *,
    parallel: bool,
    cfg: MethodConfig,
    groups: Sequence[Sequence[FunctionDef]] | None = None,
) -> tuple[str, str] | None:
    """The whole trajectory filter: :func:`trajectory_problem`, then the content rules of
    :func:`button_ray.quality.trajectory_content_problem` (``groups``: the functions per
    sub-task, for plan coverage; None skips it)."""
    return trajectory_problem(
        turns, functions, parallel=parallel, min_calls=cfg.min_calls, min_assistant_turns=cfg.min_assistant_turns
    ) or quality.trajectory_content_problem(turns, functions, cfg.content, groups)

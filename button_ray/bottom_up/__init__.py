"""The bottom-up half of BUTTON: atomic task -> composition -> filter -> functions.

Plain async Python, engine- and Ray-agnostic: every LLM call is ``await llm.generate``,
so an event loop can hold thousands of items in flight. Each stage rejects the item
itself (stage = the role name) when its output stays unusable after ``cfg.retries``.
Errors raised by the engine other than invalid requests (a dead replica, a timeout)
are not the item's fault and propagate to the caller, which decides between retrying
and failing the item.
"""

from __future__ import annotations

from button_ray.bottom_up.atomic import write_atomic_task
from button_ray.bottom_up.compose import choose_strategy, write_composition
from button_ray.bottom_up.functions import generate_functions
from button_ray.bottom_up.judge import judge_composition
from button_ray.config import MethodConfig
from button_ray.llm.contract import LLMClient
from button_ray.records import TaskBundle, WorkItem

STAGES = ("atomic_task", "composition", "composition_filter", "functions")

__all__ = ["STAGES", "build_bundle", "choose_strategy"]


async def build_bundle(item: WorkItem, llm: LLMClient, cfg: MethodConfig) -> WorkItem:
    """Run the four bottom-up stages for ``item``; set ``item.bundle`` or reject it.

    An item that is no longer pending is returned untouched, so a resumed pipeline can
    pass finished items through.
    """
    if item.outcome != "pending":
        return item
    atomic_task = await write_atomic_task(item, llm, cfg)
    if atomic_task is None:
        return item
    composition = await write_composition(item, atomic_task, llm, cfg)
    if composition is None:
        return item
    reasoning = await judge_composition(item, composition, llm, cfg)
    if reasoning is None:
        return item
    functions = await generate_functions(item, composition, llm, cfg)
    if functions is None:
        return item
    item.bundle = TaskBundle(
        atomic_task=atomic_task, composition=composition, judge_reasoning=reasoning, functions=functions
    )
    return item

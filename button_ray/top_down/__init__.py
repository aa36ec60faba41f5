"""BUTTON's top-down phase: the multi-agent simulation, the trajectory filter, the output.

``await simulate(item, llm, cfg)`` turns an item with a task bundle into an emitted
trajectory (BUTTON messages) or a rejection. Plain asyncio, no Ray.
"""

from button_ray.top_down.filter import trajectory_problem
from button_ray.top_down.simulate import choose_parallel, simulate

__all__ = ["choose_parallel", "simulate", "trajectory_problem"]

"""Content rules (``docs/quality.md``): cheap checks of what a record says, not only its shape.

Plain functions over texts, parsed turns and function definitions, with no Ray and no
LLM, so the same code serves the bottom-up stages (before any simulation is paid for),
the trajectory filter of a run and ``button-ray filter`` over any BUTTON file. Every
check returns ``None`` when the content passes, or a short detail saying what broke the
rule; :func:`trajectory_content_problem` adds the reason code for the ``rejected`` table.

Texts are compared as *tokens*: lowercase words and numbers, a number written any way
(``1,000``, ``1000``, ``1000.0``, ``3rd``) reduced to one canonical spelling.
"""

from button_ray.quality.dialogue import (
    copied_turn,
    grounding_candidates,
    new_result_problem,
    new_turn_problem,
    result_problem,
    short_final,
    trajectory_content_problem,
    uncovered_subtask,
    ungrounded_argument,
)
from button_ray.quality.text import (
    canonical_number,
    degeneration,
    first_degenerate,
    near_duplicate_subtasks,
    relevance,
    tokens,
    word_jaccard,
)

__all__ = [
    "canonical_number", "copied_turn", "degeneration", "first_degenerate", "grounding_candidates",
    "near_duplicate_subtasks", "new_result_problem", "new_turn_problem", "relevance", "result_problem",
    "short_final", "tokens", "trajectory_content_problem", "uncovered_subtask", "ungrounded_argument", "word_jaccard",
]

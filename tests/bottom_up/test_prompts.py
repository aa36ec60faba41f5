"""Prompt templates and JSON schemas: size for a small model, stated output shape,
schemas an engine can compile, and oracle answers that satisfy them."""

from __future__ import annotations

import json

import jsonschema
import pytest

from button_ray.bottom_up import atomic, compose, functions, judge, scenarios
from button_ray.config import MethodConfig, ScenarioConfig
from button_ray.llm.contract import LLMRequest
from button_ray.templates import load_templates
from tests.bottom_up.conftest import make_item, model_free_dedup
from tests.fakes import ScriptedLLM
from tests.oracles.bottom_up import respond

# SmolLM2's tokenizer averages ~3.5 characters per token on this English; 4500
# characters keeps every prompt near 1300 tokens at the largest inputs the schemas allow.
MAX_PROMPT_CHARS = 4500
CFG = MethodConfig()
LONG_TASK = "x" * compose.SUBTASK_MAX_CHARS
LONG_COMPOSITE = "y" * compose.COMPOSITE_MAX_CHARS

RENDERS = {
    "atomic_task.j2": dict(scenario="w " * 10, max_words=30, asker="a student"),
    "composition_sequential.j2": dict(task=LONG_TASK),
    "composition_parallel_then_sequential.j2": dict(task=LONG_TASK),
    "composition_filter.j2": dict(composite_task=LONG_COMPOSITE, subtasks=[LONG_TASK] * 3, strategy="sequential"),
    "functions.j2": dict(composite_task=LONG_COMPOSITE, subtasks=[LONG_TASK] * 3, max_functions=3, rich=True),
    "scenario_extraction.j2": dict(conversation="z" * ScenarioConfig().conversation_max_chars, max_words=10),
    "scenario_expansion.j2": dict(scenario="w " * 10, max_words=10),
}
SHAPES = {
    "atomic_task.j2": '{"task":',
    "composition_sequential.j2": '{"subtasks":',
    "composition_parallel_then_sequential.j2": '{"subtasks":',
    "composition_filter.j2": '"verdict":',
    "functions.j2": '{"functions":',
    "scenario_extraction.j2": '{"scenario":',
    "scenario_expansion.j2": '{"scenario":',
}


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_prompts_are_short_and_state_the_json_shape(name: str) -> None:
    text = load_templates().render(name, **RENDERS[name])
    assert len(text) < MAX_PROMPT_CHARS, len(text)
    assert SHAPES[name] in text.splitlines()[-1] or SHAPES[name] in text.splitlines()[-2]


SCHEMAS = {
    "atomic_task": atomic.schema(),
    "composition/sequential": compose.schema("sequential"),
    "composition/parallel_then_sequential": compose.schema("parallel_then_sequential"),
    "composition_filter": judge.schema(),
    "functions": functions.schema(3, CFG.max_functions_per_subtask),
    "scenario": scenarios.schema(10),
}


@pytest.mark.parametrize("key", sorted(SCHEMAS))
def test_schemas_are_valid_and_compile_for_xgrammar(key: str) -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMAS[key])
    xgrammar = pytest.importorskip("xgrammar")
    xgrammar.Grammar.from_json_schema(json.dumps(SCHEMAS[key]))


async def test_oracle_answers_satisfy_the_schemas_they_were_asked_with() -> None:
    from button_ray.bottom_up import build_bundle

    llm = ScriptedLLM(respond)
    for i in range(20):
        assert (await build_bundle(make_item(f"run0/s{i}/0"), llm, CFG)).bundle is not None
    await scenarios.build_scenario_pool(["tracking a parcel"], ["user: my parcel is late\nassistant: let me check"],
                                        3, llm, CFG, ScenarioConfig(), deduplicator=model_free_dedup())
    roles = set()
    for request in llm.requests:
        roles.add(request.role)
        jsonschema.validate(json.loads(respond(request)), request.constraint.spec)
    assert roles == {"atomic_task", "composition", "composition_filter", "functions",
                     "scenario_extraction", "scenario_expansion"}


def test_oracle_ignores_other_roles() -> None:
    request = LLMRequest(role="user_agent", messages=({"role": "user", "content": "hi"},), request_id="x")
    assert respond(request) is None

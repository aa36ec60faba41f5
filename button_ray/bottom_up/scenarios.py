"""Stage 1 of BUTTON: the scenario pool.

Scenarios come from the shipped default list, a user's list, *extraction* (an LLM names
the scenario of a seed conversation) and *expansion* (an LLM invents a substantially
different scenario from an existing one). Near-duplicates are removed with sentence
embeddings (:mod:`button_ray.bottom_up.dedup`).

Each extraction or expansion is one :class:`ScenarioJob` (:func:`run_scenario_job`);
:func:`build_scenario_pool` runs them in rounds, here on an :class:`LLMClient` or
through a runner (the distributed job's Ray Data stream, :mod:`button_ray.scenario_job`).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from importlib import resources
from typing import Any, Awaitable, Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from button_ray.bottom_up.common import checked_text, clean_text, make_request, parse_json_as
from button_ray.bottom_up.dedup import Deduplicator, TextFilter
from button_ray.config import MethodConfig, ScenarioConfig
from button_ray.llm.contract import LLMClient, LLMResponse, Role
from button_ray.records import Scenario, StageUsage, scenario_id, stable_id
from button_ray.steps import StepResult, run_step

DEFAULT_SCENARIOS = "data/scenarios.txt"
# Characters per allowed word in the schema's maxLength: generous for long words,
# tight enough that a small model cannot ramble.
_CHARS_PER_WORD = 12
# A single long message (a glaive system prompt with JSON schemas, a tool dump) must not
# crowd the rest of the conversation out of the transcript.
_MESSAGE_SHARE = 4


# ---------------------------------------------------------------- the default list


def load_default_scenarios() -> list[str]:
    """The shipped scenario list (``button_ray/data/scenarios.txt``), in file order."""
    text = resources.files("button_ray").joinpath(DEFAULT_SCENARIOS).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def scenario_from_text(text: str, source: str) -> Scenario:
    """A :class:`Scenario` with the id a generation run gives the same text."""
    text = clean_text(text)
    return Scenario(scenario_id=scenario_id(text), text=text, source=source)


# ---------------------------------------------------------------- seed conversations

_GLAIVE_MARKER = re.compile(r"\b(SYSTEM|USER|ASSISTANT|FUNCTION RESPONSE):")
_GLAIVE_ROLES = {"SYSTEM": "system", "USER": "user", "ASSISTANT": "assistant", "FUNCTION RESPONSE": "tool"}
_ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "ipython": "tool",
}
_FUNCTION_NAME = re.compile(r'"name"\s*:\s*"([^"]+)"')


def _content_text(message: dict[str, Any]) -> str:
    content = message.get("content", message.get("value"))
    if isinstance(content, list):  # OpenAI-style content parts
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    text = content if isinstance(content, str) else ""
    calls = message.get("tool_calls") or ([message["function_call"]] if message.get("function_call") else [])
    names = [c.get("function", c).get("name", "") for c in calls if isinstance(c, dict)]
    if any(names):
        text = f"{text} [calls {', '.join(n for n in names if n)}]".strip()
    return text


def _system_line(text: str) -> tuple[str, str] | None:
    # A seed's system prompt is mostly boilerplate and JSON schemas; the tool names are
    # what tells the scenario apart, at a fraction of the length.
    names = list(dict.fromkeys(_FUNCTION_NAME.findall(text)))
    return ("tools", ", ".join(names)) if names else None


def _glaive_turns(row: dict[str, Any]) -> list[tuple[str, str]]:
    text = f"{row.get('system', '')}\n{row.get('chat', '')}".replace("<|endoftext|>", " ")
    parts = _GLAIVE_MARKER.split(text)
    turns: list[tuple[str, str]] = []
    # re.split with one group yields [prefix, marker, body, marker, body, ...]
    for marker, body in zip(parts[1::2], parts[2::2]):
        turns.append((_GLAIVE_ROLES[marker], body))
    return turns


def _message_turns(messages: Sequence[Any]) -> list[tuple[str, str]]:
    turns = []
    for message in messages:
        if isinstance(message, dict):
            role = _ROLE_ALIASES.get(str(message.get("role", message.get("from", ""))).lower())
            if role:
                turns.append((role, _content_text(message)))
    return turns


def conversation_to_text(row: str | dict[str, Any] | list[Any], max_chars: int = 1500) -> str:
    """A compact ``role: text`` transcript of a seed conversation, at most ``max_chars``.

    Accepts a glaive-function-calling-v2 row (``{"system": "SYSTEM: ...", "chat": "USER:
    ... ASSISTANT: ... <|endoftext|> FUNCTION RESPONSE: ..."}``), a message list
    (``[{"role", "content"}]``, also ShareGPT ``{"from", "value"}``), a dict holding one
    under ``messages`` or ``conversations``, the JSON text of any of these, or plain
    text. Returns "" when nothing usable is found.
    """
    if isinstance(row, str):
        stripped = row.strip()
        try:
            row = json.loads(stripped) if stripped.startswith(("{", "[")) else stripped
        except json.JSONDecodeError:
            row = stripped
    if isinstance(row, str):
        return clean_text(row)[:max_chars]
    if isinstance(row, dict) and "chat" in row:
        turns = _glaive_turns(row)
    elif isinstance(row, dict):
        turns = _message_turns(row.get("messages") or row.get("conversations") or [])
    elif isinstance(row, list):
        turns = _message_turns(row)
    else:
        return ""
    per_message = max(80, max_chars // _MESSAGE_SHARE)
    lines = []
    for role, body in turns:
        if role == "system":
            line = _system_line(body)
            if line is None:
                continue
            role, body = line
        body = clean_text(body)
        if body:
            lines.append(f"{role}: {body[:per_message]}")
    return "\n".join(lines)[:max_chars]


# ---------------------------------------------------------------- extraction / expansion


class ScenarioOutput(BaseModel):
    """``{"scenario": str}``."""

    model_config = ConfigDict(frozen=True)

    scenario: str = Field(min_length=1)


def schema(max_words: int) -> dict:
    """JSON schema of an extracted or expanded scenario."""
    return {
        "type": "object",
        "properties": {"scenario": {"type": "string", "minLength": 3, "maxLength": max_words * _CHARS_PER_WORD}},
        "required": ["scenario"],
        "additionalProperties": False,
    }


def parse_scenario(response: LLMResponse, max_words: int, prompt: str | None = None) -> str:
    """The scenario text, cleaned of quotes and a final period; ``too_long`` past ``max_words``.

    With ``prompt`` (expansion), a scenario found verbatim in it is ``copied_from_prompt``:
    the input or an example handed back is not a new scenario. Extraction passes None,
    because naming a conversation's scenario in its own words is legitimate.
    """
    text = clean_text(parse_json_as(ScenarioOutput, response.text).scenario).strip("\"'").rstrip(".").strip()
    return checked_text(text, "scenario", max_words, prompt)


async def _scenario_step(
    role: Role,
    prompt: str,
    request_id: str,
    llm: LLMClient,
    cfg: MethodConfig,
    scen_cfg: ScenarioConfig,
    usage: StageUsage,
) -> StepResult[str]:
    request = make_request(role, prompt, schema(scen_cfg.scenario_max_words), request_id, cfg)
    novel_of = prompt if role == "scenario_expansion" and cfg.reject_prompt_copies else None
    return await run_step(
        llm,
        lambda _attempt: request,
        lambda r: parse_scenario(r, scen_cfg.scenario_max_words, novel_of),
        usage,
        cfg.retries,
    )


def _extraction(conversation_text: str, idx: int, cfg: MethodConfig, scen_cfg: ScenarioConfig) -> tuple[str, str]:
    """The prompt and request id of extracting the scenario of conversation ``idx``."""
    prompt = cfg.templates().render(
        "scenario_extraction.j2", conversation=conversation_text, max_words=scen_cfg.scenario_max_words
    )
    return prompt, f"scenario_extraction/{idx}/{stable_id(conversation_text, length=8)}"


def _expansion(scenario_text: str, idx: int, cfg: MethodConfig, scen_cfg: ScenarioConfig) -> tuple[str, str]:
    """The prompt and request id of expansion ``idx``, from ``scenario_text``."""
    prompt = cfg.templates().render(
        "scenario_expansion.j2", scenario=scenario_text, max_words=scen_cfg.scenario_max_words
    )
    return prompt, f"scenario_expansion/{idx}/{stable_id(scenario_text, length=8)}"


class ScenarioJob(BaseModel):
    """One LLM call of the pool job: extract the scenario of a transcript, or expand a
    parent scenario. ``index`` numbers the job within its kind (it goes into the
    request id, hence the seeds); ``text`` is the transcript or the parent."""

    model_config = ConfigDict(frozen=True)

    role: Role
    text: str
    index: int


class JobOutcome(BaseModel):
    """A job's scenario, or the reason it has none; its LLM usage either way."""

    scenario: str | None = None
    reason: str | None = None
    usage: StageUsage = Field(default_factory=StageUsage)


async def run_scenario_job(job: ScenarioJob, llm: LLMClient, cfg: MethodConfig,
                           scen_cfg: ScenarioConfig) -> JobOutcome:
    """Build the job's prompt, call the LLM (bounded retries) and parse its scenario."""
    build = _extraction if job.role == "scenario_extraction" else _expansion
    prompt, request_id = build(job.text, job.index, cfg, scen_cfg)
    outcome = JobOutcome()
    result = await _scenario_step(job.role, prompt, request_id, llm, cfg, scen_cfg, outcome.usage)
    outcome.scenario, outcome.reason = result.value, result.reason
    return outcome


#: Runs a round's jobs and returns their outcomes in the jobs' order.
JobRunner = Callable[[list[ScenarioJob]], Awaitable[list[JobOutcome]]]


def local_runner(llm: LLMClient, cfg: MethodConfig, scen_cfg: ScenarioConfig) -> JobRunner:
    """Run jobs in this event loop on ``llm``, ``scen_cfg.concurrency`` at once."""

    async def run(jobs: list[ScenarioJob]) -> list[JobOutcome]:
        # A fixed set of workers pulls jobs, so a huge round never materializes one
        # coroutine per request; results land by index so the pool order is stable.
        results: list[Any] = [None] * len(jobs)
        cursor = iter(range(len(jobs)))

        async def worker() -> None:
            for i in cursor:
                results[i] = await run_scenario_job(jobs[i], llm, cfg, scen_cfg)

        await asyncio.gather(*(worker() for _ in range(min(scen_cfg.concurrency, len(jobs)))))
        return results

    return run


# ---------------------------------------------------------------- the pool job


async def build_scenario_pool(
    base: list[str],
    conversations: Sequence[str | dict[str, Any] | list[Any]],
    target_size: int,
    llm: LLMClient | None,
    cfg: MethodConfig,
    scen_cfg: ScenarioConfig,
    *,
    deduplicator: TextFilter | None = None,
    runner: JobRunner | None = None,
) -> tuple[list[Scenario], dict[str, Any]]:
    """Grow a deduplicated scenario pool to ``target_size``.

    Order: ``base`` (source ``list``), then scenarios extracted from ``conversations``
    (raw rows or transcripts, see :func:`conversation_to_text`), then expansion rounds
    (parents taken round-robin from the pool) until the pool reaches ``target_size`` or
    ``scen_cfg.expansion_rounds`` rounds ran. Listed and extracted scenarios are always
    kept; expansions stop at the target. The jobs of a round run on ``runner``, else on
    ``llm`` (:func:`local_runner`); either way their outcomes come back in the jobs'
    order, so the pool depends only on the inputs and the seeds. Returns the pool and
    stats (counts per source, duplicates removed, rounds, failure reasons, usage per role).
    """
    dd = deduplicator or Deduplicator(scen_cfg.dedup_threshold, scen_cfg.embedding_model)
    if runner is None:
        if llm is None:
            raise ValueError("build_scenario_pool needs an llm or a runner")
        runner = local_runner(llm, cfg, scen_cfg)
    usage = {"scenario_extraction": StageUsage(), "scenario_expansion": StageUsage()}
    failures: Counter[str] = Counter()
    pool: list[Scenario] = []
    counts = Counter()

    async def admit(candidates: list[Scenario], source: str) -> None:
        kept = await asyncio.to_thread(dd.add, [c.text for c in candidates])
        by_text = {c.text: c for c in candidates}
        pool.extend(by_text[t] for t in kept)
        counts[source] += len(kept)
        counts["duplicates_removed"] += len(candidates) - len(kept)

    async def run_jobs(jobs: list[ScenarioJob]) -> list[str]:
        texts = []
        for job, outcome in zip(jobs, await runner(jobs) if jobs else []):
            usage[job.role].add(outcome.usage)
            if outcome.scenario is None:
                failures[f"{job.role}:{outcome.reason}"] += 1
            else:
                texts.append(outcome.scenario)
        return texts

    await admit([scenario_from_text(t, "list") for t in base if clean_text(t)], "list")

    transcripts = [conversation_to_text(c, scen_cfg.conversation_max_chars) for c in conversations]
    extracted = await run_jobs([ScenarioJob(role="scenario_extraction", text=t, index=i)
                                for i, t in enumerate(transcripts) if t])
    await admit([scenario_from_text(t, "extraction") for t in extracted], "extraction")
    sources = len(pool)

    rounds = 0
    next_idx = 0
    while pool and len(pool) < target_size and rounds < scen_cfg.expansion_rounds:
        need = target_size - len(pool)
        parents = [pool[(next_idx + j) % len(pool)].text for j in range(need)]
        jobs = [ScenarioJob(role="scenario_expansion", text=p, index=next_idx + j) for j, p in enumerate(parents)]
        next_idx += need
        rounds += 1
        expanded = await run_jobs(jobs)
        await admit([scenario_from_text(t, "expansion") for t in expanded], "expansion")

    overshoot = max(0, len(pool) - max(target_size, sources))
    if overshoot:
        del pool[-overshoot:]
        counts["expansion"] -= overshoot
    stats = {
        "target_size": target_size,
        "size": len(pool),
        "base_in": len(base),
        "conversations_in": len(conversations),
        "conversations_parsed": sum(1 for t in transcripts if t),
        "from_list": counts["list"],
        "extracted": counts["extraction"],
        "expanded": counts["expansion"],
        "duplicates_removed": counts["duplicates_removed"],
        "rounds": rounds,
        "failures": dict(sorted(failures.items())),
        "usage": {role: u.model_dump() for role, u in usage.items()},
    }
    return pool, stats

"""A zero-latency oracle for the bottom-up roles: valid, plausible answers derived
deterministically from the request (its prompt, and its seed where variety matters).

Not a language model: it reads the values the prompt templates put in fixed places
(``Scenario:``, ``First task:``, the numbered sub-tasks, ``<conversation>``) and fills a
fixed answer shape. Its functions take one required string each, so the simulation can
call every one of them and finish a trajectory.
"""

from __future__ import annotations

import json
import re

from button_ray.llm.contract import LLMRequest

_STOPWORDS = {
    "a", "an", "the", "of", "for", "to", "in", "on", "at", "and", "or", "with", "from", "by",
    "my", "me", "i", "it", "its", "that", "this", "is", "are", "be", "as", "both", "two",
}
_VERBS = ("planning", "booking", "tracking", "comparing", "renewing", "organizing", "finding", "checking",
          "scheduling", "budgeting for", "paying for", "cancelling", "repairing", "insuring", "learning about")
_OBJECTS = ("a family holiday", "a gym membership", "a dentist visit", "a home loan", "a concert outing",
            "a phone contract", "a garden makeover", "a language course", "a car rental", "a charity run",
            "a pet adoption", "a wedding gift", "a school enrollment", "a kitchen repair", "a tax refund",
            "a bike commute", "a museum visit", "a grocery order", "a hotel stay", "a train journey")


def _last(prefix: str, text: str) -> str:
    values = [line[len(prefix):].strip() for line in text.splitlines() if line.startswith(prefix)]
    return values[-1] if values else ""


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", text.lower()) if w not in _STOPWORDS]


def _numbered_after(marker: str, text: str) -> list[str]:
    tail = text[text.rfind(marker):] if marker in text else text
    return [m.group(1).strip() for m in re.finditer(r"^\d+\. (.+)$", tail, re.MULTILINE)]


_CITIES = ("Lisbon", "Oslo", "Lima", "Cairo", "Dublin", "Quito", "Hanoi", "Perth", "Accra", "Riga", "Tunis", "Bern")


def _atomic(prompt: str, seed: int) -> dict:
    # The seed (one per item and attempt) varies the values: two slots of a scenario get
    # distinct tasks, not near-duplicates.
    scenario = " ".join(_last("Scenario:", prompt).split()[:8]) or "everyday errands"
    city, day = _CITIES[seed % len(_CITIES)], 1 + (seed // len(_CITIES)) % 28
    return {"task": f"Find the best option for {scenario} in {city} on {day} June 2025 for 2 people."}


def _composition(prompt: str) -> dict:
    task = _last("First task:", prompt) or "Find a hotel in Lisbon for 3 June 2025."
    if "3 sub-tasks" in prompt:
        subtasks = [task, "Get the weather forecast for Lisbon on 3 June 2025.",
                    "Decide whether the option suits the forecast."]
        composite = f"{task.rstrip('.')}, check the Lisbon weather that day and tell me if it fits."
    else:
        subtasks = [task, "Book the option found in the first step for 2 people."]
        composite = f"{task.rstrip('.')}, then book it for 2 people."
    return {"subtasks": subtasks, "composite_task": composite}


def _function(subtask: str, index: int, taken: set[str]) -> dict:
    words = _words(subtask)[:3] or ["step"]
    name = "_".join(words)
    if name in taken:
        name = f"{name}_{index + 1}"
    taken.add(name)
    return {
        "name": name,
        "description": f"Handle one request of this kind: {' '.join(words)}.",
        "parameters": {"query": {"type": "string", "description": "What to look up or act on"}},
        "required": ["query"],
        "responses": {"result": {"type": "string", "description": "Outcome of the request"}},
    }


def _functions(prompt: str) -> dict:
    subtasks = _numbered_after("Composite task:", prompt) or ["Find the requested information."]
    taken: set[str] = set()
    return {"functions": [[_function(s, i, taken)] for i, s in enumerate(subtasks)]}


def _extraction(prompt: str) -> dict:
    match = re.search(r"<conversation>(.*?)</conversation>", prompt, re.DOTALL)
    conversation = match.group(1) if match else ""
    user = next((line[5:] for line in conversation.splitlines() if line.startswith("user:")), conversation)
    words = _words(user)[:5]
    return {"scenario": f"helping with {' '.join(words)}" if words else "general everyday assistance"}


def _expansion(request: LLMRequest) -> dict:
    # The seed differs per request and per retry, so expansions vary like sampled ones.
    seed = request.sampling.seed or sum(map(ord, request.request_id))
    verb = _VERBS[seed % len(_VERBS)]
    obj = _OBJECTS[(seed // len(_VERBS)) % len(_OBJECTS)]
    return {"scenario": f"{verb} {obj}"}


def respond(request: LLMRequest) -> str | None:
    """A valid JSON answer for a bottom-up role, or None for any other role."""
    prompt = request.messages[-1].content
    role = request.role
    if role == "atomic_task":
        out = _atomic(prompt, request.sampling.seed or sum(map(ord, request.request_id)))
    elif role == "composition":
        out = _composition(prompt)
    elif role == "composition_filter":
        out = {"reasoning": "Each sub-task is concrete and together they complete the composite task.",
               "verdict": "yes"}
    elif role == "functions":
        out = _functions(prompt)
    elif role == "scenario_extraction":
        out = _extraction(prompt)
    elif role == "scenario_expansion":
        out = _expansion(request)
    else:
        return None
    return json.dumps(out)

"""Checks of the training formats, shared by the scripted-engine and the real-engine tests.

Each form's calls are read back here with nothing but ``json`` and ``re`` (not with
button_ray's converters), so a converter that drops, reorders or rewrites a call fails.
A call is ``(name, arguments, results)``; a trajectory is its call turns in order.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2
import pyarrow.parquet as pq

CLI = [sys.executable, "-m", "button_ray.cli"]
Call = tuple[str, Any, Any]

_CALL = re.compile(r"<call>(.*)</call>$", re.S)
_THINK = re.compile(r"^<think>.*?</think>", re.S)


def calls_from_button(messages: list[dict[str, str]]) -> list[list[Call]]:
    """Call turns of a BUTTON record: the ``<call>`` list and the tool message after it."""
    turns = []
    for i, m in enumerate(messages):
        found = _CALL.search(m["content"]) if m["role"] == "assistant" else None
        if found:
            calls = json.loads(found.group(1))
            results = json.loads(messages[i + 1]["content"])
            assert [r["name"] for r in results] == [c["name"] for c in calls]
            turns.append([(c["name"], c["arguments"], r["results"]) for c, r in zip(calls, results)])
    return turns


def calls_from_openai(messages: list[dict[str, Any]]) -> list[list[Call]]:
    """Call turns of an OpenAI record: ``tool_calls`` and the ``tool`` messages answering them."""
    results = {m["tool_call_id"]: json.loads(m["content"]) for m in messages if m["role"] == "tool"}
    return [[(c["function"]["name"], json.loads(c["function"]["arguments"]), results[c["id"]]) for c in m["tool_calls"]]
            for m in messages if m["role"] == "assistant" and m.get("tool_calls")]


def calls_from_sharegpt(conversations: list[dict[str, str]]) -> list[list[Call]]:
    """Call turns of a ShareGPT record: each ``function_call`` and the ``observation`` after it."""
    turns = []
    for i, turn in enumerate(conversations):
        if turn["from"] == "function_call":
            calls = json.loads(_THINK.sub("", turn["value"]))
            results = json.loads(conversations[i + 1]["value"])
            calls, results = (calls, results) if isinstance(calls, list) else ([calls], [results])
            turns.append([(c["name"], c["arguments"], r) for c, r in zip(calls, results, strict=True)])
    return turns


def assert_llama_factory_positions(record: dict[str, Any]) -> None:
    """LLaMA-Factory's rule: human/observation at odd positions, gpt/function_call at even ones."""
    roles = [t["from"] for t in record["conversations"]]
    assert len(roles) % 2 == 0, roles
    for i, role in enumerate(roles):
        assert role in (("human", "observation") if i % 2 == 0 else ("gpt", "function_call")), (i, roles)
    assert roles[-1] == "gpt" and isinstance(record["system"], str) and isinstance(json.loads(record["tools"]), list)


#: A chat template that reads ``tools`` and ``tool_calls`` the way model templates do
#: (Hermes / Qwen style): tools as JSON in the system turn, each call in <tool_call>,
#: string ``arguments`` passed through as they are, each result in <tool_response>.
CHAT_TEMPLATE = """
{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}
{% endif %}# Tools
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' %}<|im_start|>assistant
{{ message.content }}
{%- for tool_call in message.tool_calls or [] %}
<tool_call>
{"name": {{ tool_call.function.name | tojson }}, "arguments": {% if tool_call.function.arguments is string %}{{ tool_call.function.arguments }}{% else %}{{ tool_call.function.arguments | tojson }}{% endif %}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% elif message.role != 'system' or not tools %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
"""


def render_chat(record: dict[str, Any]) -> str:
    """An OpenAI record through :data:`CHAT_TEMPLATE` (``tojson`` as transformers defines it)."""
    env = jinja2.Environment(trim_blocks=False)
    env.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
    return env.from_string(CHAT_TEMPLATE).render(messages=record["messages"], tools=record["tools"])


def calls_in_rendered(text: str) -> tuple[list[tuple[str, Any]], list[Any]]:
    """The calls and results a model would be trained on, read back from the rendered text."""
    calls = [json.loads(c) for c in re.findall(r"<tool_call>\n(.*?)\n</tool_call>", text, re.S)]
    results = [json.loads(r) for r in re.findall(r"<tool_response>\n(.*?)\n</tool_response>", text, re.S)]
    return [(c["name"], c["arguments"]) for c in calls], results


def committed_rows(run: Path, columns: list[str]) -> list[dict[str, Any]]:
    """The run's committed rows with pyarrow alone, in manifest order."""
    manifest = json.loads((run / "manifest.json").read_text())
    rows: list[dict[str, Any]] = []
    for shard in manifest["shards"]:
        rows += pq.read_table(run / shard["data"], columns=columns).to_pylist()
    return rows


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def export_all(run: Path, into: Path) -> dict[str, list[dict[str, Any]]]:
    """The three exports of ``run`` through the CLI, read back."""
    out = {}
    for fmt in ("button", "openai", "sharegpt"):
        target = into / f"{fmt}.jsonl"
        proc = subprocess.run([*CLI, "export", str(run), str(target), "--format", fmt],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out[fmt] = read_jsonl(target)
    return out


def assert_formats_agree(run: Path, into: Path) -> int:
    """Every trajectory's calls are the same in the Parquet (both forms) and the three
    exports, the OpenAI export renders through a chat template with the same calls, and
    the ShareGPT export obeys LLaMA-Factory's positions; the number of trajectories."""
    rows = committed_rows(run, ["messages", "openai_messages"])
    exports = export_all(run, into)
    assert len(rows) == len(exports["button"]) == len(exports["openai"]) == len(exports["sharegpt"])
    for row, button, openai, sharegpt in zip(rows, exports["button"], exports["openai"], exports["sharegpt"]):
        expected = calls_from_button(row["messages"])
        assert expected, "a kept trajectory has calls"
        assert button == {"messages": row["messages"]}
        assert calls_from_button(button["messages"]) == expected
        assert calls_from_openai(row["openai_messages"]) == expected
        assert calls_from_openai(openai["messages"]) == expected
        assert calls_from_sharegpt(sharegpt["conversations"]) == expected
        assert_llama_factory_positions(sharegpt)
        rendered_calls, rendered_results = calls_in_rendered(render_chat(openai))
        assert rendered_calls == [(n, a) for turn in expected for n, a, _ in turn]
        assert rendered_results == [r for turn in expected for _, _, r in turn]
    return len(rows)


REPO = Path(__file__).resolve().parent.parent


def python_blocks(doc: str, section: str | None = None) -> str:
    """The ```python blocks of a repository document (of one ``## section`` only), joined."""
    text = (REPO / doc).read_text()
    if section is not None:
        text = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```python\n(.*?)^```$", text, re.S | re.M)
    assert blocks, f"no python block in {doc} {section or ''}"
    return "\n".join(blocks)


def run_reader_snippet(code: str, run: Path, workdir: Path) -> str:
    """Run a document's snippet as a user would: a fresh interpreter in a folder where
    ``./button_output`` is ``run``, Hugging Face offline with its cache there; its stdout."""
    workdir.mkdir(parents=True, exist_ok=True)
    link = workdir / "button_output"
    if not link.exists():
        link.symlink_to(run.resolve(), target_is_directory=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "HF_HOME": str(workdir / "hf"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout

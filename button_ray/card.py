"""What a run holds: statistics of its committed shards, its dataset card, ``inspect``.

:func:`collect` reads only committed data (through the manifest and the shards' commit
markers), a few small columns at a time, so it works on a finished run, a run still
going, and runs written before the training columns existed. :func:`write_card` turns
the statistics into ``README.md`` at the run's root, a Hugging Face dataset card, with
PNG histograms under ``card/``; :func:`render_inspect` prints them in the terminal.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np
import pyarrow.compute as pc

from button_ray import __version__
from button_ray import summary as summ
from button_ray.button_format import parse_button_messages
from button_ray.config import JUDGE_SCALE
from button_ray.sink import OutputStore, committed_manifest, iter_committed

CARD_FILE = "README.md"
PLOTS_DIR = "card"
#: The distributions the card and ``inspect`` show: key -> (title, what one value counts).
DISTRIBUTIONS = {
    "assistant_turns": ("Assistant turns", "per trajectory"),
    "calls": ("Function calls", "per trajectory"),
    "calls_per_call_turn": ("Calls per call turn", "per assistant turn that calls"),
    "functions": ("Functions", "defined per trajectory"),
    "tokens": ("LLM tokens spent", "per trajectory, prompt + completion over every stage"),
}
#: The shape reported for BUTTONInstruct, the method's released data (docs/formats.md).
REPORTED = {
    "at_least_3_turns": "most",
    "at_least_2_calls": "most",
    "calls_per_call_turn": "> 1 on average",
}
_COLUMNS = ["assistant_turns", "calls", "calls_per_turn", "parallel", "functions", "prompt_tokens",
            "completion_tokens"]
_LINEAGE = ["config_fingerprint", "models", "engine_version", "template_hashes"]
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"))


@dataclass
class RunStats:
    """The committed part of one run, summarised."""

    uri: str
    finished: bool
    shards: int
    rows: int
    stats: dict[str, Any]  #: merged per-shard outcome counts (:mod:`button_ray.summary`)
    funnel: list[dict[str, Any]]
    lineage: dict[str, Any]
    values: dict[str, np.ndarray]  #: distribution key -> one value per counted unit
    parallel_trajectories: int
    examples: list[tuple[str, list[dict[str, str]]]] = field(default_factory=list)  #: (record id, messages)
    data_files: list[str] = field(default_factory=list)


def _mapping(value: Any) -> dict[str, str]:
    # A JSON string; an Arrow map (a list of pairs) in runs written before that.
    return json.loads(value) if isinstance(value, str) else dict(value or [])


def _lineage(store: OutputStore) -> dict[str, Any]:
    """Fingerprint, models, engine and template hashes from the first committed row."""
    for table in ("data", "rejected"):
        for batch in iter_committed(store, table, _LINEAGE, batch_size=1):
            if batch.num_rows:
                row = batch.to_pylist()[0]
                return {**row, "models": _mapping(row["models"]), "template_hashes": _mapping(row["template_hashes"])}
    return {}


def _marker_stats(store: OutputStore, shards: list[dict[str, Any]]) -> dict[str, Any]:
    paths = [store.path(f"_commits/shard-{s['key']}.json") for s in shards]
    raw = store.fs.cat(paths) if paths else {}
    return summ.merge(json.loads(raw[p])["stats"] for p in paths)


def collect(uri: str, storage_options: dict[str, Any] | None = None, examples: int = 3) -> RunStats:
    """Summarise the committed shards of the run at ``uri`` (an OutputError without a manifest)."""
    store = OutputStore(uri, storage_options or {})
    manifest = committed_manifest(store)
    stats = _marker_stats(store, manifest["shards"])
    parts: dict[str, list[np.ndarray]] = {k: [] for k in DISTRIBUTIONS}
    parallel = 0
    for batch in iter_committed(store, "data", _COLUMNS, batch_size=4096):
        col = dict(zip(batch.schema.names, batch.columns))
        parts["assistant_turns"].append(col["assistant_turns"].to_numpy(zero_copy_only=False))
        parts["calls"].append(col["calls"].to_numpy(zero_copy_only=False))
        per_turn = pc.list_flatten(col["calls_per_turn"]).to_numpy(zero_copy_only=False)
        parts["calls_per_call_turn"].append(per_turn[per_turn > 0])
        parts["functions"].append(np.array([sum(len(g) for g in json.loads(f)) for f in col["functions"].to_pylist()],
                                           dtype=np.int64))
        parts["tokens"].append(pc.add(col["prompt_tokens"], col["completion_tokens"]).to_numpy(zero_copy_only=False))
        parallel += int(pc.sum(col["parallel"]).as_py() or 0)
    values = {k: np.concatenate(v).astype(np.int64) if v else np.zeros(0, np.int64) for k, v in parts.items()}
    shown: list[tuple[str, list[dict[str, str]]]] = []
    if examples > 0:
        for batch in iter_committed(store, "data", ["record_id", "messages"], batch_size=examples):
            shown += [(r["record_id"], r["messages"]) for r in batch.to_pylist()][: examples - len(shown)]
            if len(shown) >= examples:
                break
    return RunStats(
        uri=uri, finished=store.exists("_SUCCESS"), shards=len(manifest["shards"]), rows=manifest["rows"],
        stats=stats, funnel=summ.funnel(stats), lineage=_lineage(store), values=values,
        parallel_trajectories=parallel, examples=shown, data_files=[s["data"] for s in manifest["shards"]],
    )


# -- numbers both views show ------------------------------------------------------------

def describe(values: np.ndarray) -> dict[str, float]:
    """Count, mean, median, min and max of one distribution (zeros when empty)."""
    if not len(values):
        return {"n": 0, "mean": 0.0, "median": 0.0, "min": 0, "max": 0}
    return {"n": int(len(values)), "mean": float(values.mean()), "median": float(np.median(values)),
            "min": int(values.min()), "max": int(values.max())}


def shape(run: RunStats) -> list[tuple[str, str, str]]:
    """(measure, this run, BUTTONInstruct as reported) rows."""
    n = max(run.rows, 1)
    turns, calls = run.values["assistant_turns"], run.values["calls"]
    per_call_turn = describe(run.values["calls_per_call_turn"])["mean"]
    per_turn = float(calls.sum() / turns.sum()) if turns.sum() else 0.0
    return [
        ("trajectories with >= 3 assistant turns", f"{(turns >= 3).sum() / n:.0%}", REPORTED["at_least_3_turns"]),
        ("trajectories with >= 2 calls", f"{(calls >= 2).sum() / n:.0%}", REPORTED["at_least_2_calls"]),
        ("calls per call turn (mean)", f"{per_call_turn:.2f}", REPORTED["calls_per_call_turn"]),
        ("calls per assistant turn, final included (mean)", f"{per_turn:.2f}", "not reported"),
        ("trajectories with parallel calling on", f"{run.parallel_trajectories / n:.0%}", "not reported"),
    ]


def judge_rows(run: RunStats) -> list[list[str]]:
    """(axis, mean, count of each score) rows of the judge's scores of the committed
    trajectories; none when the run did not judge (``method.judge`` off)."""
    judge = summ.judge_scores(run.stats)
    if not judge["judged"]:
        return []
    return [[axis, f"{judge['mean'][axis]:.2f}", *map(str, counts.values())]
            for axis, counts in judge["counts"].items()]


def _judge_headers(run: RunStats) -> list[str]:
    scores = next(iter(summ.judge_scores(run.stats)["counts"].values()))
    return ["axis", "mean", *(f"score {v}" for v in scores)]


def dialogue(messages: list[dict[str, str]]) -> list[tuple[str, str]]:
    """(role, text) lines of a BUTTON record for reading; the long system prompt is summarised."""
    functions, parallel, _ = parse_button_messages(messages)
    head = (f"BUTTON system prompt with {len(functions)} functions "
            f"({', '.join(f['name'] for f in functions)}); parallel calling {'on' if parallel else 'off'}")
    return [("system", head)] + [(m["role"], m["content"]) for m in messages[1:]]


def _status(run: RunStats) -> str:
    shards = f"{run.shards} shard{'' if run.shards == 1 else 's'}"
    if run.finished:
        return f"finished: {run.rows} trajectories in {shards}"
    return f"not finished (no _SUCCESS): {run.rows} trajectories in the {shards} committed so far"


# -- the dataset card -------------------------------------------------------------------

def _plot(key: str, values: np.ndarray) -> bytes:
    # The object API with the Agg canvas: no pyplot, so no global backend is switched in
    # the caller's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    title, unit = DISTRIBUTIONS[key]
    fig = Figure(figsize=(5, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if len(values) and values.max() - values.min() <= 40:
        counts = np.bincount(values - values.min())
        ax.bar(np.arange(values.min(), values.max() + 1), counts, width=0.8, color="#4c72b0")
    else:
        ax.hist(values, bins=30, color="#4c72b0")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(unit, fontsize=9)
    ax.set_ylabel("count")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _size_category(rows: int) -> str:
    return next((label for limit, label in _SIZES if rows < limit), "n>10M")


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def card_markdown(run: RunStats, data_glob: bool = True) -> str:
    """The dataset card's text. ``data_glob`` False lists the committed files one by one
    (the data folder holds files that are not committed)."""
    paths = ["data/*.parquet"] if data_glob else run.data_files
    front = ["---", "configs:", "- config_name: default", "  data_files:", "  - split: train", "    path:"]
    front += [f"    - {p}" for p in paths]
    front += ["task_categories:", "- text-generation", "language:", "- en",
              "tags:", "- function-calling", "- tool-use", "- multi-turn", "- synthetic", "- button",
              "size_categories:", f"- {_size_category(run.rows)}",
              "# license: set the license your models' outputs allow", "---", ""]
    lin = run.lineage
    out = [
        "# BUTTON multi-turn function-calling trajectories", "",
        f"{run.rows} trajectories generated by button_ray {__version__} with the BUTTON method "
        "(\"Bottom-Up Then Top-dOwN\", Chen et al., ICLR 2025): scenarios, atomic tasks composed "
        "into sequential or parallel-then-sequential tasks, an LLM judge, generated function "
        "definitions, then a simulation of a user, an assistant and tools, and a trajectory filter.", "",
        f"Status: {_status(run)}.", "",
        "## How it was made", "",
        f"- config fingerprint: `{lin.get('config_fingerprint', 'unknown')}`",
        f"- engine: `{lin.get('engine_version', 'unknown')}`", "",
        _table(["role", "model"], [[r, f"`{m}`"] for r, m in sorted(lin.get("models", {}).items())]), "",
        _table(["prompt template", "sha256 (first 16 hex digits)"],
               [[t, f"`{h}`"] for t, h in sorted(lin.get("template_hashes", {}).items())]), "",
        "## Funnel", "",
        f"{run.stats['items']} items (scenario x slot): {run.stats['emitted']} emitted, "
        f"{sum(r['rejected'] for r in run.funnel)} rejected, {run.stats['failed']} failed "
        "(an error that is not the record's fault). Rejected items and their reasons are in `rejected/`.", "",
        _table(["stage", "in", "accepted", "rejected", "reasons"],
               [[r["stage"], r["in"], r["accepted"], r["rejected"],
                 ", ".join(f"{k}={v}" for k, v in r["reasons"].items())] for r in run.funnel]), "",
        "## Shape", "",
        _table(["distribution", "counted", "n", "mean", "median", "min", "max"],
               [[DISTRIBUTIONS[k][0], DISTRIBUTIONS[k][1], *(
                   f"{v:.2f}" if isinstance(v, float) else v for v in describe(run.values[k]).values())]
                for k in DISTRIBUTIONS]), "",
        *[f"![{DISTRIBUTIONS[k][0]}]({PLOTS_DIR}/{k}.png)" for k in DISTRIBUTIONS], "",
        "Beside the shape BUTTONInstruct reports (8,000 trajectories made with GPT-4o):", "",
        _table(["measure", "this run", "BUTTONInstruct"], [list(r) for r in shape(run)]), "",
        *_judge_section(run),
        "## Files", "",
        "- `data/*.parquet`: one row per trajectory: `messages` (the exact BUTTON record), "
        "`openai_messages` and `tools` (the same trajectory in the OpenAI tool-calling form; "
        "`tools` is a JSON string), the task, sub-tasks and functions it came from, its shape, "
        "token counts and lineage. Only files listed in `manifest.json` are committed.",
        "- `rejected/*.parquet`: every rejected or failed item with its stage and reason.",
        "- `summary.json`, `manifest.json`, `_run.json`: the run's funnel, committed shards and config.", "",
        "`button-ray export RUN OUT --format button|openai|sharegpt` writes JSON Lines for "
        "trainers (LLaMA-Factory's `dataset_info.json` entry comes with `sharegpt`).", "",
        "## Examples", "",
    ]
    for i, (record_id, messages) in enumerate(run.examples, start=1):
        text = "\n\n".join(f"[{role}] {content}" for role, content in dialogue(messages))
        fence = _fence(text)
        out += [f"### Example {i} (`{record_id}`)", "", f"{fence}text", text, fence, ""]
    if not run.examples:
        out += ["No trajectory committed yet.", ""]
    return "\n".join(front + out)


def _judge_section(run: RunStats) -> list[str]:
    rows = judge_rows(run)
    if not rows:
        return []
    judged = summ.judge_scores(run.stats)["judged"]
    return ["## Judge scores", "",
            f"An LLM judge scored each of the {judged} trajectories on helpfulness, the final answer's "
            f"correctness against the tool results and the user's naturalness ({JUDGE_SCALE[0]}-"
            f"{JUDGE_SCALE[1]}); dialogues under the run's threshold are in `rejected/` (stage "
            "`dialogue_judge`). Per-record scores are the `judge_*` columns.", "",
            _table(_judge_headers(run), rows), ""]


def write_card(uri: str, storage_options: dict[str, Any] | None = None, examples: int = 3) -> RunStats:
    """Write ``README.md`` (a Hugging Face dataset card) and ``card/*.png`` at the run's root."""
    run = collect(uri, storage_options, examples)
    store = OutputStore(uri, storage_options or {})
    for key in DISTRIBUTIONS:
        store.write_file(f"{PLOTS_DIR}/{key}.png", _plot(key, run.values[key]))
    try:
        present = {p.rsplit("/", 1)[-1] for p in store.fs.ls(store.path("data"), detail=False)}
    except FileNotFoundError:
        present = set()
    committed = {p.rsplit("/", 1)[-1] for p in run.data_files}
    store.write_file(CARD_FILE, card_markdown(run, data_glob=present == committed).encode())
    return run


# -- inspect ----------------------------------------------------------------------------

def render_inspect(run: RunStats, out: TextIO | None = None) -> None:
    """Print the run's statistics and example dialogues with rich."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=out, width=120)
    console.print(Text(f"{run.uri}: {_status(run)}", style="bold"), soft_wrap=True)
    console.print(summ.funnel_table(run.funnel))
    dist = Table(title="Shape")
    for col in ("distribution", "counted", "n", "mean", "median", "min", "max"):
        dist.add_column(col, justify="left" if col in ("distribution", "counted") else "right")
    for key, (title, unit) in DISTRIBUTIONS.items():
        d = describe(run.values[key])
        dist.add_row(title, unit, str(d["n"]), f"{d['mean']:.2f}", f"{d['median']:.1f}", str(d["min"]), str(d["max"]))
    console.print(dist)
    compare = Table(title="Beside BUTTONInstruct (reported)")
    for col in ("measure", "this run", "BUTTONInstruct"):
        compare.add_column(col)
    for row in shape(run):
        compare.add_row(*row)
    console.print(compare)
    rows = judge_rows(run)
    if rows:
        judge = Table(title="Judge scores of the committed trajectories")
        for col in _judge_headers(run):
            judge.add_column(col, justify="left" if col == "axis" else "right")
        for row in rows:
            judge.add_row(*row)
        console.print(judge)
    render_examples(run.examples, out)


def render_examples(examples: list[tuple[str, list[dict[str, str]]]], out: TextIO | None = None) -> None:
    """Print (record id, BUTTON messages) dialogues with rich, one panel per message."""
    from rich.console import Console
    from rich.panel import Panel
    from rich.text import Text

    console = Console(file=out, width=120)
    for i, (record_id, messages) in enumerate(examples, start=1):
        console.rule(f"example {i}: {record_id}")
        for role, text in dialogue(messages):
            console.print(Panel(Text(text), title=role, title_align="left"))

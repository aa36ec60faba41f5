"""Scenario input: the shipped default list, or a file read through fsspec.

The ordered list of scenarios is what shards are cut from, so it must come out in the
same order every time. Exact duplicates are dropped (their ids would collide);
near-duplicates are the ``scenarios`` job's business.

Files are read in the driver with fsspec, not with Ray Data: the driver holds the
ordered list anyway (it plans the shards), the input is read before Ray starts, and a
bad value is reported with its file and line, before the output is claimed.
"""

from __future__ import annotations

import io
import json
from typing import Any, Iterator

import fsspec

from button_ray.config import ScenarioConfig
from button_ray.errors import InputError
from button_ray.records import Scenario, scenario_id

_FORMATS = (".txt", ".jsonl", ".json", ".parquet")


def input_options(cfg: ScenarioConfig, output_options: dict[str, Any] | None) -> dict[str, Any]:
    """The fsspec options the input is read with: its own, else the output's."""
    return dict(cfg.storage_options if cfg.storage_options is not None else (output_options or {}))


def _text_value(value: Any, where: str, field: str) -> str | None:
    """The scenario text of one row, or None for a blank one; anything but text is an error."""
    if value is None:
        raise InputError(f"{where}: no value in field {field!r} (scenarios.text_field)")
    if not isinstance(value, str):
        kind = "a list" if isinstance(value, list) else type(value).__name__
        raise InputError(f"{where}: field {field!r} (scenarios.text_field) holds {kind}, not text")
    return value.strip() or None


def _texts(source: str, data: bytes, field: str) -> Iterator[str]:
    name = source
    if source.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise InputError(f"{name}: not a Parquet file ({exc})") from exc
        if field not in pf.schema_arrow.names:
            raise InputError(f"{name} has no column {field!r} (scenarios.text_field); "
                             f"its columns: {pf.schema_arrow.names}")
        column_type = pf.schema_arrow.field(field).type
        if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
            raise InputError(f"{name}: column {field!r} (scenarios.text_field) is {column_type}, not text")
        row = 0
        for batch in pf.iter_batches(columns=[field]):
            for value in batch.column(0).to_pylist():
                row += 1
                text = _text_value(value, f"{name} row {row}", field)
                if text:
                    yield text
        return
    try:
        content = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{name} line {line}: not UTF-8 text (byte {data[exc.start]:#04x})") from exc
    if source.endswith(".txt"):
        for line in content.splitlines():
            if line.strip():
                yield line.strip()
        return
    if source.endswith(".json") and content.lstrip().startswith("["):
        try:
            rows = json.loads(content)
        except json.JSONDecodeError as exc:
            raise InputError(f"{name} line {exc.lineno}: not valid JSON ({exc.msg})") from exc
        numbered = ((f"{name} element {i}", row) for i, row in enumerate(rows, 1))
    else:
        numbered = _json_lines(name, content)
    for where, row in numbered:
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object with field {field!r}, got {type(row).__name__}")
        if field not in row:
            raise InputError(f"{where}: no field {field!r} (scenarios.text_field); fields: {sorted(row)}")
        text = _text_value(row[field], where, field)
        if text:
            yield text


def _json_lines(name: str, content: str) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{name} line {number}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{name} line {number}: not valid JSON ({exc.msg})") from exc


def read_scenarios(cfg: ScenarioConfig, limit: int | None = None,
                   storage_options: dict[str, Any] | None = None) -> list[Scenario]:
    """The ordered, exact-deduplicated scenario list; an :class:`InputError` if there is none.

    ``limit`` (else ``cfg.limit``) keeps the first scenarios; it must be at least 1.
    ``storage_options`` are the fsspec options the file is read with.
    """
    limit = cfg.limit if limit is None else limit
    if limit is not None and limit < 1:
        raise InputError(f"the number of scenarios must be at least 1, not {limit}")
    if cfg.source == "default":
        from button_ray.bottom_up.scenarios import load_default_scenarios

        texts, source = iter(load_default_scenarios()), "default"
    else:
        if not cfg.source.endswith(_FORMATS):
            raise InputError(f"scenarios.source {cfg.source!r}: use a .txt, .jsonl, .json or .parquet file")
        try:
            with fsspec.open(cfg.source, "rb", **(storage_options or {})) as f:
                data = f.read()
        except FileNotFoundError as exc:
            raise InputError(f"scenarios.source {cfg.source!r} does not exist") from exc
        except Exception as exc:  # noqa: BLE001 - denied, unreachable: all "cannot read"
            raise InputError(f"scenarios.source {cfg.source!r} cannot be read: {type(exc).__name__}: {exc}") from exc
        texts, source = _texts(cfg.source, data, cfg.text_field), cfg.source.rsplit("/", 1)[-1]
    seen: set[str] = set()
    scenarios: list[Scenario] = []
    for text in texts:
        text = (text or "").strip()
        if not text:
            continue
        sid = scenario_id(text)
        if sid in seen:
            continue
        seen.add(sid)
        scenarios.append(Scenario(scenario_id=sid, text=text, source=source))
        if limit is not None and len(scenarios) >= limit:
            break
    if not scenarios:
        raise InputError(f"scenarios.source {cfg.source!r} holds no scenarios")
    return scenarios

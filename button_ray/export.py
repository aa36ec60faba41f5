"""Export committed trajectories to training formats, reading through the manifest."""

from __future__ import annotations

import json
from typing import Any

import fsspec

from button_ray.sink import read_committed


def export_button_jsonl(run_uri: str, out_path: str, storage_options: dict[str, Any] | None = None) -> int:
    """Write BUTTON JSON Lines (one ``{"messages": [...]}`` per trajectory); return the count."""
    table = read_committed(run_uri, "data", storage_options)
    n = 0
    with fsspec.open(out_path, "w", encoding="utf-8") as f:
        for messages in table.column("messages").to_pylist():
            record = {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n

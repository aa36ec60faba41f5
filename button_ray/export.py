"""Export committed trajectories as JSON Lines for trainers, streaming through the manifest.

Formats (``docs/formats.md``): ``button`` (the exact BUTTONInstruct records), ``openai``
(``{"messages", "tools"}`` per line, TRL / axolotl) and ``sharegpt`` (LLaMA-Factory's
layout, plus its ``dataset_info.json`` entry written beside the output).

The run is read one shard file at a time in record batches, so memory stays flat in the
number of rows; the output goes to local disk or any fsspec URI. Nothing appears under
an output name until the export has succeeded: locally each file is written under a
temporary name beside it and renamed at the end; on an object store each is one
multipart upload, completed at the end (the object appears then, whole) and aborted on
an error. With ``max_rows_per_file`` the output is a folder of numbered parts.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from fsspec.implementations.local import LocalFileSystem

from button_ray.errors import OutputError
from button_ray.formats import sharegpt_dataset_info, to_openai, to_sharegpt
from button_ray.sink import OutputStore, committed_manifest, iter_committed


def _button(messages: list[dict[str, str]]) -> dict[str, Any]:
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}


#: Format name -> a BUTTON record's ``messages`` to one output line's object.
FORMATS: dict[str, Callable[[list[dict[str, str]]], dict[str, Any]]] = {
    "button": _button,
    "openai": to_openai,
    "sharegpt": to_sharegpt,
}
DATASET_INFO = "dataset_info.json"


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    rows: int
    files: tuple[str, ...]
    shards: int
    finished: bool  #: the run has ``_SUCCESS``; otherwise only what it committed so far was exported
    dataset_info: dict[str, Any] | None = None  #: the LLaMA-Factory entry (``sharegpt`` only)
    dataset_info_file: str | None = None


class _PendingFile:
    """One output file that becomes visible only on :meth:`commit`."""

    def __init__(self, store: OutputStore, rel: str) -> None:
        self.fs, self.path = store.fs, store.path(rel)
        self.local = isinstance(self.fs, LocalFileSystem)
        if self.local:
            self.tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
            self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
            self.f = self.fs.open(self.tmp, "wb")
        else:
            self.f = self.fs.open(self.path, "wb", autocommit=False)

    def write(self, data: bytes) -> None:
        self.f.write(data)

    def close(self) -> None:
        self.f.close()

    def commit(self) -> None:
        if self.local:
            self.fs.mv(self.tmp, self.path)
        else:
            self.f.commit()

    def discard(self) -> None:
        try:
            if self.local:
                self.f.close()
                self.fs.rm_file(self.tmp)
            else:
                self.f.discard()
                self.f.closed = True  # discarded: nothing is left to flush when it is collected
        except Exception:  # noqa: BLE001 - the export's own error is the one to report
            pass


def _split_uri(uri: str) -> tuple[str, str]:
    parent, _, name = uri.rstrip("/").rpartition("/")
    return (parent or "."), name


def _existing_dataset_info(store: OutputStore) -> dict[str, Any]:
    try:
        raw = store.read_bytes(DATASET_INFO)
    except FileNotFoundError:
        return {}
    try:
        info = json.loads(raw)
    except ValueError:
        info = None
    if not isinstance(info, dict):
        raise OutputError(f"{store.path(DATASET_INFO)} exists but is not a JSON object: fix or move it, "
                          "so the export can add its LLaMA-Factory entry to it")
    return info


def export(run_uri: str, out: str, fmt: str = "button", storage_options: dict[str, Any] | None = None,
           out_storage_options: dict[str, Any] | None = None, max_rows_per_file: int | None = None,
           batch_size: int = 512) -> ExportResult:
    """Write the committed trajectories of ``run_uri`` to ``out`` in ``fmt``, streaming.

    ``out`` is a file, or with ``max_rows_per_file`` a new or empty folder that receives
    ``part-00000-of-0000N.jsonl`` files of at most that many rows. ``storage_options``
    reach the run, ``out_storage_options`` (default: the same) the output. An unfinished
    run is exported as far as it is committed (``ExportResult.finished`` says so).
    Raises :class:`OutputError` with one sentence for a run without a manifest, an
    unwritable output, a non-empty output folder, or a record that is not valid BUTTON.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    convert = FORMATS[fmt]
    run = OutputStore(run_uri, storage_options or {})
    manifest = committed_manifest(run)
    finished = run.exists("_SUCCESS")
    total = sum(s["rows"] for s in manifest["shards"])
    out_options = storage_options if out_storage_options is None else out_storage_options

    parent_uri, name = _split_uri(out)
    parent = OutputStore(parent_uri, out_options or {})
    if max_rows_per_file is None:
        dest, names = parent, [name]
    else:
        dest = OutputStore(out, out_options or {})
        if dest.fs.exists(dest.root) and dest.fs.ls(dest.root, detail=False):
            raise OutputError(f"output folder {out!r} is not empty: give a new or empty folder for the parts")
        parts = max(1, math.ceil(total / max_rows_per_file))
        names = [f"part-{i:05d}-of-{parts:05d}.jsonl" for i in range(parts)]
    dest.preflight()
    info_entry = None
    if fmt == "sharegpt":
        info = _existing_dataset_info(parent)
        info_entry = sharegpt_dataset_info(name.rsplit(".", 1)[0] if max_rows_per_file is None else name, name)

    files: list[_PendingFile] = []
    rows = 0
    try:
        for batch in iter_committed(run, "data", ["record_id", "messages"], batch_size):
            lines = []
            for record_id, messages in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                try:
                    lines.append(json.dumps(convert(messages), ensure_ascii=False) + "\n")
                except ValueError as exc:
                    raise OutputError(
                        f"record {record_id} of {run_uri!r} is not a valid BUTTON record ({exc})") from exc
            for line in lines:
                part = rows // max_rows_per_file if max_rows_per_file else 0
                if part >= len(names):
                    raise OutputError(f"{run_uri!r} holds more rows than its manifest lists ({total}): "
                                      "export it again once its run has rewritten the manifest")
                if part == len(files):
                    if files:
                        files[-1].close()
                    files.append(_PendingFile(dest, names[part]))
                files[-1].write(line.encode())
                rows += 1
        while len(files) < len(names):  # an empty run still gets its (empty) file
            if files:
                files[-1].close()
            files.append(_PendingFile(dest, names[len(files)]))
        files[-1].close()
        for f in files:
            f.commit()
    except BaseException:
        for f in files:
            f.discard()
        raise
    if info_entry is not None:
        parent.write_json(DATASET_INFO, {**info, **info_entry})
    return ExportResult(rows=rows, files=tuple(f.path for f in files), shards=len(manifest["shards"]),
                        finished=finished, dataset_info=info_entry,
                        dataset_info_file=parent.path(DATASET_INFO) if info_entry is not None else None)

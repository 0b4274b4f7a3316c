"""Read a W&B offline run file (``run-*.wandb``) back, for tests.

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then
32 KiB blocks of chunks (crc32c, length, type: FULL/FIRST/MIDDLE/LAST), each record a
``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK_SIZE = 32 * 1024
FILE_HEADER = struct.Struct("<4sHB")
CHUNK_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_records(path: str | Path) -> Iterator[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B run file"
    offset, pending = FILE_HEADER.size, b""
    while offset + CHUNK_HEADER.size <= len(data):
        left_in_block = BLOCK_SIZE - offset % BLOCK_SIZE
        if left_in_block < CHUNK_HEADER.size:  # block trailer: zero padding
            offset += left_in_block
            continue
        _crc, length, kind = CHUNK_HEADER.unpack_from(data, offset)
        offset += CHUNK_HEADER.size
        chunk = data[offset: offset + length]
        offset += length
        if kind == 0 and length == 0:
            offset += BLOCK_SIZE - offset % BLOCK_SIZE if offset % BLOCK_SIZE else 0
            continue
        if kind in (FULL, FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def run_file(run_dir: str | Path) -> Path:
    """The ``run-*.wandb`` file of the one offline run under ``run_dir`` (searched recursively)."""
    files = sorted(Path(run_dir).glob("**/offline-run-*/run-*.wandb"))
    assert files, f"no W&B offline run under {run_dir}"
    return files[-1]


def read_run(path: str | Path) -> dict[str, Any]:
    """Config, history rows, summary and exit code of a run file, as plain Python values."""
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    run: dict[str, Any] = {}
    exit_code: int | None = None
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            for item in record.config.update:
                key = item.key or "/".join(item.nested_key)
                config[key] = json.loads(item.value_json)
        elif kind == "history":
            history.append({
                (item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                for item in record.history.item
            })
        elif kind == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "run":
            for item in record.run.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
            run = {"name": record.run.display_name, "group": record.run.run_group,
                   "tags": list(record.run.tags)}
        elif kind == "exit":
            exit_code = record.exit.exit_code
    return {"run": run, "config": config, "history": history, "summary": summary,
            "exit_code": exit_code}

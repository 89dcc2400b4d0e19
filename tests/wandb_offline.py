"""Read an offline W&B run back: the records of its ``run-*.wandb`` file.

The file is a LevelDB-style log (wandb's transaction log): a 7-byte header (":W&B", magic
0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte header (CRC-32C, length,
type: 1 full, 2 first, 3 middle, 4 last) and a piece of a serialised ``wandb.proto`` Record.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7


def records(path: str | Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1 and version == 0, "not a W&B transaction log"
    out, pos, parts = [], HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:  # zero padding at the end
            break
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(parts)
            out.append(rec)
            parts = b""
    return out


def run_file(run_dir: str | Path) -> Path:
    return next(Path(run_dir).glob("run-*.wandb"))


def read_run(run_dir: str | Path) -> dict:
    """name, group, job_type, config, summary (JSON-decoded values) and artifact names."""
    run, config, summary, artifacts, history = {}, {}, {}, [], []
    for rec in records(run_file(run_dir)):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run = {"name": rec.run.display_name, "group": rec.run.run_group, "job_type": rec.run.job_type}
            for item in rec.run.config.update:
                config[item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                config[item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                key = item.key or "/".join(item.nested_key)
                summary[key] = json.loads(item.value_json)
        elif kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item})
        elif kind == "artifact":
            artifacts.append({"name": rec.artifact.name, "type": rec.artifact.type, "aliases": list(rec.artifact.aliases),
                              "files": [m.path for m in rec.artifact.manifest.contents]})
    config = {k: (v["value"] if isinstance(v, dict) and "value" in v and set(v) <= {"value", "desc"} else v) for k, v in config.items()}
    return {**run, "config": config, "summary": summary, "history": history, "artifacts": artifacts}

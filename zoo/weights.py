"""Weights identity helpers: file hashes and loud warnings."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def warn_loudly(message: str) -> None:
    """A warning nobody misses: on stderr, upper-case banner, every time."""
    print(f"\n!!! zoo WARNING: {message}\n", file=sys.stderr, flush=True)

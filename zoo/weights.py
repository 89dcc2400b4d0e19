"""Weights identity helpers: loud warnings (file hashes: zoo.io.sha256_file)."""
from __future__ import annotations

import sys


def warn_loudly(message: str) -> None:
    """A warning nobody misses: on stderr, upper-case banner, every time."""
    print(f"\n!!! zoo WARNING: {message}\n", file=sys.stderr, flush=True)

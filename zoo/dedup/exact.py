"""Exact duplicates: files with identical bytes, found by size and then by SHA-256.

The hasher is ``zoo.io.sha256_file`` (regular files only, opened with ``zoo.io.open_regular``),
the one file hasher of zoo.
"""
from __future__ import annotations

import os
import sys
from collections import defaultdict

from zoo.io import sha256_file


def exact_groups(paths: list[str]) -> list[list[str]]:
    """Files with identical bytes (same size first, then same hash); a file that cannot be read
    (gone, or no longer a regular file) is reported and left out."""
    def hashed(key, p: str) -> tuple:
        try:
            return key(p)
        except (OSError, ValueError) as e:
            print(f"zoo: skipped {p} ({getattr(e, 'strerror', None) or e})", file=sys.stderr)
            return None

    by_size = defaultdict(list)
    for p in paths:
        by_size[hashed(os.path.getsize, p)].append(p)
    groups = []
    for size, same_size in by_size.items():
        if size is None or len(same_size) < 2:
            continue
        by_hash = defaultdict(list)
        for p in same_size:
            by_hash[hashed(sha256_file, p)].append(p)
        groups += [sorted(g) for h, g in by_hash.items() if h is not None and len(g) > 1]
    return sorted(groups)

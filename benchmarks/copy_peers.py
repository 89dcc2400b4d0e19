"""Perceptual-hash peers of the copy-detection benchmark, scored on the same pairs as the models.

imagededup's PHash and DHash (64 bits) and Meta's PDQ (256 bits, the ``pdqhash`` package); a
pair's similarity is 1 - Hamming distance / bits, so the same pair metrics apply (many pairs
tie: pr_curve decides ties together). Install them with ``pip install -e .[bench]``; a missing
package skips its row with a note.
"""
from __future__ import annotations

import sys

import numpy as np
from PIL import Image


def _phash_like(kind: str):
    try:
        from imagededup.methods import DHash, PHash
    except ImportError as e:
        return None, f"imagededup is not installed ({e}); pip install -e .[bench]"
    hasher = (PHash if kind == "phash" else DHash)(verbose=False)

    def bits(path: str) -> np.ndarray:
        with Image.open(path) as im:
            code = hasher.encode_image(image_array=np.asarray(im.convert("RGB")))
        return np.unpackbits(np.frombuffer(bytes.fromhex(code), dtype=np.uint8))
    return bits, None


def _pdq():
    try:
        import pdqhash
    except ImportError as e:
        return None, f"pdqhash is not installed ({e}); pip install -e .[bench]"

    def bits(path: str) -> np.ndarray:
        with Image.open(path) as im:
            vector, _quality = pdqhash.compute(np.ascontiguousarray(np.asarray(im.convert("RGB"))))
        return vector.astype(np.uint8)
    return bits, None


PEERS = {"imagededup PHash (64 bit)": lambda: _phash_like("phash"),
         "imagededup DHash (64 bit)": lambda: _phash_like("dhash"),
         "PDQ (pdqhash, 256 bit)": _pdq}


def hashers() -> dict:
    """{row name: path -> bits (B,) uint8} for each installed peer; notes on stderr for the rest."""
    out = {}
    for name, make in PEERS.items():
        fn, note = make()
        if fn is None:
            print(f"peer row skipped: {name}: {note}", file=sys.stderr)
        else:
            out[name] = fn
    return out


def hash_all(fn, paths: list[str], cache: dict) -> np.ndarray:
    """(N, B) bits of ``paths`` (cached per path)."""
    for p in paths:
        if p not in cache:
            cache[p] = fn(p)
    return np.stack([cache[p] for p in paths])


def hash_pair_scores(bits: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray]:
    """Every pair i < j (pair_scores' order): similarity 1 - Hamming / B, and whether it is a copy pair."""
    b = bits.astype(np.float32)
    agree = b @ b.T + (1 - b) @ (1 - b).T  # bits equal
    i, j = np.triu_indices(len(b), 1)
    g = np.asarray(groups)
    return (agree[i, j] / b.shape[1]).astype(np.float64), g[i] == g[j]

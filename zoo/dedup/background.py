"""Background-set scores, as in copy-detection benchmarks (DISC21, SSCD): a pair's cosine
similarity minus how similar its two images are to a set of unrelated background images.

Some images look like many others (plates of one dish, sky, text): their raw similarities
are high to everything. Subtracting how similar an image is to its k-th nearest neighbour in
a background set of unrelated images makes scores comparable across images::

    score(a, b) = cos(a, b) - (bg_k(a) + bg_k(b)) / 2

where bg_k(x) is the cosine similarity of x to its k-th nearest background vector. A pair is
a copy when its score is >= the threshold (a margin above the background, e.g. 0.1).
"""
from __future__ import annotations

import sys
from pathlib import Path

import faiss
import numpy as np

from zoo.data.defaults import BATCH_SIZE, NUM_WORKERS
from zoo.data.images import scan_folder
from zoo.dedup.pairsearch import similar_pairs, unit_rows
from zoo.embed.runner import embed
from zoo.errors import ZooError
from zoo.index.core import load_index


def background_similarity(vectors: np.ndarray, background: np.ndarray, k: int = 10) -> np.ndarray:
    """(N,) cosine similarity of each of ``vectors`` (N, D) to its k-th nearest of ``background`` (M, D)."""
    if len(background) < k:
        raise ZooError(f"the background set holds {len(background)} images; --background_k {k} needs at least {k}")
    bg = unit_rows(background)
    index = faiss.IndexFlatIP(bg.shape[1])
    index.add(bg)
    sims, _ = index.search(unit_rows(vectors), k)  # (N, k), best first
    return sims[:, k - 1]


def background_scores(sims: np.ndarray, pairs: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Background score of each pair (P, 2) with raw similarities (P,): sim - (bg[a] + bg[b]) / 2."""
    return sims - (bg[pairs[:, 0]] + bg[pairs[:, 1]]) / 2


def background_pairs(vectors: np.ndarray, bg: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """All pairs i < j with background score >= ``threshold``: (pairs (P, 2), scores (P,)).

    A pair's score is at most its raw similarity minus the smallest bg, so a range search at
    ``threshold + bg.min()`` finds every candidate."""
    pairs, sims = similar_pairs(vectors, min(threshold + float(bg.min()), 1.0))
    scores = background_scores(sims, pairs, bg)
    keep = scores >= threshold
    return pairs[keep], scores[keep].astype(np.float32)


def background_vectors(source: str, model=None, trainer=None, batch_size: int = BATCH_SIZE, num_workers: int = NUM_WORKERS,
                       expect: tuple[str, str] | None = None) -> np.ndarray:
    """Background vectors from a zoo index (its stored vectors; it must come from the same
    model) or a folder of images (embedded with ``model``)."""
    path = Path(source)
    if not path.exists():
        raise ZooError(f"--background {source}: no such folder or index")
    try:
        idx = load_index(path)
    except ZooError:
        idx = None
    if idx is not None:
        meta = idx.meta["model"]
        if expect is not None and (meta["architecture"], meta["weights"]) != expect:
            raise ZooError(f"--background {source} was built with {meta['architecture']} ({meta['weights']}), "
                           f"not {expect[0]} ({expect[1]}): similarities of two models cannot be compared")
        return idx.vectors()[1]
    emb = embed(model.build(), scan_folder(source), trainer=trainer, batch_size=batch_size, num_workers=num_workers)
    print(f"zoo: background: {len(emb.records)} image(s) of {source}", file=sys.stderr)
    return emb.vectors

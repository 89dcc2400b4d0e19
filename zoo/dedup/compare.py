"""``zoo compare``: pairwise similarity scores and all-versus-all distance matrices."""
from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from zoo.data.defaults import BATCH_SIZE, NUM_WORKERS
from zoo.data.images import records_from
from zoo.embed.runner import embed, require_some
from zoo.errors import ZooError
from zoo.io import atomic_path, refuse_overwrite


def similarity_score(cosine: np.ndarray) -> np.ndarray:
    """Cosine similarity in [-1, 1] -> score in [0, 1] (1 = same direction, 0.5 = orthogonal)."""
    return np.clip((1.0 + cosine) / 2.0, 0.0, 1.0)


def cosine_matrix(vectors: np.ndarray, others: Optional[np.ndarray] = None, dtype=np.float32) -> np.ndarray:
    """Cosine similarity of every row of ``vectors`` with every row of ``others`` (default:
    ``vectors`` itself), (N, M), computed in ``dtype``; zero rows give 0."""
    def unit(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=dtype)
        return a / np.linalg.norm(a, axis=1, keepdims=True).clip(min=1e-12)

    v = unit(vectors)
    return v @ (v if others is None else unit(others)).T


def run_compare(model, images: Sequence[str], matrix: Optional[str] = None, overwrite: bool = False,
                trainer=None, batch_size: int = BATCH_SIZE, num_workers: int = NUM_WORKERS) -> np.ndarray:
    records = records_from(images)
    if matrix is None and len(records) < 2:
        raise ZooError("compare needs at least two images")
    if matrix:
        for suffix in (".csv", ".npy"):
            refuse_overwrite(Path(matrix).with_suffix(suffix), overwrite)
    emb = embed(model.build(), records, trainer=trainer, batch_size=batch_size, num_workers=num_workers)
    require_some(emb, "the inputs")
    cos = cosine_matrix(emb.vectors)
    paths = [r.path for r in emb.records]
    if matrix:
        dist = 1.0 - cos  # cosine distance, 0 on the diagonal
        np.fill_diagonal(dist, 0.0)
        base = Path(matrix)
        with atomic_path(base.with_suffix(".npy")) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, dist.astype(np.float32))
        with atomic_path(base.with_suffix(".csv")) as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["path", *paths])
                for p, row in zip(paths, dist):
                    w.writerow([p, *(f"{x:.6f}" for x in row)])
        print(f"zoo: {len(paths)}x{len(paths)} cosine distance matrix -> {base.with_suffix('.csv')}, {base.with_suffix('.npy')} "
              f"({model.architecture}, {model.weights_id})")
    else:
        print(f"model: {model.architecture} ({model.weights_id}); score = (1 + cosine) / 2")
        print(f"{'score':>6}  {'cosine':>7}  pair")
        for i, j in itertools.combinations(range(len(paths)), 2):
            print(f"{similarity_score(cos[i, j]):6.4f}  {cos[i, j]:7.4f}  {paths[i]}  {paths[j]}")
    return cos

"""Clustering view of embeddings: FAISS k-means, purity and NMI against labels, t-SNE PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import faiss
import numpy as np
from lightning.pytorch.callbacks import Callback
from sklearn.manifold import TSNE
from sklearn.metrics import normalized_mutual_info_score

from zoo.io import write_json


def kmeans(vectors: np.ndarray, k: int, seed: int = 0, niter: int = 25) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, verbose=False)
    km.train(x)
    return km.index.search(x, 1)[1][:, 0]


def purity(assignments: np.ndarray, labels: np.ndarray) -> float:
    """Share of items whose cluster's majority label is their own."""
    total = 0
    for c in np.unique(assignments):
        total += np.bincount(labels[assignments == c]).max()
    return total / len(labels)


def cluster_report(vectors: np.ndarray, labels: Optional[np.ndarray], k: int, out_dir: str | Path, seed: int = 0) -> dict:
    from zoo.report.plots import scatter_2d

    out_dir = Path(out_dir)
    assign = kmeans(vectors, k, seed)
    report = {"k": k, "n": len(vectors), "cluster_sizes": np.bincount(assign, minlength=k).tolist()}
    if labels is not None:
        report["purity"] = round(float(purity(assign, labels)), 4)
        report["nmi"] = round(float(normalized_mutual_info_score(labels, assign)), 4)
    perplexity = max(2.0, min(30.0, (len(vectors) - 1) / 3))
    points = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(vectors)
    scatter_2d(points, assign, out_dir / "tsne_clusters.png",
               f"t-SNE of embeddings, k-means k={k}" + (f", purity {report['purity']:.2f}, NMI {report['nmi']:.2f}" if labels is not None else ""))
    write_json(out_dir / "clusters.json", report)
    return report


class ClusterReport(Callback):
    """After training: k-means of the held-out embeddings, purity/NMI, t-SNE PNG in the log dir."""

    def __init__(self, k: Optional[int] = None):
        self.k = k

    def on_fit_end(self, trainer, pl_module) -> None:
        val = getattr(pl_module, "last_validation", None)
        if not val or not trainer.is_global_zero:
            return
        labels = val["labels"].numpy()
        k = self.k or int(len(np.unique(labels)))
        out = Path(trainer.log_dir or ".")
        report = cluster_report(val["embeddings"].numpy(), labels, k, out)
        print(f"zoo: clusters k={k}: purity {report.get('purity')}, NMI {report.get('nmi')} -> {out}/tsne_clusters.png")

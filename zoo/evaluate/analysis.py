"""Looking behind a benchmark's averages: confidence intervals, near-identical twins that
inflate leave-one-out, and the queries that fail worst.

All functions take per-query arrays or (N, D) embeddings and return plain numbers, so the
tests pin them down on constructed inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from zoo.dedup.groups import connected_components
from zoo.dedup.pairsearch import similar_pairs

BOOTSTRAP_RESAMPLES = 1000
TWIN_THRESHOLD = 0.9


def bootstrap_ci(values, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one per query; NaN = no
    defined value, left out), resampling queries with replacement, seeded."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)  # (resamples,)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


@dataclass
class QueryDiagnostics:
    """Per query (Q,): the first result's similarity and whether it is relevant, the best
    similarity of an item of the query's own class (NaN when the gallery has none)."""

    top1_similarity: np.ndarray
    top1_relevant: np.ndarray
    best_relevant_similarity: np.ndarray


def query_diagnostics(query: torch.Tensor, query_labels: torch.Tensor, gallery: Optional[torch.Tensor] = None,
                      gallery_labels: Optional[torch.Tensor] = None, chunk: int = 1024) -> QueryDiagnostics:
    """Cosine retrieval of ``query`` (Q, D) in ``gallery`` (G, D), or leave-one-out when no gallery."""
    loo = gallery is None
    q = torch.nn.functional.normalize(query.float(), dim=1)
    g = q if loo else torch.nn.functional.normalize(gallery.float(), dim=1)
    gl = query_labels if loo else gallery_labels
    top_sim, top_rel, best_rel = [], [], []
    for start in range(0, len(q), chunk):
        sim = q[start : start + chunk] @ g.T  # (q, G)
        ql = query_labels[start : start + chunk]
        if loo:
            rows = torch.arange(len(sim))
            sim[rows, rows + start] = float("-inf")
        # stable: ties keep gallery order, as in zoo.metrics
        first = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, 0]  # (q,)
        top_sim.append(sim.gather(1, first[:, None])[:, 0])
        top_rel.append(gl[first] == ql)
        same = gl[None, :] == ql[:, None]  # (q, G)
        best = torch.where(same, sim, torch.tensor(float("-inf"))).amax(dim=1)
        best_rel.append(torch.where(torch.isinf(best), torch.tensor(float("nan")), best))
    return QueryDiagnostics(torch.cat(top_sim).numpy(), torch.cat(top_rel).numpy(), torch.cat(best_rel).numpy())


def worst_queries(diag: QueryDiagnostics, n: int) -> list[int]:
    """The ``n`` worst queries: a wrong first match, ordered by the lowest similarity of an
    item of their own class (the hardest to find first)."""
    wrong = np.flatnonzero(~diag.top1_relevant)
    key = np.nan_to_num(diag.best_relevant_similarity[wrong], nan=-np.inf)
    return [int(i) for i in wrong[np.argsort(key, kind="stable")][:n]]


def twin_report(vectors: np.ndarray, diag: QueryDiagnostics, hit1: np.ndarray, ap: np.ndarray,
                threshold: float = TWIN_THRESHOLD) -> dict:
    """Near-identical images (cosine >= ``threshold``) inside the benchmark set.

    vectors: (N, D) every embedded image (queries and gallery); groups are the connected
    components of the pairs at or above the threshold. A query "has a twin" when its first
    result is that close. Returns the group count, twin queries, and hit@1 / mAP on the
    queries without a twin (the figures leave-one-out does not inflate).
    """
    pairs, _ = similar_pairs(vectors, threshold)
    groups = connected_components(len(vectors), pairs)
    twin = diag.top1_similarity >= threshold - 1e-6  # (Q,)
    rest = ~twin
    ok = rest & ~np.isnan(ap)

    def mean(x, m):
        return float(np.mean(x[m])) if m.any() else float("nan")

    return {
        "twin_threshold": threshold,
        "twin_groups": len(groups),
        "twin_images": int(sum(len(g) for g in groups)),
        "twin_queries": int(twin.sum()),
        "nn_cosine_median": float(np.median(diag.top1_similarity)) if len(twin) else float("nan"),
        "hit@1_no_twin": mean(hit1, ok),
        "map_no_twin": mean(ap, ok),
    }


def twins_meaningful(row: dict) -> bool:
    """Twins single out a few images only when most queries have none: in an embedding space
    where nearly every image has a neighbour that close (random init, say), the threshold
    says nothing about near-identity."""
    return 0 < row.get("twin_queries", 0) <= row["queries"] / 2


def twin_warning(name: str, row: dict) -> Optional[str]:
    if not twins_meaningful(row):
        return None
    return (f"{name}: {row['twin_groups']} group(s) of near-identical images (cosine >= {row['twin_threshold']:g}) "
            f"inside the set; {row['twin_queries']} of {row['queries']} queries find such a twin first, which "
            f"inflates {row['protocol']}: hit@1 {row['hit@1']:.3f} overall, {row['hit@1_no_twin']:.3f} on queries "
            f"without a twin (mAP {row['map']:.3f} vs {row['map_no_twin']:.3f})")


def twin_note(name: str, row: dict) -> Optional[str]:
    if row.get("twin_queries", 0) <= row["queries"] / 2:
        return None
    return (f"{name}: {row['twin_queries']} of {row['queries']} queries have a neighbour at cosine >= "
            f"{row['twin_threshold']:g} (median nearest-neighbour cosine {row['nn_cosine_median']:.3f}): in this "
            "embedding space the threshold does not single out near-identical images, so there is no twin check")

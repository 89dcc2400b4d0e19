"""Retrieval metrics: a pure functional core and a torchmetrics ``Metric`` around it.

Conventions (the tests pin them down with hand-computed values):
- a gallery item is relevant to a query when their class labels are equal;
- ranking is by similarity, descending; ties keep gallery order (stable sort), so results
  are deterministic;
- in leave-one-out, the query itself is removed from its own ranking;
- a query with no relevant item in the gallery has no defined AP: it is left out of every
  average and counted in ``queries_without_relevant``;
- with ``hubness=(k, weight)`` the nearest by cosine comes first, then the ranking is by cosine
  minus weight x the gallery item's density (zoo.metrics.hubness, CSLS), what an index built
  with ``--hubness k`` searches; in leave-one-out an item's density leaves the query out, as if
  it had never been indexed;
- hit@k: at least one relevant item in the top k; precision@k: relevant share of the top k
  (divided by k); AP over the full ranking; R-precision: precision at R = number of relevant
  items; MAP@R: mean over the first R ranks of precision@i at relevant ranks, divided by R.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from zoo.metrics.hubness import density_from_neighbours, gallery_neighbours, hubness_scores, loo_density

KS = (1, 5, 10)


def ranking_metrics(relevant: torch.Tensor, n_relevant: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, torch.Tensor]:
    """Per-query metrics from ranked relevance.

    relevant:   (Q, G) bool, relevance of each query's ranked gallery (best first)
    n_relevant: (Q,) number of relevant items in the whole gallery for each query
    returns:    name -> (Q,) float tensor
    """
    rel = relevant.float()
    Q, G = rel.shape
    R = n_relevant.float().clamp(min=1)
    ranks = torch.arange(1, G + 1, device=rel.device, dtype=rel.dtype)  # (G,)
    precision_at = rel.cumsum(dim=1) / ranks  # (Q, G)
    within_r = ranks.unsqueeze(0) <= n_relevant.unsqueeze(1)  # (Q, G)
    out = {}
    for k in ks:
        out[f"hit@{k}"] = rel[:, :k].amax(dim=1) if G else rel.new_zeros(Q)
        out[f"p@{k}"] = rel[:, :k].sum(dim=1) / k
    out["ap"] = (precision_at * rel).sum(dim=1) / R
    out["r_precision"] = (rel * within_r).sum(dim=1) / R
    out["map@r"] = (precision_at * rel * within_r).sum(dim=1) / R
    return out


def retrieval_metrics(
    query: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: Optional[torch.Tensor] = None,
    gallery_labels: Optional[torch.Tensor] = None,
    ks: Sequence[int] = KS,
    confusion_k: int = 10,
    num_classes: Optional[int] = None,
    chunk: int = 1024,
    hubness: Optional[tuple[int, float]] = None,
) -> dict:
    """Evaluate cosine retrieval of ``query`` (Q, D) against ``gallery`` (G, D).

    With no gallery: leave-one-out over ``query`` (each item queries all the others).
    Embeddings are L2-normalised here; labels are int class ids.
    Returns ``per_query`` (name -> (Q,) tensor, NaN where a query has no relevant item),
    ``summary`` (name -> float, the mean over queries with a relevant item),
    ``confusion`` (C, C): row c = where class c's top-``confusion_k`` results land (row-normalised),
    and ``queries_without_relevant``. ``hubness``: (k, weight) ranks by hubness_scores.
    """
    loo = gallery is None
    q = torch.nn.functional.normalize(query.float(), dim=1)
    g = q if loo else torch.nn.functional.normalize(gallery.float(), dim=1)
    gl = query_labels if loo else gallery_labels
    C = num_classes or int(max(query_labels.max(), gl.max())) + 1
    class_sizes = torch.bincount(gl, minlength=C)  # (C,)
    per_query: dict[str, list[torch.Tensor]] = {}
    confusion = torch.zeros(C, C, dtype=torch.float64)
    hub_k, hub_w = hubness if hubness and hubness[0] > 0 else (0, 0.0)
    if hub_k:
        top_s, top_i = gallery_neighbours(g, hub_k + 1 if loo else hub_k)
    for start in range(0, len(q), chunk):
        qs = q[start : start + chunk]
        ql = query_labels[start : start + chunk]
        sim = qs @ g.T  # (q, G)
        if loo:
            rows = torch.arange(len(qs))
            sim[rows, rows + start] = float("-inf")
        if hub_k:  # loo_density reads no query's own column: an item is never its own neighbour
            dens = loo_density(top_s, top_i, hub_k, start, sim) if loo else density_from_neighbours(top_s, hub_k)
            sim = hubness_scores(sim, dens, hub_w)
        order = torch.sort(sim, dim=1, descending=True, stable=True).indices  # (q, G)
        if loo:
            order = order[:, :-1]  # the query itself, ranked last
        ranked_labels = gl[order]  # (q, G')
        relevant = ranked_labels == ql.unsqueeze(1)
        n_rel = class_sizes[ql] - (1 if loo else 0)
        for name, v in ranking_metrics(relevant, n_rel, ks).items():
            per_query.setdefault(name, []).append(torch.where(n_rel > 0, v, torch.nan))
        top = ranked_labels[:, :confusion_k]
        confusion.index_put_((ql.unsqueeze(1).expand_as(top).reshape(-1), top.reshape(-1)),
                             torch.ones(top.numel(), dtype=torch.float64), accumulate=True)
    pq = {k: torch.cat(v) for k, v in per_query.items()}
    valid = ~torch.isnan(pq["ap"])
    summary = {k: float(v[valid].mean()) if valid.any() else float("nan") for k, v in pq.items()}
    summary["map"] = summary.pop("ap")
    confusion = confusion / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    return {
        "per_query": pq,
        "summary": summary,
        "confusion": confusion,
        "queries_without_relevant": int((~valid).sum()),
        "num_queries": len(q),
    }


def per_class(per_query: dict[str, torch.Tensor], query_labels: torch.Tensor, num_classes: int) -> dict[int, dict[str, float]]:
    """Mean of each per-query metric over the queries of each class (NaN-aware)."""
    out = {}
    for c in range(num_classes):
        m = query_labels == c
        if m.any():
            out[c] = {k: float(torch.nanmean(v[m])) for k, v in per_query.items()}
            out[c]["queries"] = int(m.sum())
    return out


def centred(vectors: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``vectors`` (N, D) minus ``mean`` (D,), L2-normalised again: what a centring head searches."""
    return torch.nn.functional.normalize(vectors - mean.to(vectors), dim=1)


class RetrievalMetrics(Metric):
    """Accumulates embeddings, labels and query flags; computes ``retrieval_metrics``.

    Items flagged as queries are searched against the others (query/gallery protocol); when
    none is flagged, leave-one-out over all items. ``center``: the vectors are scored after
    subtracting their mean (over every item, all processes) and normalising again, and the mean
    is kept as ``mean_vector`` (a centring head takes it as its centre).
    """

    full_state_update = False

    def __init__(self, ks: Sequence[int] = KS, center: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.ks, self.center = tuple(ks), center
        self.mean_vector: Optional[torch.Tensor] = None
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("is_query", default=[], dist_reduce_fx="cat")

    def update(self, embeddings: torch.Tensor, labels: torch.Tensor, is_query: Optional[torch.Tensor] = None) -> None:
        self.embeddings.append(embeddings.detach().float())
        self.labels.append(labels.detach().long())
        self.is_query.append(torch.zeros_like(labels, dtype=torch.bool) if is_query is None else is_query.bool())

    def compute(self) -> dict[str, float]:
        emb, lab, isq = (dim_zero_cat(x) for x in (self.embeddings, self.labels, self.is_query))
        if self.center:
            self.mean_vector = emb.mean(dim=0)
            emb = centred(emb, self.mean_vector)
        if isq.any() and (~isq).any():
            res = retrieval_metrics(emb[isq], lab[isq], emb[~isq], lab[~isq], ks=self.ks)
        else:
            res = retrieval_metrics(emb, lab, ks=self.ks)
        return res["summary"]

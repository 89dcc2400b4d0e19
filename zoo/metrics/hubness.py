"""Hubness reduction: ranking by cosine minus how crowded the item's neighbourhood is (CSLS).

In a space trained to pull classes together, a few items sit in dense clusters and come up
among everyone's nearest neighbours ("hubs"); a query that looks a little like that cluster
finds ten of them and nothing of its own kind. Cross-domain similarity local scaling (CSLS,
Conneau et al. 2018, "Word translation without parallel data") ranks gallery item g for query
q by

    cos(q, g) - weight * density(g),   density(g) = mean cosine of g to its k nearest other items

(CSLS itself is 2 cos - r(q) - r(g): the same ranking with weight 1/2). The query's own term
does not change its ranking, so it is left out. The query's nearest item by cosine stays first,
and so does every item whose vector is the query's (cosine >= IDENTICAL): the density re-orders
the rest. The nearest neighbour is the best single answer a space has (a copy is the best there
is), and the copy check (zoo.index.check) names that same item, so a search's first hit and
its verdict agree; what the density buys is the list behind it, where a crowded cluster would
otherwise fill every slot.

Pure functions on torch tensors or numpy arrays; ``zoo.index.hubness`` stores the densities of
an index and re-ranks its candidates with :func:`hubness_scores`, ``retrieval_metrics`` scores
with it (``hubness=(k, weight)``).
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from zoo.errors import ZooError

Array = Union[torch.Tensor, np.ndarray]

DEFAULT_K = 10  # CSLS's neighbourhood
DEFAULT_WEIGHT = 0.5  # CSLS's own: 2 cos - r(q) - r(g) ranks as cos - r(g) / 2
IDENTICAL = 1.0 - 1e-5  # cosine at which a gallery vector is the query's own
LIFT = 1e3  # added to the first items' scores: above any cos - weight * density


def hubness_scores(sim: Array, density: Array, weight: float) -> Array:
    """Scores to rank by: ``sim`` (Q, G) cosines minus ``weight`` x ``density`` ((G,) or (Q, G)),
    each row's nearest by cosine and identical vectors lifted above everything (kept in cosine
    order among themselves). Entries that are not candidates (the query itself in
    leave-one-out, empty slots) must be -inf in ``sim``: they stay -inf."""
    if isinstance(sim, torch.Tensor):
        density = torch.as_tensor(density, dtype=sim.dtype, device=sim.device)
        first = (sim >= IDENTICAL) | (sim == sim.amax(1, keepdim=True))
        return torch.where(first, sim + LIFT, sim - weight * density)
    first = (sim >= IDENTICAL) | (sim == sim.max(1, keepdims=True))
    return np.where(first, sim + LIFT, sim - weight * np.asarray(density, dtype=sim.dtype))


def density_from_neighbours(top_sims: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's density: the mean of its ``k`` largest similarities to other items
    (``top_sims`` (N, >= k) best first; fewer columns: the mean of those there are; none: 0)."""
    n = min(k, top_sims.shape[1])
    return top_sims[:, :n].mean(1) if n else torch.zeros(top_sims.shape[0])


def gallery_neighbours(gallery: torch.Tensor, k: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most similar other items of each row of ``gallery`` (G, D), L2-normalised:
    similarities and indices (G, min(k, G - 1)), best first."""
    g = torch.nn.functional.normalize(gallery.float(), dim=1)
    n = min(k, len(g) - 1)
    sims, idx = [], []
    for s in range(0, len(g), chunk):
        sim = g[s:s + chunk] @ g.T
        rows = torch.arange(len(sim))
        sim[rows, rows + s] = float("-inf")  # not its own neighbour
        top = sim.topk(max(n, 0), dim=1)
        sims.append(top.values)
        idx.append(top.indices)
    return torch.cat(sims), torch.cat(idx)


def loo_density(top_sims: torch.Tensor, top_idx: torch.Tensor, k: int, start: int,
                pair_sims: torch.Tensor) -> torch.Tensor:
    """Densities (q, G) of every gallery item as the queries ``start .. start + q`` (gallery rows,
    leave-one-out) see them had they never been indexed: where the query is among an item's
    ``k`` nearest, the item's (k+1)-th neighbour takes its place. ``top_sims``/``top_idx``
    (G, k+1): gallery_neighbours(gallery, k + 1); ``pair_sims`` (q, G): the queries' cosines."""
    n = min(k, top_sims.shape[1] - 1)
    q, G = pair_sims.shape
    if n <= 0:
        return torch.zeros(q, G)
    full = top_sims[:, :n].mean(1)  # (G,)
    out = full.unsqueeze(0).repeat(q, 1)  # (q, G)
    members = top_idx[:, :n]  # (G, n)
    g_at, slot = torch.nonzero((members >= start) & (members < start + q), as_tuple=True)
    qi = members[g_at, slot] - start
    out[qi, g_at] = full[g_at] + (top_sims[g_at, n] - pair_sims[qi, g_at]) / n
    return out


def check_hubness(k: int, weight: Optional[float] = None) -> None:
    """The options' ranges, as one-line errors (ZooError)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= 1000:
        raise ZooError(f"--hubness {k}: the neighbourhood size must be an integer from 0 (off) to 1000")
    if weight is not None and not (isinstance(weight, (int, float)) and not isinstance(weight, bool)
                                   and 0.0 < float(weight) <= 2.0):
        shown = f"{weight:g}" if isinstance(weight, (int, float)) else repr(weight)
        raise ZooError(f"hubness weight {shown}: give a number above 0 and at most 2")

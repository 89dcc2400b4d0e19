"""Groups from near-duplicate pairs, in O(pairs): connected components (``scipy.sparse.csgraph``)
or stars (greedy: the node with most ungrouped neighbours becomes a centre and takes them),
which never chain two far-apart images together through intermediate ones."""
from __future__ import annotations

import heapq
from typing import Optional

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components as _cc

from zoo.errors import ZooError

GROUPINGS = ("star", "components")


def check_grouping(grouping: str) -> None:
    if grouping not in GROUPINGS:
        raise ZooError(f"--grouping {grouping}: one of {', '.join(GROUPINGS)} is expected")


def component_groups(n: int, pairs: np.ndarray) -> list[np.ndarray]:
    """Connected components (size >= 2) of the graph, members ascending, groups by first member."""
    if len(pairs) == 0:
        return []
    g = sparse.coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = _cc(g, directed=False)
    order = np.argsort(labels, kind="stable")  # members ascending within a label
    cuts = np.nonzero(np.diff(labels[order]))[0] + 1
    groups = [m for m in np.split(order, cuts) if len(m) > 1]
    return sorted(groups, key=lambda m: m[0])


def connected_components(n: int, pairs: np.ndarray) -> list[list[int]]:
    """:func:`component_groups` of any (P, 2) pairs, as lists of ints."""
    return [g.tolist() for g in component_groups(n, np.asarray(pairs, np.int64).reshape(-1, 2))]


def star_groups(n: int, pairs: np.ndarray, sims: Optional[np.ndarray] = None) -> list[np.ndarray]:
    """Groups in which every member is within the threshold of the group's centre (first member).

    Greedy: the node with the most ungrouped neighbours (ties: the larger similarity sum, then the
    lower index) becomes a centre and takes all its ungrouped neighbours. A node whose neighbours
    all joined other centres stays out of every group (its pairs are still reported)."""
    if len(pairs) == 0:
        return []
    w = np.ones(len(pairs), np.float64) if sims is None else sims.astype(np.float64)
    a, b = np.concatenate([pairs[:, 0], pairs[:, 1]]), np.concatenate([pairs[:, 1], pairs[:, 0]])
    adj = sparse.csr_matrix((np.concatenate([w, w]), (a, b)), shape=(n, n))
    indptr, indices = adj.indptr, adj.indices
    degree = np.diff(indptr)
    strength = np.asarray(adj.sum(1)).ravel()
    free = np.ones(n, bool)
    heap = [(-int(degree[i]), -float(strength[i]), int(i)) for i in np.nonzero(degree)[0]]
    heapq.heapify(heap)
    groups = []
    while heap:
        negdeg, negs, i = heapq.heappop(heap)
        if not free[i]:
            continue
        nb, nw = indices[indptr[i]:indptr[i + 1]], adj.data[indptr[i]:indptr[i + 1]]
        ok = free[nb]
        nb = nb[ok]
        if len(nb) < -negdeg:  # stale key (counts only fall): re-queue with the current count
            if len(nb):
                heapq.heappush(heap, (-len(nb), -float(nw[ok].sum()), i))
            continue
        free[i] = False
        free[nb] = False
        groups.append(np.concatenate([[i], np.sort(nb)]).astype(np.int64))
    return groups


def group_similarity_range(groups: list[np.ndarray], n: int, pairs: np.ndarray, sims: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) similarity of the pairs inside each group: O(pairs + N)."""
    label = np.full(n, -1, np.int64)
    for gi, m in enumerate(groups):
        label[m] = gi
    la, lb = label[pairs[:, 0]], label[pairs[:, 1]]
    inside = (la >= 0) & (la == lb)
    lo = np.full(len(groups), np.inf)
    hi = np.full(len(groups), -np.inf)
    np.minimum.at(lo, la[inside], sims[inside])
    np.maximum.at(hi, la[inside], sims[inside])
    return lo, hi


def make_groups(n: int, pairs: np.ndarray, sims: np.ndarray, grouping: str = "star") -> list[np.ndarray]:
    if grouping == "star":
        return star_groups(n, pairs, sims)
    check_grouping(grouping)
    return component_groups(n, pairs)


def group_pairs(groups: list[np.ndarray], n: int, pairs: np.ndarray, sims: np.ndarray) -> list[list[list]]:
    """Per group, its pairs above the threshold as ``[i, j, similarity]`` with i < j positions
    in the group's member list: O(pairs + N)."""
    label = np.full(n, -1, np.int64)
    pos = np.zeros(n, np.int64)
    for gi, m in enumerate(groups):
        label[m] = gi
        pos[m] = np.arange(len(m))
    out: list[list[list]] = [[] for _ in groups]
    la, lb = label[pairs[:, 0]], label[pairs[:, 1]]
    for k in np.nonzero((la >= 0) & (la == lb))[0].tolist():
        i, j = sorted((int(pos[pairs[k, 0]]), int(pos[pairs[k, 1]])))
        out[int(la[k])].append([i, j, round(float(sims[k]), 6)])
    for g in out:
        g.sort()
    return out

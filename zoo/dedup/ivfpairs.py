"""Near-duplicate pairs through an inverted file over compact codes (``ivf`` in
zoo.dedup.pairsearch), for vectors in memory or in a vector file on disk (zoo.index.vecfile).

The PCA (top eigenvectors of a sample's covariance) and the coarse k-means (``faiss.Kmeans``)
are trained on a sample; every vector goes to its nearest list and probes its own list and the
lists of its shortlist (the 64 nearest centres) whose boundary with its own list lies within a
calibrated radius (_Coarse.ranked): a vector deep inside its list probes few, one near many
boundaries more (10M synthetic vectors: 15.1 lists on average, where a fixed count needed 32
for the same calibrated recall). The vectors probing a list are compared with its members as
one matrix product (small products on one BLAS thread each, spread over a thread pool). The
products run on compact codes: the PCA-reduced vectors, float32, or float16 for vectors on disk
(half the memory: 10M x 128 dims is 2.6 GB), with a slack on the bound for the rounding.
A pair survives to the exact check when its PCA-space distance is within the threshold's
distance: the PCA map is an orthogonal projection, which never lengthens a distance, so this
bound drops no true pair. Survivors are re-checked with exact cosine on the full vectors (from a
vector file: only the candidate rows are read, a chunk at a time), so every reported pair and
similarity is exact; only pairs whose lists never meet are missed. Time O(N (nlist + probes N /
nlist) d_pca), memory O(N d_pca) beyond the vectors (none of which need be in memory).

Each vector's nearest-neighbour similarity (the histogram) is exact for vectors in memory; for
vectors on disk it is exact where a candidate was checked and otherwise the PCA-space bound
(1 - distance^2 / 2, an upper bound below the threshold), so that the search reads no more rows.

The expected recall is calibrated on the data itself: sampled vectors get a synthetic copy at
exactly the threshold similarity, moved along its difference to another vector of its list (a
local direction of the data), and the share of (vector, copy) pairs that meet is the estimate.
Pairs closer than the threshold are found more often, so the estimate is a floor for them.
The radius is the smallest that reaches ``target_recall`` on that calibration; ``nprobe`` instead
probes a fixed number of lists per vector (the first ones in the same order).
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import faiss
import numpy as np

from zoo.dedup.pairbase import TOL, PairSearch, _dot_pairs, _single_threaded_libraries, _threads
from zoo.errors import ZooError
from zoo.index.vecfile import VectorFile

TARGET_RECALL = 0.98
PCA_DIM = 128
HALF_SLACK = 2e-3  # float16 codes: rounding of |y_i - y_j|^2 / 2 stays well inside this
CODES = ("float32", "float16")
SHORTLIST = 64  # lists ranked by boundary distance among this many nearest centres (also the most probed)


def ivf_params(n: int, d: int) -> dict:
    """Defaults from the size: PCA to 128 dims above that (at 300k x 1280, 64, 128 and 256 dims
    took 10.6, 11.3 and 15.2 CPU s for the same recall; the bound is lossless at any dim, fewer
    dims only let more candidates through to the exact check); about 2 sqrt(N) lists, at least 40
    vectors each. The coarse assignment costs N x nlist and the list products N x probes x N /
    nlist, so about sqrt(probes N) lists balance them; fewer, larger lists also need fewer
    probes for the same recall and a smaller k-means sample (40 per list)."""
    nlist = int(max(1, min(round(2 * math.sqrt(n)), n // 40)))
    return {"nlist": nlist, "pca_dim": PCA_DIM if d > PCA_DIM else None}


class _Coarse:
    """PCA + k-means trained on a sample; projects vectors and assigns them to lists.

    The PCA is the top ``pca_dim`` eigenvectors of the sample covariance (numpy ``eigh``;
    ``faiss.PCAMatrix`` computes the same projection but its eigen solver took 2-7x longer here).
    Its rows are orthonormal, so projected distances never exceed the true ones."""

    def __init__(self, x: np.ndarray, nlist: int, pca_dim: Optional[int], train_size: int, seed: int,
                 pca_size: int = 20_000):
        rng = np.random.default_rng(seed)
        n, d = x.shape
        drawn = rng.choice(n, size=min(n, max(train_size, pca_size)), replace=False)  # random order
        self.sample = np.sort(drawn[:train_size])  # k-means sample
        self.mean, self.components = None, None
        if pca_dim and pca_dim < d:
            xs = x[np.sort(drawn[:pca_size])]
            self.mean = xs.mean(0, dtype=np.float64).astype(np.float32)  # (d,)
            xc = xs - self.mean
            cov = (xc.T @ xc).astype(np.float64) / max(1, len(xc) - 1)  # (d, d)
            _, vecs = np.linalg.eigh(cov)  # eigenvalues ascending
            self.components = np.ascontiguousarray(vecs[:, ::-1][:, :pca_dim].T, dtype=np.float32)  # (d_pca, d)
            self.offset = self.mean @ self.components.T  # (d_pca,)
        ys = self.project(x[self.sample])
        self.dim = ys.shape[1]
        km = faiss.Kmeans(self.dim, nlist, niter=10, seed=seed, verbose=False, max_points_per_centroid=10_000)
        km.train(ys)
        self.centroids = km.centroids  # (nlist, d_pca)
        self.quantizer = km.index  # IndexFlatL2 over the centroids
        self.sample_lists = self.quantizer.search(ys, 1)[1][:, 0]  # (train_size,) list of each sample vector
        self.gram = self.centroids @ self.centroids.T  # (nlist, nlist), for the boundary distances (160 MB at 6,325 lists)
        self.sq_norms = np.einsum("ij,ij->i", self.centroids, self.centroids)

    def ranked(self, y: np.ndarray, shortlist: int = SHORTLIST) -> tuple[np.ndarray, np.ndarray]:
        """(lists, keys), both (M, m): for each projected vector, the ``shortlist`` nearest lists
        in the order they are probed, its own first, and each one's key.

        A near copy of a vector in list A that lies in list B is within the threshold's distance
        of the A|B boundary (the hyperplane halfway between their centres); more precisely, the
        two distances of the pair to that boundary add up to at most the pair's distance. So a
        list's key is the vector's distance to its boundary with the own list,
        (|y - c_B|^2 - |y - c_A|^2) / (2 |c_B - c_A|) (-inf for the own list), and lists are
        probed by key, among the nearest centres, rather than by the distance to c_B alone. At 2M
        synthetic 1280-d vectors, 2828 lists, this met recall 0.98 of pairs at the threshold with
        10 lists instead of 14. At 10M (6,325 lists) the 32 nearest centres held only 0.973 of
        the pairs, the 64 nearest 0.984, and the radius for 0.98 probed 15.1 lists on average."""
        m = min(len(self.centroids), shortlist)
        dist, lists = self.quantizer.search(y, m)  # ascending squared distances, own list first
        key = np.full(lists.shape, -np.inf, np.float32)
        if m > 1:
            own = lists[:, :1]
            gap2 = self.sq_norms[own] + self.sq_norms[lists] - 2 * self.gram[own, lists]
            key[:, 1:] = ((dist - dist[:, :1]) / (2 * np.sqrt(np.maximum(gap2, 1e-12))))[:, 1:]
        order = np.argsort(key, axis=1, kind="stable")
        return np.take_along_axis(lists, order, axis=1), np.take_along_axis(key, order, axis=1)

    def project(self, x: np.ndarray) -> np.ndarray:
        """(M, d) -> (M, d_pca) float32."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.components is None:
            return x.copy()
        return x @ self.components.T - self.offset


def meeting_need(x: np.ndarray, coarse: _Coarse, threshold: float, shortlist: int = SHORTLIST,
                 size: int = 2000, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """What each of ``size`` synthetic pairs at the threshold similarity needs to meet: (lists,
    radius), the fewest lists probed (rank in _Coarse.ranked, shortlist + 1 if beyond it) and the
    smallest key radius (inf if beyond the shortlist), from whichever side of the pair needs less.

    Each sampled vector v gets a copy c v + sqrt(1 - c^2) u at exactly the threshold c, with u
    the part of (v - w) orthogonal to v, w another vector of v's list: a local direction of the
    data, as a near copy (crop, re-encoding) moves an embedding a little, not across the set."""
    rng = np.random.default_rng(seed)
    n = len(x)
    ids = rng.choice(n, size=min(size, n), replace=False)
    v = x[ids]  # (S, d)
    yv = coarse.project(v)
    own = coarse.quantizer.search(yv, 1)[1][:, 0]
    # a random other vector of the same list (the list's members within the sample drawn for training)
    sample_lists = coarse.sample_lists
    order = np.argsort(sample_lists, kind="stable")
    starts = np.searchsorted(sample_lists[order], np.arange(len(coarse.centroids) + 1))
    size_of = starts[own + 1] - starts[own]
    pick = starts[own] + (rng.random(len(v)) * np.maximum(size_of, 1)).astype(np.int64)
    w = x[coarse.sample[order[np.minimum(pick, len(order) - 1)]]]
    delta = v - w
    delta -= np.einsum("ij,ij->i", delta, v)[:, None] * v  # orthogonal to v
    norm = np.linalg.norm(delta, axis=1, keepdims=True)
    ok = (norm[:, 0] > 1e-6) & (size_of > 0)
    v, yv, u = v[ok], yv[ok], delta[ok] / norm[ok]
    if len(v) == 0:
        return np.ones(1, np.int64), np.full(1, -np.inf)
    t = min(float(threshold), 1.0)
    copy = (t * v + math.sqrt(max(0.0, 1 - t * t)) * u).astype(np.float32)
    lists_v, keys_v = coarse.ranked(yv, shortlist)
    lists_c, keys_c = coarse.ranked(coarse.project(copy), shortlist)

    def find(lists, keys, target):  # (rank, key) of target in each row: (shortlist + 1, inf) if absent
        hit = lists == target[:, None]
        at, found = hit.argmax(1), hit.any(1)
        return np.where(found, at + 1, lists.shape[1] + 1), np.where(found, keys[np.arange(len(keys)), at], np.inf)

    (rank_v, key_v), (rank_c, key_c) = find(lists_v, keys_v, lists_c[:, 0]), find(lists_c, keys_c, lists_v[:, 0])
    return np.minimum(rank_v, rank_c), np.minimum(key_v, key_c)


def calibrated_radius(need: np.ndarray, target: float) -> float:
    """The smallest key radius at which a ``target`` share of the pairs meet (inf: not reached
    within the shortlist, which is then probed whole)."""
    ranked = np.sort(need)
    k = max(1, math.ceil(target * len(ranked)))
    return float(ranked[k - 1]) if k <= len(ranked) and np.isfinite(ranked[k - 1]) else math.inf


def ivf_search(x: np.ndarray, threshold: float, nprobe: Optional[int] = None, nlist: Optional[int] = None,
               pca_dim: Optional[int] = -1, train_size: Optional[int] = None, target_recall: float = TARGET_RECALL,
               max_probe: int = SHORTLIST, seed: int = 0, chunk: int = 16384, threads: Optional[int] = None,
               codes: Optional[str] = None, block_entries: int = 1 << 24) -> PairSearch:
    """Pairs at or above ``threshold`` through an inverted file; see the module docstring.

    ``x``: (N, d) unit rows, an array or a VectorFile. ``pca_dim`` -1: the default for d (128
    above 128, else none); None: no PCA. ``nprobe`` None: each vector probes the lists within the
    smallest boundary radius whose calibrated recall reaches ``target_recall``; a number: that
    many lists per vector. ``max_probe``: the shortlist of lists ranked per vector. ``codes``:
    float32 or float16 (default: float16 for a VectorFile, float32 for an array). ``block_entries``: the largest distance block of one list
    (probing vectors x members), 64 MB of float32 by default."""
    t0 = time.perf_counter()
    n, d = x.shape
    on_disk = isinstance(x, VectorFile)
    codes = codes or ("float16" if on_disk else "float32")
    if codes not in CODES:
        raise ZooError(f"codes '{codes}': one of {', '.join(CODES)} is expected")
    defaults = ivf_params(n, d)
    nlist = int(nlist or defaults["nlist"])
    pca_dim = defaults["pca_dim"] if pca_dim == -1 else pca_dim
    if nlist < 1 or nlist > n:
        raise ZooError(f"nlist {nlist}: between 1 and the number of vectors ({n}) is expected")
    with _single_threaded_libraries(), ThreadPoolExecutor(_threads(threads)) as pool:
        coarse = _Coarse(x, nlist, pca_dim, int(train_size or min(n, 40 * nlist)), seed)
        t_train = time.perf_counter() - t0

        # which lists each vector probes: by default every list of its shortlist whose key is
        # within the radius that meets target_recall of the calibration pairs (a vector deep in its
        # list probes few, one near many boundaries more); with nprobe, its first nprobe lists
        shortlist = min(nlist, max(max_probe, nprobe or 0))
        need_lists, need_radius = meeting_need(x, coarse, threshold, shortlist, seed=seed + 1)
        if nprobe is None:
            radius, cap = calibrated_radius(need_radius, target_recall), shortlist
            meet = np.isfinite(need_radius) if math.isinf(radius) else need_radius <= radius  # inf: beyond the shortlist
            expected = 1.0 if shortlist >= nlist else float(meet.mean())
        else:
            radius, cap = math.inf, int(min(max(1, nprobe), nlist))
            expected = 1.0 if cap >= nlist else float((need_lists <= cap).mean())

        # project everything and pick the lists each vector probes, chunk by chunk:
        # y (N, d_pca + 2) float32 rows [y, |y|^2 / 2, 1], own (N,) each vector's list, and the
        # (vector, list) probes; float16 codes: y rows [y, -, 1] and the half norms of the rounded
        # codes beside them in float32
        dim = coarse.dim
        y = np.empty((n, dim + 2), np.float32 if codes == "float32" else np.float16)
        half = None if codes == "float32" else np.empty(n, np.float32)
        own = np.empty(n, np.int64)
        index_type = np.int32 if n < 2**31 else np.int64

        def assign(s: int) -> tuple[np.ndarray, np.ndarray]:
            part = coarse.project(x[s:s + chunk])
            lists, keys = coarse.ranked(part, shortlist)
            own[s:s + chunk] = lists[:, 0]
            rows, cols = np.nonzero(keys[:, :cap] <= radius)
            if half is not None:
                part = part.astype(np.float16).astype(np.float32)
            half_norms = 0.5 * np.einsum("ij,ij->i", part, part)
            if half is not None:
                half[s:s + chunk] = half_norms
            y[s:s + chunk, :dim] = part
            y[s:s + chunk, dim] = half_norms
            y[s:s + chunk, dim + 1] = 1.0
            return (rows + s).astype(index_type), lists[rows, cols].astype(np.int32)

        def code_rows(ids: np.ndarray) -> np.ndarray:
            rows = y[ids]
            if half is not None:
                rows = rows.astype(np.float32)
                rows[:, dim] = half[ids]
            return rows

        parts = list(pool.map(assign, range(0, n, chunk)))
        probe_vector = np.concatenate([p[0] for p in parts])
        probe_list = np.concatenate([p[1] for p in parts])
        del parts
        n_probes = len(probe_list)
        t_assign = time.perf_counter() - t0 - t_train

        # members of each list, and the vectors probing each list (its members among them)
        order = np.argsort(own, kind="stable")
        starts = np.searchsorted(own[order], np.arange(nlist + 1))
        members = [order[starts[i]:starts[i + 1]] for i in range(nlist)]
        position = np.empty(n, np.int64)  # each vector's place among its list's members
        position[order] = np.arange(n) - starts[own[order]]
        by_list = np.argsort(probe_list, kind="stable")
        pstarts = np.searchsorted(probe_list[by_list], np.arange(nlist + 1))
        del probe_list
        bound = 1.0 - (threshold - TOL) + (HALF_SLACK if half is not None else 0.0)  # the PCA distance bound

        def scan(li: int):
            """The vectors probing list li against its members: candidate pairs, and the nearest
            candidate of each probing vector."""
            cols = members[li]
            if len(cols) == 0:
                return None
            probing = probe_vector[by_list[pstarts[li]:pstarts[li + 1]]].astype(np.int64)  # (Q,) vectors probing li
            c = code_rows(cols)  # rows [-y_j, 1, |y_j|^2 / 2], so that one product gives the distances
            c[:, :dim] *= -1
            c[:, dim:] = c[:, [dim + 1, dim]]
            found_a, found_b, near = [], [], []
            step = max(1, block_entries // len(cols))  # a big list's product in blocks: O(block) memory
            for s in range(0, len(probing), step):
                qs = probing[s:s + step]
                h = code_rows(qs) @ c.T  # (Q, |cols|) |y_i - y_j|^2 / 2
                mine = np.nonzero(own[qs] == li)[0]
                h[mine, position[qs[mine]]] = np.inf  # self
                # each row's minimum first (the probing vector's nearest candidate here); the
                # threshold test then runs only on the few rows whose minimum passes it
                arg = h.argmin(1)
                low = h[np.arange(len(qs)), arg]
                hit = np.nonzero(low <= bound)[0]
                rows, cs = np.nonzero(h[hit] <= bound)
                a, b = qs[hit[rows]], cols[cs]
                found_a.append(np.minimum(a, b))
                found_b.append(np.maximum(a, b))
                near.append((qs, cols[arg], low))
            return np.concatenate(found_a), np.concatenate(found_b), near

        cand_a, cand_b = [], []
        best, best_id = np.full(n, np.inf, np.float32), np.full(n, -1, np.int64)
        for out in pool.map(scan, range(nlist)):
            if out is None:
                continue
            cand_a.append(out[0])
            cand_b.append(out[1])
            for ids, cand, dist in out[2]:
                better = dist < best[ids]
                best[ids[better]] = dist[better]
                best_id[ids[better]] = cand[better]
        n_cand = sum(len(c) for c in cand_a)
        del y, half, probe_vector, by_list
        t_lists = time.perf_counter() - t0 - t_train - t_assign

        # exact check of the candidates, and of each vector's nearest candidate, on the full vectors
        key = np.unique(np.concatenate(cand_a + [np.zeros(0, np.int64)]) * n
                        + np.concatenate(cand_b + [np.zeros(0, np.int64)]))
        a, b = key // n, key % n
        sims = _dot_pairs(x, a, b, pool)
        keep = sims >= threshold - TOL
        nearest = np.full(n, -np.inf, np.float32)
        has = np.nonzero(best_id >= 0)[0]
        if on_disk:  # exact where a candidate was checked, else the PCA bound (reads no more rows)
            nearest[has] = np.minimum(1.0 - best[has], threshold - 2 * TOL)
            checked = np.zeros(n, bool)
            checked[a], checked[b] = True, True
            nearest[checked] = -np.inf
            np.maximum.at(nearest, a, sims)
            np.maximum.at(nearest, b, sims)
        else:
            nearest[has] = _dot_pairs(x, has, best_id[has], pool)
        del best
        pairs, sims = np.stack([a[keep], b[keep]], 1), sims[keep]
        np.maximum.at(nearest, pairs[:, 0], sims)
        np.maximum.at(nearest, pairs[:, 1], sims)
    seconds = time.perf_counter() - t0
    mean_probes = n_probes / max(n, 1)
    params = {"n": n, "dim": d, "nlist": nlist, "nprobe": cap if math.isinf(radius) else round(mean_probes, 2),
              "radius": None if math.isinf(radius) else round(radius, 5), "shortlist": shortlist,
              "pca_dim": coarse.dim if coarse.components is not None else None,
              "train_size": len(coarse.sample), "candidates": int(n_cand), "codes": codes,
              "timing_s": {"train": round(t_train, 2), "assign": round(t_assign, 2), "lists": round(t_lists, 2),
                           "check": round(seconds - t_train - t_assign - t_lists, 2)}}
    probing = (f"nprobe {cap}" if math.isinf(radius) else
               f"each vector probing the lists whose boundary is within {radius:.4f} of it, {mean_probes:.1f} on average")
    note = (f"inverted file ({nlist} lists, {probing}): expected recall {expected:.3f}, calibrated on "
            f"synthetic pairs at exactly the threshold (closer pairs are found more often); similarities are exact")
    return PairSearch(pairs, sims, nearest, "ivf", params, expected, note, seconds)


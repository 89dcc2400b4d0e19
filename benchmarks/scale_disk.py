"""Scale benchmark with the vectors on disk (``benchmarks/scale.py --disk DIR``): the same
synthetic clustered embeddings with planted copies as scale.py, written to a float16 vector
file (zoo.index.vecfile) a chunk at a time, then

* near-duplicate search straight from the file (zoo.dedup.pairsearch.find_pairs on a
  VectorFile: compact float16 PCA codes in memory, candidate rows read back for the exact
  check): time, CPU, peak RSS, recall of the planted pairs;
* a zoo index built from the file (``--factory``, default auto: chosen by the machine's memory),
  streamed in chunks, saved (nprobe calibrated), opened memory-mapped: build s, open s,
  recall@10 against exact search of 200 queries (a stored vector plus small noise), p50 of single
  queries and queries/s of one batch.

Peak RSS counts the process's resident pages, mapped file pages included.
"""
from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np

from zoo.data.images import Record
from zoo.dedup.groups import make_groups
from zoo.dedup.pairsearch import find_pairs
from zoo.evaluate.resources import PeakMemory
from zoo.index.core import ZooIndex, load_index
from zoo.index.vecfile import VectorFile, write_vectors


def synthetic_file(path: Path, n: int, dim: int, seed: int = 0, copy_share: float = 0.01, chunk: int = 65536
                   ) -> tuple[VectorFile, np.ndarray]:
    """scale.synthetic's data written to ``path`` as float16, in chunks (two threads), and the planted pairs."""
    rng = np.random.default_rng(seed)
    spectrum = ((1.0 + np.arange(dim)) ** -0.5).astype(np.float32)
    centres = rng.standard_normal((max(10, n // 1000), dim), dtype=np.float32) * spectrum
    n_copies = int(n * copy_share)
    pos = rng.permutation(n)
    copies, rest = np.sort(pos[:n_copies]), pos[n_copies:]
    sources = rest[rng.integers(0, len(rest), n_copies)]

    def block(s: int) -> np.ndarray:
        r = np.random.default_rng([seed, 1, s])
        m = min(chunk, n - s)
        x = centres[r.integers(0, len(centres), m)]
        x += r.standard_normal((m, dim), dtype=np.float32) * spectrum
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    with ThreadPoolExecutor(2) as pool:
        vf = write_vectors(path, pool.map(block, range(0, n, chunk)), n, dim, np.float16)
    mm = np.memmap(path, np.float16, "r+", offset=vf.offset, shape=(n, dim))
    for s in range(0, n_copies, chunk):  # the copies, written over their rows
        src, dst = sources[s:s + chunk], copies[s:s + chunk]
        v = vf.take(src)
        u = rng.standard_normal(v.shape, dtype=np.float32) * spectrum
        u -= np.einsum("ij,ij->i", u, v)[:, None] * v
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        c = rng.uniform(0.96, 0.98, len(v)).astype(np.float32)[:, None]
        mm[dst] = (c * v + np.sqrt(1 - c * c) * u).astype(np.float16)
    mm.flush()
    del mm
    planted = np.sort(np.stack([sources, copies], 1), axis=1)
    return VectorFile.open(path), planted[np.lexsort((planted[:, 1], planted[:, 0]))]


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Records:
    """len(n) Records made on demand (a 10M list of them would take GBs)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        if isinstance(key, slice):
            return [Record(f"/data/{i // 10000:04d}/{i:08d}.jpg") for i in range(*key.indices(self.n))]
        return Record(f"/data/{key // 10000:04d}/{key:08d}.jpg")


class StubModel:
    def __init__(self, dim: int):
        self.embedding_dim, self.architecture, self.weights_id = dim, "synthetic", "random init (seed 0)"
        self.hparams, self.data_config, self.recipe = {"backbone": None, "head": "frozen"}, {}, {}


def pair_row(vf: VectorFile, planted: np.ndarray, threshold: float, nprobe=None, pca_dim: int = -1) -> dict:
    n = len(vf)
    with PeakMemory(interval=0.2) as mem:
        cpu, t = cpu_seconds(), time.perf_counter()
        res = find_pairs(vf, threshold, method="ivf", nprobe=nprobe, pca_dim=pca_dim)
        groups = make_groups(n, res.pairs, res.sims, "star")
        wall, cpu = time.perf_counter() - t, cpu_seconds() - cpu
    found = res.pairs[:, 0] * n + res.pairs[:, 1]
    rec = float(np.isin(planted[:, 0] * n + planted[:, 1], found).mean()) if len(planted) else 1.0
    return {"n": n, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_mb": round(mem.peak_rss_mb),
            "planted_recall": round(rec, 4), "expected": round(res.expected_recall, 4), "pairs": len(res.pairs),
            "groups": len(groups), **{k: res.params.get(k) for k in ("nlist", "nprobe", "pca_dim", "codes", "candidates", "timing_s")}}


def exact_knn(vf: VectorFile, queries: np.ndarray, k: int = 10, chunk: int = 262144) -> np.ndarray:
    """Exact top-k ids of unit ``queries`` over the file, a chunk at a time."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for s, part in vf.chunks(chunk):
        sims, ids = faiss.knn(queries, part, k, metric=faiss.METRIC_INNER_PRODUCT)
        alls, alli = np.concatenate([best_s, sims], 1), np.concatenate([best_i, ids + s], 1)
        top = np.argsort(-alls, 1)[:, :k]
        best_s, best_i = np.take_along_axis(alls, top, 1), np.take_along_axis(alli, top, 1)
    return best_i


def index_row(vf: VectorFile, work: Path, factory: str = "auto", n_queries: int = 200) -> dict:
    n, dim = vf.shape
    out = work / "index"
    shutil.rmtree(out, ignore_errors=True)
    with PeakMemory(interval=0.2) as mem:
        t0 = time.perf_counter()
        index = ZooIndex.create(StubModel(dim), factory, root=Path("/data"), expected=n)
        index.add_file(vf, Records(n))
        t_add = time.perf_counter() - t0
        index.save(out)
        build = time.perf_counter() - t0
    picked, calibration = index.meta["factory"], index.meta.get("calibration")
    del index
    t0 = time.perf_counter()
    idx = load_index(out)
    open_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    q = vf.take(np.sort(rng.choice(n, n_queries, replace=False)))
    q += 0.01 * rng.standard_normal(q.shape, dtype=np.float32) / np.sqrt(dim)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    lat = []
    for one in q:
        t = time.perf_counter()
        idx.search_vectors(one[None], 10)
        lat.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    _, ids = idx.search_vectors(q, 10)
    qps = len(q) / (time.perf_counter() - t)
    truth = exact_knn(vf, q)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), truth.tolist())]))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and f.name != "rerank.npy")
    return {"n": n, "factory": picked, "search": idx.meta.get("search"), "calibration": calibration,
            "add_s": round(t_add, 1), "build_s": round(build, 1), "build_peak_rss_mb": round(mem.peak_rss_mb),
            "index_mb_beside_vectors": round(size / 2**20), "open_s": round(open_s, 3),
            "recall@10": round(recall, 3), "p50_ms": round(float(np.median(lat)), 2), "batch_qps": round(qps)}


def run(sizes, dim: int, threshold: float, folder: Path, seed: int = 0, nprobe=None, pca_dim: int = -1,
        factory: str = "auto", skip_index: bool = False, keep: bool = False, skip_pairs: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in sizes:
        path = folder / f"synthetic-{n}x{dim}-{seed}.npy"
        t = time.perf_counter()
        if keep and path.exists() and path.with_suffix(".planted.npy").exists():  # kept from an earlier run
            vf, planted = VectorFile.open(path), np.load(path.with_suffix(".planted.npy"))
        else:
            vf, planted = synthetic_file(path, n, dim, seed)
            np.save(path.with_suffix(".planted.npy"), planted)
        print(f"data: {n:,} x {dim} float16 on disk ({vf.nbytes / 2**30:.1f} GiB) ready in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
        if not skip_pairs:
            print("pairs:", pair_row(vf, planted, threshold, nprobe, pca_dim), flush=True)
        if not skip_index:
            print("index:", index_row(vf, folder, factory), flush=True)
        if not keep:
            shutil.rmtree(folder / "index", ignore_errors=True)
            path.unlink()
            path.with_suffix(".planted.npy").unlink()

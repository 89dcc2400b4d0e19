"""Index build, open and search at scale: one row per (N, factory).

    python benchmarks/index_scale.py                       # N = 100k, dim 1280
    python benchmarks/index_scale.py --sizes 100000 1000000 --factories Flat auto

Vectors are synthetic and clustered (seeded: 2000 Gaussian centres, each vector a centre plus
noise, L2-normalised), as embeddings of photos are. Each configuration runs in a fresh process
so that its peak RSS is its own. Columns: build (embed excluded: add + train + save), on-disk
size, open time (memory-mapped), recall@10 against exact search, single-query latency p50,
batched queries per second, and an update of 100 items (100 removed by id, 100 added, saved). The ground truth is an exact inner-product search of the same
1000 queries.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2000, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # in blocks: O(block) temporaries
        m = min(100_000, n - start)
        out[start : start + m] = centres[rng.integers(0, len(centres), m)] + 0.6 * rng.normal(size=(m, dim)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


class StubModel:
    """The identity an index records, for vectors that come from no model."""

    def __init__(self, dim: int):
        self.embedding_dim, self.architecture, self.weights_id = dim, "synthetic", "random init (seed 0)"
        self.hparams, self.data_config, self.recipe = {"backbone": None, "head": "frozen"}, {}, {}


def one(n: int, dim: int, factory: str, work: Path) -> dict:
    import faiss

    from zoo.data.images import Record
    from zoo.index.core import ZooIndex, load_index

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    x = vectors(n, dim)
    queries = x[np.random.default_rng(1).choice(n, 1000, replace=False)] + 0.01
    _, truth = faiss.knn(queries, x, 10, metric=faiss.METRIC_INNER_PRODUCT)  # exact, no copy of x
    records = [Record(f"/data/{i // 1000:04d}/{i:07d}.jpg") for i in range(n)]
    out = work / "i.index"
    t0 = time.perf_counter()
    index = ZooIndex.create(StubModel(dim), factory, root=Path("/data"), expected=n)
    index.add(x, records)
    del x  # the index holds its own copy
    index.save(out)
    build = time.perf_counter() - t0
    picked = index.meta["factory"]
    del index, records
    t0 = time.perf_counter()
    idx = load_index(out)
    open_s = time.perf_counter() - t0
    _, ids = idx.search_vectors(queries, 10)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), truth.tolist())]))
    lat = []
    for q in queries[:200]:
        t = time.perf_counter()
        idx.search_vectors(q[None], 10)
        lat.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    idx.search_vectors(queries, 10)
    qps = len(queries) / (time.perf_counter() - t)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    # an update of 100 items: 100 removed by id, 100 added, a new version saved
    t = time.perf_counter()
    upd = ZooIndex.load(out, mmap=False).writable_copy()
    upd.remove(list(range(100)))
    upd.add(queries[:100], [Record(f"/data/new/{i}.jpg") for i in range(100)])
    upd.save(out, overwrite=True)
    update_s = time.perf_counter() - t
    return {"n": n, "dim": dim, "factory": picked, "search": idx.meta.get("search", {}), "build_s": round(build, 1),
            "disk_mb": round(size / 2**20), "open_s": round(open_s, 2), "recall@10": round(recall, 3),
            "p50_ms": round(float(np.median(lat)), 2), "batch_qps": round(qps), "update_100_s": round(update_s, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--factories", nargs="+", default=["Flat", "auto", "IVF1024,SQ8", "HNSW32"])
    ap.add_argument("--one", nargs=2, metavar=("N", "FACTORY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as work:
            print(json.dumps(one(int(args.one[0]), args.dim, args.one[1], Path(work))))
        return
    cols = ["n", "factory", "search", "build_s", "disk_mb", "open_s", "recall@10", "p50_ms", "batch_qps",
            "update_100_s", "peak_rss_mb"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for n in args.sizes:
        for factory in args.factories:
            r = subprocess.run([sys.executable, __file__, "--dim", str(args.dim), "--one", str(n), factory],
                               capture_output=True, text=True)
            if r.returncode:
                print(f"| {n} | {factory} | failed: {r.stderr.strip().splitlines()[-1][:80]} |", flush=True)
                continue
            row = json.loads(r.stdout.strip().splitlines()[-1])
            print("| " + " | ".join(str(row[c]) for c in cols) + " |", flush=True)
    print(f"\n{os.cpu_count()} CPU(s); vectors: synthetic clustered, dim {args.dim}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Near-duplicate search at scale: exact vs inverted file on synthetic embeddings.

    python benchmarks/scale.py                      # N = 10k and 100k (exact too)
    python benchmarks/scale.py --sizes 1000000 --no-exact     # ~2 min, ~8 GB
    python benchmarks/scale.py --sizes 100000 --nprobe 4 6 8 12   # recall vs nprobe
    python benchmarks/scale.py --sizes 10000000 --disk /work/scratch-scale   # vectors on disk
                                                    # (float16 file), pair search + a zoo index

Data (seeded, ``synthetic``): N unit vectors of ``--dim`` in ``N/1000`` clusters. Each
coordinate k has standard deviation (k+1)^-1/2, a decaying spectrum like real CNN embeddings
(about 36 effective dimensions); a vector is its cluster centre plus noise of the same size and
shape, so same-cluster vectors have cosine ~0.5 and a typical nearest neighbour ~0.75. 1% of
the rows are planted near copies of other rows (some rows get two): copy = c v + sqrt(1-c^2) u,
with u a unit direction drawn with the same spectrum and orthogonal to v, and c uniform in
[0.96, 0.98], so each planted pair has cosine c exactly (~0.97).

Recall of planted pairs = planted pairs found / planted pairs (all are above the 0.95
threshold); recall vs exact = pairs found / pairs the exact search finds (only where exact runs).
"expected" is the recall the search itself reports (calibrated on the data, see
zoo/pairsearch.py). CPU s is user + system time of the process (2 cores: up to 2x wall).
Peak RSS is sampled during the search; "added" is peak minus the RSS before it (the vectors
themselves are already resident). Groups use the default star grouping.
"""
from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np

from zoo.dedup.groups import make_groups
from zoo.dedup.pairsearch import choose_method, exact_search, ivf_search
from zoo.evaluate.resources import PeakMemory


def synthetic(n: int, dim: int, seed: int = 0, copy_share: float = 0.01, chunk: int = 65536
              ) -> tuple[np.ndarray, np.ndarray]:
    """(N, dim) float32 unit rows and the planted pairs (P, 2), i < j; see the module docstring."""
    rng = np.random.default_rng(seed)
    spectrum = ((1.0 + np.arange(dim)) ** -0.5).astype(np.float32)
    centres = rng.standard_normal((max(10, n // 1000), dim), dtype=np.float32) * spectrum
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x[s:s + m] = centres[rng.integers(0, len(centres), m)]
        x[s:s + m] += rng.standard_normal((m, dim), dtype=np.float32) * spectrum
        x[s:s + m] /= np.linalg.norm(x[s:s + m], axis=1, keepdims=True)
    n_copies = int(n * copy_share)
    pos = rng.permutation(n)
    copies, rest = pos[:n_copies], pos[n_copies:]
    sources = rest[rng.integers(0, len(rest), n_copies)]
    for s in range(0, n_copies, chunk):
        src, dst = sources[s:s + chunk], copies[s:s + chunk]
        v = x[src]
        u = rng.standard_normal(v.shape, dtype=np.float32) * spectrum
        u -= np.einsum("ij,ij->i", u, v)[:, None] * v
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        c = rng.uniform(0.96, 0.98, len(v)).astype(np.float32)[:, None]
        x[dst] = c * v + np.sqrt(1 - c * c) * u
    planted = np.sort(np.stack([sources, copies], 1), axis=1)
    return x, planted[np.lexsort((planted[:, 1], planted[:, 0]))]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(x: np.ndarray, threshold: float, method: str, nprobe=None, **kw) -> dict:
    with PeakMemory() as mem:
        before = mem.peak_rss_mb
        cpu, t = cpu_seconds(), time.perf_counter()
        res = exact_search(x, threshold) if method == "exact" else ivf_search(x, threshold, nprobe=nprobe, **kw)
        groups = make_groups(len(x), res.pairs, res.sims, "star")
        wall, cpu = time.perf_counter() - t, cpu_seconds() - cpu
    timing = res.params.get("timing_s", {})
    return {"res": res, "groups": len(groups), "wall": wall, "cpu": cpu, "peak": mem.peak_rss_mb,
            "added": mem.peak_rss_mb - before, "build": timing.get("train", 0) + timing.get("assign", 0),
            "search": wall - timing.get("train", 0) - timing.get("assign", 0)}


def keys(pairs: np.ndarray, n: int) -> np.ndarray:
    return pairs[:, 0].astype(np.int64) * n + pairs[:, 1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--nprobe", type=int, nargs="*", default=[None], help="fixed nprobe values (default: calibrated)")
    p.add_argument("--nlist", type=int, default=None)
    p.add_argument("--pca-dim", type=int, default=-1)
    p.add_argument("--no-exact", action="store_true", help="skip the exact search (it is N^2)")
    p.add_argument("--exact-max", type=int, default=100_000, help="largest N searched exactly for reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--disk", type=str, default=None,
                   help="write the vectors to a float16 file in this folder and search from it; also build, open and "
                        "query a zoo index of them (benchmarks/scale_disk.py)")
    p.add_argument("--factory", default="auto", help="with --disk: the index's factory")
    p.add_argument("--no-index", action="store_true", help="with --disk: pair search only")
    p.add_argument("--no-pairs", action="store_true", help="with --disk: the index only")
    p.add_argument("--keep", action="store_true", help="with --disk: keep the data (and use data kept earlier)")
    args = p.parse_args()
    if args.disk:
        from pathlib import Path

        from scale_disk import run as run_disk

        run_disk(args.sizes, args.dim, args.threshold, Path(args.disk), args.seed, args.nprobe[0], args.pca_dim,
                 args.factory, args.no_index, args.keep, args.no_pairs)
        return

    print(f"near-duplicate search, synthetic {args.dim}-d embeddings, threshold {args.threshold}, "
          f"{os.cpu_count()} CPUs (shared with other work)")
    head = (f"{'N':>8s} {'method':>6s} {'nlist':>5s} {'nprobe':>6s} {'pca':>4s} {'build s':>7s} {'search s':>8s} "
            f"{'total s':>7s} {'CPU s':>6s} {'peak RSS MB':>11s} {'added MB':>8s} {'vectors MB':>10s} "
            f"{'planted':>7s} {'recall':>6s} {'expected':>8s} {'vs exact':>8s} {'pairs':>7s} {'groups':>7s}")
    print(head, flush=True)
    growth = []
    for n in args.sizes:
        x, planted = synthetic(n, args.dim, args.seed)
        truth = keys(planted, n)
        rows, exact_keys = [], None
        methods = []
        if not args.no_exact and n <= args.exact_max:
            methods.append(("exact", None))
        auto = choose_method(n, args.dim)
        methods += [("ivf", npb) for npb in args.nprobe]
        for method, npb in methods:
            r = run(x, args.threshold, method, npb, nlist=args.nlist, pca_dim=None if args.pca_dim == 0 else args.pca_dim)
            res = r["res"]
            found = keys(res.pairs, n)
            if method == "exact":
                exact_keys = found
            rec = np.isin(truth, found).mean() if len(truth) else 1.0
            vs = f"{np.isin(exact_keys, found).mean():8.4f}" if exact_keys is not None and len(exact_keys) else f"{'-':>8s}"
            prm = res.params
            label = method + ("*" if method == auto else "")
            print(f"{n:8d} {label:>6s} {prm.get('nlist', '-')!s:>5s} {prm.get('nprobe', '-')!s:>6s} "
                  f"{prm.get('pca_dim') or '-'!s:>4s} {r['build']:7.1f} {r['search']:8.1f} {r['wall']:7.1f} "
                  f"{r['cpu']:6.1f} {r['peak']:11.0f} {r['added']:8.0f} {x.nbytes / 2**20:10.0f} {len(truth):7d} "
                  f"{rec:6.4f} {res.expected_recall:8.4f} {vs} {len(res.pairs):7d} {r['groups']:7d}", flush=True)
            if method == "ivf":
                growth.append((n, r["cpu"], r["wall"], r["added"], prm))
        del x
    ivf = sorted({g[0]: g for g in growth}.values())
    if len(ivf) >= 2:
        (n0, c0, _, _, _), (n1, c1, w1, a1, prm) = ivf[-2], ivf[-1]
        k = np.log(c1 / c0) / np.log(n1 / n0)
        n10 = 10_000_000
        cpu10 = c1 * (n10 / n1) ** k
        print(f"\nCPU time grows as N^{k:.2f} from {n0:,} to {n1:,} (the cost model is N^1.5 with 2 sqrt(N) lists, "
              f"plus the calibrated nprobe's growth); projected to N = {n10:,}: {cpu10 / 60:.0f} CPU min (wall at least "
              f"half that on 2 free cores); memory: the vectors ({n10 * args.dim * 4 / 2**30:.0f} GiB, or memory-mapped: "
              f"the search reads them in chunks and by row) + PCA copy "
              f"({n10 * ((prm.get('pca_dim') or args.dim) + 2) * 4 / 2**30:.1f} GiB) + a working set "
              f"(here {a1 - n1 * ((prm.get('pca_dim') or args.dim) + 2) * 4 / 2**20:.0f} MB beyond the PCA copy)")


if __name__ == "__main__":
    main()

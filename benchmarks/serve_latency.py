"""`zoo serve` search latency (1 and 4 concurrent clients) next to a `zoo search` process.

    python benchmarks/serve_latency.py [--index food7.index] [--requests 200] [--clients 1 4]
    python benchmarks/serve_latency.py --other-python ../base/.venv/bin/python   # start-up of another install too
    python benchmarks/serve_latency.py --review-only [--review-groups 100000]     # the review page alone
    python benchmarks/serve_latency.py --runtimes torch openvino onnx --clients 1   # per `zoo serve --runtime`

Starts `zoo serve` on a free loopback port as a subprocess, uploads food7 photos to
/api/search (k=10) from N client threads (a fixed count of requests, loopback only), prints p50
and p95 per setting, then times whole `zoo search` processes (start-up + one query), the cost
the server saves. Without --index it builds (once) an index of ../shared/data/food7 with the
shared MobileNetV2 in zoo-out/.

Then the review page's load time (`zoo serve --duplicates`): a synthetic groups.json of
--review-groups groups (2-4 members each, drawn from 300 small JPEGs indexed by a random-init
timm test model in a temporary folder): the server's start-up (groups.json parsed once), the
page's HTML, and the first page of groups through the API (cold: every file's facts read;
warm: cached), plus a page deep in the result.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from zoo.data.images import scan_folder
from zoo.serve.server import spawn_server

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenetv2_100_in1k.pth"


def default_index(images: Path) -> Path:
    out = ROOT / "zoo-out" / "food7-mobilenetv2.index"
    if not out.exists():
        print(f"building {out} (once) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "zoo", "index", "--config", str(ROOT / "configs/models/mobilenetv2_shared.yaml"),
                        "--model.weights", str(WEIGHTS), "--images", str(images), "--out", str(out),
                        "--trainer.enable_progress_bar", "false"], check=True)
    return out


def run_clients(url: str, photos: list[bytes], requests: int, clients: int, k: int) -> tuple[list[float], float]:
    """``requests`` searches from ``clients`` threads; returns per-request seconds and the wall time."""
    def worker(share: range) -> list[float]:
        times = []
        with httpx.Client(base_url=url, timeout=60) as c:
            for i in share:
                t = time.perf_counter()
                r = c.post(f"/api/search?k={k}", files={"file": ("q.jpg", photos[i % len(photos)], "image/jpeg")})
                times.append(time.perf_counter() - t)
                r.raise_for_status()
        return times

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        parts = pool.map(worker, [range(c, requests, clients) for c in range(clients)])
        times = [t for part in parts for t in part]
    return times, time.perf_counter() - start


def time_search_processes(pythons: list[str], index: Path, query: Path, runs: int) -> dict[str, tuple[float, float]]:
    """Median wall and CPU seconds of `zoo search` (start-up + one query) per interpreter, interleaved."""
    walls: dict[str, list[float]] = {p: [] for p in pythons}
    cpus: dict[str, list[float]] = {p: [] for p in pythons}
    for _ in range(runs):
        for python in pythons:  # taking turns, so a busy spell on a shared machine hits each alike
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run([python, "-m", "zoo", "search", "--query", str(query), "--index", str(index), "-k", "10",
                            "--trainer.enable_progress_bar", "false"], check=True, capture_output=True)
            walls[python].append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus[python].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return {p: (statistics.median(walls[p]), statistics.median(cpus[p])) for p in pythons}


def review_load(groups: int, runs: int = 20) -> None:
    """Time the review page over ``groups`` synthetic duplicate groups (see the module docstring)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="zoo-review-bench-") as tmp:
        tmp = Path(tmp)
        photos = tmp / "photos"
        photos.mkdir()
        files = []
        for i in range(300):
            f = photos / f"{i:03d}.jpg"
            Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(f, quality=int(rng.integers(40, 95)))
            files.append(str(f))
        subprocess.run([sys.executable, "-m", "zoo", "index", "--images", str(photos), "--out", str(tmp / "i"),
                        "--model.backbone", "timm/test_resnet", "--model.pretrained", "false",
                        "--model.data_config", "{image_size: 32}", "--num_workers", "0",
                        "--trainer.enable_progress_bar", "false"], check=True, capture_output=True)
        near = []
        for g in range(groups):
            size = int(rng.integers(2, 5))
            members = rng.choice(len(files), size, replace=False)
            sims = np.round(rng.uniform(0.9, 1.0, size - 1), 6)
            near.append({"paths": [files[m] for m in members], "min_similarity": float(sims.min()),
                         "max_similarity": float(sims.max()), "pairs": [[0, j + 1, float(s)] for j, s in enumerate(sims)]})
        (tmp / "d").mkdir()
        (tmp / "d" / "groups.json").write_text(json.dumps({"exact_groups": [], "near_groups": near, "threshold": 0.9}))
        size_mb = (tmp / "d" / "groups.json").stat().st_size / 1e6
        t = time.perf_counter()
        proc, url = spawn_server(tmp / "i", "--duplicates", str(tmp / "d"), "--read_only")
        start = time.perf_counter() - t
        try:
            with httpx.Client(base_url=url, timeout=60) as c:
                def timed(path: str) -> float:
                    t = time.perf_counter()
                    r = c.get(path)
                    r.raise_for_status()
                    return (time.perf_counter() - t) * 1000

                cold = timed("/api/review?offset=0&limit=20")
                html = [timed("/") + timed("/static/app.js") + timed("/static/style.css") for _ in range(runs)]
                warm = [timed("/api/review?offset=0&limit=20") for _ in range(runs)]
                deep_cold = timed(f"/api/review?offset={groups // 2}&limit=20")
                deep = [timed(f"/api/review?offset={groups // 2}&limit=20") for _ in range(runs)]
                total = c.get("/api/review?limit=1").json()["total"]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"\nreview page: {total} synthetic groups (groups.json {size_mb:.1f} MB), 20 groups a page, loopback, "
          f"{os.cpu_count()} CPU cores; median of {runs}")
    print("| what | ms |")
    print("|---|---|")
    print(f"| server start-up to listening (model, index, groups.json parsed once) | {start * 1000:.0f} |")
    print(f"| page HTML + app.js + style.css | {statistics.median(html):.1f} |")
    print(f"| first page of groups, cold (facts of ~60 files read) | {cold:.1f} |")
    print(f"| first page of groups, warm | {statistics.median(warm):.1f} |")
    print(f"| page in the middle, cold / warm | {deep_cold:.1f} / {statistics.median(deep):.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", help="index to serve (default: food7 with the shared MobileNetV2, built once)")
    p.add_argument("--images", default=str(SHARED / "data" / "food7"), help="query photos")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--search-runs", type=int, default=3, help="`zoo search` processes to time")
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="`zoo serve --threads` settings to measure")
    p.add_argument("--runtimes", nargs="+", default=["auto"], help="`zoo serve --runtime` settings to measure")
    p.add_argument("--other-python", nargs="*", default=[], help="also time `zoo search` with these interpreters")
    p.add_argument("--review-groups", type=int, default=100_000, help="synthetic groups for the review page's load time")
    p.add_argument("--review-only", action="store_true", help="measure only the review page")
    args = p.parse_args()
    if args.review_only:
        return review_load(args.review_groups)

    index = Path(args.index) if args.index else default_index(Path(args.images))
    files = [r.path for r in scan_folder(args.images)]
    sample = files[:: max(1, len(files) // 20)][:20]  # 20 photos from across the classes
    photos = [Path(f).read_bytes() for f in sample]

    rows = []
    for runtime in args.runtimes:
        for threads in args.threads:
            proc, url = spawn_server(index, "--threads", str(threads), "--runtime", runtime)
            try:
                info = httpx.get(url + "/api/info").json()
                run_clients(url, photos, 10, 1, args.k)  # warm-up
                for clients in args.clients:
                    times, wall = run_clients(url, photos, args.requests, clients, args.k)
                    ms = np.array(times) * 1000
                    rows.append((runtime, threads, clients, len(times), np.percentile(ms, 50), np.percentile(ms, 95),
                                 len(times) / wall))
            finally:
                proc.terminate()
                proc.wait(timeout=30)

    print(f"\nzoo serve: {info['count']} items, {info['architecture']} ({info['weights'][:48]}); "
          f"{len(photos)} food7 photos as queries, k={args.k}, loopback, {os.cpu_count()} CPU cores")
    print("| runtime | threads | clients | requests | p50 ms | p95 ms | requests/s |")
    print("|---|---|---|---|---|---|---|")
    for runtime, threads, c, n, p50, p95, rps in rows:
        print(f"| {runtime} | {threads} | {c} | {n} | {p50:.0f} | {p95:.0f} | {rps:.1f} |")

    print(f"\n`zoo search` process (start-up + one query), median of {args.search_runs}:")
    print("| python | wall s | CPU s |")
    print("|---|---|---|")
    timings = time_search_processes([sys.executable, *args.other_python], index, Path(sample[0]), args.search_runs)
    for python, (wall, cpu) in timings.items():
        print(f"| {python} | {wall:.2f} | {cpu:.2f} |")
    review_load(args.review_groups)


if __name__ == "__main__":
    main()

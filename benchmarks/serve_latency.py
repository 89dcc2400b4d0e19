"""`zoo serve` search latency (1 and 4 concurrent clients) next to a `zoo search` process.

    python benchmarks/serve_latency.py [--index food7.index] [--requests 200] [--clients 1 4]
    python benchmarks/serve_latency.py --other-python ../base/.venv/bin/python   # start-up of another install too
    python benchmarks/serve_latency.py --runtimes torch openvino onnx --clients 1   # per `zoo serve --runtime`

Starts `zoo serve` on a free loopback port as a subprocess, uploads food7 photos to
/api/search (k=10) from N client threads (a fixed count of requests, loopback only), prints p50
and p95 per setting, then times whole `zoo search` processes (start-up + one query), the cost
the server saves. Without --index it builds (once) an index of ../shared/data/food7 with the
shared MobileNetV2 in zoo-out/.
"""
from __future__ import annotations

import argparse
import os
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
    args = p.parse_args()

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


if __name__ == "__main__":
    main()

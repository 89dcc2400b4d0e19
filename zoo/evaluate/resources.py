"""Cost measurements: wall time and peak memory of a piece of work."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import psutil
import torch


class PeakMemory:
    """Peak resident memory (CPU) and peak allocated GPU memory while the block runs, in MiB."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_rss_mb = 0.0
        self.peak_gpu_mb = 0.0

    def __enter__(self) -> "PeakMemory":
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self.peak_rss_mb = self._proc.memory_info().rss / 2**20
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_rss_mb = max(self.peak_rss_mb, self._proc.memory_info().rss / 2**20)
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss_mb = max(self.peak_rss_mb, self._proc.memory_info().rss / 2**20)
        if torch.cuda.is_available():
            self.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20


@contextmanager
def timer():
    t = {"s": 0.0}
    start = time.perf_counter()
    try:
        yield t
    finally:
        t["s"] = time.perf_counter() - start

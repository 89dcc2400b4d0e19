"""Pictures: top-k grids, bar charts, histograms, t-SNE scatter. All written atomically."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from zoo.data.images import load_image
from zoo.io import atomic_path  # noqa: E402


def _thumb(path: str, size: int = 160, frame=None):
    try:
        if frame is not None:
            from zoo.data.video import read_frame

            im = read_frame(path, frame)
        else:
            im = load_image(path, draft_size=size)
        im.thumbnail((size, size))
        return np.asarray(im)
    except Exception:
        return np.full((size, size, 3), 200, dtype=np.uint8)


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
    return out


def topk_grid(rows: Sequence[tuple], out: str | Path, title: Optional[str] = None) -> Path:
    """rows: (query_path, query_label, hits[, query_frame]); one row per query, query first.

    When labels are known, results of the query's class get a green frame, others red.
    """
    k = max(len(r[2]) for r in rows)
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(1.9 * (k + 1), 2.2 * len(rows)), squeeze=False)
    for row, (qpath, qlabel, hits, *rest) in zip(axes, rows):
        row[0].imshow(_thumb(qpath, frame=rest[0] if rest else None))
        row[0].set_title(f"query\n{qlabel or Path(qpath).name}"[:40], fontsize=8)
        for ax, h in zip(row[1:], hits):
            ax.imshow(_thumb(h.path, frame=h.frame))
            name = h.label or Path(h.path).name
            if h.frame is not None:
                name = f"frame {h.frame} ({h.time:.1f}s)"
            ax.set_title(f"#{h.rank} {h.similarity:.3f}\n{name}"[:40], fontsize=8)
            if qlabel is not None and h.label is not None:
                color = "tab:green" if h.label == qlabel else "tab:red"
                for s in ax.spines.values():
                    s.set_edgecolor(color)
                    s.set_linewidth(4)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out)


def bar_chart(names: Sequence[str], series: dict[str, Sequence[float]], out: str | Path, title: str,
              errors: Optional[dict[str, Sequence[tuple[float, float]]]] = None) -> Path:
    """Grouped bars: one group per architecture, one bar per metric; ``errors`` gives a
    (low, high) interval per bar of some metrics (drawn as error bars)."""
    x = np.arange(len(names))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(names)), 4))
    for i, (metric, values) in enumerate(series.items()):
        yerr = None
        if errors and metric in errors:  # (2, n): distances below and above the bar
            yerr = np.abs(np.array([[v - lo, hi - v] for v, (lo, hi) in zip(values, errors[metric])]).T)
        bars = ax.bar(x + i * width - 0.4 + width / 2, values, width, label=metric, yerr=yerr, capsize=3)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, names, rotation=15, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, out)


def histogram(values: np.ndarray, out: str | Path, title: str, xlabel: str, marks: Sequence[float] = ()) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(values, bins=100, color="tab:blue")
    for m in marks:
        ax.axvline(m, color="tab:red", linestyle="--")
        ax.text(m, ax.get_ylim()[1] * 0.9, f" {m:g}", color="tab:red", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title, fontsize=10)
    return _save(fig, out)


def scatter_2d(points: np.ndarray, colors: np.ndarray, out: str | Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 6))
    sc = ax.scatter(points[:, 0], points[:, 1], c=colors, cmap="tab10", s=12)
    ax.legend(*sc.legend_elements(), title="cluster", fontsize=7, loc="best")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, out)

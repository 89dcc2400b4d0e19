"""``zoo benchmark --video clip.mp4 --query examples/``: compare architectures at finding a
video's frames from example images.

Every frame of the video is the gallery; each example's true frame comes from
``examples/truth.csv`` (``file,frame``). Per architecture:

- first_match: share of examples whose first result lies within +-window frames of the truth;
- exact@1: share whose first result is the true frame itself;
- adjacent@k: mean count of the top k results within +-window frames of the truth;
- offset_s_mean / offset_s_median: seconds between the first result and the truth.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import numpy as np
import torch

from zoo.data.defaults import BATCH_SIZE, NUM_WORKERS
from zoo.data.images import Record, records_from
from zoo.embed.runner import embed
from zoo.errors import ZooError
from zoo.evaluate.benchmark import format_table, markdown_table, safe_name
from zoo.evaluate.resources import PeakMemory, timer
from zoo.index.core import Hit
from zoo.io import atomic_path, write_json, write_rows, write_text
from zoo.version import __version__

TRUTH_FILE = "truth.csv"
VIDEO_COLUMNS = ["architecture", "weights", "first_match", "exact@1", "adjacent@10", "offset_s_mean", "offset_s_median",
                 "img_per_s"]


def read_truth(folder: str | Path) -> list[tuple[Record, int]]:
    """(example record, true frame number) from FOLDER/truth.csv (columns file, frame)."""
    if folder is None:
        raise ZooError("--video needs --query EXAMPLES: a folder of example images with truth.csv (file,frame)")
    folder = Path(folder)
    if not folder.is_dir():
        raise ZooError(f"no such folder of examples: {folder}")
    truth = folder / TRUTH_FILE
    if not truth.is_file():
        raise ZooError(f"{folder} has no {TRUTH_FILE}: the video protocol needs each example's true frame (columns file,frame)")
    out = []
    with open(truth, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"file", "frame"} <= set(reader.fieldnames):
            raise ZooError(f"{truth}: needs a header with columns file,frame (has {reader.fieldnames})")
        for n, row in enumerate(reader, start=2):
            path = folder / row["file"].strip()
            if not path.is_file():
                raise ZooError(f"{truth} line {n}: no such example image {path}")
            try:
                frame = int(row["frame"])
            except (TypeError, ValueError):
                raise ZooError(f"{truth} line {n}: frame '{row['frame']}' is not a frame number") from None
            out.append((records_from([path])[0], frame))
    if not out:
        raise ZooError(f"{truth} lists no examples")
    return out


def make_examples(video: str | Path, folder: str | Path, n: int, seed: int = 0, overwrite: bool = False) -> Path:
    """Example images cut from ``n`` evenly spaced frames of ``video``, each edited like a photo
    of the screen (a seeded random crop keeping 80-95% of each side, brightness x0.8-1.2, JPEG
    quality 75), with FOLDER/truth.csv naming each one's true frame."""
    import random

    from PIL import ImageEnhance

    from zoo.data.video import video_records

    folder = Path(folder)
    if (folder / TRUTH_FILE).exists() and not overwrite:
        raise ZooError(f"{folder / TRUTH_FILE} already exists; pass --overwrite to make new examples")
    if n < 1:
        raise ZooError(f"--make_examples {n}: must be 1 or more")
    frames = video_records(video, every=1)
    picks = sorted({round(i * (len(frames) - 1) / max(n - 1, 1)) for i in range(n)}) if n > 1 else [len(frames) // 2]
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["file,frame"]
    for i in picks:
        im = frames[i].image.convert("RGB")
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.8, 0.95)), int(h * rng.uniform(0.8, 0.95))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        im = ImageEnhance.Brightness(im.crop((x, y, x + cw, y + ch))).enhance(rng.uniform(0.8, 1.2))
        name = f"frame_{frames[i].frame:06d}.jpg"
        with atomic_path(folder / name) as tmp:
            im.save(tmp, format="JPEG", quality=75)
        lines.append(f"{name},{frames[i].frame}")
    write_text(folder / TRUTH_FILE, "\n".join(lines) + "\n")
    print(f"zoo: made {len(picks)} example(s) from frames of {Path(video).name} in {folder} (truth in {TRUTH_FILE})",
          file=sys.stderr)
    return folder


def score(top_frames: np.ndarray, top_times: np.ndarray, truth_frames: np.ndarray, truth_times: np.ndarray,
          window: int) -> dict[str, np.ndarray]:
    """Per-example scores from ranked result frames.

    top_frames, top_times: (Q, k) frame numbers / seconds of each example's results, best first
    truth_frames, truth_times: (Q,)
    """
    near = np.abs(top_frames - truth_frames[:, None]) <= window  # (Q, k)
    return {
        "first_match": near[:, 0].astype(float),
        "exact@1": (top_frames[:, 0] == truth_frames).astype(float),
        "adjacent": near.sum(axis=1).astype(float),
        "offset_s": np.abs(top_times[:, 0] - truth_times),
    }


def evaluate_video(arch, frames: list[Record], examples: list[tuple[Record, int]], window: int, k: int,
                   trainer: Optional[L.Trainer], batch_size: int, num_workers: int) -> dict:
    model = arch.model.build()
    model.eval()
    with PeakMemory() as mem, timer() as t_embed:
        f_emb = embed(model, frames, trainer=trainer, batch_size=batch_size, num_workers=num_workers)
    q_emb = embed(model, [r for r, _ in examples], trainer=trainer, batch_size=batch_size, num_workers=num_workers)
    if len(q_emb.records) < len(examples):
        raise ZooError(f"{len(examples) - len(q_emb.records)} example image(s) could not be read (see above)")
    f_vec = torch.nn.functional.normalize(torch.from_numpy(np.asarray(f_emb.vectors, np.float32)), dim=1)
    q_vec = torch.nn.functional.normalize(torch.from_numpy(np.asarray(q_emb.vectors, np.float32)), dim=1)
    sims = q_vec @ f_vec.T  # (Q, F)
    kk = min(k, len(f_emb.records))
    order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :kk]  # (Q, k)
    frame_no = np.array([r.frame for r in f_emb.records])
    frame_t = np.array([r.time for r in f_emb.records], dtype=float)
    by_frame = {r.frame: r.time for r in f_emb.records}
    truth = np.array([t for _, t in examples])
    truth_t = np.array([by_frame[t] for t in truth], dtype=float)
    idx = order.numpy()
    per = score(frame_no[idx], frame_t[idx], truth, truth_t, window)
    row = {
        "architecture": arch.name,
        "backbone": model.hparams.backbone,
        "head": model.hparams.head,
        "weights": model.weights_id,
        "protocol": "video",
        "examples": len(examples),
        "frames": len(f_emb.records),
        "window": window,
        "k": kk,
        "first_match": round(float(per["first_match"].mean()), 4),
        "exact@1": round(float(per["exact@1"].mean()), 4),
        f"adjacent@{k}": round(float(per["adjacent"].mean()), 4),
        "offset_s_mean": round(float(per["offset_s"].mean()), 4),
        "offset_s_median": round(float(np.median(per["offset_s"])), 4),
        "img_per_s": round(len(f_emb.records) / t_embed["s"], 1),
        "embed_s": round(t_embed["s"], 2),
        "dim": model.embedding_dim,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "peak_rss_mb": round(mem.peak_rss_mb, 1),
    }
    queries, grid_rows = [], []
    for qi, ((rec, t), ranked) in enumerate(zip(examples, idx)):
        near = f"truth: frame {t}"  # grids frame results within the window green
        hits = [Hit(rank=j + 1, similarity=round(float(sims[qi, i]), 4), path=f_emb.records[i].path,
                    label=(near if abs(frame_no[i] - t) <= window else "far"), frame=int(frame_no[i]),
                    time=float(frame_t[i])) for j, i in enumerate(ranked)]
        queries.append({"example": rec.path, "truth_frame": int(t), "truth_time": float(truth_t[qi]),
                        "first_frame": hits[0].frame, "first_time": hits[0].time,
                        "first_match": bool(per["first_match"][qi]), f"adjacent@{k}": int(per["adjacent"][qi]),
                        "offset_s": round(float(per["offset_s"][qi]), 4),
                        "results": [{"frame": h.frame, "time": h.time, "similarity": h.similarity} for h in hits]})
        grid_rows.append((rec.path, near, hits))
    return {"row": row, "details": {"queries": queries}, "grid_rows": grid_rows}


def run_video_benchmark(archs: Sequence, video: str, query: Optional[str], window: int = 5, k: int = 10,
                        out: str = "benchmark-results", overwrite: bool = False, samples: int = 3,
                        use_wandb: bool = False, wandb_project: str = "zoo", trainer: Optional[L.Trainer] = None,
                        batch_size: int = BATCH_SIZE, num_workers: int = NUM_WORKERS, make: int = 0, seed: int = 0,
                        images: Optional[str] = None, gallery: Optional[str] = None) -> list[dict]:
    """``zoo benchmark --video``: every frame of ``video`` is the gallery, the ``query``
    examples (truth.csv: file,frame) search it; ``images`` and ``gallery`` belong to the image
    protocols and are refused here."""
    from zoo.data.video import video_records

    if images is not None or gallery is not None:
        raise ZooError("--video takes --query EXAMPLES (with truth.csv), not --images or --gallery")
    out = Path(out)
    if (out / "results.json").exists() and not overwrite:
        raise ZooError(f"{out} already holds benchmark results; pass --overwrite or another --out")
    if window < 0:
        raise ZooError(f"--window {window}: must be 0 or more")
    if not Path(video).is_file():
        raise ZooError(f"no such video: {video}")
    if make:
        if query is None:
            raise ZooError("--make_examples N needs --query FOLDER to write the examples to")
        make_examples(video, query, make, seed=seed, overwrite=overwrite)
    examples = read_truth(query)
    frames = video_records(video, every=1)
    last = frames[-1].frame
    bad = [(r, t) for r, t in examples if not 0 <= t <= last]
    if bad:
        raise ZooError(f"{Path(bad[0][0].path).name}: true frame {bad[0][1]} is not in {video} (frames 0-{last})")
    description = (f"video: {len(examples)} examples searched in {len(frames)} frames of {Path(video).name}, "
                   f"top {k}, window +-{window} frames")
    print(f"zoo: benchmark protocol {description}", file=sys.stderr)
    results = []
    for arch in archs:
        print(f"zoo: benchmarking {arch.name}", file=sys.stderr)
        results.append(evaluate_video(arch, frames, examples, window, k, trainer, batch_size, num_workers))
    rows = [r["row"] for r in results]
    out.mkdir(parents=True, exist_ok=True)

    from zoo.report.plots import bar_chart, topk_grid

    fps = len(frames) / max(frames[-1].time or 1e-9, 1e-9)
    chart = bar_chart([r["architecture"] for r in rows],
                      {"first_match": [r["first_match"] for r in rows], "exact@1": [r["exact@1"] for r in rows],
                       f"adjacent@{k} / {k}": [r[f"adjacent@{k}"] / k for r in rows]},
                      out / "comparison.png", description)
    grids = {}
    for arch, res in zip(archs, results):
        if samples > 0:
            grids[arch.name] = topk_grid(res["grid_rows"][:samples], out / f"grid_{safe_name(arch.name)}.png",
                                         title=f"{arch.name} — results within +-{window} frames framed green")
    columns = [c if c != "adjacent@10" else f"adjacent@{k}" for c in VIDEO_COLUMNS]
    meta = {"zoo_version": __version__, "protocol": "video", "video": str(Path(video).resolve()),
            "frames": len(frames), "fps": round(fps, 3), "window": window, "k": k, "description": description}
    write_rows(out / "results.csv", rows)
    write_json(out / "results.json", {"meta": meta, "results": [{**r["row"], **r["details"]} for r in results]})
    lines = ["# zoo benchmark: video", "", f"Protocol: {description}. zoo {__version__}.", "",
             f"first_match: the first result is within +-{window} frames of the true frame; exact@1: it is the "
             f"true frame; adjacent@{k}: how many of the top {k} are within +-{window} frames; offset_s: seconds "
             "between the first result and the true frame.", "",
             markdown_table(rows, columns), "", "![comparison](comparison.png)", ""]
    for name, path in grids.items():
        lines += [f"## {name}", "", f"![{name}]({path.name})", ""]
    write_text(out / "report.md", "\n".join(lines))
    print(format_table(rows, columns))
    print(f"\nzoo: {description}; results in {out}/ (results.csv, results.json, report.md, comparison.png, grids)")
    if use_wandb:
        from zoo.report.wandb_log import log_benchmark

        log_benchmark(meta, rows, [{"row": r["row"], "details": {}} for r in results], archs, out, wandb_project,
                      chart=chart, images={f"grid {n}": p for n, p in grids.items()}, kind="video-benchmark")
    return rows

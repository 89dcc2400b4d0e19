"""``--threshold auto`` as a user runs it, on libraries of unseen photos of two sizes.

One calibration: ``zoo calibrate --checkpoint CKPT --images CALIBRATION_PHOTOS --sample S
--copies 2`` on photos neither trained on nor in any library. Each library is a folder of
files: unseen originals, ``copies`` copyset copies of each, unrelated unseen photos, in the same
proportions at every size (the smaller library is a subset of the larger). ``zoo duplicates
--threshold auto`` runs on each; its pairs.csv is scored against the truth (a copy pair: two
files of one original, or of two photos listed as one picture): measured precision and recall
beside what the command expected. For comparison: the fixed sample-level threshold the
calibration also stores (what version 1 used for every library), and the best recall any
threshold reaching the precision gets on that library (an oracle).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np

from zoo.cli.main import main as zoo_main
from zoo.metrics.pairs import at_threshold, pair_scores, threshold_for_precision


def link_folder(folder: Path, files: list[tuple[str, str]]) -> None:
    """``folder`` holding hard links (or copies) named ``name`` of each (source, name)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for src, name in files:
        try:
            os.link(src, folder / name)
        except OSError:
            shutil.copyfile(src, folder / name)


def run_zoo(args: list[str]) -> str:
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = zoo_main([str(a) for a in args])
    if code != 0:
        sys.exit(f"zoo {args[0]} failed ({code}): {buf.getvalue()[-500:]}")
    return buf.getvalue()


def library_table(ckpt: str, sizes: list[int], originals, copies, copy_of, distractors, calibration_photos, groups,
                  images: str, listing: str, out: Path, precision: float, workers: int, vectors: dict,
                  n_copies: int, sample: int = 200, cal_copies: int = 2, draws: int = 1) -> None:
    """Calibrate once, then ``zoo duplicates --threshold auto`` on each library size; prints the table.
    ``draws``: up to that many disjoint libraries of each size (as many as the photos allow: the
    largest library is one), for the spread of a small library's precision."""
    group_of = {r.path: g for r, g in zip([*originals, *copies, *distractors], groups)}
    cal_dir = out / "calibration-photos"
    link_folder(cal_dir, [(r.path, f"{k:05d}{Path(r.path).suffix}") for k, r in enumerate(calibration_photos)])
    cal_file = out / "zoo-calibration.json"
    biggest = max(sizes)
    k_big = round(biggest * len(originals) / (len(originals) * (1 + n_copies) + len(distractors)))
    cal_out = run_zoo(["calibrate", "--checkpoint", ckpt, "--images", cal_dir, "--sample", sample, "--copies", cal_copies,
                       "--precision", precision, "--calibration", cal_file, "--library_size", biggest,
                       "--library_copy_pairs", k_big * (n_copies + 1) * n_copies // 2, "--overwrite",
                       "--num_workers", workers])
    print(f"\nzoo calibrate on {len(calibration_photos)} unseen photos (--sample {sample} --copies {cal_copies}):")
    print(cal_out.strip())
    entry = next(iter(json.load(open(cal_file))["models"].values()))
    fixed = entry["threshold"]
    rows = []
    total = len(originals) * (1 + n_copies) + len(distractors)
    libraries = []
    for size in sizes:
        k = round(size * len(originals) / total)
        d = max(size - k * (1 + n_copies), 0)
        fit = min(len(originals) // max(k, 1), len(distractors) // d if d else draws)
        libraries += [(size, j, k, d) for j in range(max(1, min(draws, fit)))]
    for size, j, k, d in libraries:
        members = [*originals[j * k:(j + 1) * k], *[c for c, i in zip(copies, copy_of) if j * k <= i < (j + 1) * k],
                   *distractors[j * d:(j + 1) * d]]
        names = {f"{n:05d}-{Path(r.path).name}": r.path for n, r in enumerate(members)}
        tag = f"{size}" if j == 0 else f"{size}-{j}"  # the first draw keeps the name it always had
        folder = out / f"library-{tag}"
        link_folder(folder, [(src, name) for name, src in names.items()])
        truth = {name: group_of[src] for name, src in names.items()}
        g = np.array(list(truth.values()))
        true_pairs = int(sum(c * (c - 1) // 2 for c in np.unique(g, return_counts=True)[1]))
        dup = out / f"duplicates-{tag}"
        run_zoo(["duplicates", "--images", folder, "--checkpoint", ckpt, "--threshold", "auto", "--calibration", cal_file,
                 "--out", dup, "--overwrite", "--exact", "--num_workers", workers])
        result = json.load(open(dup / "groups.json"))
        report = result.get("auto_threshold", {})
        found = [r for r in csv.DictReader(open(dup / "pairs.csv")) if r["kind"] == "near"]
        hits = sum(truth[Path(r["path_a"]).name] == truth[Path(r["path_b"]).name] for r in found)
        # the fixed threshold and the oracle, from the same model's vectors of the same files
        scores, positive = pair_scores(np.stack([vectors[src] for src in names.values()]), g)
        v1 = at_threshold(scores, positive, fixed)
        best = threshold_for_precision(scores, positive, precision)
        rows.append({"files": len(members) if j == 0 else f"{len(members)} (draw {j + 1})", "copy pairs": true_pairs, "auto threshold": result["threshold"],
                     "expected P": report.get("expected_precision"), "measured P": hits / len(found) if found else float("nan"),
                     "recall": hits / max(true_pairs, 1), "expected false": report.get("expected_false_pairs"),
                     "measured false": len(found) - hits, "fixed P / R": f"{v1['precision']:.3f} / {v1['recall']:.3f}",
                     "oracle R (thr)": f"{best['recall']:.3f} ({best['threshold']:.3f})" if best["threshold"] else "-"})
        print(f"library {size} draw {j + 1}: {report.get('estimated_by', report.get('note', ''))}", file=sys.stderr)
    print(f"\n--threshold auto on unseen libraries (target precision {precision}; one calibration; fixed = the "
          f"sample-level threshold {fixed:.4f} that a version 1 calibration applies at every size)")
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|---" * len(cols) + "|")
    for r in rows:
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")

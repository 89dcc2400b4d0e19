"""``zoo duplicates --threshold auto`` with a size-aware calibration: the threshold for the
library in hand.

The calibration (zoo.evaluate.calibration) measured the model's per-pair false-match rate
(zoo.metrics.falsematch.FalseMatchRate). Here the library's size N is known: the pair search
starts at a floor where about ``FLOOR_FALSE_PAIRS_PER_IMAGE`` N false pairs are expected, and
the threshold is the lowest observed pair score whose estimated precision (O - F) / O at this N
reaches the target. What was chosen, and how it was estimated, is printed (stderr) and kept in
groups.json under ``auto_threshold``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from zoo.errors import ZooError
from zoo.metrics.falsematch import FalseMatchRate, choose_threshold, library_pairs, photos_needed, search_floor

FLOOR_FALSE_PAIRS_PER_IMAGE = 20


@dataclass
class AutoThreshold:
    """A size-aware calibration as `zoo duplicates` uses it: the model's false-match rate, the
    asked precision, and where it came from (for messages and groups.json)."""

    rate: FalseMatchRate
    precision: float
    source: str  # the calibration file and model key
    copies: int = 1  # copies per photo of the calibration sample (for "calibrate with M photos")

    def floor(self, n_items: int) -> float:
        floor = search_floor(self.rate, n_items, max(FLOOR_FALSE_PAIRS_PER_IMAGE * n_items, 1000))
        return min(max(floor, 1e-3), 1.0)  # a cosine threshold in (0, 1]

    def choose(self, n_items: int, sims: np.ndarray, floor: float) -> tuple[float, dict]:
        """(threshold, report) for a library of ``n_items`` whose pair search at ``floor`` found
        pairs scoring ``sims``: the lowest found score reaching the precision; when none does,
        a threshold above them all (no pairs: each is as likely chance); a ZooError when the
        threshold needs a false-match rate beyond what the calibration can vouch for."""
        rate, p = self.rate, self.precision
        pairs = library_pairs(n_items)
        hit = choose_threshold(rate, n_items, sims, p)
        if hit is None:  # every pair found is as likely chance: none is reported
            t = max(search_floor(rate, n_items, 1.0 - p), float(np.max(sims)) + 1e-6 if len(sims) else floor)
            report = {"precision_target": p, "expected_precision": None, "pairs_found": 0, "library_images": n_items,
                      "library_pairs": pairs, "false_match_rate": float(rate(t)), "search_floor": floor,
                      "calibration": self.source,
                      "note": f"no threshold reaches precision {p}: the {len(sims)} pair(s) found above {floor:.4f} are "
                              f"no more than the false-match rate predicts among {pairs} pairs"}
            print(f"zoo: --threshold auto: no near duplicates at precision {p} among {n_items} images: the "
                  f"{len(sims)} pair(s) found above {floor:.4f} are no more than the calibration's false-match rate "
                  f"predicts ({self.source}); threshold {t:.4f}; ask a lower --precision or pass --threshold",
                  file=sys.stderr)
            return min(t, 1.0), report
        if hit["false_match_rate"] < rate.resolution:  # the tail model would be extrapolated too far
            needed = (1.0 - p) * hit["pairs"] / pairs  # the rate at which the pairs found reach the precision
            raise ZooError(f"--threshold auto: {n_items} images need a false-match rate of about {needed:.2e} per pair "
                           f"for precision {p}, beyond what the calibration measured ({rate.n} non-copy pairs, trusted "
                           f"down to {rate.resolution:.1e}; {self.source}); recalibrate with `zoo calibrate --sample "
                           f"{photos_needed(needed, self.copies)} --copies {self.copies} --overwrite` or pass --threshold")
        t = hit["threshold"]
        report = {"precision_target": p, "expected_precision": round(hit["precision"], 6),
                  "expected_false_pairs": round(hit["false_pairs"], 3), "pairs_found": hit["pairs"],
                  "library_images": n_items, "library_pairs": pairs,
                  "false_match_rate": hit["false_match_rate"], "expected_recall": round(hit["recall"], 6),
                  "estimated_by": rate.method(t), "search_floor": floor, "calibration": self.source,
                  "formula": "precision = (pairs found - expected false pairs) / pairs found; "
                             "expected false pairs = false-match rate per pair x N (N - 1) / 2"}
        if hit["pairs"] == len(sims):
            report["note"] = "the threshold is the search floor: a lower one may also reach the precision"
        print(f"zoo: --threshold auto: {t:.4f} for {n_items} images ({pairs} pairs): expected precision "
              f"{hit['precision']:.3f} (target {p}), {hit['false_pairs']:.1f} expected false pair(s) among the "
              f"{hit['pairs']} found, false-match rate {hit['false_match_rate']:.2e} per pair ({rate.method(t)}); "
              f"expected recall {hit['recall']:.2f} on the calibration's copies [{self.source}]", file=sys.stderr)
        return t, report

"""How often a copy detector calls two unrelated images a copy, per pair, and what that means in
a library of N images: the maths of a threshold that holds at the size of the library.

A library of N images has N (N - 1) / 2 pairs. If the model calls an unrelated pair a copy at
threshold t with probability FPR(t) (the per-pair false-match rate, measured on the non-copy
pairs of a calibration sample), the library holds F(t) = FPR(t) N (N - 1) / 2 false pairs above
t in expectation. The pair search finds O(t) pairs above t; the true ones are O(t) - F(t), so

    precision(t) = (O(t) - F(t)) / O(t)

and the threshold for a target precision is the lowest t (among the observed pair scores) with
precision(t) >= target. False pairs grow with N squared, true copies with N: the threshold
rises with the library.

FPR(t) is the share of the calibration sample's non-copy pairs scoring >= t while at least
``EMPIRICAL_MIN`` of them do; beyond, where the sample runs out, a peaks-over-threshold tail
model: the ``k`` highest non-copy scores above u (the (k+1)-th highest) follow a generalised
Pareto distribution (scipy's maximum-likelihood fit; exponential when k is small), so
FPR(t) = (k / n) S(t - u) for the fitted survival function S.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import stats

KEEP = 5000  # highest non-copy scores a calibration keeps
TAIL = 500  # of them, the tail model fits at most this many
EMPIRICAL_MIN = 25  # the measured rate is used while at least this many non-copy pairs score >= t
EXTRAPOLATION_LIMIT = 100.0  # the tail model is trusted down to 1 / (this x the non-copy pairs measured)


def library_pairs(n: int) -> int:
    return n * (n - 1) // 2


def fit_tail(top: np.ndarray, k: int) -> dict:
    """Tail model of the ``k`` highest of ``top`` (scores, highest first): excesses over u =
    top[k] follow a generalised Pareto distribution (shape xi, scale sigma; maximum likelihood)
    or, for k < 50, an exponential (sigma = mean excess). The Kolmogorov-Smirnov p-value says
    how well it fits."""
    top = np.sort(np.asarray(top, dtype=np.float64))[::-1]
    if not 10 <= k < len(top):
        raise ValueError(f"a tail fit needs 10 <= k < {len(top)} scores, got k={k}")
    u = float(top[k])
    excess = top[:k] - u
    if k >= 50:
        xi, _, sigma = stats.genpareto.fit(excess, floc=0)
        model, ks = "generalised Pareto", stats.kstest(excess, "genpareto", args=(xi, 0, sigma))
    else:
        xi, sigma = 0.0, float(excess.mean())
        model, ks = "exponential", stats.kstest(excess, "expon", args=(0, sigma))
    return {"model": model, "u": u, "k": int(k), "xi": float(xi), "sigma": float(max(sigma, 1e-12)),
            "ks_pvalue": float(ks.pvalue)}


def tail_survival(tail: dict, t: np.ndarray) -> np.ndarray:
    """P(excess >= t - u) of the fitted tail model (1 below u)."""
    y = np.maximum(np.asarray(t, dtype=np.float64) - tail["u"], 0.0)
    xi, sigma = tail["xi"], tail["sigma"]
    if abs(xi) < 1e-9:
        return np.exp(-y / sigma)
    base = np.maximum(1.0 + xi * y / sigma, 0.0)  # xi < 0: zero beyond the end point u - sigma / xi
    with np.errstate(divide="ignore"):
        return np.where(base > 0, base ** (-1.0 / xi), 0.0)


@dataclass
class FalseMatchRate:
    """Per-pair false-match rate FPR(t) from the ``top`` non-copy scores (highest first) of
    ``n`` measured non-copy pairs, with the tail model of zoo.metrics.falsematch.fit_tail."""

    top: np.ndarray
    n: int
    tail: Optional[dict] = None
    positives: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the sample's copy-pair scores

    @classmethod
    def measure(cls, scores: np.ndarray, positive: np.ndarray, keep: int = KEEP, tail: int = TAIL) -> "FalseMatchRate":
        scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
        neg = scores[~positive]
        top = np.sort(neg)[::-1][:keep]
        k = min(tail, len(top) - 1, max(len(neg) // 100, 10))
        return cls(top=top, n=int(len(neg)), tail=fit_tail(top, k) if k >= 10 and len(top) > k else None,
                   positives=np.sort(scores[positive])[::-1])

    @property
    def resolution(self) -> float:
        """The smallest rate the tail model is trusted for."""
        return 1.0 / (EXTRAPOLATION_LIMIT * max(self.n, 1))

    @property
    def lowest(self) -> float:
        """The lowest threshold FPR is known at (the lowest kept non-copy score)."""
        return float(self.top[-1]) if len(self.top) else 1.0

    def counts(self, t: np.ndarray) -> np.ndarray:
        """How many kept non-copy scores are >= each t."""
        return len(self.top) - np.searchsorted(self.top[::-1], np.asarray(t, dtype=np.float64), side="left")

    def __call__(self, t) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        c = self.counts(t)
        rate = c / max(self.n, 1)
        if self.tail is not None:
            model = self.tail["k"] / self.n * tail_survival(self.tail, t)
            rate = np.where((c < EMPIRICAL_MIN) & (t >= self.tail["u"]), model, rate)
        return rate

    def method(self, t: float) -> str:
        """How FPR(t) was estimated, in words."""
        c = int(self.counts(np.array([t]))[0])
        if c >= EMPIRICAL_MIN or self.tail is None or t < self.tail["u"]:
            return f"measured: {c} of {self.n} non-copy calibration pairs score >= {t:.4f}"
        f = self.tail
        return (f"tail model ({f['model']} xi {f['xi']:.3f}, sigma {f['sigma']:.4f} fitted to the {f['k']} highest of "
                f"{self.n} non-copy calibration pairs above {f['u']:.4f}, KS p {f['ks_pvalue']:.2f}; "
                f"{c} measured pair(s) >= {t:.4f})")

    def recall(self, t: float) -> float:
        """Share of the calibration's copy pairs scoring >= t."""
        if not len(self.positives):
            return float("nan")
        return float(np.mean(self.positives >= t))

    def to_json(self) -> dict:
        return {"negative_pairs": self.n, "top_negatives": [round(float(x), 6) for x in self.top], "tail": self.tail,
                "positives": [round(float(x), 6) for x in self.positives]}

    @classmethod
    def from_json(cls, data: dict) -> "FalseMatchRate":
        """From :meth:`to_json`'s dict; a ValueError says what is wrong."""
        try:
            n, top = int(data["negative_pairs"]), np.asarray(data["top_negatives"], dtype=np.float64)
            pos = np.asarray(data.get("positives", []), dtype=np.float64)
            tail = data.get("tail")
            if tail is not None:
                tail = {"model": str(tail["model"]), "u": float(tail["u"]), "k": int(tail["k"]), "xi": float(tail["xi"]),
                        "sigma": float(tail["sigma"]), "ks_pvalue": float(tail["ks_pvalue"])}
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bad size-aware calibration ({type(e).__name__}: {str(e)[:80]})") from None
        if top.ndim != 1 or pos.ndim != 1 or n < len(top) or not (np.isfinite(top).all() and np.isfinite(pos).all()) \
                or (tail is not None and not (0 < tail["k"] <= n and tail["sigma"] > 0
                                              and all(math.isfinite(tail[x]) for x in ("u", "xi", "sigma")))):
            raise ValueError("bad size-aware calibration (inconsistent counts or scores)")
        return cls(top=np.sort(top)[::-1], n=n, tail=tail, positives=np.sort(pos)[::-1])


def estimated_precision(rate: FalseMatchRate, n_items: int, observed: np.ndarray, t: np.ndarray) -> tuple:
    """(precision, expected false pairs F, observed pairs O) at each threshold t in a library
    of ``n_items`` whose pair search found pairs scoring ``observed``."""
    t = np.asarray(t, dtype=np.float64)
    obs = np.sort(np.asarray(observed, dtype=np.float64))
    o = len(obs) - np.searchsorted(obs, t, side="left")
    f = rate(t) * library_pairs(n_items)
    return np.where(o > 0, (o - f) / np.maximum(o, 1), np.nan), f, o


def choose_threshold(rate: FalseMatchRate, n_items: int, observed: np.ndarray, precision: float) -> Optional[dict]:
    """The lowest observed score t with estimated precision >= ``precision`` in a library of
    ``n_items``: {threshold, precision, false_pairs, pairs, false_match_rate, recall}; None when
    no observed score reaches it."""
    cand = np.unique(np.asarray(observed, dtype=np.float64))  # ascending
    if not len(cand):
        return None
    p, f, o = estimated_precision(rate, n_items, observed, cand)
    ok = np.nonzero(p >= precision)[0]
    if not len(ok):
        return None
    i = int(ok[0])
    t = float(cand[i])
    return {"threshold": t, "precision": float(p[i]), "false_pairs": float(f[i]), "pairs": int(o[i]),
            "false_match_rate": float(rate(t)), "recall": rate.recall(t)}


def search_floor(rate: FalseMatchRate, n_items: int, false_pairs: float) -> float:
    """The lowest threshold at which a library of ``n_items`` expects at most ``false_pairs``
    false pairs (not below the lowest measured non-copy score): where the pair search starts."""
    grid = rate.top[::-1]  # ascending: FPR falls along it
    f = rate(grid) * library_pairs(n_items)
    ok = np.nonzero(f <= false_pairs)[0]
    return float(grid[ok[0]]) if len(ok) else float(grid[-1])


def required_rate(rate: FalseMatchRate, n_items: int, copy_pairs: float, precision: float) -> Optional[dict]:
    """For a library of ``n_items`` holding ``copy_pairs`` copy pairs: the lowest threshold with
    expected precision R(t) C / (R(t) C + FPR(t) P) >= ``precision`` (R from the sample's copy
    pairs), with the false-match rate it needs; None when none does."""
    grid = np.unique(np.r_[rate.top, rate.positives])
    if not len(grid):
        return None
    tp = np.array([rate.recall(t) for t in grid]) * copy_pairs
    fp = rate(grid) * library_pairs(n_items)
    p = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
    ok = np.nonzero(p >= precision)[0]
    if not len(ok):
        return None
    t = float(grid[ok[0]])
    return {"threshold": t, "false_match_rate": float(rate(t)), "recall": rate.recall(t), "precision": float(p[ok[0]])}


def sample_negatives(photos: int, copies: int) -> int:
    """Non-copy pairs of a calibration sample of ``photos`` photos with ``copies`` copies each."""
    m = photos * (copies + 1)
    return library_pairs(m) - photos * library_pairs(copies + 1)


def photos_needed(fpr: float, copies: int, at_least: int = EMPIRICAL_MIN) -> int:
    """The fewest photos whose calibration sample holds ``at_least`` non-copy pairs expected at
    or above a threshold of false-match rate ``fpr`` (so that rate is measured, not modelled)."""
    if fpr <= 0:
        return 0
    need = at_least / fpr
    photos = max(2, int(math.sqrt(2 * need) / (copies + 1)))
    while sample_negatives(photos, copies) < need:
        photos += 1
    return photos

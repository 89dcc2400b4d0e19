"""Pair metrics of copy detection: is the pair (a, b) a copy, at similarity threshold t?

A pair is predicted a copy when its cosine similarity is >= t. Positives are the pairs whose
two items share a group (an image and its edited copies). Every threshold is a similarity
value that occurs, and tied similarities are decided together, so the results are exact.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch


def pair_scores(embeddings: torch.Tensor | np.ndarray, groups: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair i < j of ``embeddings`` (N, D): cosine similarity (P,) and whether
    they share a group (P,) bool, P = N (N - 1) / 2."""
    x = torch.as_tensor(embeddings, dtype=torch.float32)
    x = torch.nn.functional.normalize(x, dim=1)
    g = torch.as_tensor(groups)
    i, j = torch.triu_indices(len(x), len(x), offset=1)
    sims = (x @ x.T)[i, j]  # N x N, not P x D: 1,500 vectors of 1,280 numbers would take 11 GB
    return sims.numpy(), (g[i] == g[j]).numpy()


def pr_curve(scores: np.ndarray, positive: np.ndarray) -> dict[str, np.ndarray]:
    """Precision and recall at each distinct score, as threshold, highest first."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], positive[order]
    tp, fp = np.cumsum(p), np.cumsum(~p)
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)  # the end of each tie
    tp, fp, thresholds = tp[last], fp[last], s[last]
    n_pos = max(int(p.sum()), 1)
    return {"threshold": thresholds, "precision": tp / np.maximum(tp + fp, 1), "recall": tp / n_pos,
            "tp": tp, "fp": fp}


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the precision/recall curve as a step sum (sklearn's average_precision_score)."""
    c = pr_curve(scores, positive)
    if not len(c["recall"]) or not np.asarray(positive).any():
        return float("nan")
    return float(np.sum(np.diff(np.r_[0.0, c["recall"]]) * c["precision"]))


def threshold_for_precision(scores: np.ndarray, positive: np.ndarray, precision: float = 0.95) -> dict:
    """The lowest threshold whose precision is >= ``precision`` (so the highest recall there):
    {threshold, precision, recall, tp, fp}; threshold None when no threshold reaches it."""
    c = pr_curve(scores, positive)
    ok = np.nonzero(c["precision"] >= precision)[0]
    if not len(ok):
        return {"threshold": None, "precision": None, "recall": 0.0, "tp": 0, "fp": 0}
    best = ok[np.argmax(c["recall"][ok])]  # the highest recall; ties: the higher threshold
    return {"threshold": float(c["threshold"][best]), "precision": float(c["precision"][best]),
            "recall": float(c["recall"][best]), "tp": int(c["tp"][best]), "fp": int(c["fp"][best])}


def at_threshold(scores: np.ndarray, positive: np.ndarray, threshold: float) -> dict:
    """Precision and recall of "similarity >= threshold"."""
    pred, positive = np.asarray(scores) >= threshold, np.asarray(positive, dtype=bool)
    tp, fp = int((pred & positive).sum()), int((pred & ~positive).sum())
    return {"threshold": threshold, "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / max(int(positive.sum()), 1), "tp": tp, "fp": fp}


def pair_summary(embeddings, groups, precision: float = 0.95) -> dict[str, Optional[float]]:
    """pair AP and recall at the target precision (validation's val/pair_ap, val/recall@p95)."""
    scores, positive = pair_scores(embeddings, groups)
    hit = threshold_for_precision(scores, positive, precision)
    return {"pair_ap": average_precision(scores, positive), "recall": hit["recall"], "threshold": hit["threshold"]}

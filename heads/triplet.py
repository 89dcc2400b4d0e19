"""Triplet siamese head: an MLP projection trained with a triplet margin loss on mined triplets.

The three "siamese" branches share one backbone and head; a batch holds P classes x K images
(or, without labels, each image and an augmented copy of it), and a miner picks the triplets.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ZooError
from zoo.heads.base import Head
from zoo.registry import register_head


def triplet_accuracy(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of all valid triplets in the batch with d(anchor, positive) < d(anchor, negative)."""
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu  # training only: slow import

    a, p, n = lmu.get_all_triplets_indices(labels)
    if len(a) == 0:
        return embeddings.new_tensor(float("nan"))
    d = torch.cdist(embeddings, embeddings)  # (B, B)
    return (d[a, p] < d[a, n]).float().mean()


class TripletHead(Head):
    """MLP projection (in_features -> hidden_dim -> embedding_dim), L2-normalised.

    mining: which triplets of a batch the loss sees. "semihard" (d_ap < d_an < d_ap + margin)
    and "batch_hard" (hardest positive and negative per anchor) suit a pretrained backbone;
    "hard" keeps d_an < d_ap; "all" keeps every triplet that violates the margin, which is
    what gets a randomly initialised network off the ground (semi-hard mining stalls there).
    """

    def __init__(
        self,
        in_features: int | None,
        embedding_dim: int = 128,
        hidden_dim: int = 512,
        margin: float = 0.2,
        mining: Literal["semihard", "hard", "all", "batch_hard"] = "semihard",
        dropout: float = 0.0,
    ):
        super().__init__()
        if in_features is None:
            raise ZooError("head 'triplet' needs a backbone")
        self.dim = embedding_dim
        self.mlp = nn.Sequential(
            nn.Linear(in_features, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, embedding_dim),
        )
        from pytorch_metric_learning import losses, miners  # training only: slow import (scipy)

        self.loss_fn = losses.TripletMarginLoss(margin=margin)
        if mining == "batch_hard":
            self.miner = miners.BatchHardMiner()
        else:
            self.miner = miners.TripletMarginMiner(margin=margin, type_of_triplets=mining)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(features.float()), dim=1)  # (B, embedding_dim)

    def training_loss(self, features, images, labels: Optional[torch.Tensor]):
        if labels is None:
            raise ZooError("the triplet head needs labels or augmentation pairs in each batch")
        emb = self(features)
        triplets = self.miner(emb, labels)
        loss = self.loss_fn(emb, labels, triplets)
        return loss, {"triplet_acc": triplet_accuracy(emb.detach(), labels)}


register_head(TripletHead, name="triplet")

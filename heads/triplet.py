"""Triplet siamese head: an MLP projection trained with a triplet margin loss on mined triplets,
or with the in-batch contrastive NT-Xent (InfoNCE) loss of SimCLR / SSCD (``loss: ntxent``), or
another pytorch-metric-learning loss (zoo.heads.losses: multisimilarity, supcon, proxyanchor,
arcface).

The three "siamese" branches share one backbone and head; a batch holds P classes x K images
(or, without labels, each image and an augmented copy of it), and a miner picks the triplets.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn
from zoo.heads.base import Head

from zoo.errors import ZooError
from zoo.heads.losses import LOSSES, build_loss
from zoo.registry import register_head


def triplet_accuracy(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of all valid triplets in the batch with d(anchor, positive) < d(anchor, negative)."""
    from pytorch_metric_learning.utils import (
        loss_and_miner_utils as lmu,  # training only: slow import
    )

    a, p, n = lmu.get_all_triplets_indices(labels)
    if len(a) == 0:
        return embeddings.new_tensor(float("nan"))
    d = torch.cdist(embeddings, embeddings)  # (B, B)
    return (d[a, p] < d[a, n]).float().mean()


def ntxent_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent over a batch of L2-normalised embeddings (B, D): for each positive pair (a, p),
    -log(exp(s_ap / t) / (exp(s_ap / t) + sum over negatives n of a: exp(s_an / t))), averaged
    over all positive pairs (pytorch-metric-learning's NTXentLoss)."""
    from pytorch_metric_learning import losses  # training only: slow import (scipy)

    return losses.NTXentLoss(temperature=temperature)(embeddings, labels)


def koleo_loss(embeddings: torch.Tensor, labels: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo (Kozachenko-Leonenko) entropy regulariser of SSCD over L2-normalised embeddings
    (B, D): -mean over i of log(distance from i to its nearest neighbour of another label).
    It spreads unrelated images apart, so that fewer of them score like copies."""
    d = torch.cdist(embeddings, embeddings)  # (B, B)
    same = labels[:, None] == labels[None, :]  # (B, B), the diagonal included
    nearest = d.masked_fill(same, float("inf")).min(dim=1).values  # (B,)
    keep = torch.isfinite(nearest)
    return -torch.log(nearest[keep] + eps).mean() if keep.any() else embeddings.new_zeros(())


class ResidualProjection(nn.Module):
    """x + mlp(x) (B, in_features): an MLP whose last layer starts at zero, so that the
    projection starts as the identity and training moves it away only as far as it helps."""

    def __init__(self, in_features: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_features, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, in_features),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


def identity_linear(in_features: int) -> nn.Linear:
    """A square linear layer that starts as the identity (weight I, bias 0)."""
    layer = nn.Linear(in_features, in_features)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(in_features))
        layer.bias.zero_()
    return layer


PROJECTIONS = ("mlp", "linear", "residual", "identity")


class TripletHead(Head):
    """A projection of the backbone features, L2-normalised.

    projection: "mlp" (in_features -> hidden_dim -> embedding_dim, random init); or one that
    starts at the backbone's own features, so that before training the embeddings are the
    normalised features and fine-tuning starts from where a frozen model stands: "linear"
    (in_features -> in_features, initialised as the identity), "residual" (x + mlp(x), the
    MLP's last layer zero-initialised) or "identity" (no parameters: only the backbone
    trains). These keep embedding_dim = in_features.

    mining: which triplets of a batch the loss sees. "semihard" (d_ap < d_an < d_ap + margin)
    and "batch_hard" (hardest positive and negative per anchor) suit a pretrained backbone;
    "hard" keeps d_an < d_ap; "all" keeps every triplet that violates the margin, which is
    what gets a randomly initialised network off the ground (semi-hard mining stalls there).

    loss: "triplet" (margin loss on mined triplets) or "ntxent": every other image of the
    batch is a negative of each positive pair, at ``temperature``; this suits copy detection
    trained on augmented pairs, where most triplets are easy and mining finds little. Or one of
    pytorch-metric-learning's losses for labelled classes (zoo.heads.losses): "multisimilarity",
    "supcon" (at ``temperature``), "proxyanchor" and "arcface" (a learned vector per class, so
    they need ``num_classes``; zoo fit fills it from the training folder); ``loss_options`` go
    to the loss class; ``loss_lr_scale``: the learning rate of the loss's own parameters
    (proxies, class weights) is the head's times this (Proxy-Anchor trains its proxies 100x faster).
    """

    def __init__(
        self,
        in_features: int | None,
        embedding_dim: Optional[int] = None,
        hidden_dim: int = 512,
        margin: float = 0.2,
        mining: Literal["semihard", "hard", "all", "batch_hard"] = "semihard",
        dropout: float = 0.0,
        loss: Literal["triplet", "ntxent", "multisimilarity", "supcon", "proxyanchor", "arcface"] = "triplet",
        temperature: float = 0.1,
        projection: Literal["mlp", "linear", "residual", "identity"] = "mlp",
        koleo_weight: float = 0.0,
        num_classes: Optional[int] = None,
        loss_options: Optional[dict] = None,
        loss_lr_scale: float = 1.0,
        search_on: Literal["projection", "features"] = "projection",
        koleo_over: Literal["labels", "images"] = "labels",
        center: bool = False,
        center_momentum: float = 0.9,
    ):
        """embedding_dim: the mlp's output (default 128); the other projections keep
        in_features, and an embedding_dim other than that is an error. koleo_weight: adds
        that many times the KoLeo entropy regulariser (``koleo_loss``) to the loss, spreading
        each image from its nearest neighbour of another label (``koleo_over: labels``: other
        copies, other classes) or from its nearest other image whatever its class
        (``images``: same-class photos kept apart too, so the space is not squeezed).
        search_on: what the model embeds for search: the normalised projection the loss
        trains ("projection"), or the backbone features the projection starts from
        ("features", as SimCLR and SupCon keep the encoder's output): the loss shapes the
        backbone through the projection, which takes up the pull of same-class photos
        together, so the searched space keeps photos apart.
        center: the searched vectors are centred before their final normalisation: the head
        keeps a running mean of the normalised search vectors over the training batches
        (exponential, ``center_momentum`` per step; a buffer saved with the model) and
        subtracts it, as DINO centres its outputs; each validation then replaces it by the mean
        search vector of the clean validation photos at the embedding size (ZooModel), which is
        what the saved model searches with. A trained space shares one direction that
        pulls every photo towards every other (a median nearest-neighbour cosine of 0.94-0.98
        on food7); removing it keeps the ranking's classes and lets cosine thresholds mean
        something again. The loss sees the uncentred projection."""
        super().__init__()
        if in_features is None:
            raise ZooError("head 'triplet' needs a backbone")
        if projection not in PROJECTIONS:
            raise ZooError(f"head 'triplet': projection '{projection}' is not one of {', '.join(PROJECTIONS)}")
        if projection == "mlp":
            self.dim = 128 if embedding_dim is None else embedding_dim
            self.mlp = nn.Sequential(
                nn.Linear(in_features, hidden_dim),
                nn.BatchNorm1d(hidden_dim),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, self.dim),
            )
        else:
            if embedding_dim is not None and embedding_dim != in_features:
                raise ZooError(f"head 'triplet': projection '{projection}' keeps the backbone's {in_features} "
                               f"dimensions; embedding_dim {embedding_dim} needs projection mlp")
            self.dim = in_features
            self.mlp = {"linear": lambda: identity_linear(in_features),
                        "residual": lambda: ResidualProjection(in_features, hidden_dim, dropout),
                        "identity": nn.Identity}[projection]()
        self.projection = projection
        if loss not in LOSSES:
            raise ZooError(f"head 'triplet': loss '{loss}' is not one of {', '.join(LOSSES)}")
        if loss_lr_scale <= 0:
            raise ZooError(f"head 'triplet': loss_lr_scale {loss_lr_scale} must be positive")
        if temperature <= 0:
            raise ZooError(f"head 'triplet': temperature {temperature} must be positive")
        if koleo_weight < 0:
            raise ZooError(f"head 'triplet': koleo_weight {koleo_weight} must not be negative")
        if koleo_over not in ("labels", "images"):
            raise ZooError(f"head 'triplet': koleo_over '{koleo_over}' is not one of labels, images")
        self.koleo_over = koleo_over
        if search_on not in ("projection", "features"):
            raise ZooError(f"head 'triplet': search_on '{search_on}' is not one of projection, features")
        self.loss_name, self.temperature, self.koleo_weight = loss, temperature, koleo_weight
        self.search_on, self.loss_dim = search_on, self.dim
        if search_on == "features":
            self.dim = in_features  # what the model embeds

        if not 0.0 <= center_momentum < 1.0:
            raise ZooError(f"head 'triplet': center_momentum {center_momentum} must be in [0, 1)")
        self.center, self.center_momentum = center, center_momentum
        if center:  # only then: checkpoints of uncentred heads keep loading strictly
            self.register_buffer("running_center", torch.zeros(self.dim))
            self.register_buffer("center_updates", torch.zeros((), dtype=torch.long))

        self.num_classes, self.loss_lr_scale = num_classes, loss_lr_scale
        self.loss_fn, self.miner = build_loss(loss, self.loss_dim, margin, mining, temperature, num_classes, loss_options)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """The embeddings the loss trains: the projection, L2-normalised (B, embedding_dim)."""
        return F.normalize(self.mlp(features.float()), dim=1)

    def searched(self, features: torch.Tensor) -> torch.Tensor:
        """The search vectors before centring: normalised features or projection (B, dim)."""
        if self.search_on == "features":
            return F.normalize(features.float(), dim=1)  # (B, in_features)
        return self.project(features)  # (B, embedding_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.searched(features)
        if self.center:
            out = F.normalize(out - self.running_center, dim=1)
        return out

    @torch.no_grad()
    def update_center(self, features: torch.Tensor) -> None:
        """Move the running centre towards this batch's mean search vector (the first batch sets it)."""
        mean = self.searched(features).mean(dim=0)
        m = self.center_momentum if int(self.center_updates) else 0.0
        self.running_center.mul_(m).add_(mean, alpha=1.0 - m)
        self.center_updates += 1

    @torch.no_grad()
    def set_center(self, mean: torch.Tensor) -> None:
        """Make ``mean`` (a mean search vector, e.g. of the clean validation photos) the centre."""
        self.running_center.copy_(mean.to(self.running_center))
        self.center_updates += 1

    def training_loss(self, features, images, labels: Optional[torch.Tensor]):
        if labels is None:
            raise ZooError("the triplet head needs labels or augmentation pairs in each batch")
        emb = self.project(features)
        if self.center and self.training:  # validation's loss leaves the centre alone
            self.update_center(features)
        logs = {"triplet_acc": triplet_accuracy(emb.detach(), labels)}
        if self.miner is not None:
            loss = self.loss_fn(emb, labels, self.miner(emb, labels))
        else:
            loss = self.loss_fn(emb, labels)
        if self.koleo_weight:
            koleo = koleo_loss(emb, labels if self.koleo_over == "labels" else torch.arange(len(emb), device=emb.device))
            logs["koleo"] = koleo.detach()
            loss = loss + self.koleo_weight * koleo
        return loss, logs


register_head(TripletHead, name="triplet")

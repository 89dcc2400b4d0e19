"""The losses of the triplet/siamese head, from pytorch-metric-learning, built in the head's
constructor so that their parameters (ProxyAnchor's proxies, ArcFace's class weights) are the
head's own: trained by the optimizer, saved in checkpoints.

    triplet          margin loss on mined triplets (the default; miner from ``mining``)
    ntxent           NT-Xent / InfoNCE: every other image of the batch is a negative
    multisimilarity  Multi-Similarity loss on pairs from the Multi-Similarity miner (Wang et al. 2019)
    supcon           supervised contrastive loss (Khosla et al. 2020)
    proxyanchor      Proxy-Anchor (Kim et al. 2020): one learned proxy per class; needs num_classes
    arcface          additive angular margin (Deng et al. 2019): class weights; needs num_classes

``options`` go to the loss class as they are (e.g. {alpha: 2, beta: 50, base: 0.5} for
multisimilarity), over the defaults below.
"""
from __future__ import annotations

from typing import Any, Optional

from torch import nn

from zoo.errors import ZooError

LOSSES = ("triplet", "ntxent", "multisimilarity", "supcon", "proxyanchor", "arcface")
NEEDS_CLASSES = ("proxyanchor", "arcface")
DEFAULTS: dict[str, dict[str, Any]] = {
    "multisimilarity": {"alpha": 2.0, "beta": 50.0, "base": 0.5},  # the paper's
    "supcon": {},  # temperature from the head's
    "proxyanchor": {"margin": 0.1, "alpha": 32.0},  # the paper's
    "arcface": {"margin": 28.6, "scale": 64.0},  # degrees; pytorch-metric-learning's defaults
}


def build_loss(name: str, dim: int, margin: float, mining: str, temperature: float, num_classes: Optional[int],
               options: Optional[dict] = None) -> tuple[nn.Module, Optional[nn.Module]]:
    """(loss, miner or None) of the head's ``loss`` option for ``dim``-dimensional embeddings."""
    from pytorch_metric_learning import losses, miners  # training only: slow import (scipy)

    if name not in LOSSES:
        raise ZooError(f"head 'triplet': loss '{name}' is not one of {', '.join(LOSSES)}")
    if name in NEEDS_CLASSES and (not isinstance(num_classes, int) or num_classes < 2):
        raise ZooError(f"head 'triplet': loss '{name}' learns one vector per class and needs num_classes (2 or more; "
                       f"zoo fit fills it from the training folder's classes), got {num_classes}")
    options = dict(options or {})
    if options and name in ("triplet", "ntxent"):
        raise ZooError(f"head 'triplet': loss '{name}' takes margin/mining/temperature, not loss_options")
    kw = {**DEFAULTS.get(name, {}), **options}
    try:
        if name == "triplet":
            miner = miners.BatchHardMiner() if mining == "batch_hard" else \
                miners.TripletMarginMiner(margin=margin, type_of_triplets=mining)
            return losses.TripletMarginLoss(margin=margin), miner
        if name == "ntxent":
            return losses.NTXentLoss(temperature=temperature), None
        if name == "multisimilarity":
            return losses.MultiSimilarityLoss(**kw), miners.MultiSimilarityMiner(epsilon=0.1)
        if name == "supcon":
            return losses.SupConLoss(**{"temperature": temperature, **kw}), None
        if name == "proxyanchor":
            return losses.ProxyAnchorLoss(num_classes=num_classes, embedding_size=dim, **kw), None
        return losses.ArcFaceLoss(num_classes=num_classes, embedding_size=dim, **kw), None
    except TypeError as e:  # an option the loss class does not take
        raise ZooError(f"head 'triplet': loss '{name}' options {options}: {' '.join(str(e).split())[:200]}") from None

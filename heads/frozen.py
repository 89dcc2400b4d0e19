"""Frozen extractor: the backbone's pooled features, L2-normalised. Nothing to train."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from zoo.heads.base import Head

from zoo.errors import ZooError
from zoo.registry import register_head


class FrozenHead(Head):
    trainable = False

    def __init__(self, in_features: int | None):
        super().__init__()
        if in_features is None:
            raise ZooError("head 'frozen' needs a backbone")
        self.dim = in_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features.float(), dim=1)  # (B, dim)


register_head(FrozenHead, name="frozen")

"""The inference graph of a model: preprocessed images -> L2-normalised embeddings, the networks
alone (no LightningModule, no trainer), as ``zoo export`` writes it and zoo.model.runtime compiles it."""
from __future__ import annotations

import torch


class EmbeddingModel(torch.nn.Module):
    """images (B, 3, H, W), preprocessed -> embeddings (B, D), L2-normalised."""

    def __init__(self, model):
        super().__init__()
        # the networks only, not the LightningModule (tracing must not touch its trainer)
        self.backbone = model.backbone
        self.head = model.head
        self.feature_map = model.backbone is not None and getattr(model.head, "input", "pooled") == "map"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.backbone is None:
            x = images  # the head encodes
        elif self.feature_map:
            x = self.backbone.forward_features(images)  # (B, C, h, w)
        else:
            x = self.backbone(images)  # (B, dim)
        return torch.nn.functional.normalize(self.head(x), dim=1)  # (B, D)

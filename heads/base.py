"""The head interface every registered head follows."""
from __future__ import annotations

import inspect
from typing import Optional

import torch
from torch import nn

from zoo.errors import ZooError
from zoo.registry import HEADS


class Head(nn.Module):
    """features -> embeddings (B, dim), L2-normalised.

    ``input`` says what the head reads from the backbone: "pooled" (B, dim) features or the
    "map" (B, C, h, w). A head built with ``in_features=None`` reads "image" (B, 3, H, W) and
    brings its own encoder, when it can.
    """

    input: str = "pooled"
    trainable: bool = True
    dim: int

    def training_loss(
        self, features: torch.Tensor, images: torch.Tensor, labels: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and extra values to log for one training batch."""
        raise ZooError(f"head '{type(self).__name__}' has nothing to train; use it with `zoo index` or `zoo benchmark`")


def create_head(name: str, in_features: Optional[int], **kwargs) -> Head:
    factory = HEADS.get(name)
    params = inspect.signature(factory).parameters
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        valid = [p for p in params if p != "in_features"]
        raise ZooError(f"head '{name}' has no option {', '.join(unknown)}; its options: {', '.join(valid)}")
    return factory(in_features=in_features, **kwargs)

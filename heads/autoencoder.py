"""Convolutional autoencoder: bottleneck of the backbone's feature map (or of its own small
encoder), a decoder that reconstructs the downscaled input, MSE loss.
The embedding is the pooled bottleneck."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from zoo.heads.base import Head

from zoo.registry import register_head


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ConvAutoencoderHead(Head):
    input = "map"  # "image" when built without a backbone

    def __init__(
        self,
        in_features: int | None,
        bottleneck: int = 64,
        recon_size: int = 64,
        width: int = 32,
        up_steps: int = 3,
    ):
        super().__init__()
        self.dim = bottleneck
        self.recon_size = recon_size
        self.up_steps = up_steps
        if in_features is None:
            # own encoder, stride 16: (B, 3, H, W) -> (B, 4w, H/16, W/16)
            self.input = "image"
            self.encoder = nn.Sequential(
                _conv(3, width, 2), _conv(width, 2 * width, 2), _conv(2 * width, 4 * width, 2), _conv(4 * width, 4 * width, 2)
            )
            in_features = 4 * width
        else:
            self.input = "map"
            self.encoder = nn.Identity()
        self.bottleneck = nn.Conv2d(in_features, bottleneck, 1)
        layers, c = [], bottleneck
        for i in range(up_steps):
            c_out = max(width, bottleneck // 2 ** (i + 1))
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), _conv(c, c_out)]
            c = c_out
        layers.append(nn.Conv2d(c, 3, 3, 1, 1))
        self.decoder = nn.Sequential(*layers)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.encoder(x.float()))  # (B, bottleneck, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encode(x)
        return F.normalize(z.mean(dim=(2, 3)), dim=1)  # (B, bottleneck)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encode(x)
        start = max(1, self.recon_size // 2**self.up_steps)
        z = F.interpolate(z, size=(start, start), mode="bilinear", align_corners=False)
        out = self.decoder(z)  # (B, 3, start * 2^up, ...)
        return F.interpolate(out, size=(self.recon_size, self.recon_size), mode="bilinear", align_corners=False)

    def training_loss(self, features, images, labels: Optional[torch.Tensor]):
        recon = self.reconstruct(features)
        target = F.interpolate(images.float(), size=recon.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
        loss = F.mse_loss(recon, target)
        return loss, {"recon_mse": loss.detach()}


register_head(ConvAutoencoderHead, name="autoencoder")

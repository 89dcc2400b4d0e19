"""WiSE-FT (Wortsman et al., 2022): the model validated and saved is the weights interpolated
between the starting ones and the fine-tuned ones, theta = (1 - alpha) theta_0 + alpha theta.

Fine-tuning on a few hundred labelled photos pulls each class together; the starting weights
place every photo by what it looks like. Interpolating keeps most of the classes (hit@1, mAP)
and gives back the start's spread: photos far from their class keep neighbours of their class
and unrelated photos stop looking alike (food7: README "Fine-tuning on labelled classes").

Built on Lightning's WeightAveraging, which keeps a second copy of the model, swaps it in for
validation and saves it as the checkpoint's ``state_dict`` (the training weights go to
``current_model_state``, so a resumed fit goes on from them). Here the copy is not an average
but the interpolation, computed when validation starts. It is swapped back at validation end,
after the model has set what it derives from the validation pass (a centring head's centre)
and before ModelCheckpoint (always the last callback) saves it.
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import AveragedModel

CENTRE = "running_center"  # set by validation on the interpolated model, never interpolated


class WeightInterpolation(WeightAveraging):
    def __init__(self, alpha: float) -> None:
        """alpha: the share of the fine-tuned weights (1: the trained model, 0: the start)."""
        super().__init__(use_buffers=True)
        self.alpha = float(alpha)
        self._start: dict[str, torch.Tensor] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        pl_module.configure_model()  # zoo builds its networks there; the weights are the start
        self._average_model = AveragedModel(model=pl_module, device=pl_module.device, use_buffers=True)
        self._start = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def should_update(self, step_idx: Any = None, epoch_idx: Any = None) -> bool:
        return False  # the interpolation is computed when it is needed, from the two end points

    @torch.no_grad()
    def interpolate(self, pl_module: L.LightningModule) -> None:
        """Fill the copy with (1 - alpha) start + alpha current (whole numbers: the current)."""
        target = self._average_model.module.state_dict()
        for name, current in pl_module.state_dict().items():
            if name.endswith(CENTRE):
                continue
            if current.is_floating_point() and name in self._start:
                target[name].copy_(torch.lerp(self._start[name].to(current), current, self.alpha))
            else:
                target[name].copy_(current)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average_model is not None:
            self.interpolate(pl_module)
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # callbacks run before the model's hook: swapping back now would hide its centre

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average_model is not None:  # the model in memory is the one validated last
            self._copy_average_to_current(pl_module)

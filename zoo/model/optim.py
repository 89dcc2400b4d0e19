"""How a ZooModel trains: its parameter groups (head, the loss's own parameters, the backbone,
optionally with a learning rate decaying block by block towards the input) and its learning-rate
schedule (constant, or a linear warm-up then a cosine decay).

Layer-wise decay uses timm's grouping of a backbone into blocks (``group_matcher``, as timm's
own layer-decay optimizer does): the block nearest the head trains at ``backbone_lr``, each
block below at ``layer_decay`` times the one above.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from zoo.errors import ZooError

SCHEDULES = ("constant", "cosine")


def schedule_factor(step: int, total_steps: int, warmup_steps: int = 0, kind: str = "cosine",
                    final: float = 0.0) -> float:
    """The learning rate at optimizer step ``step`` as a share of the base rate: a linear
    warm-up from 1 / (warmup_steps + 1) to 1 over ``warmup_steps`` steps, then constant or a
    cosine from 1 down to ``final`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def backbone_groups(backbone, lr: float, layer_decay: Optional[float]) -> list[dict]:
    """The backbone's trainable parameters: one group at ``lr``, or with ``layer_decay`` one
    group per block, each at ``lr`` times its scale."""
    params = [(n, p) for n, p in backbone.named_parameters() if p.requires_grad]
    if not params:
        return []
    if layer_decay is None or layer_decay == 1.0:
        return [{"params": [p for _, p in params], "lr": lr, "name": "backbone"}]
    if not 0.0 < layer_decay <= 1.0:
        raise ZooError(f"--model.layer_decay {layer_decay}: a factor in (0, 1] is expected")
    from timm.models import group_parameters
    from timm.optim._param_groups import auto_group_layers

    model = getattr(backbone, "model", backbone)
    if hasattr(model, "group_matcher"):
        layer_of = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    else:
        layer_of = auto_group_layers(model)
    top = max(layer_of.values())
    groups: dict[int, dict] = {}
    for name, p in params:
        layer = layer_of.get(name.removeprefix("model."), top)
        g = groups.setdefault(layer, {"params": [], "lr": lr * layer_decay ** (top - layer), "name": f"backbone.{layer}"})
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def configure(model) -> dict | torch.optim.Optimizer:
    """ZooModel.configure_optimizers: AdamW over the head (its loss's own parameters at
    ``loss_lr_scale`` times the head's rate) and the unfrozen backbone, with the schedule."""
    hp = model.hparams
    head = model.head
    own = {id(p) for p in head.loss_fn.parameters()} if isinstance(getattr(head, "loss_fn", None), torch.nn.Module) else set()
    head_params = [p for p in head.parameters() if p.requires_grad and id(p) not in own]
    loss_params = [p for p in head.parameters() if p.requires_grad and id(p) in own]
    groups = [{"params": head_params, "lr": hp.lr, "name": "head"}] if head_params else []
    if loss_params:
        groups.append({"params": loss_params, "lr": hp.lr * getattr(head, "loss_lr_scale", 1.0), "name": "loss",
                       "weight_decay": 0.0})
    if model.backbone is not None:
        groups += backbone_groups(model.backbone, hp.backbone_lr, hp.get("layer_decay"))
    if not groups:
        raise ZooError(f"nothing to train: head '{hp.head}' has no trainable parameters and the backbone is frozen")
    optimizer = torch.optim.AdamW(groups, weight_decay=hp.weight_decay)
    kind, warmup = hp.get("lr_schedule", "constant"), int(hp.get("warmup_steps", 0) or 0)
    if kind not in SCHEDULES:
        raise ZooError(f"--model.lr_schedule {kind}: one of {', '.join(SCHEDULES)}")
    if kind == "constant" and not warmup:
        return optimizer
    total = int(model.trainer.estimated_stepping_batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule_factor(step, total, warmup, kind))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

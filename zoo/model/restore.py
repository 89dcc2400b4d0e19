"""Restoring a saved ZooModel: the one way a model is rebuilt from what a checkpoint or an index
recorded about it, and load_model, which does it for a Lightning checkpoint.

A saved model is its constructor arguments (hparams), its recipe (the resolved timm arguments
and preprocessing, so that no weights file or sidecar is read again) and its own weights (a
state dict, or an index's model.safetensors). All three come from files anyone may have
edited: the recipe passes the same allow-lists as the command line (check_recipe), and weights
come only from the saved copy, a hub tag or a seed, never from a path named in the record.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Optional

import torch

from zoo.backbones.timm_backbone import check_data_config, check_model_kwargs
from zoo.errors import ZooError
from zoo.io import sha256_file
from zoo.model.module import ZooModel, model_config


def one_line(e: BaseException, limit: int) -> str:
    return " ".join(str(e).split())[:limit] or type(e).__name__


def check_recipe(recipe: Any, backbone: Optional[str]) -> Optional[dict]:
    """``recipe`` if it is one: a mapping of model_kwargs (only the timm arguments
    zoo.backbones.timm_backbone.MODEL_KWARGS_KEYS allows) and data_config (bounded preprocessing
    settings). None stays None: a model saved before recipes, built from its checked hparams."""
    if recipe is None:
        return None
    if not isinstance(recipe, dict) or any(k not in recipe for k in ("model_kwargs", "data_config")):
        raise ZooError("the model recipe must be a mapping with model_kwargs and data_config")
    if backbone is not None:  # a head with its own encoder uses no timm arguments
        check_model_kwargs(str(backbone), recipe["model_kwargs"])
    check_data_config(recipe["data_config"], "the recipe's data_config")
    return {"model_kwargs": recipe["model_kwargs"] or {}, "data_config": recipe["data_config"] or {}}


def restore_model(hparams: Any, recipe: Any, weights: Optional[dict | str | Path] = None, *, source: str) -> ZooModel:
    """A ZooModel rebuilt from its recorded ``hparams`` and ``recipe`` (both checked), in eval mode.

    ``weights``: its own weights, a state dict or a safetensors file, loaded strictly over a
    build that reads no weights; None: the weights the hparams name by hub tag or seed (a
    weights file named in them is never read). ``source`` names the record in errors, which are
    ZooErrors of one line whatever the record holds.
    """
    try:
        if not isinstance(hparams, dict):
            raise ZooError(f"hparams must be a mapping, not {type(hparams).__name__}")
        hp = model_config(hparams)
        if weights is None:
            hp["weights"] = None
        model = ZooModel(**hp)
        model.configure_model(load_weights=weights is None, recipe=check_recipe(recipe, model.hparams.backbone))
    except Exception as e:  # a record may hold anything: whatever it is, one line
        raise ZooError(f"{source}: the recorded model cannot be built ({one_line(e, 600)})") from None
    if weights is not None:
        name = source if isinstance(weights, dict) else str(weights)
        try:
            if not isinstance(weights, dict):
                from safetensors.torch import load_file

                weights = load_file(str(weights))
            model.load_state_dict(weights, strict=True)
        except Exception as e:
            raise ZooError(f"{name} does not hold the recorded model ({one_line(e, 160)})") from None
    return model.eval()


def read_checkpoint(checkpoint: str | Path) -> dict:
    """A checkpoint file's contents, read with ``weights_only=True`` (tensors and plain values
    only: a crafted file cannot run code); it must hold hyper_parameters and a state_dict."""
    if not Path(checkpoint).is_file():
        raise ZooError(f"checkpoint not found: {checkpoint}")
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ZooError(f"refusing to load {checkpoint}: it holds Python objects beyond tensors and plain values "
                       "(loading it could run code); only zoo/Lightning checkpoints are accepted") from None
    except Exception as e:  # truncated, or not a checkpoint
        raise ZooError(f"cannot load checkpoint {checkpoint}: {one_line(e, 160)}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("hyper_parameters"), dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ZooError(f"{checkpoint} is not a zoo checkpoint (no hyper_parameters/state_dict)")
    return ckpt


def load_model(checkpoint: str) -> ZooModel:
    """A trained ZooModel from a Lightning checkpoint, ready to embed (eval mode).

    The file is read with ``weights_only=True``: tensors and plain values only, so a crafted
    checkpoint cannot run code; anything else is refused. The networks are rebuilt from the
    checkpoint's own recipe and weights (restore_model): no other file is read.
    """
    ckpt = read_checkpoint(checkpoint)
    model = restore_model(ckpt["hyper_parameters"], ckpt.get("zoo_recipe"), ckpt["state_dict"], source=str(checkpoint))
    model.set_trained_from(ckpt.get("zoo_weights_id"))
    model.checkpoint_path = str(checkpoint)  # names `zoo export`'s file, recorded by `zoo benchmark --wandb`
    model.checkpoint_id = f"checkpoint:{Path(checkpoint).name} sha256:{sha256_file(checkpoint)[:16]}"
    return model

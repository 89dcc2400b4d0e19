"""What identifies a model in the files zoo writes (an index, an export, a shard job): its
architecture, weights, dimension, preprocessing and recipe, as plain JSON values."""
from __future__ import annotations

import json
from typing import Any

from zoo.model.module import model_config


def model_identity(model) -> dict[str, Any]:
    """What an index records about the model that made it (plain JSON values)."""
    ident = {
        "architecture": model.architecture,
        "backbone": model.hparams.get("backbone"),
        "head": model.hparams.get("head"),
        "weights": model.weights_id,
        "dim": model.embedding_dim,
        "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in model.data_config.items()},
        "hparams": json.loads(json.dumps(model_config(model.hparams), default=str)),
        "recipe": json.loads(json.dumps(model.recipe, default=str)),
    }
    if getattr(model, "checkpoint_id", None):
        ident["checkpoint"] = model.checkpoint_id
    return ident

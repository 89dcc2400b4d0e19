"""The embedding model: a timm backbone and a head in one LightningModule (ZooModel), how a
trained one is restored (load_model), its weights, export and the registry listing."""
from zoo.model.module import ZooModel, load_model, model_config

__all__ = ["ZooModel", "load_model", "model_config"]

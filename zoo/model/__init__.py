"""The embedding model: a timm backbone and a head in one LightningModule (ZooModel), how a
saved one is rebuilt (restore_model; load_model for a checkpoint), its weights, export, the
registry listing, the precision and layout it runs at for inference (zoo.model.inference) and
the runtime that runs its forward there (torch, ONNX Runtime, OpenVINO: zoo.model.runtime)."""
from zoo.model.module import ZooModel, model_config
from zoo.model.restore import load_model, restore_model

__all__ = ["ZooModel", "load_model", "model_config", "restore_model"]

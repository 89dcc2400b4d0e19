"""ZooModel: one LightningModule = a registered backbone + a registered head.

It embeds (``predict_step``), trains (``training_step``; the head owns its loss) and validates
with retrieval metrics. Networks are built in ``configure_model`` so that constructing the
module (e.g. by the CLI) is cheap and a bad name fails at once, before any work.
"""
from __future__ import annotations

import inspect
from typing import Any, Optional

import lightning as L
import timm
import torch
from torchmetrics.utilities import dim_zero_cat

from zoo.backbones.timm_backbone import (
    Backbone,
    check_backbone_name,
    check_data_config,
    check_model_kwargs,
    create_backbone,
)
from zoo.data.decode import DevicePreprocess
from zoo.data.images import load_image
from zoo.data.transforms import draft_size, pixel_transform
from zoo.errors import ZooError
from zoo.heads.base import Head, create_head
from zoo.model.inference import inference_setting
from zoo.model.interpolation import WeightInterpolation
from zoo.model.optim import configure as configure_training
from zoo.model.runtime import COMPILED, asked_runtime, compiled_forward, forget_compiled
from zoo.metrics.pairs import pair_summary
from zoo.metrics.retrieval import RetrievalMetrics, centred
from zoo.registry import HEADS

# preprocessing for heads that bring their own encoder (no backbone)
DEFAULT_DATA_CONFIG = {
    "input_size": (3, 224, 224),
    "interpolation": "bilinear",
    "mean": timm.data.IMAGENET_DEFAULT_MEAN,
    "std": timm.data.IMAGENET_DEFAULT_STD,
    "crop_pct": 1.0,
    "crop_mode": "center",
}


class ZooModel(L.LightningModule):
    def __init__(
        self,
        backbone: Optional[str] = "resnet50",
        head: str = "frozen",
        pretrained: bool = True,
        weights: Optional[str] = None,
        model_kwargs: Optional[dict[str, Any]] = None,
        data_config: Optional[dict[str, Any]] = None,
        head_kwargs: Optional[dict[str, Any]] = None,
        freeze_until: Optional[str] = None,
        freeze_norm_stats: Optional[bool] = None,
        lr: float = 1e-3,
        backbone_lr: float = 1e-5,
        weight_decay: float = 1e-4,
        float16_embeddings: bool = False,
        seed: int = 0,
        lr_schedule: str = "constant",
        warmup_steps: int = 0,
        layer_decay: Optional[float] = None,
        weight_interpolation: float = 1.0,
    ):
        """
        Args:
            backbone: a registered backbone (`zoo list`), any timm model name, or None for a
                head with its own encoder (autoencoder).
            head: a registered head: frozen, triplet, autoencoder, or a plugin's.
            pretrained: fetch the backbone's hub weights (or use the local cache); without
                them it runs with random init, loudly.
            weights: a local .pth/.safetensors state dict for the backbone (offline).
            model_kwargs: extra timm architecture arguments (e.g. {pad_type: same}); only those in
                zoo.backbones.timm_backbone.MODEL_KWARGS_KEYS, none that names a file.
            data_config: preprocessing overrides (mean, std, input_size, interpolation,
                crop_pct, or image_size as a shortcut).
            head_kwargs: the head's own options (see its class).
            freeze_until: freeze the backbone up to and including this stage ("all" for the
                whole backbone, None to train it all). Frozen heads freeze everything.
            freeze_norm_stats: batch-norm layers of the backbone keep their running statistics
                while fine-tuning (P x K batches are small and class-structured, and some
                weight files fold the normalisation into the convolutions). None: yes for
                pretrained or file weights, no for random init (which needs batch statistics).
            lr: learning rate of the head; backbone_lr: of the unfrozen backbone stages.
            float16_embeddings: return embeddings as float16 (half the memory).
            seed: seed of random initialisation, so random-init models are reproducible.
            lr_schedule: constant or cosine (decays to 0 at the last step; zoo.model.optim).
            warmup_steps: optimizer steps of linear warm-up before the schedule.
            layer_decay: each backbone block below the top one trains at this factor times
                the rate of the block above (e.g. 0.8); None: one rate (backbone_lr).
            weight_interpolation: below 1, what is validated and saved is the weights
                interpolated between the starting ones (0) and the trained ones (1), WiSE-FT
                (zoo.model.interpolation): the trained classes with the start's broader space.
        """
        super().__init__()
        self.save_hyperparameters()
        if backbone is not None:
            check_backbone_name(backbone)
            check_model_kwargs(backbone, model_kwargs)
        check_data_config(data_config, "data_config")
        HEADS.get(head)  # fails now, with the valid names, if unknown
        if not 0.0 < weight_interpolation <= 1.0:
            raise ZooError(f"weight_interpolation {weight_interpolation} must be in (0, 1]")
        self.backbone: Optional[Backbone] = None
        self.head: Optional[Head] = None
        self.val_metrics = RetrievalMetrics()
        self.last_validation: Optional[dict[str, torch.Tensor]] = None

    # ---- building -------------------------------------------------------------------------
    def configure_model(self, load_weights: bool = True, recipe: Optional[dict] = None) -> None:
        """Build backbone and head. ``load_weights=False``: random init, to be overwritten by a
        state dict; ``recipe``: the resolved timm kwargs and preprocessing of a saved model
        (so that a checkpoint or an index never reads the original weights file again)."""
        if self.head is not None:
            return
        hp = self.hparams
        if hp.backbone is not None:
            self.backbone = create_backbone(
                hp.backbone,
                pretrained=hp.pretrained and load_weights,
                weights=hp.weights if load_weights else None,
                model_kwargs=recipe["model_kwargs"] if recipe else hp.model_kwargs,
                data_config=recipe["data_config"] if recipe else hp.data_config,
                seed=hp.seed,
            )
        if self.backbone is None:
            in_features = None  # the head brings its own encoder
        elif getattr(HEADS.get(hp.head), "input", "pooled") == "map":
            in_features = self.backbone.feature_channels
        else:
            in_features = self.backbone.dim
        self._fill_num_classes()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hp.seed)
            self.head = create_head(hp.head, in_features, **(hp.head_kwargs or {}))
        self.val_metrics.center = bool(getattr(self.head, "center", False))  # validation sets the centre
        if self.backbone is not None:
            self._set_norm_stats(self.backbone.weights_id)
            if not self.head.trainable or hp.freeze_until == "all":
                self.backbone.freeze("all")
            elif hp.freeze_until:
                self.backbone.freeze(hp.freeze_until)

    def _fill_num_classes(self) -> None:
        """A head taking ``num_classes`` (a loss with a vector per class) gets the training
        folder's class count when it has none; kept in the hyperparameters, so a checkpoint
        builds the same head."""
        kwargs = dict(self.hparams.head_kwargs or {})
        if kwargs.get("num_classes") is not None or "num_classes" not in inspect.signature(HEADS.get(self.hparams.head)).parameters:
            return
        classes = getattr(getattr(self._trainer, "datamodule", None), "classes", None)
        if classes:
            self.hparams.head_kwargs = {**kwargs, "num_classes": len(classes)}

    def build(self) -> "ZooModel":
        """Build the networks now (outside a Trainer) and return self."""
        self.configure_model()
        return self

    @property
    def recipe(self) -> dict:
        """How to build the networks again without reading any file (plain JSON values)."""
        if self.backbone is not None and getattr(self.backbone, "recipe", None):
            return self.backbone.recipe
        return {"model_kwargs": self.hparams.model_kwargs or {}, "data_config": self.hparams.data_config or {}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["zoo_weights_id"] = self.weights_id
        checkpoint["zoo_recipe"] = self.recipe

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # the checkpoint holds every weight and how to build the networks: read nothing else
        self.configure_model(load_weights=False, recipe=checkpoint.get("zoo_recipe"))
        self.set_trained_from(checkpoint.get("zoo_weights_id"))
        # what Lightning (and WeightAveraging's trained weights) will load strictly: one line if not
        for key in ("state_dict", "current_model_state"):
            if key in checkpoint:
                check_state(checkpoint[key], self.state_dict(), f"the checkpoint's {key}")

    def set_trained_from(self, weights_id: Optional[str]) -> None:
        """A checkpoint's model: record the weights it was trained from (part of its weights_id);
        built without weights, its batch-norm statistics are decided by those."""
        self._base_weights_id = weights_id
        if self.backbone is not None:
            self._set_norm_stats(str(weights_id))

    def _set_norm_stats(self, weights_id: str) -> None:
        """freeze_norm_stats, or by default: keep batch-norm statistics unless random init."""
        choice = self.hparams.freeze_norm_stats
        self.backbone.norm_stats_frozen = not weights_id.startswith("random init") if choice is None else choice

    # ---- identity and preprocessing -------------------------------------------------------
    @property
    def data_config(self) -> dict:
        if self.backbone is not None:
            return dict(self.backbone.data_config)
        cfg = dict(DEFAULT_DATA_CONFIG)
        overrides = dict(self.hparams.data_config or {})
        if "image_size" in overrides:
            s = int(overrides.pop("image_size"))
            overrides["input_size"] = (3, s, s)
        cfg.update(overrides)
        return cfg

    @property
    def weights_id(self) -> str:
        if getattr(self, "restored_weights_id", None):  # rebuilt from an index's own copy
            return self.restored_weights_id
        if getattr(self, "checkpoint_id", None):
            return f"{self.checkpoint_id} (trained from {self._base_weights_id})"
        return self.backbone.weights_id if self.backbone is not None else f"random init (seed {self.hparams.seed})"

    @property
    def embedding_dim(self) -> int:
        return self.head.dim

    @property
    def architecture(self) -> str:
        return f"{self.hparams.backbone or 'own-encoder'}+{self.hparams.head}"

    # ---- forward ----------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        if self.backbone is None:
            return images  # (B, 3, H, W): the head encodes
        if self.head.input == "map":
            return self.backbone.forward_features(images)  # (B, C, h, w)
        return self.backbone(images)  # (B, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # (B, D), L2-normalised

    # ---- inference: pixels arrive as uint8 (or JPEG bytes) and are made ready on the device ----
    channels_last: Optional[bool] = None  # None: as zoo.model.inference decides (--channels_last sets it)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 pixels are normalised here, on the model's device (a quarter of the bytes of
        float32 cross from the loader workers); JPEG bytes are decoded here first (zoo.data.decode)."""
        if isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor):
            if "jpeg" in batch:
                batch = self._decode_jpegs(batch)
            if batch["image"].dtype == torch.uint8:
                batch["image"] = self.device_preprocess.normalise(batch["image"])  # (B, 3, H, W) float32
        return batch

    @property
    def device_preprocess(self):
        if getattr(self, "_device_preprocess", None) is None:
            self._device_preprocess = DevicePreprocess(self.data_config)
        return self._device_preprocess

    def _decode_jpegs(self, batch: dict) -> dict:
        """Decode the batch's JPEG bytes on the device; the few the device decoder refuses are
        decoded by Pillow here, and reported if Pillow cannot read them either."""
        jpegs = [torch.from_numpy(a) for a in batch.pop("jpeg")]
        where = batch.pop("jpeg_index").to(batch["index"].device)  # (J,)
        decoded, failed = self.device_preprocess.decode(jpegs, self.device)  # (J - F, 3, H, W) uint8
        ok = [i for i in range(len(jpegs)) if i not in set(failed)]
        images = [batch["image"]] if batch["image"].ndim == 4 else []
        index = [batch["index"]] if batch["image"].ndim == 4 else []
        images.append(decoded)
        index.append(where[ok])
        transform = pixel_transform(self) if failed else None  # the workers' own path
        for i in failed:
            try:
                pixels = transform(load_image(jpegs[i].numpy().tobytes(), draft_size(self)))
            except ValueError as e:
                batch["skipped"] = [*batch.get("skipped", []), (int(where[i]), str(e))]
                continue
            images.append(pixels.unsqueeze(0).to(self.device))
            index.append(where[i : i + 1])
        batch["image"], batch["index"] = torch.cat(images), torch.cat(index)
        return batch

    runtime: Optional[str] = None  # of the next predict run: zoo.model.runtime (zoo.embed.runner sets it); None: torch

    def on_predict_start(self) -> None:
        self.compiled = None
        if self.runtime in COMPILED:  # the forward exported and compiled once (zoo.model.runtime)
            trainer = self.trainer
            self.compiled = compiled_forward(self, self.runtime, str(trainer.precision),
                                             explicit=asked_runtime(trainer) == self.runtime)
        if self.compiled is None and self.uses_channels_last(self.device):
            self.to(memory_format=torch.channels_last)

    def on_fit_start(self) -> None:
        forget_compiled(self)  # the weights are about to change

    def uses_channels_last(self, device: torch.device, precision: Optional[str] = None) -> bool:
        """Channels-last layout for a forward on ``device`` at ``precision`` (default: the
        attached Trainer's): as set, else as zoo.model.inference decides."""
        if self.channels_last is not None:
            return bool(self.channels_last)
        if precision is None and getattr(self, "_trainer", None) is not None:
            precision = self._trainer.precision
        return inference_setting(device, precision).channels_last

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        compiled = getattr(self, "compiled", None)
        if len(batch["index"]) and compiled is None and self.uses_channels_last(self.device):
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        if not len(batch["index"]):
            emb = torch.empty(0, self.embedding_dim)
        else:
            emb = compiled(batch["image"]) if compiled is not None else self(batch["image"])
        if self.hparams.float16_embeddings:
            emb = emb.half()
        return {"index": batch["index"], "embedding": emb, "skipped": batch.get("skipped", [])}

    # ---- training ---------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.backbone is not None:
            self.backbone.keep_frozen_norms()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images, labels = batch["image"], batch.get("label")
        loss, logs = self.head.training_loss(self.features(images), images, labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        for k, v in logs.items():
            self.log(f"train/{k}", v, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        features = self.features(images)
        if "label" in batch:  # a centring head: uncentred, the validation photos' mean is the centre
            emb = self.head.searched(features) if self.val_metrics.center else self.head(features)
            self.val_metrics.update(emb, batch["label"], batch.get("is_query"))
        if self.head.trainable:
            loss, _ = self.head.training_loss(features, images, batch.get("label"))
            self.log("val/loss", loss, batch_size=len(images))

    def on_validation_epoch_end(self) -> None:
        if not self.val_metrics.update_called:
            return
        summary = self.val_metrics.compute()
        emb = dim_zero_cat(self.val_metrics.embeddings).cpu()
        if self.val_metrics.center:  # the saved model searches with the centre of these clean photos
            self.head.set_center(self.val_metrics.mean_vector)
            emb = centred(emb, self.val_metrics.mean_vector)
        self.last_validation = {"embeddings": emb, "labels": dim_zero_cat(self.val_metrics.labels).cpu()}  # for callbacks
        self.log("val/hit@1", summary["hit@1"], prog_bar=True)
        self.log("val/p@10", summary["p@10"])
        self.log("val/map", summary["map"], prog_bar=True)
        emb, labels = self.last_validation["embeddings"], self.last_validation["labels"]
        if 2 <= len(emb) <= 4000:  # every pair: copy detection's precision/recall (zoo.metrics.pairs)
            pairs = pair_summary(emb, labels, precision=0.95)
            if pairs["pair_ap"] == pairs["pair_ap"]:  # some positive pair
                self.log("val/pair_ap", pairs["pair_ap"], prog_bar=True)
                self.log("val/recall@p95", pairs["recall"])
        self.val_metrics.reset()

    def configure_callbacks(self) -> list:
        if self.hparams.weight_interpolation < 1.0:
            return [WeightInterpolation(self.hparams.weight_interpolation)]
        return []

    def configure_optimizers(self):
        return configure_training(self)  # zoo.model.optim: parameter groups and schedule


def check_state(state: Any, own: dict, what: str) -> None:
    """ZooError (one line) unless ``state`` has exactly ``own``'s tensor names and shapes."""
    if not isinstance(state, dict):
        raise ZooError(f"{what} is not a mapping of tensors")
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    reshaped = sorted(k for k in own.keys() & state.keys()
                      if not isinstance(state[k], torch.Tensor) or state[k].shape != own[k].shape)
    if missing or unexpected or reshaped:
        parts = [f"{n} {len(ks)} ({', '.join(map(str, ks[:3]))}{', ...' if len(ks) > 3 else ''})"
                 for n, ks in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)) if ks]
        raise ZooError(f"{what} does not fit the model: tensors " + "; ".join(parts))


def model_config(hparams: dict) -> dict:
    """The ZooModel constructor arguments among ``hparams`` (which may carry extra keys)."""
    names = set(inspect.signature(ZooModel.__init__).parameters) - {"self"}
    return {k: v for k, v in dict(hparams).items() if k in names}


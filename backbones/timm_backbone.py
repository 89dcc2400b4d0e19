"""A timm model without its classifier, with its weights identity and preprocessing.

Architecture arguments (``model_kwargs``) are kept apart from weights/preprocessing metadata
(``data_config``: mean, std, input_size, interpolation, crop_pct), which overlays timm's
``pretrained_cfg`` so that ``resolve_model_data_config`` and ``create_transform`` see it.
"""
from __future__ import annotations

import json
import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import timm
import torch
from torch import nn

from zoo.errors import ZooError
from zoo.io import read_json, sha256_file
from zoo.registry import BACKBONES, register_backbone, unknown_name_message
from zoo.weights import warn_loudly


class Backbone(nn.Module):
    """images (B, 3, H, W) -> pooled features (B, dim), or a feature map (B, C, h, w)."""

    def __init__(self, model: nn.Module, name: str, weights_id: str):
        super().__init__()
        self.model = model
        self.name = name
        self.weights_id = weights_id
        # vgg-style models have a hidden pre-logits layer: its width is the pooled dim
        self.dim: int = getattr(model, "head_hidden_size", None) or model.num_features
        self.feature_channels: int = model.num_features
        self.data_config: dict[str, Any] = timm.data.resolve_model_data_config(model)
        # how to build it again without reading any file: resolved timm kwargs and cfg overlay
        self.recipe: dict[str, Any] = {"model_kwargs": {}, "data_config": {}}
        self._frozen_until: Optional[str] = None
        self.norm_stats_frozen = False  # True: every batch-norm layer keeps its running statistics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (B, dim)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)  # (B, C, h, w)

    # ---- partial freezing -------------------------------------------------------------
    def stage_names(self) -> list[str]:
        """Modules one or two levels down that hold parameters, in forward order."""
        names = []
        for name, module in self.model.named_modules():
            if name and name.count(".") <= 1 and any(True for _ in module.parameters()):
                names.append(name)
        return names

    def freeze(self, until: str = "all") -> None:
        """Freeze every parameter up to and including the stage ``until`` ("all": everything)."""
        params = list(self.model.named_parameters())
        if until == "all":
            last = len(params) - 1
        else:
            stages = self.stage_names()
            if until not in stages:
                top = [s for s in stages if "." not in s]
                raise ZooError(
                    f"backbone '{self.name}' has no stage '{until}'; use one of {', '.join(top)} "
                    f"(or a sub-stage such as '{next((s for s in stages if '.' in s), top[-1])}', or 'all')"
                )
            last = max(i for i, (n, _) in enumerate(params) if n.startswith(until + "."))
        for i, (_, p) in enumerate(params):
            p.requires_grad_(i > last)
        self._frozen_until = until

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        self.keep_frozen_norms()
        return self

    def keep_frozen_norms(self) -> None:
        """Frozen batch-norm layers (all of them when ``norm_stats_frozen``) normalise with, and
        keep, their running statistics; their affine parameters still train when unfrozen.

        Called from ``train()`` and again before every training batch, since a trainer may
        restore each module's train/eval flag one by one (e.g. after validation).
        """
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and (
                self.norm_stats_frozen or not any(p.requires_grad for p in m.parameters())
            ):
                m.eval()


# ---- weights ------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_hub_file(pretrained_cfg: dict) -> Optional[str]:
    """A weights file already in the local Hugging Face cache, if any (works offline)."""
    hub_id = pretrained_cfg.get("hf_hub_id")
    if not hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(hub_id, filename)
        if isinstance(path, str):
            return path
    return None


def load_weights_file(model: nn.Module, path: str | Path, model_name: str) -> str:
    """Load a local .pth/.safetensors state dict strictly; returns the weights identity."""
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"weights file not found: {path}")
    try:
        state = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as e:
        raise ZooError(f"cannot read weights file {path}: {e}".splitlines()[0]) from e
    own = model.state_dict()
    # a file made for a classifier model: drop the classifier, we embed without it
    classifier = model.pretrained_cfg.get("classifier")
    prefixes = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    state = {k: v for k, v in state.items() if k in own or not k.startswith(tuple(p + "." for p in prefixes))}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ZooError(
            f"weights file {path.name} does not fit {model_name}: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ZooError(f"weights file {path.name} does not fit {model_name}: {str(e).splitlines()[1:2]}") from e
    return f"file:{path.name} sha256:{sha256_file(path)}"


# preprocessing keys a data_config / sidecar overlay may set, and what each value may be; anything
# else (a "file" or "url" that would make timm read or fetch something) is refused. Sizes are
# bounded, so that a recipe in a file cannot make every image a gigapixel.
MAX_IMAGE_SIDE = 2048


def _number(lo: float, hi: float):
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi


def _three(ok):
    return lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(map(ok, v))


_side = _number(1, MAX_IMAGE_SIDE)
_SIDE = (lambda v: isinstance(v, int) and _side(v), f"an integer from 1 to {MAX_IMAGE_SIDE}")
_SIZE = (lambda v: _three(lambda x: isinstance(x, int) and _side(x))(v) and v[0] == 3,
         f"[3, H, W] with H and W integers from 1 to {MAX_IMAGE_SIDE}")
_CROP = (_number(0.5, 1.5), "a number from 0.5 to 1.5")
DATA_CONFIG_VALUES = {
    "image_size": _SIDE, "input_size": _SIZE, "test_input_size": _SIZE, "min_input_size": _SIZE,
    "mean": (_three(_number(-1e3, 1e3)), "three numbers"), "std": (_three(_number(1e-6, 1e3)), "three numbers above 0"),
    "crop_pct": _CROP, "test_crop_pct": _CROP,
    "interpolation": (lambda v: v in ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming"),
                      "bilinear, bicubic, nearest, lanczos, box or hamming"),
    "crop_mode": (lambda v: v in ("center", "squash", "border"), "center, squash or border"),
    "fixed_input_size": (lambda v: isinstance(v, bool), "true or false"),
}
DATA_CONFIG_KEYS = set(DATA_CONFIG_VALUES)


def check_data_config(cfg: Optional[dict], where: str) -> dict:
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ZooError(f"{where} must be a mapping of preprocessing settings, not {type(cfg).__name__}")
    unknown = sorted(map(str, set(cfg) - DATA_CONFIG_KEYS))
    if unknown:
        raise ZooError(f"{where} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(DATA_CONFIG_KEYS))}")
    for key, value in cfg.items():
        ok, wanted = DATA_CONFIG_VALUES[key]
        if not ok(value):
            raise ZooError(f"{where}: {key} {json.dumps(value, default=str)[:60]} is not {wanted}")
    return dict(cfg)


# architecture arguments a model_kwargs (from the command line, a weights sidecar, an index's or a
# checkpoint's recipe) may pass to timm.create_model; anything else (checkpoint_path,
# pretrained_cfg, cache_dir... which make timm read or write a file) is refused
MODEL_KWARGS_KEYS = {"pad_type", "global_pool", "gem_p", "drop_rate", "drop_path_rate", "drop_block_rate",
                     "img_size", "output_stride", "dynamic_img_size"}


def check_model_kwargs(model_name: str, *parts: Optional[dict]) -> dict:
    """The ``parts`` merged (later ones win) if each is a mapping of allowed keys to plain values."""
    for part in parts:
        if part is not None and not isinstance(part, dict):
            raise ZooError(f"model_kwargs must be a mapping of timm arguments, not {type(part).__name__}")
    kwargs = {k: v for part in parts if part for k, v in part.items()}
    unknown = sorted(map(str, set(kwargs) - MODEL_KWARGS_KEYS))
    if unknown:
        raise ZooError(f"cannot build {model_name} with model_kwargs key(s) {', '.join(unknown)}; "
                       f"allowed: {', '.join(sorted(MODEL_KWARGS_KEYS))}")
    for key, value in kwargs.items():
        plain = value is None or isinstance(value, (bool, int, float, str))
        if not plain and not (isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value)):
            raise ZooError(f"cannot build {model_name} with model_kwargs {key}: a number, a string or a list of integers "
                           f"is expected, not {type(value).__name__}")
    if not _number(1e-3, 1e3)(kwargs.get("gem_p", 3.0)):
        raise ZooError(f"cannot build {model_name} with model_kwargs gem_p {kwargs['gem_p']!r:.40}: "
                       "a number from 0.001 to 1000 is expected")
    size = kwargs.get("img_size", 1)
    if not (_SIDE[0](size) or (isinstance(size, (list, tuple)) and len(size) == 2 and all(map(_SIDE[0], size)))):
        raise ZooError(f"cannot build {model_name} with model_kwargs img_size {size!r:.40}: "
                       f"{_SIDE[1]}, or two of them")
    return kwargs


def _sidecar(weights: Optional[str]) -> dict:
    """``weights.json`` beside a weights file may say how to build the model (model_kwargs,
    pretrained_cfg_overlay); explicit arguments win over it. Plain JSON only, checked."""
    if not weights:
        return {}
    side = Path(weights).with_suffix(".json")
    if not side.is_file():
        return {}
    data = read_json(side, "valid JSON", max_bytes=1 << 20)
    if not isinstance(data, dict):
        raise ZooError(f"{side} must hold a JSON object with model_kwargs and/or pretrained_cfg_overlay")
    if not isinstance(data.get("model_kwargs", {}), dict):
        raise ZooError(f"{side}: model_kwargs must be a JSON object")
    check_data_config(data.get("pretrained_cfg_overlay"), f"{side}: pretrained_cfg_overlay")
    return data


class GeM(nn.Module):
    """Generalised-mean pooling (Radenovic et al.): (mean over h, w of x.clamp(eps) ** p) ** (1/p),
    (B, C, h, w) -> (B, C). p = 1 is average pooling; large p approaches max pooling. p is fixed
    (not trained), so weights files load unchanged."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p, self.eps = float(p), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_gem(model: nn.Module, p: float) -> None:
    """Swap a timm model's global pooling for GeM (timm's own pool types do not include it)."""
    if not isinstance(getattr(model, "global_pool", None), nn.Module):
        raise ZooError(f"global_pool: gem needs a model with a global_pool layer; {type(model).__name__} has none")
    model.global_pool = GeM(p)


def timm_backbone(
    model_name: str,
    pretrained: bool = False,
    weights: Optional[str] = None,
    model_kwargs: Optional[dict] = None,
    data_config: Optional[dict] = None,
    seed: int = 0,
) -> Backbone:
    """Build ``model_name`` (a timm name, optionally ``name.tag``) without classifier.

    weights: a local .pth/.safetensors file (offline); else ``pretrained`` fetches the hub tag
    (or uses the local cache); else random init, seeded so that it is reproducible.
    """
    side = _sidecar(weights)
    kwargs = check_model_kwargs(model_name, side.get("model_kwargs"), model_kwargs)
    overlay = {**side.get("pretrained_cfg_overlay", {}), **check_data_config(data_config, "data_config")}
    for key in ("input_size", "mean", "std"):
        if key in overlay:
            overlay[key] = tuple(overlay[key])
    if "image_size" in overlay:  # a shortcut for input_size
        overlay["input_size"] = (3, int(overlay["image_size"]), int(overlay.pop("image_size")))

    # global_pool: gem (or gem_p: P) is zoo's: the model is built with average pooling, then swapped
    gem_p = float(kwargs.get("gem_p", 3.0)) if kwargs.get("global_pool") == "gem" else None
    timm_kwargs = {k: v for k, v in kwargs.items() if k != "gem_p" and not (k == "global_pool" and gem_p is not None)}

    def build(**extra) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                model = timm.create_model(
                    model_name, num_classes=0, pretrained_cfg_overlay={**overlay, **extra}, **timm_kwargs
                )
                if gem_p is not None:
                    use_gem(model, gem_p)
                return model
            except ZooError:
                raise
            except Exception as e:  # timm reports a bad argument as TypeError, ValueError, AssertionError...
                raise ZooError(f"cannot build {model_name} with model_kwargs {kwargs}: {' '.join(str(e).split())[:200]}") from None

    def backbone(model: nn.Module, weights_id: str) -> Backbone:
        out = Backbone(model, model_name, weights_id)
        out.recipe = {"model_kwargs": dict(kwargs), "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in overlay.items()}}
        return out

    if weights:
        model = build()
        weights_id = load_weights_file(model, weights, model_name)
        return backbone(model, weights_id)

    if pretrained:
        model = build()
        cfg = model.pretrained_cfg
        tag = f"{cfg.get('architecture', model_name)}.{cfg.get('tag')}" if cfg.get("tag") else model_name
        cached = _cached_hub_file(cfg)
        try:
            if cached:
                model = _create_pretrained(model_name, timm_kwargs, {**overlay, "file": cached}, seed)
            elif hub_reachable():
                model = _create_pretrained(model_name, timm_kwargs, overlay, seed)
            else:
                raise OSError("the model hub is not reachable and the weights are not cached")
            if gem_p is not None:
                use_gem(model, gem_p)
            return backbone(model, f"hub:timm/{tag}")
        except Exception as e:  # offline, or no such tag
            warn_loudly(
                f"pretrained weights for '{tag}' cannot be had ({str(e).splitlines()[0][:120]}); "
                f"'{model_name}' runs with RANDOM INIT (seed {seed}). Pass --model.weights FILE for local weights."
            )
            model = build()
    else:
        model = build()
    return backbone(model, f"random init (seed {seed})")


def _create_pretrained(model_name: str, kwargs: dict, overlay: dict, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(model_name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay, **kwargs)


def create_backbone(name: str, **kwargs) -> Backbone:
    """A registered backbone by name, or any timm model (``timm/NAME`` or ``NAME[.tag]``)."""
    if name in BACKBONES:
        return BACKBONES.get(name)(**kwargs)
    timm_name = name.removeprefix("timm/")
    if timm.is_model(timm_name.split(".")[0]):
        return timm_backbone(timm_name, **kwargs)
    raise ZooError(unknown_name_message("backbone", name, BACKBONES.names(), timm.list_models()))


def check_backbone_name(name: str) -> None:
    if name not in BACKBONES and not timm.is_model(name.removeprefix("timm/").split(".")[0]):
        raise ZooError(unknown_name_message("backbone", name, BACKBONES.names(), timm.list_models()))


# ---- built-in backbones, with the weight tags the literature uses --------------------------
@register_backbone
def resnet50(**kwargs) -> Backbone:
    """ResNet-50, torchvision ImageNet-1k weights (timm tag tv_in1k)."""
    return timm_backbone("resnet50.tv_in1k", **kwargs)


@register_backbone
def vgg16(**kwargs) -> Backbone:
    """VGG-16, torchvision ImageNet-1k weights (timm tag tv_in1k)."""
    return timm_backbone("vgg16.tv_in1k", **kwargs)


@register_backbone
def inception_resnet_v2(**kwargs) -> Backbone:
    """Inception-ResNet-v2, the TensorFlow ImageNet-1k port (timm tag tf_in1k)."""
    return timm_backbone("inception_resnet_v2.tf_in1k", **kwargs)

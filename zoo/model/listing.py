"""``zoo list``: registered backbones and heads, and which weights can be had offline."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import torch

from zoo.backbones.timm_backbone import _cached_hub_file, create_backbone
from zoo.registry import BACKBONES, HEADS


def hub_weights(name: str) -> tuple[Optional[str], Optional[str]]:
    """(hub id of a backbone's pretrained weights, the local Hugging Face cache file or None).

    The backbone is built on the meta device: no memory, no weights, no network.
    """
    try:
        with torch.device("meta"):
            backbone = create_backbone(name, pretrained=False)
    except Exception:
        return None, None
    cfg = dict(backbone.model.pretrained_cfg)
    hub_id = cfg.get("hf_hub_id")
    return hub_id, _cached_hub_file(cfg) if hub_id else None


def config_weight_files(root: Path = Path("configs")) -> list[tuple[str, str, bool]]:
    """(config file, weights path, exists) for every weights file the configs under ``root`` name;
    paths resolve from the current folder, as `zoo ... --config FILE` does."""
    import yaml

    found = []
    for cfg in sorted(root.rglob("*.yaml")) if root.is_dir() else []:
        try:
            data = yaml.safe_load(cfg.read_text()) or {}
        except yaml.YAMLError:
            continue
        models = [data.get("model") or {}] + list(data.get("architectures") or [])
        for m in models:
            if isinstance(m, dict) and m.get("weights"):
                found.append((str(cfg), str(m["weights"]), Path(m["weights"]).is_file()))
    return found


def list_registered(pattern: str = "*", timm_names: bool = False, weights: Optional[str] = None) -> None:
    print("backbones (weights: offline = a local file or the Hugging Face cache; hub = needs a download):")
    for name in BACKBONES.list(pattern):
        doc = (BACKBONES.get(name).__doc__ or "").strip().splitlines()
        hub_id, cached = hub_weights(name)
        if cached:
            where = f"offline (HF cache: {hub_id})"
        elif hub_id:
            where = f"hub ({hub_id}; random init without it)"
        else:
            where = "no pretrained weights"
        print(f"  {name:22s} {where:58s} {doc[0] if doc else ''}")
    print("heads:")
    for name in HEADS.list(pattern):
        print(f"  {name}")
    files = config_weight_files()
    if weights:
        files.insert(0, ("--model.weights", weights, Path(weights).is_file()))
    if files:
        print("weight files (offline, used with --config FILE or --model.weights):")
        for cfg, path, ok in files:
            print(f"  {path}  [{'present' if ok else 'MISSING'}]  ({cfg})")
    if timm_names:
        import timm

        names = timm.list_models(pattern)
        print(f"timm models ({len(names)}; any of them works as --model.backbone, weights from the hub):")
        for name in names:
            print(f"  timm/{name}")
    print("(`--model.pretrained false` runs any backbone with a seeded random init, offline)", file=sys.stderr)

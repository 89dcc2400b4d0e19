"""Backbones: timm models without their classifier, registered by name.

``create_backbone("resnet50")`` builds a registered backbone; any other timm model works by
name too (``"timm/mobilenetv2_100"`` or ``"mobilenetv2_100"``).
"""
from zoo.backbones.timm_backbone import Backbone, create_backbone, timm_backbone

__all__ = ["Backbone", "create_backbone", "timm_backbone"]

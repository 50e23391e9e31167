"""A MobileNet-style net (Howard et al. 2017, MobileNet v1 Table 1) of depthwise-separable convolutions.

A depthwise-separable conv is a 3x3 depthwise conv (one filter per input channel: ``3*3*D`` weights) followed by
a 1x1 pointwise conv (``D*K`` weights) instead of a full 3x3 conv's ``3*3*D*K``: about 8-9 times fewer
parameters and multiply-adds. ``alpha`` (the width multiplier) thins every layer; alpha=1.0 at 224x224x3 and 1000
classes has 4,231,976 trainable parameters, alpha=0.25 about 0.47 M, small enough to train on a CPU.
"""
from __future__ import annotations

from .._tf import keras

from .blocks import Style, conv, depthwise, pixel_input, pooled_classifier
from .registry import arch

# (pointwise filters, depthwise stride) of the 13 depthwise-separable blocks
MOBILENET_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                       (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


@arch("mobilenet_v1", min_size=32, aliases=("mobilenet",),
      description="MobileNet v1: 13 depthwise-separable blocks; width multiplier alpha")
def mobilenet_v1(input_shape: tuple[int, int, int] = (224, 224, 3), classes: int = 1000,
                 initializer: str = "glorot_uniform", batch_norm: bool = True, dropout: float = 0.001,
                 classifier_activation: str | None = "softmax", alpha: float = 1.0) -> keras.Model:
    style = Style(initializer, batch_norm)
    inputs, x = pixel_input(input_shape)
    x = conv(x, int(32 * alpha), 3, "conv1", style, stride=2, pad=1)  # 112x112x32
    for i, (filters, stride) in enumerate(MOBILENET_V1_BLOCKS, start=1):
        x = depthwise(x, 3, f"block{i}_dw", style, stride=stride, pad=1 if stride > 1 else "same")
        x = conv(x, int(filters * alpha), 1, f"block{i}_pw", style)
    outputs = pooled_classifier(x, classes, style, dropout, classifier_activation)
    return keras.Model(inputs, outputs, name="mobilenet_v1")

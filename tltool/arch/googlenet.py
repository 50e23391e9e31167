"""GoogLeNet (Szegedy et al. 2015, Table 1) with Inception v1 modules and their 1x1 dimension reductions.

At 224x224x3: conv1 112x112x64, pool1 56x56x64, conv2 56x56x192, pool2 28x28x192, inception 3a 28x28x256,
3b 28x28x480, pool3 14x14x480, 4a-4e 14x14x512..832, pool4 7x7x832, 5a 7x7x832, 5b 7x7x1024, average pool 1024,
dropout 40 %, classifier. Pools are 3x3/2 with Caffe's ceil rounding ("same" here: 112 -> 56 -> 28 -> 14 -> 7).
The two auxiliary classifiers (after 4a and 4d) are built with ``aux_heads=True``; the model then has three
outputs: ``predictions``, ``aux1_predictions``, ``aux2_predictions`` (the paper weights their losses by 0.3).
"""
from __future__ import annotations

from typing import Sequence

from .._tf import keras
from keras import layers

from ..errors import TltoolError
from .blocks import Style, conv, dense, pixel_input, pool, pooled_classifier
from .layers import LocalResponseNormalization
from .registry import arch

# name: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj); "pool" is a 3x3/2 max pool between stages
INCEPTION_V1 = (
    ("3a", (64, 96, 128, 16, 32, 32)), ("3b", (128, 128, 192, 32, 96, 64)), "pool3",
    ("4a", (192, 96, 208, 16, 48, 64)), ("4b", (160, 112, 224, 24, 64, 64)), ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)), ("4e", (256, 160, 320, 32, 128, 128)), "pool4",
    ("5a", (256, 160, 320, 32, 128, 128)), ("5b", (384, 192, 384, 48, 128, 128)),
)
AUX_AFTER = {"4a": "aux1", "4d": "aux2"}
AUX_MIN_SIZE = 65  # the auxiliary heads' 5x5/3 average pool needs 4a's maps (input/16) to be at least 5x5


@arch("googlenet", min_size=32, aliases=("inception_v1",),
      description="GoogLeNet: 9 Inception v1 modules with 1x1 reductions; aux heads optional")
def googlenet(input_shape: tuple[int, int, int] = (224, 224, 3), classes: int = 1000,
              initializer: str = "glorot_uniform", batch_norm: bool = False, dropout: float = 0.4,
              classifier_activation: str | None = "softmax", aux_heads: bool = False) -> keras.Model:
    """GoogLeNet; with ``batch_norm`` every conv is batch-normalised (the LRN layers stay, as in the paper)."""
    if aux_heads and min(input_shape[:2]) < AUX_MIN_SIZE:
        raise TltoolError(f"GoogLeNet's auxiliary heads need inputs of at least {AUX_MIN_SIZE}x{AUX_MIN_SIZE} "
                          f"pixels; got {input_shape[0]}x{input_shape[1]}. Use a larger input or no aux heads.")
    style = Style(initializer, batch_norm)
    inputs, x = pixel_input(input_shape)
    x = conv(x, 64, 7, "conv1", style, stride=2, pad=3)  # 112x112x64
    x = pool(x, 3, "pool1", stride=2, pad="same")  # 56x56x64
    x = LocalResponseNormalization(name="norm1")(x)
    x = conv(x, 64, 1, "conv2_reduce", style)
    x = conv(x, 192, 3, "conv2", style, pad="same")  # 56x56x192
    x = LocalResponseNormalization(name="norm2")(x)
    x = pool(x, 3, "pool2", stride=2, pad="same")  # 28x28x192
    aux_outputs = []
    for item in INCEPTION_V1:
        if isinstance(item, str):
            x = pool(x, 3, item, stride=2, pad="same")
            continue
        name, widths = item
        x = inception(x, widths, f"inception{name}", style)
        if aux_heads and name in AUX_AFTER:
            aux_outputs.append(auxiliary_head(x, classes, AUX_AFTER[name], style, classifier_activation))
    outputs = pooled_classifier(x, classes, style, dropout, classifier_activation)
    return keras.Model(inputs, [outputs, *aux_outputs] if aux_outputs else outputs, name="googlenet")


def inception(x: keras.KerasTensor, widths: Sequence[int], name: str, style: Style) -> keras.KerasTensor:
    """Four parallel branches concatenated along the channels: 1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max pool -> 1x1.
    The 1x1 "reduce" convs shrink the channels before the expensive 3x3 and 5x5 convs."""
    n1, r3, n3, r5, n5, proj = widths
    branch1 = conv(x, n1, 1, f"{name}_1x1", style)
    branch3 = conv(conv(x, r3, 1, f"{name}_3x3_reduce", style), n3, 3, f"{name}_3x3", style, pad="same")
    branch5 = conv(conv(x, r5, 1, f"{name}_5x5_reduce", style), n5, 5, f"{name}_5x5", style, pad="same")
    pooled = pool(x, 3, f"{name}_pool", stride=1, pad="same")
    branch4 = conv(pooled, proj, 1, f"{name}_pool_proj", style)
    return layers.Concatenate(name=f"{name}_output")([branch1, branch3, branch5, branch4])


def auxiliary_head(x: keras.KerasTensor, classes: int, name: str, style: Style,
                   activation: str | None) -> keras.KerasTensor:
    """5x5/3 average pool -> 1x1 conv 128 -> FC 1024 -> dropout 70 % -> classifier (paper, section 5)."""
    x = pool(x, 5, f"{name}_pool", stride=3, kind="avg")  # 14x14 -> 4x4
    x = conv(x, 128, 1, f"{name}_conv", style)
    x = layers.Flatten(name=f"{name}_flatten")(x)
    x = dense(x, 1024, f"{name}_fc", style, dropout=0.7)
    return dense(x, classes, f"{name}_predictions", style, activation=activation)

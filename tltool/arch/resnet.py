"""ResNet-18 and ResNet-34 (He et al. 2016, Table 1) with basic residual blocks (two 3x3 convs + identity).

Laid out as torchvision's ``resnet18``/``resnet34``, so the parameter counts are the well-known ones (11,689,512
and 21,797,672 trainable at 1000 classes): conv1 7x7/2 pad 3 -> 112x112x64; pool1 3x3/2 pad 1 -> 56x56;
stages conv2_x .. conv5_x (64, 128, 256, 512 filters; the first block of stages 3-5 has stride 2 and a 1x1
stride-2 projection shortcut); global average pooling; classifier. Batch norm is on by default (the paper's);
``batch_norm=False`` gives plain convs with biases.
"""
from __future__ import annotations

import functools
from typing import Sequence

from .._tf import keras
from keras import layers

from .blocks import Style, conv, pixel_input, pool, pooled_classifier
from .registry import register_arch

STAGE_FILTERS = (64, 128, 256, 512)


def resnet(blocks_per_stage: Sequence[int], name: str, input_shape: tuple[int, int, int] = (224, 224, 3),
           classes: int = 1000, initializer: str = "glorot_uniform", batch_norm: bool = True, dropout: float = 0.0,
           classifier_activation: str | None = "softmax") -> keras.Model:
    """A ResNet of basic blocks, ``blocks_per_stage`` in stages conv2_x .. conv5_x."""
    style = Style(initializer, batch_norm)
    inputs, x = pixel_input(input_shape)
    x = conv(x, 64, 7, "conv1", style, stride=2, pad=3)  # 112x112x64
    x = pool(x, 3, "pool1", stride=2, pad=1)  # 56x56x64
    for stage, (filters, repeats) in enumerate(zip(STAGE_FILTERS, blocks_per_stage), start=2):
        for i in range(1, repeats + 1):
            x = basic_block(x, filters, 2 if (i == 1 and stage > 2) else 1, f"conv{stage}_{i}", style)
    outputs = pooled_classifier(x, classes, style, dropout, classifier_activation, name="fc")
    return keras.Model(inputs, outputs, name=name)


def basic_block(x: keras.KerasTensor, filters: int, stride: int, name: str, style: Style) -> keras.KerasTensor:
    """``relu(F(x) + shortcut(x))`` with ``F`` = 3x3 conv (stride ``stride``) -> 3x3 conv; the shortcut is the
    identity, or a 1x1 conv with the same stride where the shape changes."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = conv(x, filters, 1, f"{name}_shortcut", style, stride=stride, activation=None)
    y = conv(x, filters, 3, f"{name}_conv1", style, stride=stride, pad=1)
    y = conv(y, filters, 3, f"{name}_conv2", style, pad=1, activation=None)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_relu")(y)


for _name, _blocks in (("resnet18", (2, 2, 2, 2)), ("resnet34", (3, 4, 6, 3))):
    register_arch(_name, functools.partial(resnet, _blocks, _name), min_size=32,
                  description=f"ResNet-{_name[6:]}: basic residual blocks {list(_blocks)}, batch norm")

"""Building blocks shared by the reference nets: the pixel input, conv/pool/dense layers with readable names.

Padding is written the lectures' way: an integer ``pad`` is a ``ZeroPadding2D`` layer (``<name>_pad``) before a
"valid" layer, so every output size is ``(W - F + 2P)/S + 1`` exactly as on the slides. ``pad="same"`` is used
for stride-1 layers with odd filters, where it is the same thing (``P = (F - 1)/2`` on every side), and for the
3x3/2 pools of NiN and GoogLeNet, whose Caffe models round up (ceil mode: 112 -> 56, as "same" does).
With ``batch_norm`` a conv has no bias and is followed by ``<name>_bn`` then the activation ``<name>_<act>``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .._tf import keras
from keras import layers


@dataclass(frozen=True)
class Style:
    """Options every layer of a net shares: the kernel initializer and whether convs are batch-normalised."""

    initializer: str = "glorot_uniform"
    batch_norm: bool = False


def pixel_input(input_shape: Sequence[int]) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """``(inputs, x)``: the model input (raw pixels 0..255) and the same pixels scaled to 0..1."""
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    return inputs, layers.Rescaling(1 / 255, name="rescale")(inputs)


def _padded(x, pad, name: str) -> tuple[object, str]:
    if pad == "same":
        return x, "same"
    if pad:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return x, "valid"


def conv(x: keras.KerasTensor, filters: int, kernel: int, name: str, style: Style, stride: int = 1,
         pad: int | str = 0, activation: str | None = "relu") -> keras.KerasTensor:
    """Conv2D ``name`` (+ ``name_bn``) + activation."""
    x, padding = _padded(x, pad, name)
    x = layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=not style.batch_norm,
                      kernel_initializer=style.initializer, name=name,
                      activation=None if style.batch_norm else activation)(x)
    return _normalise(x, name, style, activation)


def depthwise(x: keras.KerasTensor, kernel: int, name: str, style: Style, stride: int = 1, pad: int | str = 0,
              activation: str | None = "relu") -> keras.KerasTensor:
    """DepthwiseConv2D ``name`` (+ ``name_bn``) + activation: one ``F x F`` filter per input channel."""
    x, padding = _padded(x, pad, name)
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=not style.batch_norm,
                               depthwise_initializer=style.initializer, name=name,
                               activation=None if style.batch_norm else activation)(x)
    return _normalise(x, name, style, activation)


def _normalise(x, name: str, style: Style, activation: str | None):
    if style.batch_norm:
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        if activation:
            x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def pool(x: keras.KerasTensor, size: int, name: str, stride: int | None = None, pad: int | str = 0,
         kind: str = "max") -> keras.KerasTensor:
    """Max (or ``kind="avg"``) pooling ``name``; the stride defaults to the pool size."""
    x, padding = _padded(x, pad, name)
    layer = layers.MaxPooling2D if kind == "max" else layers.AveragePooling2D
    return layer(size, strides=stride or size, padding=padding, name=name)(x)


def dense(x: keras.KerasTensor, units: int, name: str, style: Style, activation: str | None = "relu",
          dropout: float = 0.0) -> keras.KerasTensor:
    """Dense ``name`` followed by ``name_dropout`` when ``dropout`` > 0 (AlexNet/VGG's FC6 and FC7)."""
    x = layers.Dense(units, activation=activation, kernel_initializer=style.initializer, name=name)(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x


def pooled_classifier(x: keras.KerasTensor, classes: int, style: Style, dropout: float, activation: str | None,
                      name: str = "predictions") -> keras.KerasTensor:
    """Global average pooling (``avgpool``), optional dropout, and the ``classes``-way dense layer."""
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return dense(x, classes, name, style, activation=activation)

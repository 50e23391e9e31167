"""LeNet-5, AlexNet (as the CNN lectures give it) and Network-in-Network, built from scratch."""
from __future__ import annotations

from typing import Sequence

from .._tf import keras
from keras import layers

from .blocks import Style, conv, dense, pixel_input, pool
from .layers import LocalResponseNormalization
from .registry import arch


@arch("lenet5", min_size=32, aliases=("lenet",),
      description="LeNet-5: C1 6@5x5, S2, C3 16@5x5, S4, C5 120, F6 84 (tanh, average pooling)")
def lenet5(input_shape: tuple[int, int, int] = (32, 32, 1), classes: int = 10, initializer: str = "glorot_uniform",
           batch_norm: bool = False, dropout: float = 0.0, classifier_activation: str | None = "softmax",
           activation: str = "tanh") -> keras.Model:
    """LeNet-5 with fully connected C3 and a dense output layer (the textbook form; no RBF units)."""
    style = Style(initializer, batch_norm)
    inputs, x = pixel_input(input_shape)
    x = conv(x, 6, 5, "c1", style, activation=activation)  # 32x32 -> 28x28x6
    x = pool(x, 2, "s2", kind="avg")  # 14x14x6
    x = conv(x, 16, 5, "c3", style, activation=activation)  # 10x10x16
    x = pool(x, 2, "s4", kind="avg")  # 5x5x16
    x = conv(x, 120, 5, "c5", style, activation=activation)  # 1x1x120
    x = layers.Flatten(name="flatten")(x)
    x = dense(x, 84, "f6", style, activation=activation, dropout=dropout)
    outputs = dense(x, classes, "output", style, activation=classifier_activation)
    return keras.Model(inputs, outputs, name="lenet5")


@arch("alexnet", min_size=67,
      description="AlexNet as in the lectures: 5 conv (CONV1 96@11x11/4), 3 max pools, 2 LRN, 3 FC")
def alexnet(input_shape: tuple[int, int, int] = (227, 227, 3), classes: int = 1000,
            initializer: str = "glorot_uniform", batch_norm: bool = False, dropout: float = 0.5,
            classifier_activation: str | None = "softmax") -> keras.Model:
    """AlexNet in one tower (no split across two GPUs); dropout after FC6 and FC7."""
    style = Style(initializer, batch_norm)
    inputs, x = pixel_input(input_shape)
    x = conv(x, 96, 11, "conv1", style, stride=4)  # (227 - 11)/4 + 1 = 55 -> 55x55x96
    x = pool(x, 3, "pool1", stride=2)  # (55 - 3)/2 + 1 = 27 -> 27x27x96
    x = LocalResponseNormalization(name="norm1")(x)
    x = conv(x, 256, 5, "conv2", style, pad=2)  # 27x27x256
    x = pool(x, 3, "pool2", stride=2)  # 13x13x256
    x = LocalResponseNormalization(name="norm2")(x)
    x = conv(x, 384, 3, "conv3", style, pad=1)  # 13x13x384
    x = conv(x, 384, 3, "conv4", style, pad=1)  # 13x13x384
    x = conv(x, 256, 3, "conv5", style, pad=1)  # 13x13x256
    x = pool(x, 3, "pool3", stride=2)  # 6x6x256
    x = layers.Flatten(name="flatten")(x)
    x = dense(x, 4096, "fc6", style, dropout=dropout)
    x = dense(x, 4096, "fc7", style, dropout=dropout)
    outputs = dense(x, classes, "fc8", style, activation=classifier_activation)
    return keras.Model(inputs, outputs, name="alexnet")


# (kernel of the first conv, filters of conv / cccp1 / cccp2 (None: one per class), pooling after the block)
NIN_BLOCKS = ((5, (192, 160, 96), "max"), (5, (192, 192, 192), "avg"), (3, (192, 192, None), None))


@arch("nin", min_size=8, aliases=("network_in_network",),
      description="Network in Network (CIFAR-10 model): 3 mlpconv blocks, global average pooling, no FC")
def nin(input_shape: tuple[int, int, int] = (32, 32, 3), classes: int = 10, initializer: str = "glorot_uniform",
        batch_norm: bool = False, dropout: float = 0.5, classifier_activation: str | None = "softmax") -> keras.Model:
    """NiN: the class scores are the global averages of the last mlpconv's maps (ReLU'd, as in the paper)."""
    style = Style(initializer, batch_norm)
    inputs, x = pixel_input(input_shape)
    for i, (kernel, filters, pooling) in enumerate(NIN_BLOCKS, start=1):
        x = mlpconv(x, kernel, [f or classes for f in filters], f"mlpconv{i}", style)
        if pooling:
            x = pool(x, 3, f"pool{i}", stride=2, pad="same", kind=pooling)  # Caffe's ceil mode: 32 -> 16 -> 8
            if dropout:
                x = layers.Dropout(dropout, name=f"pool{i}_dropout")(x)
    x = layers.GlobalAveragePooling2D(name="avgpool")(x)
    outputs = layers.Activation(classifier_activation or "linear", name="predictions")(x)
    return keras.Model(inputs, outputs, name="nin")


def mlpconv(x: keras.KerasTensor, kernel: int, filters: Sequence[int], name: str, style: Style) -> keras.KerasTensor:
    """A micro network slid over the image: a ``kernel x kernel`` conv, then two 1x1 convs (a per-pixel MLP)."""
    x = conv(x, filters[0], kernel, f"{name}_conv", style, pad="same")
    x = conv(x, filters[1], 1, f"{name}_cccp1", style)
    return conv(x, filters[2], 1, f"{name}_cccp2", style)

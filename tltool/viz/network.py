"""What the viz commands look inside: a backbone's convolutional base, what comes before it and (for a run) after it.

Every source is reduced to the same parts, so filters, activations and Grad-CAM share one code path:
``pixels 0..255 -> preprocess -> base (conv layers) -> feature map -> head -> class scores``.

- ``--backbone NAME``: :func:`tltool.backbones.create_backbone` (no head);
- ``--model RUN`` of kind ``linear``: the run's backbone, and the fitted head's arrays applied in TensorFlow;
- ``--model RUN`` of kind ``finetune``: the saved model's own sub-layers (``preprocess``, the nested base named by
  ``model.json``'s ``base_layer``, ``pool``, ``classifier``), called in sequence, never rebuilt.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..backbones import create_backbone, find_backbone
from ..configs import resolve_input
from ..errors import TltoolError
from ..features import select_pool
from ..models import KerasRunModel, LinearRunModel, load_run
from ..settings import DEFAULT_BACKBONE

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from ..heads import FittedHead


@dataclass
class Network:
    """A convolutional base with its preprocessing and, when it has one, its classification head."""

    name: str
    preprocess: Callable[[Any], Any]  # raw pixels 0..255 -> what ``base`` expects
    base: Any  # keras.Model: preprocessed image -> last feature map
    image_size: int
    resize: str = "crop"
    bgr: bool = False  # the preprocessing reverses channels (caffe): the first conv sees BGR
    classes: list[str] | None = None
    # feature map -> (class scores before softmax, probabilities); None when there is no head to explain
    head: Callable[[Any], tuple[Any, Any]] | None = None
    no_head_reason: str = "it has no classification head"
    layer_hint: str = ""  # the options that list this network's layers, for error messages
    config: dict = field(default_factory=dict)

    def layers(self) -> list:
        """The base's layers in order, without its input layer (index 0 is the first real layer)."""
        return [layer for layer in self.base.layers if type(layer).__name__ != "InputLayer"]

    def find_layer(self, spec: str | int) -> tuple[int, Any]:
        """A layer by name or index (negative counts from the end); a clear error naming the closest names."""
        layers = self.layers()
        text = str(spec).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            if not -len(layers) <= index < len(layers):
                raise TltoolError(f"--layer {spec}: {self.name} has layers 0..{len(layers) - 1} (or -1 for the last). "
                                  f"List them with `tltool viz layers {self.layer_hint}`.")
            index %= len(layers)
            return index, layers[index]
        for index, layer in enumerate(layers):
            if layer.name == text:
                return index, layer
        close = difflib.get_close_matches(text, [layer.name for layer in layers], n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise TltoolError(f"--layer {spec}: {self.name} has no layer of that name.{hint} "
                          f"List the {len(layers)} layers with `tltool viz layers {self.layer_hint}`.")

    def layer_model(self, layer: keras.layers.Layer) -> keras.Model:
        """A model from the preprocessed image to ``layer``'s output (a 4-D activation volume)."""
        from .._tf import keras

        shape = tuple(layer.output.shape)
        if len(shape) != 4:
            raise TltoolError(f"layer {layer.name!r} outputs {format_shape(shape)}, not activation maps; choose a layer "
                              f"with a spatial output (see `tltool viz layers {self.layer_hint}`).")
        return keras.Model(self.base.inputs, layer.output, name=f"{self.base.name}_to_{layer.name}")

    def feature_map(self, pixels: np.ndarray | tf.Tensor) -> tf.Tensor:
        """Last feature map of the base for a batch of raw pixels."""
        return self.base(self.preprocess(pixels), training=False)


def format_shape(shape: tuple[int | None, ...]) -> str:
    dims = [d for d in tuple(shape)[1:]]
    return "×".join("?" if d is None else str(d) for d in dims) or "scalar"


def conv_kernel(layer: keras.layers.Layer) -> np.ndarray | None:
    """The 4-D kernel ``(kh, kw, in, out)`` of a convolution (depthwise: ``(kh, kw, channels, multiplier)``)."""
    for name in ("depthwise_kernel", "kernel"):
        weight = getattr(layer, name, None)
        if weight is not None and len(weight.shape) == 4:
            return np.asarray(weight.numpy() if hasattr(weight, "numpy") else weight, dtype=np.float32)
    return None


def is_depthwise(layer: keras.layers.Layer) -> bool:
    """Depthwise (or separable) convolutions: one kernel per input channel, ``(kh, kw, channels, multiplier)``."""
    return hasattr(layer, "depth_multiplier")


def first_conv(network: Network) -> tuple[int, Any]:
    for index, layer in enumerate(network.layers()):
        if conv_kernel(layer) is not None and not is_depthwise(layer):
            return index, layer
    raise TltoolError(f"{network.name} has no convolution layer.")


def dense_head(pool: keras.layers.Layer, classifier: keras.layers.Dense) -> Callable:
    """``fmap -> (scores, probabilities)`` through a pooling layer and a Dense classifier.

    Grad-CAM differentiates the class score before the softmax (Selvaraju et al.), so for a softmax Dense the score
    is computed from its own kernel and bias; the probabilities are the layer's own output.
    """
    from .._tf import tf

    def head(fmap):
        pooled = pool(fmap)
        probs = classifier(pooled)
        activation = getattr(getattr(classifier, "activation", None), "__name__", "")
        if activation == "softmax":
            x = tf.cast(pooled, classifier.kernel.dtype)
            scores = tf.matmul(x, classifier.kernel) + (classifier.bias if classifier.use_bias else 0.0)
        elif activation == "linear":
            scores, probs = probs, tf.nn.softmax(tf.cast(probs, tf.float32))
        else:
            scores = tf.math.log(tf.cast(probs, tf.float32) + 1e-12)
        return tf.cast(scores, tf.float32), tf.cast(probs, tf.float32)

    return head


def linear_head(fitted: FittedHead, pool: str) -> Callable:
    """A :class:`~tltool.heads.FittedHead`'s linear scores in TensorFlow: pool -> standardise -> ``Z W^T + b``."""
    from .._tf import tf

    mean = tf.constant(fitted.mean, tf.float32)
    scale = tf.constant(fitted.scale, tf.float32)
    coef = tf.constant(fitted.coef.T, tf.float32)
    intercept = tf.constant(fitted.intercept, tf.float32)

    def head(fmap):
        fmap = tf.cast(fmap, tf.float32)
        avg, mx = tf.reduce_mean(fmap, axis=[1, 2]), tf.reduce_max(fmap, axis=[1, 2])
        pooled = select_pool(avg, mx, pool, concat=tf.concat)
        scores = tf.matmul((pooled - mean) / scale, coef) + intercept
        return scores, tf.nn.softmax(scores)

    return head


def open_network(backbone: str | None = None, model: str | Path | None = None, weights: str = "imagenet",
                 image_size: int | None = None) -> Network:
    """The network named by ``--backbone`` or ``--model`` (a run folder); a clear error for a missing run."""
    if backbone and model:
        raise TltoolError("give --backbone NAME or --model RUN, not both.")
    if model and image_size:
        raise TltoolError("--image-size applies to --backbone; a run (--model) uses the size it was trained at.")
    if model:
        return open_run(model)
    return open_backbone(backbone or DEFAULT_BACKBONE, weights, image_size)


def open_backbone(name: str, weights: str = "imagenet", image_size: int | None = None) -> Network:
    inputs = resolve_input(name, image_size)
    model = create_backbone(inputs.backbone, weights=weights, image_size=inputs.image_size)
    hint = f"--backbone {inputs.backbone}" + (f" --image-size {image_size}" if image_size else "")
    base = find_backbone(model)  # keras.applications name it their own way (mobilenetv2_1.00_224)
    return Network(name=inputs.backbone, preprocess=model.get_layer("preprocess"), base=base,
                   image_size=inputs.image_size, bgr=inputs.preprocess == "caffe", layer_hint=hint,
                   config={"backbone": inputs.backbone, "weights": str(weights)})


def open_run(run_dir: str | Path) -> Network:
    path = Path(run_dir)
    if not path.is_dir():
        raise TltoolError(f"--model {run_dir}: no such run folder. Pass the folder a linear, probe or finetune "
                          "command wrote (it holds model.json).")
    run = load_run(path)
    if isinstance(run, LinearRunModel):
        return _linear_network(path, run)
    if isinstance(run, KerasRunModel):
        return _keras_network(path, run)
    raise TltoolError(f"{run_dir}: runs of kind {run.config.get('kind')!r} cannot be visualised.")


def _linear_network(path: Path, run) -> Network:
    config = run.config
    net = open_backbone(config["backbone"], config["weights"], config["image_size"])
    net.name, net.resize, net.classes, net.config = path.name, config["resize"], list(run.classes), config
    net.layer_hint = f"--model {path}"
    if run.head.coef is None:
        net.no_head_reason = f"its head is {run.head.name!r}, which has no linear class scores to differentiate"
    else:
        net.head = linear_head(run.head, config.get("pool", "avg"))
    return net


def _keras_network(path: Path, run) -> Network:
    model, config = run.as_keras(), run.config

    def layer(name):
        try:
            return model.get_layer(name)
        except ValueError:
            return None

    base = (layer(config["base_layer"]) if config.get("base_layer") else None) or find_backbone(model)
    preprocess = layer("preprocess")
    if base is None or preprocess is None:
        raise TltoolError(f"{path}: model.keras has no 'preprocess' layer and nested base model "
                          f"({config.get('base_layer')!r}); only fine-tuned runs of tltool can be visualised.")
    pool, classifier = layer("pool"), layer("classifier")
    mode = getattr(preprocess, "mode", "none")
    net = Network(name=path.name, preprocess=preprocess, base=base, image_size=run.image_size, resize=run.resize,
                  bgr=mode == "caffe", classes=list(run.classes), layer_hint=f"--model {path}", config=config)
    if pool is not None and classifier is not None:
        net.head = dense_head(pool, classifier)
    else:
        net.no_head_reason = "its model has no 'pool' and 'classifier' layers"
    return net


def classifier_network(model: keras.Model, feature_layer: str, pool_layer: str, classifier_layer: str,
                       preprocess: Callable, name: str | None = None, image_size: int | None = None,
                       classes: list[str] | None = None) -> Network:
    """Split a flat Keras classifier (e.g. ``EfficientNetLite0(include_top=True)``) at ``feature_layer``."""
    from .._tf import keras

    base = keras.Model(model.inputs, model.get_layer(feature_layer).output, name=f"{model.name}_base")
    size = image_size or int(model.inputs[0].shape[1])
    n = int(model.outputs[0].shape[-1])
    return Network(name=name or model.name, preprocess=preprocess, base=base, image_size=size,
                   classes=classes or [str(i) for i in range(n)],
                   head=dense_head(model.get_layer(pool_layer), model.get_layer(classifier_layer)))

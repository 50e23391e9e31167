"""What the viz commands look inside: a backbone's convolutional base, what comes before it and (for a run) after it.

Every source is reduced to the same parts, so filters, activations and Grad-CAM share one code path:
``pixels 0..255 -> preprocess -> base (conv layers) -> feature map -> head -> class scores``.

- ``--backbone NAME``: :func:`tltool.backbones.create_backbone` (no head);
- ``--model RUN`` of kind ``linear``: the run's backbone, and the fitted head's arrays applied in TensorFlow;
- ``--model RUN`` of kind ``finetune``: the saved model's own sub-layers (``preprocess``, the nested base named by
  ``model.json``'s ``base_layer``, ``pool``, ``classifier``), called in sequence, never rebuilt;
- ``--model RUN`` of kind ``scratch`` (``tltool train``): the saved model itself, whose first layer scales the pixels
  as its training did, so nothing comes before it; the base is its layers up to the last spatial one, and Grad-CAM
  splits it after its last convolutional map larger than 1x1 (:func:`scratch_head`).
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
from ..models import KerasRunModel, LinearRunModel, load_finished_run, trained_max_pixels
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
    features: Any = None  # keras.Model: preprocessed image -> the feature map ``head`` takes, when not ``base``'s

    @property
    def max_pixels(self) -> int:
        return trained_max_pixels(self.config)

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
        """The feature map ``head`` takes (the base's last, unless ``features`` says) for a batch of raw pixels."""
        return (self.features or self.base)(self.preprocess(pixels), training=False)


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


def dense_head(pool: Callable, classifier: keras.layers.Layer) -> Callable:
    """``fmap -> (scores, probabilities)`` through ``pool`` (a pooling layer, or the rest of a from-scratch net up to
    its last layer) and ``classifier`` (a Dense, or a bare softmax).

    Grad-CAM differentiates the class score before the softmax (Selvaraju et al.), so for a softmax Dense the score
    is computed from its own kernel and bias; the probabilities are the layer's own output.
    """
    from .._tf import tf

    def head(fmap):
        pooled = pool(fmap)
        probs = classifier(pooled)
        activation = getattr(getattr(classifier, "activation", None), "__name__", "")
        if activation == "softmax" and getattr(classifier, "kernel", None) is None:  # a bare softmax (NiN's)
            scores = pooled
        elif activation == "softmax":
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
        raise TltoolError(f"--model {run_dir}: no such run folder. Pass the folder a linear, probe, finetune or "
                          "train command wrote (it holds model.json).")
    run = load_finished_run(path)
    if isinstance(run, LinearRunModel):
        return _linear_network(path, run)
    if isinstance(run, KerasRunModel):
        return _KERAS_NETWORKS[run.config["kind"]](path, run)
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
                          f"({config.get('base_layer')!r}), which every fine-tuned run of tltool has; it is not "
                          "the model `tltool finetune` saved.")
    pool, classifier = layer("pool"), layer("classifier")
    mode = getattr(preprocess, "mode", "none")
    net = Network(name=path.name, preprocess=preprocess, base=base, image_size=run.image_size, resize=run.resize,
                  bgr=mode == "caffe", classes=list(run.classes), layer_hint=f"--model {path}", config=config)
    if pool is not None and classifier is not None:
        net.head = dense_head(pool, classifier)
    else:
        net.no_head_reason = "its model has no 'pool' and 'classifier' layers"
    return net


def _scratch_network(path: Path, run) -> Network:
    from .._tf import keras

    model, config = run.as_keras(), run.config
    spatial = [layer for layer in model.layers if is_map(layer) and type(layer).__name__ != "InputLayer"]
    if not spatial:
        raise TltoolError(f"{path}: model.keras has no layer with a spatial output (activation maps); it is not "
                          "the model `tltool train` saved.")
    base = keras.Model(model.inputs, spatial[-1].output, name=f"{model.name}_base")
    net = Network(name=path.name, preprocess=_unchanged, base=base, image_size=run.image_size, resize=run.resize,
                  classes=list(run.classes), layer_hint=f"--model {path}", config=config)
    split = scratch_head(model, spatial)
    if split is None:
        net.no_head_reason = ("its net has no convolutional map larger than 1x1 that the rest of the net is computed "
                              "from (train it at a larger --image-size)")
    else:
        feature, net.head = split
        net.features = keras.Model(model.inputs, feature.output, name=f"{model.name}_to_{feature.name}")
    return net


_KERAS_NETWORKS = {"finetune": _keras_network, "scratch": _scratch_network}
# layers whose output is not the map Grad-CAM explains: the last convolution's (activated) map is, not a pooled,
# padded or dropped-out copy of it (Selvaraju et al. use the last convolutional layer)
_NOT_A_CAM_MAP = ("Pooling2D", "ZeroPadding2D", "Dropout")


def is_map(layer: keras.layers.Layer) -> bool:
    """Whether the layer outputs activation maps (batch, h, w, channels)."""
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):  # a layer used several times has no single output
        return False


def _unchanged(pixels):
    """A from-scratch net's preprocessing is its own first layer (``rescale``: pixels / 255)."""
    return pixels


def scratch_head(model: keras.Model, spatial: list) -> tuple[Any, Callable] | None:
    """``(feature layer, head)`` of a flat from-scratch classifier for Grad-CAM: the last map larger than 1x1 from
    the first convolution on (not a pooling, padding or dropout layer's) from which the rest of the net follows
    alone (a ResNet's last conv does not: its block adds the shortcut after it), and the net from there to its
    class scores; None if there is none.
    """
    from .._tf import keras

    final = model.layers[-1]
    convs = [i for i, layer in enumerate(spatial) if conv_kernel(layer) is not None]
    for layer in reversed(spatial[convs[0]:] if convs else []):  # the pixels (rescaled) are no conv's map
        h, w = layer.output.shape[1:3]
        if type(layer).__name__.endswith(_NOT_A_CAM_MAP) or (h or 0) * (w or 0) <= 1:
            continue
        try:
            rest = keras.Model(layer.output, final.input, name=f"{model.name}_from_{layer.name}")
        except ValueError:  # "not connected to inputs": the output needs more than this layer's
            continue
        return layer, dense_head(rest, final)
    return None


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

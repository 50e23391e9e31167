"""Backbones: a registry over keras.applications plus EfficientNet-Lite0/1/2 with offline ImageNet weights."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..declared_sizes import check_declared_sizes
from ..errors import TltoolError
from ..settings import DEFAULT_BACKBONE
from .registry import (BackboneSpec, _weights_failure, get_backbone_spec, keras_models_dir, list_backbones,
                       register_backbone, weights_digest)

if TYPE_CHECKING:
    import keras


def create_backbone(name: str, weights: str = "imagenet", image_size: int | None = None,
                    random_seed: int | None = None, weights_named: str = "--weights") -> keras.Model:
    """Build ``name`` as a Keras model from raw RGB pixels (0..255) to its last feature map.

    The model is ``input -> ImagePreprocessing(spec.preprocess) -> base``; ``base`` is a nested model named
    after the backbone, so fine-tuning can unfreeze its top layers. ``weights``: ``imagenet`` (Keras' cache, or
    offline for efficientnet_lite0), ``none`` (random, the same in every process: see
    :func:`_seeded_random_build`), or a path to a weights file of the base. ``random_seed`` draws the random
    weights of ``none`` from another seed (a fine-tune from scratch follows its ``--seed``; features must not).
    ``weights_named``: where a weights file that cannot be used was given, for the error (a run's model.json).
    """
    from .._tf import keras

    from .layers import ImagePreprocessing

    spec = get_backbone_spec(name)
    size = spec.input_size(image_size)
    shape = (size, size, 3)
    weights = str(weights)
    if weights.lower() == "none":
        base = _seeded_random_build(spec, shape, RANDOM_WEIGHTS_SEED if random_seed is None else random_seed)
    elif weights.lower() == "imagenet":
        try:
            base = spec.build(shape, "imagenet")
        except TltoolError:
            raise
        except Exception as exc:  # Keras raises a bare Exception("URL fetch failure ...") offline
            raise _weights_failure(spec, exc) from None
    else:
        path = Path(weights)
        if not path.is_file():
            what = "not a regular file (a folder, a named pipe or a device)" if path.exists() else "no such file"
            raise TltoolError(f"{weights_named} {weights}: {what}. Use imagenet, none or a path to a weights file.")
        base = spec.build(shape, None)
        try:
            check_declared_sizes(path)  # before Keras allocates what a tensor declares
            base.load_weights(str(path))
        except Exception as exc:
            detail = " ".join(str(exc).split())  # Keras' message spans lines
            detail = detail if len(detail) <= 300 else detail[:300].rsplit(" ", 1)[0] + " ..."
            raise TltoolError(f"{weights_named} {weights}: cannot load into {spec.name} ({exc.__class__.__name__}: "
                              f"{detail}). The file must hold the weights of this architecture without its "
                              "classification top.") from None
    inputs = keras.Input(shape=shape, name="pixels")
    x = ImagePreprocessing(spec.preprocess, name="preprocess")(inputs)
    outputs = base(x)
    return keras.Model(inputs, outputs, name=f"{spec.name}_backbone")


RANDOM_WEIGHTS_SEED = 0


def _seeded_random_build(spec: BackboneSpec, shape: tuple[int, int, int], seed: int = RANDOM_WEIGHTS_SEED):
    """``spec`` with random weights drawn from ``seed`` (:data:`RANDOM_WEIGHTS_SEED` unless a fine-tune asks for
    its own): features of ``--weights none`` are cached under that name, so every process must build the same
    network (a linear run's ``predict`` and ``export`` rebuild it). The caller's random stream goes on from a
    number drawn from it before, so what a run draws afterwards (head, dropout) still follows its ``--seed``."""
    import numpy as np

    from .._tf import keras

    carry_on = int(np.random.randint(2**31 - 1))
    keras.utils.set_random_seed(seed)
    try:
        return spec.build(shape, None)
    finally:
        keras.utils.set_random_seed(carry_on)


def find_backbone(model: keras.Model) -> keras.Model | None:
    """The one nested model inside ``model`` (the pretrained base of a classifier tltool built), or None when there
    is none or more than one."""
    from .._tf import keras

    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return nested[0] if len(nested) == 1 else None


__all__ = ["BackboneSpec", "DEFAULT_BACKBONE", "create_backbone", "find_backbone", "get_backbone_spec",
           "keras_models_dir", "list_backbones", "register_backbone", "weights_digest"]

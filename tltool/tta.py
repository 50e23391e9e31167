"""Test-time augmentation: predictions averaged over views of each image (centre, mirror, 10 crops).

:func:`predict_with_tta` is how every run predicts on image files (``tta="none"`` is one centre view); the views
are cut in TensorFlow from batches of the one pipeline (:func:`tltool.pipeline.image_dataset`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .images import DEFAULT_MAX_PIXELS
from .progress import Bar
from .settings import CHOICES

TTA_MODES = CHOICES["tta"]
TTA_CROP_RATIO = 0.875  # 224 crops from 256: the classic ImageNet evaluation ratio
VIEWS = {"none": 1, "flip": 2, "10crop": 10}


def tta_views(images, mode: str, size: int):
    """Views of a batch for test-time augmentation: ``(B, H, W, 3) -> (B * V, size, size, 3)``, image-major.

    ``none``: the centre crop; ``flip``: it and its mirror; ``10crop``: the 4 corners and the centre, each with its
    mirror. Images must be at least ``size`` on each side (decode at ``size / 0.875`` for 10crop).
    """
    from ._tf import tf

    h, w = images.shape[1], images.shape[2]
    top, left = (h - size) // 2, (w - size) // 2
    centre = images[:, top:top + size, left:left + size]
    if mode == "none":
        views = [centre]
    elif mode == "flip":
        views = [centre, tf.reverse(centre, axis=[2])]
    elif mode == "10crop":
        crops = [images[:, :size, :size], images[:, :size, w - size:], images[:, h - size:, :size],
                 images[:, h - size:, w - size:], centre]
        views = crops + [tf.reverse(c, axis=[2]) for c in crops]
    else:
        raise ValueError(f"unknown TTA mode {mode!r}; choose one of {TTA_MODES}")
    stacked = tf.stack(views, axis=1)  # (B, V, size, size, 3)
    return tf.reshape(stacked, (-1, size, size, images.shape[-1]))


def tta_decode_size(mode: str, size: int) -> int:
    return int(round(size / TTA_CROP_RATIO)) if mode == "10crop" else size


def n_views(mode: str) -> int:
    return VIEWS[mode]


def predict_with_tta(predict_views, paths: Sequence[str], image_size: int, resize: str, tta: str = "none",
                     batch_size: int = 32, description: str = "predicting",
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Class probabilities for ``paths``, averaged over the TTA views.

    ``predict_views`` maps a batch of views ``(B * V, size, size, 3)`` in 0..255 to probabilities ``(B * V, C)``.
    ``max_pixels``: the decode limit the run was trained with (``--max-pixels``).
    """
    from .pipeline import image_dataset  # imports TensorFlow

    views = n_views(tta)
    ds = image_dataset(list(paths), image_size=tta_decode_size(tta, image_size), resize=resize,
                       batch_size=batch_size, max_pixels=max_pixels)
    out = []
    with Bar(len(paths), description) as bar:
        for images in ds:
            batch = tta_views(images, tta, image_size)
            # at most batch_size views per call: 10-crop turns 32 images into 320 views, and a network's
            # activations for 320 images at 224 px need many GB (measured: 23 GB RSS before this split)
            probs = np.concatenate([np.asarray(predict_views(batch[i:i + batch_size]))
                                    for i in range(0, len(batch), batch_size)])
            out.append(probs.reshape(len(images), views, -1).mean(axis=1))
            bar.update(len(images))
    return np.concatenate(out) if out else np.zeros((0, 0))

"""Test-time augmentation: predictions averaged over views of each image (centre, mirror, 10 crops).

:func:`predict_with_tta` is how every run predicts on image files (``tta="none"`` is one centre view); the views
are cut in TensorFlow from batches of the one pipeline (:func:`tltool.pipeline.image_dataset`).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .batches import batches_for
from .errors import BadImageError
from .images import DEFAULT_MAX_PIXELS, DecodeLog
from .progress import Bar
from .settings import CHOICES

if TYPE_CHECKING:
    import tensorflow as tf

TTA_MODES = CHOICES["tta"]
TTA_CROP_RATIO = 0.875  # 224 crops from 256: the classic ImageNet evaluation ratio
VIEWS = {"none": 1, "flip": 2, "10crop": 10}


def tta_views(images: np.ndarray | tf.Tensor, mode: str, size: int) -> np.ndarray:
    """Views of a batch for test-time augmentation: ``(B, H, W, 3) -> (B * V, size, size, 3)``, image-major.

    ``none``: the centre crop; ``flip``: it and its mirror; ``10crop``: the 4 corners and the centre, each with its
    mirror. Images must be at least ``size`` on each side (decode at ``size / 0.875`` for 10crop). NumPy slices:
    no TensorFlow, whichever engine runs the network.
    """
    images = np.asarray(images)
    h, w = images.shape[1], images.shape[2]
    top, left = (h - size) // 2, (w - size) // 2
    centre = images[:, top:top + size, left:left + size]
    if mode == "none":
        views = [centre]
    elif mode == "flip":
        views = [centre, centre[:, :, ::-1]]
    elif mode == "10crop":
        crops = [images[:, :size, :size], images[:, :size, w - size:], images[:, h - size:, :size],
                 images[:, h - size:, w - size:], centre]
        views = crops + [c[:, :, ::-1] for c in crops]
    else:
        raise ValueError(f"unknown TTA mode {mode!r}; choose one of {TTA_MODES}")
    stacked = np.stack(views, axis=1)  # (B, V, size, size, 3)
    return stacked.reshape(-1, size, size, images.shape[-1])


def tta_decode_size(mode: str, size: int) -> int:
    return int(round(size / TTA_CROP_RATIO)) if mode == "10crop" else size


def n_views(mode: str) -> int:
    return VIEWS[mode]


def predict_batch(predict_views: Callable[[np.ndarray], np.ndarray], images: np.ndarray | tf.Tensor, tta: str,
                  image_size: int, batch_size: int) -> np.ndarray:
    """Class probabilities of one batch of decoded images ``(B, H, W, 3)`` in 0..255, averaged over its TTA views."""
    ((probs, _n),) = stream_tta(lambda chunks: map(predict_views, chunks), [images], tta, image_size, batch_size)
    return probs


def stream_tta(predict_stream: Callable[[Iterable[np.ndarray]], Iterable], batches: Iterable, tta: str,
               image_size: int, batch_size: int, per_view: bool = False) -> Iterator[tuple[np.ndarray, int]]:
    """``(probabilities, images)`` per decoded batch, averaged over its TTA views (``per_view``: each view's,
    ``(B, V, C)``); ``predict_stream`` maps the stream of view chunks to a stream of probabilities, so an engine
    may start the next chunk before it hands back this one (LiteRT's lanes then never wait at a batch's end)."""
    shapes: deque[tuple[int, int]] = deque()  # (images, chunks) of each batch cut so far, in order

    def chunks():
        for images in batches:
            if not len(images):
                continue  # nothing to predict, and no shape to wait for
            views = tta_views(images, tta, image_size)
            # at most batch_size views per call: 10-crop turns 32 images into 320 views, and a network's
            # activations for 320 images at 224 px need many GB (measured: 23 GB RSS before this split)
            cut = [views[i:i + batch_size] for i in range(0, len(views), batch_size)]
            shapes.append((len(images), len(cut)))
            yield from cut

    done: list[np.ndarray] = []
    stream = predict_stream(chunks())
    try:
        for probs in stream:  # the chunk generator runs ahead: its batch's shape is known here
            done.append(np.asarray(probs))
            n_images, n_chunks = shapes[0]
            if len(done) == n_chunks:
                shapes.popleft()
                views = np.concatenate(done).reshape(n_images, n_views(tta), -1)
                yield (views if per_view else views.mean(axis=1)), n_images
                done = []
    finally:  # stopped early or failing: an engine's stream cancels the chunks it queued
        getattr(stream, "close", lambda: None)()


def predict_with_tta(predict_views: Callable[[np.ndarray], np.ndarray], paths: Sequence[str], image_size: int,
                     resize: str, tta: str = "none", batch_size: int = 32, description: str = "predicting",
                     max_pixels: int = DEFAULT_MAX_PIXELS, engine: str = "tf", on_bad: str = "raise",
                     log: DecodeLog | None = None,
                     predict_stream: Callable[[Iterable[np.ndarray]], Iterable[np.ndarray]] | None = None,
                     per_view: bool = False) -> np.ndarray:
    """Class probabilities for ``paths``, averaged over the TTA views (``per_view``: each view's, ``(N, V, C)``).

    ``predict_views`` maps a batch of views ``(B * V, size, size, 3)`` in 0..255 to probabilities ``(B * V, C)``;
    ``predict_stream`` (optional) maps a stream of such batches to a stream of probabilities, as a runner's ``map``
    does. ``max_pixels``: the decode limit the run was trained with (``--max-pixels``). ``engine``: the one running
    the network; TensorFlow's is fed by tf.data, any other by :mod:`tltool.batches` (no TensorFlow).
    ``on_bad``/``log``: as for :func:`tltool.batches.batches_for`.
    """
    predict_stream = predict_stream or (lambda chunks: map(predict_views, chunks))
    batches = batches_for(engine, paths, image_size=tta_decode_size(tta, image_size), resize=resize,
                          batch_size=batch_size, max_pixels=max_pixels, on_bad=on_bad, log=log)
    out = []
    with Bar(len(paths), description) as bar:
        for probs, n_images in stream_tta(predict_stream, batches, tta, image_size, batch_size, per_view):
            out.append(probs)
            bar.update(n_images)
    return np.concatenate(out) if out else np.zeros((0, n_views(tta), 0) if per_view else (0, 0))


@dataclass
class ReadablePredictions:
    """What :func:`predict_readable` found: the files it could read, their probabilities, and the others."""

    paths: list[str]
    probabilities: np.ndarray  # (len(paths), classes)
    bad: list[BadImageError]  # each with the file's path and reason


def predict_readable(predict_views: Callable[[np.ndarray], np.ndarray], paths: Sequence[str], image_size: int,
                     resize: str, tta: str = "none", batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS,
                     engine: str = "tf",
                     predict_stream: Callable[[Iterable[np.ndarray]], Iterable[np.ndarray]] | None = None
                     ) -> ReadablePredictions:
    """:func:`predict_with_tta` for files nobody checked (``tltool predict``): each is decoded once, by the decode
    that feeds the network (in its threads, beside the network), and a file it cannot read is set aside with its
    reason while the others are predicted. The caller names the bad files (they are not warned about one by one)."""
    log = DecodeLog(announce=False)
    probs = predict_with_tta(predict_views, paths, image_size, resize, tta, batch_size, max_pixels=max_pixels,
                             engine=engine, on_bad="zeros", log=log, predict_stream=predict_stream)
    readable = [i for i, path in enumerate(paths) if str(path) not in log.failures]
    bad = [BadImageError(str(path), *log.failures[str(path)]) for path in paths if str(path) in log.failures]
    return ReadablePredictions([str(paths[i]) for i in readable], probs[readable], bad)
